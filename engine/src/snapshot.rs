//! Snapshots: every layer unpacked once per diffID, and merged views of a
//! stack of them.
//!
//! # Layout
//!
//! `$BAKE_HOME/snapshots/<diffID hex>/` holds one layer's files exactly as an
//! overlayfs lower directory expects them: a removed path (`.wh.NAME` in the
//! tar) is a character device 0:0 named `NAME`, and a replaced directory
//! (`.wh..wh..opq`) carries the `trusted.overlay.opaque=y` xattr. So the same
//! folders serve as overlay lowers for `run` steps and, through
//! [`MergedView`], as the read-only filesystem a `copy from=` reads.
//!
//! A layer is unpacked into a temporary folder beside its final place and
//! renamed into it when complete, so a snapshot that exists is whole: an
//! interrupted unpack leaves only a temporary folder (`.unpack-*`, named
//! after its owner so a prune can tell a dead one's: see [`crate::scratch`]),
//! which the next unpack of that layer ignores, and two builds unpacking one
//! layer at once both succeed (the second rename finds the first's result
//! and drops its own). Beside each snapshot, `<diffID hex>.layer` records the
//! blob it came from (so a prune can tell when it is no longer needed) and
//! the size of its tar stream.
//!
//! # Limits
//!
//! Unpacking is bounded ([`UnpackLimits`]): each layer by `layer::Limits`,
//! and a stack of layers (an image) by the sum of their tar streams. The
//! budget left for a layer is what the layers below it have not used, so an
//! image past its limit fails while its last layer streams, not after.
//!
//! # Merged views
//!
//! [`MergedView`] answers "what is at this path" and "what is in this folder"
//! for a stack of snapshots the way overlayfs would: the topmost layer that
//! has a name decides; a whiteout hides the name in every layer below; an
//! opaque directory hides the directory's contents below it. Symbolic links
//! in the middle of a path are resolved inside the view, never on the host.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use miette::Diagnostic;

use crate::layer::{LayerError, LayerInfo, Limits, UnpackOptions};
use crate::oci::media;
use crate::store::{Store, StoreError};

/// The name prefix of a layer being unpacked (see [`crate::scratch`]).
const UNPACK_SCRATCH: &str = ".unpack-";

/// How many symbolic links one lookup may follow.
const MAX_LINKS: usize = 40;

/// Errors while preparing or reading snapshots.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SnapshotError {
    #[error("cannot prepare the snapshot folder {}", path.display())]
    #[diagnostic(code(bake::snapshot::io))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("layer {digest} has an unknown media type `{media_type}`")]
    #[diagnostic(code(bake::snapshot::media_type))]
    MediaType { digest: String, media_type: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Layer(#[from] LayerError),

    #[error(
        "the layers of an image unpack to more than {}, the limit for one image (at layer {layer})",
        crate::config::format_size(*limit)
    )]
    #[diagnostic(
        code(bake::snapshot::image_too_large),
        help(
            "for a genuine image, raise the limit with BAKE_MAX_IMAGE_SIZE (say BAKE_MAX_IMAGE_SIZE=128GiB) or \
             `store max-image-size=\"128GiB\"` in bake's config file"
        )
    )]
    ImageTooLarge { layer: String, limit: u64 },

    #[error("too many levels of symbolic links at {path}")]
    #[diagnostic(code(bake::snapshot::link_loop))]
    LinkLoop { path: String },
}

/// How much unpacking may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Each layer's bounds.
    pub layer: Limits,
    /// Bytes of all the layers of one stack (an image) together.
    pub max_image_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self { layer: Limits::default(), max_image_bytes: crate::config::MAX_IMAGE_SIZE }
    }
}

impl UnpackLimits {
    /// The limits a configuration sets (the defaults where it is silent).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let default = Self::default();
        Self {
            layer: Limits { max_bytes: config.max_layer_size.unwrap_or(default.layer.max_bytes), ..default.layer },
            max_image_bytes: config.max_image_size.unwrap_or(default.max_image_bytes),
        }
    }
}

/// The snapshot folder of a home.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
    store: Store,
    limits: UnpackLimits,
    /// What unpacking left out, said once per layer (see [`Self::take_notes`]).
    notes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Snapshots {
    pub fn new(dir: PathBuf, store: Store) -> Self {
        Self { dir, store, limits: UnpackLimits::default(), notes: std::sync::Arc::default() }
    }

    /// Notes on the layers unpacked since the last call: device nodes that
    /// could not be made (bake rootless, or without CAP_MKNOD), which the
    /// image then lacks in its runs (its layers keep them).
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The same snapshots, unpacking within `limits`.
    #[must_use]
    pub fn with_limits(self, limits: UnpackLimits) -> Self {
        Self { limits, ..self }
    }

    /// The folders holding `layers` (bottom first) unpacked, unpacking what
    /// is missing, within the limit for one layer and, all together, the
    /// limit for one image.
    pub fn unpacked_all(&self, layers: &[LayerInfo]) -> Result<Vec<PathBuf>, SnapshotError> {
        let max = self.limits.max_image_bytes;
        let mut below = 0u64;
        let mut paths = Vec::with_capacity(layers.len());
        for layer in layers {
            let left = max.saturating_sub(below);
            let (path, size) = match self.unpack(layer, left) {
                Err(SnapshotError::Layer(LayerError::TooLarge { layer, limit }))
                    if limit < self.limits.layer.max_bytes =>
                {
                    return Err(SnapshotError::ImageTooLarge { layer, limit: max });
                }
                other => other?,
            };
            below = below.saturating_add(size);
            if below > max {
                return Err(SnapshotError::ImageTooLarge { layer: layer.digest.to_string(), limit: max });
            }
            paths.push(path);
        }
        Ok(paths)
    }

    /// The folder holding `layer` unpacked, unpacking it (once) if needed.
    pub fn unpacked(&self, layer: &LayerInfo) -> Result<PathBuf, SnapshotError> {
        self.unpack(layer, u64::MAX).map(|(path, _)| path)
    }

    /// The size of a snapshot's layer, as recorded when it was made (or as
    /// `layer` says, for older snapshots).
    fn recorded_size(&self, layer: &LayerInfo) -> u64 {
        let marker = self.dir.join(format!("{}.layer", layer.diff_id.digest()));
        std::fs::read_to_string(marker)
            .ok()
            .and_then(|text| text.lines().nth(1).and_then(|l| l.trim().parse().ok()))
            .unwrap_or(layer.uncompressed_size)
    }

    /// The folder holding `layer` unpacked and the size of its tar stream;
    /// unpacks it within `left` bytes (and the per-layer limit) if needed.
    fn unpack(&self, layer: &LayerInfo, left: u64) -> Result<(PathBuf, u64), SnapshotError> {
        let path = self.dir.join(layer.diff_id.digest());
        if path.is_dir() {
            return Ok((path, self.recorded_size(layer)));
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SnapshotError::Io { path: p, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let compression = media::layer_compression(&layer.media_type).ok_or_else(|| SnapshotError::MediaType {
            digest: layer.digest.to_string(),
            media_type: layer.media_type.clone(),
        })?;
        let tmp = tempfile::Builder::new()
            .prefix(&crate::scratch::prefix(UNPACK_SCRATCH))
            .tempdir_in(&self.dir)
            .map_err(io(&self.dir))?;
        let root = tmp.path().join("fs");
        std::fs::create_dir(&root).map_err(io(&root))?;
        let blob = self.store.open_blob(&layer.digest)?;
        let name = layer.digest.to_string();
        let limits = Limits { max_bytes: self.limits.layer.max_bytes.min(left), ..self.limits.layer };
        let options = UnpackOptions { name: &name, compression, expected_diff_id: Some(&layer.diff_id), limits };
        let stats = crate::layer::unpack(std::io::BufReader::with_capacity(1 << 20, blob), &root, &options).map_err(
            |e| match e {
                // Name the snapshots' folder, not the temporary one that is
                // removed with the error.
                LayerError::DiskFull { source, .. } => LayerError::DiskFull { path: self.dir.clone(), source },
                e => e,
            },
        )?;
        if stats.devices_skipped > 0 {
            let n = stats.devices_skipped;
            let nodes = if n == 1 { "device node" } else { "device nodes" };
            self.notes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!(
                "layer {}: {n} {nodes} not made (making devices needs root of the host); steps and containers of \
                 this image run without them, its layers keep them",
                layer.digest
            ));
        }
        // Which blob this snapshot came from, so a prune can tell when it is
        // no longer needed, and its size, for the image limit.
        let marker = self.dir.join(format!("{}.layer", layer.diff_id.digest()));
        std::fs::write(&marker, marker_text(layer, stats.uncompressed_size)).map_err(io(&marker))?;
        match std::fs::rename(&root, &path) {
            Ok(()) => Ok((path, stats.uncompressed_size)),
            // Another build finished the same layer first: theirs is as good.
            Err(_) if path.is_dir() => Ok((path, stats.uncompressed_size)),
            Err(e) => Err(SnapshotError::Io { path, source: e }),
        }
    }

    /// Takes `dir`, which already holds `layer`'s files in overlay form (a
    /// `run` step's upper folder), as that layer's snapshot instead of
    /// unpacking the layer again. `dir` must be on the snapshots'
    /// filesystem; when the snapshot exists already, `dir` is left alone.
    pub fn adopt(&self, layer: &LayerInfo, dir: &Path) -> Result<(), SnapshotError> {
        let path = self.dir.join(layer.diff_id.digest());
        if path.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| SnapshotError::Io { path: self.dir.clone(), source })?;
        let marker = self.dir.join(format!("{}.layer", layer.diff_id.digest()));
        std::fs::write(&marker, marker_text(layer, layer.uncompressed_size))
            .map_err(|source| SnapshotError::Io { path: marker.clone(), source })?;
        match std::fs::rename(dir, &path) {
            Ok(()) => Ok(()),
            Err(_) if path.is_dir() => Ok(()),
            Err(source) => Err(SnapshotError::Io { path, source }),
        }
    }

    /// A merged view of `layers` (bottom first), unpacking what is missing.
    pub fn view(&self, layers: &[LayerInfo]) -> Result<MergedView, SnapshotError> {
        Ok(MergedView { lowers: self.unpacked_all(layers)? })
    }

    /// Removes the snapshots whose layer blob the store no longer holds (after
    /// a prune), and leftovers of interrupted unpacks; returns the bytes freed.
    pub fn prune(&self) -> Result<u64, SnapshotError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(0) };
        let mut freed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = if let Some(tmp) = name.strip_prefix(UNPACK_SCRATCH) {
                // Its owner's name says whether an unpack is in progress; a
                // folder of an older bake, without one, is judged by age.
                crate::scratch::owner_alive(&name, &[UNPACK_SCRATCH]).map_or_else(
                    || {
                        !tmp.is_empty()
                            && entry
                                .metadata()
                                .and_then(|m| m.modified())
                                .is_ok_and(|t| t.elapsed().unwrap_or_default() > std::time::Duration::from_hours(1))
                    },
                    |alive| !alive,
                )
            } else if let Some(dir) = name.strip_suffix(".layer") {
                !self.dir.join(dir).is_dir()
            } else {
                let layer = std::fs::read_to_string(self.dir.join(format!("{name}.layer"))).ok();
                layer
                    .and_then(|d| crate::oci::Digest::try_from(d.lines().next().unwrap_or_default().trim()).ok())
                    .is_none_or(|d| !self.store.contains_blob(&d))
            };
            if !orphan {
                continue;
            }
            freed +=
                crate::scratch::remove_all(&path).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.layer")));
        }
        Ok(freed)
    }
}

/// A snapshot's marker: the layer blob's digest, then the tar stream's size.
fn marker_text(layer: &LayerInfo, size: u64) -> String {
    format!("{}\n{size}\n", layer.digest)
}

/// What a path is in a merged view.
#[derive(Debug)]
pub struct Found {
    /// The path inside the view, normalised, after following links.
    pub path: String,
    /// Where its data lives on the host (in one snapshot).
    pub real: PathBuf,
    pub meta: Metadata,
    /// For a directory: the snapshot folders that contribute to it, top first.
    dir_layers: Vec<usize>,
}

/// A stack of snapshot folders seen as one filesystem.
#[derive(Debug, Clone, Default)]
pub struct MergedView {
    /// Bottom first.
    lowers: Vec<PathBuf>,
}

impl MergedView {
    /// A view of explicit folders (bottom first).
    pub fn new(lowers: Vec<PathBuf>) -> Self {
        Self { lowers }
    }

    /// The snapshot folders, bottom first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// Looks a path up, following symbolic links in its parent folders (inside
    /// the view), and in its last component too when `follow` is set.
    pub fn find(&self, path: &str, follow: bool) -> Result<Option<Found>, SnapshotError> {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut dir_layers: Vec<usize> = (0..self.lowers.len()).rev().collect();
        let mut links = 0;
        let mut current: Option<Found> = Some(self.root(&dir_layers));
        while let Some(name) = pending.pop() {
            if name == ".." {
                // Step up by resolving the remaining parents again from the
                // root (`..` of the root is the root, as in the kernel).
                resolved.pop();
                pending.extend(resolved.drain(..).rev());
                dir_layers = (0..self.lowers.len()).rev().collect();
                current = Some(self.root(&dir_layers));
                continue;
            }
            let rel = join(&resolved, &name);
            let Some(found) = self.lookup(&rel, &dir_layers)? else { return Ok(None) };
            let last = pending.is_empty();
            if found.meta.file_type().is_symlink() && (!last || follow) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(SnapshotError::LinkLoop { path: path.to_owned() });
                }
                let target = std::fs::read_link(&found.real)
                    .map_err(|source| SnapshotError::Io { path: found.real.clone(), source })?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                    dir_layers = (0..self.lowers.len()).rev().collect();
                }
                pending.extend(components(&target).into_iter().rev());
                continue;
            }
            if !last && !found.meta.is_dir() {
                return Ok(None);
            }
            resolved.push(name);
            dir_layers.clone_from(&found.dir_layers);
            current = Some(found);
        }
        Ok(current.map(|mut f| {
            f.path = resolved.join("/");
            f
        }))
    }

    fn root(&self, layers: &[usize]) -> Found {
        let top = layers.first().copied();
        let real = top.map_or_else(|| PathBuf::from("/nonexistent"), |l| self.lowers[l].clone());
        // The root of a view always exists; describe it with the top layer's
        // folder (or `/` for an empty view).
        let meta = std::fs::metadata(&real).or_else(|_| std::fs::metadata("/")).ok();
        Found {
            path: String::new(),
            real,
            meta: meta.unwrap_or_else(|| unreachable!("/ exists")),
            dir_layers: layers.to_vec(),
        }
    }

    /// One name in the folder whose contributing layers are `layers`.
    fn lookup(&self, rel: &str, layers: &[usize]) -> Result<Option<Found>, SnapshotError> {
        let mut top: Option<(PathBuf, Metadata)> = None;
        let mut dir_layers = Vec::new();
        for &l in layers {
            let real = self.lowers[l].join(rel);
            let meta = match std::fs::symlink_metadata(&real) {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                    continue;
                }
                Err(source) => return Err(SnapshotError::Io { path: real, source }),
            };
            if is_whiteout(&meta) {
                break;
            }
            match &top {
                None => {
                    let is_dir = meta.is_dir();
                    top = Some((real.clone(), meta));
                    if !is_dir {
                        break;
                    }
                    dir_layers.push(l);
                }
                Some(_) if meta.is_dir() => dir_layers.push(l),
                // A non-directory below a directory is hidden by it.
                Some(_) => break,
            }
            if is_opaque(&real) {
                break;
            }
        }
        Ok(top.map(|(real, meta)| Found { path: rel.to_owned(), real, meta, dir_layers }))
    }

    /// The merged contents of a folder found with [`Self::find`], by name.
    pub fn children(&self, dir: &Found) -> Result<BTreeMap<String, Found>, SnapshotError> {
        let mut seen: BTreeMap<String, Option<Found>> = BTreeMap::new();
        for &l in &dir.dir_layers {
            let folder = self.lowers[l].join(&dir.path);
            let entries = match std::fs::read_dir(&folder) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(SnapshotError::Io { path: folder, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| SnapshotError::Io { path: folder.clone(), source })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if seen.contains_key(&name) {
                    continue;
                }
                let rel = if dir.path.is_empty() { name.clone() } else { format!("{}/{name}", dir.path) };
                let below: Vec<usize> = dir.dir_layers.iter().copied().skip_while(|&x| x != l).collect();
                seen.insert(name, self.lookup(&rel, &below)?);
            }
        }
        Ok(seen.into_iter().filter_map(|(k, v)| v.map(|f| (k, f))).collect())
    }

    /// Every entry below a folder, depth first in name order, with its path
    /// relative to that folder.
    pub fn walk(&self, dir: &Found, out: &mut Vec<(String, Found)>) -> Result<(), SnapshotError> {
        self.walk_into(dir, "", out)
    }

    fn walk_into(&self, dir: &Found, prefix: &str, out: &mut Vec<(String, Found)>) -> Result<(), SnapshotError> {
        for (name, child) in self.children(dir)? {
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let is_dir = child.meta.is_dir();
            out.push((rel.clone(), child));
            if is_dir {
                let Some((_, child)) = out.last() else { continue };
                let child = Found {
                    path: child.path.clone(),
                    real: child.real.clone(),
                    meta: child.meta.clone(),
                    dir_layers: child.dir_layers.clone(),
                };
                self.walk_into(&child, &rel, out)?;
            }
        }
        Ok(())
    }

    /// Reads a small file (such as `/etc/passwd`) from the view.
    pub fn read_to_string(&self, path: &str) -> Result<Option<String>, SnapshotError> {
        let Some(found) = self.find(path, true)? else { return Ok(None) };
        if !found.meta.is_file() {
            return Ok(None);
        }
        std::fs::read_to_string(&found.real).map(Some).map_err(|source| SnapshotError::Io { path: found.real, source })
    }
}

/// An overlay whiteout: a character device 0:0.
pub fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// An overlay opaque directory.
pub fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, crate::sandbox::opaque_xattr()), Ok(Some(v)) if v == b"y")
}

fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect()
}

fn join(parents: &[String], name: &str) -> String {
    if parents.is_empty() { name.to_owned() } else { format!("{}/{name}", parents.join("/")) }
}

impl SnapshotError {
    /// Whose the error is: the disk's or the image's (bytes from a registry).
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::Store(e) => e.tier(),
            Self::Layer(e) => e.tier(),
            Self::Io { .. } | Self::MediaType { .. } | Self::ImageTooLarge { .. } | Self::LinkLoop { .. } => {
                crate::Tier::Environment
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, files: &[(&str, &str)]) -> PathBuf {
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        root.to_path_buf()
    }

    fn whiteout(path: &Path) {
        nix::sys::stat::mknod(path, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).expect("mknod");
    }

    fn names(view: &MergedView, dir: &str) -> Vec<String> {
        let found = view.find(dir, true).expect("find").expect("exists");
        view.children(&found).expect("children").into_keys().collect()
    }

    #[test]
    fn upper_layers_win_whiteouts_hide_opaque_dirs_replace() {
        let t = tempfile::tempdir().expect("tempdir");
        let l0 = layer(&t.path().join("0"), &[("etc/a", "a0"), ("etc/b", "b0"), ("opt/x/1", "1"), ("keep/k", "k")]);
        let l1 = layer(&t.path().join("1"), &[("etc/a", "a1"), ("opt/x/2", "2")]);
        whiteout(&l1.join("etc/b"));
        xattr::set(l1.join("opt/x"), "trusted.overlay.opaque", b"y").expect("xattr");
        let view = MergedView::new(vec![l0, l1]);
        assert_eq!(view.read_to_string("/etc/a").expect("read").as_deref(), Some("a1"));
        assert!(view.find("/etc/b", false).expect("find").is_none());
        assert_eq!(names(&view, "/etc"), ["a"]);
        assert_eq!(names(&view, "/opt/x"), ["2"]);
        assert_eq!(names(&view, "/"), ["etc", "keep", "opt"]);
        let root = view.find("/", false).expect("find").expect("root");
        let mut all = Vec::new();
        view.walk(&root, &mut all).expect("walk");
        let paths: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["etc", "etc/a", "keep", "keep/k", "opt", "opt/x", "opt/x/2"]);
    }

    #[test]
    fn links_resolve_inside_the_view_only() {
        let t = tempfile::tempdir().expect("tempdir");
        let l0 = layer(&t.path().join("0"), &[("real/file", "data"), ("etc/passwd", "inside")]);
        std::os::unix::fs::symlink("/real", l0.join("abs")).expect("link");
        std::os::unix::fs::symlink("../../../../etc", l0.join("real/up")).expect("link");
        let view = MergedView::new(vec![l0]);
        assert_eq!(view.read_to_string("/abs/file").expect("read").as_deref(), Some("data"));
        // `..` stops at the view's root: this is the view's /etc, not the host's.
        assert_eq!(view.read_to_string("/real/up/passwd").expect("read").as_deref(), Some("inside"));
        let link = view.find("/abs", false).expect("find").expect("exists");
        assert!(link.meta.file_type().is_symlink());
    }
}
