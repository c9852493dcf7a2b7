//! `copy`: from the context, another stage or an image, into one layer; and
//! exporting paths of a stage to the host (artifacts, `type=local`).
//!
//! A `copy` becomes exactly one layer. Its entries follow Docker's `COPY`
//! rules: a folder source copies its contents, a file source lands at the
//! destination or inside it when the destination is a folder (ends with `/`,
//! names several sources, or already is one); entries are owned by 0:0 unless
//! `chown=` says otherwise (names resolved in the stage's own `/etc/passwd`
//! and `/etc/group`); `chmod=` sets every copied entry's mode. Parent
//! folders that the stage already has keep their metadata; new ones are
//! 0755 root. Context files are hashed again while they are written and
//! compared with the digest their key was computed from, so a file edited in
//! the middle of a build fails the build instead of caching the wrong content.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Build, ExecError, FsResult};
use crate::context::EntryKind as CtxKind;
use crate::context::ignore::{Rules, glob, is_glob};
use crate::graph::ContextRead;
use crate::image::ImageConfig;
use crate::lang::{Copy, Span};
use crate::layer::{Entry, EntryKind, LayerInfo, LayerOptions, LayerWriter};
use crate::oci::Compression;
use crate::snapshot::{Found, MergedView};

/// What a `copy` reads.
pub(super) enum Source<'a> {
    /// The build context: the selection its key was computed from.
    Context(Option<&'a ContextRead>),
    /// Another stage's or an image's filesystem, and how to name it.
    Fs(Arc<FsResult>, String),
}

/// Where an entry's bytes come from.
pub(super) enum Content {
    None,
    /// A context file, with the blake3 digest and size its key used.
    Context {
        path: PathBuf,
        digest: [u8; 32],
        size: u64,
    },
    /// A file of a snapshot.
    Snapshot(PathBuf),
}

pub(super) struct Item {
    pub(super) entry: Entry,
    pub(super) content: Content,
    /// Files with several links: (device, inode), to keep them linked.
    pub(super) link: Option<(u64, u64)>,
}

pub(super) struct Copier<'a, 'b> {
    pub(super) build: &'a Build<'b>,
    pub(super) span: Span,
    pub(super) config: &'a ImageConfig,
    pub(super) parent_layers: &'a [LayerInfo],
}

impl Copier<'_, '_> {
    fn error(&self, message: String, label: &str, help: Option<String>) -> ExecError {
        ExecError::step(self.build.ws, self.span, message, label, help)
    }

    pub(super) fn run(&self, copy: &Copy, source: &Source<'_>) -> Result<LayerInfo, ExecError> {
        let parent = self.build.engine.snapshots.view(self.parent_layers)?;
        let raw = copy.dest.as_str();
        let absolute = if raw.starts_with('/') {
            raw.to_owned()
        } else {
            format!("{}/{raw}", self.config.workdir().trim_end_matches('/'))
        };
        let dest = crate::lang::clean_absolute(&absolute).trim_start_matches('/').to_owned();
        let named_dir =
            raw.ends_with('/') || raw == "." || raw.ends_with("/.") || raw.ends_with("..") || dest.is_empty();
        let existing_dir = parent.find(&dest, true)?.is_some_and(|f| f.meta.is_dir());
        let (uid, gid) = self.owner(copy.chown.as_deref(), &parent)?;
        let excludes = Rules::from_patterns(copy.exclude.iter().map(String::as_str))
            .map_err(|e| self.error(format!("bad exclude pattern `{}`: {}", e.pattern, e.reason), "here", None))?;

        let mut items: BTreeMap<String, Item> = BTreeMap::new();
        // ADD: archives unpacked (kept until the layer is written), and the
        // entries that came from them, which keep the archive's owners.
        let mut unpacked: Vec<tempfile::TempDir> = Vec::new();
        let mut extracted: std::collections::HashSet<String> = std::collections::HashSet::new();
        if copy.mkdir {
            // A Dockerfile's WORKDIR: the folder and its missing parents,
            // owned by the user in force (`uid`, `gid` below), as BuildKit
            // makes them; one that exists is left as it is.
            let mut at = String::new();
            for part in dest.split('/').filter(|p| !p.is_empty()) {
                at = if at.is_empty() { part.to_owned() } else { format!("{at}/{part}") };
                if parent.find(&at, true)?.is_none() {
                    insert(&mut items, at.clone(), EntryKind::Dir, 0o755, Content::None, None);
                }
            }
            for item in items.values_mut() {
                item.entry.uid = uid;
                item.entry.gid = gid;
            }
            return write_layer(self.build, items.into_values().collect());
        }
        match source {
            Source::Context(read) => {
                let read = read.ok_or(ExecError::NoSelection)?;
                let sel = &read.selection;
                let mut roots: Vec<&str> = sel.entries.iter().map(|e| e.root.as_str()).collect();
                roots.dedup();
                let root_is_dir = |root: &str| {
                    root == "." || sel.entries.iter().find(|e| e.path == root).is_none_or(|e| e.kind == CtxKind::Dir)
                };
                let into_dir = named_dir || existing_dir || copy.sources.len() > 1 || roots.len() > 1;
                for e in &sel.entries {
                    // ADD: a tar named as a source is unpacked into the destination.
                    if copy.extract
                        && e.kind == CtxKind::File
                        && e.path == e.root
                        && let Some(dir) = self.unpack(&read.root.join(&e.path), &mut unpacked)?
                    {
                        let mut all = Vec::new();
                        walk_host(&dir, "", &mut all)?;
                        for (rel, meta, real) in all {
                            let target = join(&dest, &rel);
                            add_host(&mut items, &target, &meta, &real);
                            extracted.insert(target);
                        }
                        continue;
                    }
                    let target = place(&dest, &e.root, &e.path, root_is_dir(&e.root), into_dir);
                    let (kind, content) = match &e.kind {
                        CtxKind::File => (
                            EntryKind::File { size: e.size },
                            Content::Context {
                                path: read.root.join(&e.path),
                                digest: e.digest.unwrap_or_default(),
                                size: e.size,
                            },
                        ),
                        CtxKind::Dir => (EntryKind::Dir, Content::None),
                        CtxKind::Symlink(t) => (EntryKind::Symlink { target: t.clone() }, Content::None),
                    };
                    let link = (e.kind == CtxKind::File && e.nlink > 1).then_some((0, e.ino));
                    insert(&mut items, target, kind, e.mode, content, link);
                }
            }
            Source::Fs(result, name) => {
                let view = self.build.engine.snapshots.view(&result.layers)?;
                let mut roots = Vec::new();
                for (i, src) in copy.sources.iter().enumerate() {
                    let found = self.fs_roots(&view, src, name)?;
                    if found.is_empty() && !copy.optional {
                        let span = copy.source_spans.get(i).copied().unwrap_or(self.span);
                        return Err(ExecError::step(
                            self.build.ws,
                            span,
                            format!("`{src}` does not exist in {name}"),
                            "not found",
                            None,
                        ));
                    }
                    roots.extend(found);
                }
                let into_dir = named_dir || existing_dir || roots.len() > 1;
                for root in roots {
                    let base = root.path.rsplit('/').next().unwrap_or_default().to_owned();
                    if root.meta.is_dir() {
                        let mut all = Vec::new();
                        view.walk(&root, &mut all)?;
                        add_found(&mut items, &dest, &root);
                        for (rel, f) in all {
                            if excludes.is_excluded(&rel) {
                                continue;
                            }
                            add_found(&mut items, &join(&dest, &rel), &f);
                        }
                    } else if !excludes.is_excluded(&base) {
                        let target = if into_dir { join(&dest, &base) } else { dest.clone() };
                        add_found(&mut items, &target, &root);
                    }
                }
            }
        }
        // A Dockerfile's `COPY --from` without `--chown` keeps the source's owners.
        let keep = copy.keep_owners && copy.chown.is_none() && !matches!(source, Source::Context(_));
        for (path, item) in &mut items {
            let from_archive = copy.chown.is_none() && extracted.contains(path);
            if !keep && !from_archive {
                item.entry.uid = uid;
                item.entry.gid = gid;
            }
            // Link permissions mean nothing on Linux; BuildKit leaves them too.
            if let Some(mode) = copy.chmod
                && !matches!(item.entry.kind, EntryKind::Symlink { .. })
            {
                item.entry.mode = mode;
            }
        }
        Self::add_parents(&mut items, &parent)?;
        write_layer(self.build, items.into_values().collect())
    }

    /// Unpacks a context file into a fresh folder when it is a tar archive
    /// (plain or gzip, told by its bytes as BuildKit tells them); `None`
    /// for any other file, which is copied as it is.
    fn unpack(&self, file: &Path, keep: &mut Vec<tempfile::TempDir>) -> Result<Option<PathBuf>, ExecError> {
        let io = |source| ExecError::Io { path: file.to_path_buf(), source };
        let mut head = [0u8; 512];
        let mut f = std::fs::File::open(file).map_err(io)?;
        let n = read_full(&mut f, &mut head).map_err(io)?;
        let gzip = n >= 2 && head[..2] == [0x1f, 0x8b];
        let tar = n >= 262 && &head[257..262] == b"ustar";
        if !gzip && !tar {
            return Ok(None);
        }
        let f = std::fs::File::open(file).map_err(io)?;
        let reader: Box<dyn Read> = if gzip { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
        let tmp = self.build.engine.home.tmp_dir();
        std::fs::create_dir_all(&tmp).map_err(|source| ExecError::Io { path: tmp.clone(), source })?;
        let dir = tempfile::Builder::new()
            .prefix(&crate::scratch::prefix("add-"))
            .tempdir_in(&tmp)
            .map_err(|source| ExecError::Io { path: tmp.clone(), source })?;
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_unpack_xattrs(false);
        // `unpack` keeps every entry inside the folder (no `..`, no
        // absolute paths, no writing through links).
        archive
            .unpack(dir.path())
            .map_err(|e| self.error(format!("cannot unpack {}: {e}", file.display()), "this archive", None))?;
        let path = dir.path().to_path_buf();
        keep.push(dir);
        Ok(Some(path))
    }

    /// What a `from=` source path names: itself (links followed), or the
    /// matches of a pattern in its last component.
    fn fs_roots(&self, view: &MergedView, src: &str, name: &str) -> Result<Vec<Found>, ExecError> {
        if !is_glob(src) {
            return Ok(view.find(src, true)?.into_iter().collect());
        }
        let (dir, pattern) = src.rsplit_once('/').unwrap_or(("", src));
        if is_glob(dir) {
            return Err(self.error(
                format!("`{src}`: patterns are only supported in the last component when copying from {name}"),
                "pattern in a folder name",
                None,
            ));
        }
        let re = glob(pattern).map_err(|reason| self.error(format!("bad pattern `{src}`: {reason}"), "here", None))?;
        let Some(folder) = view.find(dir, true)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (child_name, child) in view.children(&folder)? {
            if re.is_match(&child_name) {
                let path = format!("{dir}/{child_name}");
                out.extend(view.find(&path, true)?.or(Some(child)));
            }
        }
        Ok(out)
    }

    /// `chown=` as numbers, names resolved in the stage's own files.
    fn owner(&self, chown: Option<&str>, view: &MergedView) -> Result<(u32, u32), ExecError> {
        let Some(spec) = chown else { return Ok((0, 0)) };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = if user.parse::<u32>().is_ok() {
            String::new()
        } else {
            view.read_to_string("/etc/passwd")?.unwrap_or_default()
        };
        let (uid, primary) = match user.parse::<u32>() {
            // As Docker: a numeric user alone is also the group.
            Ok(uid) => (uid, None),
            Err(_) => {
                let fields = lookup(&passwd, |f| f.first() == Some(&user)).ok_or_else(|| {
                    self.error(
                        format!("user `{user}` is not in the stage's /etc/passwd"),
                        "unknown user",
                        Some("use a numeric id (chown=\"1000:1000\"), or create the user first".to_owned()),
                    )
                })?;
                let uid = fields.get(2).and_then(|u| u.parse().ok()).unwrap_or(0);
                (uid, fields.get(3).and_then(|g| g.parse().ok()))
            }
        };
        let gid = match group {
            None => primary.unwrap_or(uid),
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let groups = view.read_to_string("/etc/group")?.unwrap_or_default();
                    lookup(&groups, |f| f.first() == Some(&g)).and_then(|f| f.get(2)?.parse().ok()).ok_or_else(
                        || {
                            self.error(
                                format!("group `{g}` is not in the stage's /etc/group"),
                                "unknown group",
                                Some("use a numeric id, or create the group first".to_owned()),
                            )
                        },
                    )?
                }
            },
        };
        Ok((uid, gid))
    }

    /// Every folder above a copied entry: as the stage has it, or 0755 root.
    fn add_parents(items: &mut BTreeMap<String, Item>, parent: &MergedView) -> Result<(), ExecError> {
        let mut missing = Vec::new();
        for path in items.keys() {
            let mut at = path.as_str();
            while let Some((up, _)) = at.rsplit_once('/') {
                if !items.contains_key(up) && !missing.iter().any(|m: &String| m == up) {
                    missing.push(up.to_owned());
                }
                at = up;
            }
        }
        for dir in missing {
            let (mode, uid, gid) = match parent.find(&dir, true)? {
                Some(f) if f.meta.is_dir() => (f.meta.mode() & 0o7777, f.meta.uid(), f.meta.gid()),
                _ => (0o755, 0, 0),
            };
            let entry = Entry { path: dir.clone(), kind: EntryKind::Dir, mode, uid, gid, xattrs: BTreeMap::new() };
            items.insert(dir, Item { entry, content: Content::None, link: None });
        }
        Ok(())
    }
}

/// Writes entries, in layer order, into one layer in the store.
pub(super) fn write_layer(build: &Build<'_>, mut sorted: Vec<Item>) -> Result<LayerInfo, ExecError> {
    let store = &build.engine.store;
    // Uncompressed: a step's layer is read by the steps after it; it is
    // compressed only if an exported image carries it (`compress_result`).
    let options = LayerOptions { compression: Compression::None, level: None, epoch: build.options.epoch };
    let mut layer = LayerWriter::new(store.blob_writer()?, &options);
    crate::layer::sort_entries_by(&mut sorted, |item| &item.entry);
    let mut linked: HashMap<(u64, u64), String> = HashMap::new();
    for mut item in sorted {
        if let Some(key) = item.link {
            if let Some(first) = linked.get(&key) {
                item.entry.kind = EntryKind::Hardlink { target: first.clone() };
                layer.append(&item.entry, None)?;
                continue;
            }
            linked.insert(key, item.entry.path.clone());
        }
        match &item.content {
            Content::None => layer.append(&item.entry, None)?,
            Content::Snapshot(path) => {
                let mut file = open(path)?;
                layer.append(&item.entry, Some(&mut file))?;
            }
            Content::Context { path, digest, size } => {
                let file = open(path)?;
                let now = file.metadata().map_err(|source| ExecError::Io { path: path.clone(), source })?.len();
                if now != *size {
                    return Err(ExecError::ContextChanged { path: path.clone() });
                }
                let mut reader = Blake3Reader { inner: file, hasher: blake3::Hasher::new() };
                layer.append(&item.entry, Some(&mut reader))?;
                if reader.hasher.finalize().as_bytes() != digest {
                    return Err(ExecError::ContextChanged { path: path.clone() });
                }
            }
        }
    }
    let (writer, info) = layer.finish()?;
    writer.commit(Some(&info.digest))?;
    Ok(info)
}

fn open(path: &Path) -> Result<std::fs::File, ExecError> {
    std::fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ExecError::ContextChanged { path: path.to_path_buf() },
        _ => ExecError::Io { path: path.to_path_buf(), source },
    })
}

struct Blake3Reader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Blake3Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Where a context entry lands: a folder root's contents go into `dest`; a
/// file root lands at `dest`, or inside it when `dest` is a folder.
fn place(dest: &str, root: &str, path: &str, root_is_dir: bool, into_dir: bool) -> String {
    if root_is_dir {
        let rel = if root == "." {
            path
        } else if path == root {
            ""
        } else {
            &path[root.len() + 1..]
        };
        return join(dest, rel);
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    if into_dir { join(dest, base) } else { dest.to_owned() }
}

fn join(dir: &str, rel: &str) -> String {
    match (dir.is_empty(), rel.is_empty()) {
        (_, true) => dir.to_owned(),
        (true, false) => rel.to_owned(),
        (false, false) => format!("{dir}/{rel}"),
    }
}

fn insert(
    items: &mut BTreeMap<String, Item>,
    path: String,
    kind: EntryKind,
    mode: u32,
    content: Content,
    link: Option<(u64, u64)>,
) {
    // The root folder itself is not an entry of a layer.
    if path.is_empty() {
        return;
    }
    let entry = Entry { path: path.clone(), kind, mode, uid: 0, gid: 0, xattrs: BTreeMap::new() };
    items.insert(path, Item { entry, content, link });
}

/// Adds a snapshot entry (file, folder, link, device) at `path`.
fn add_found(items: &mut BTreeMap<String, Item>, path: &str, f: &Found) {
    let meta = &f.meta;
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    let (kind, content, link) = if ft.is_dir() {
        (EntryKind::Dir, Content::None, None)
    } else if ft.is_file() {
        let link = (meta.nlink() > 1).then_some((meta.dev(), meta.ino()));
        (EntryKind::File { size: meta.len() }, Content::Snapshot(f.real.clone()), link)
    } else if ft.is_symlink() {
        let target = std::fs::read_link(&f.real).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        (EntryKind::Symlink { target }, Content::None, None)
    } else if ft.is_char_device() || ft.is_block_device() {
        let rdev = meta.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let (major, minor) = (u32::try_from(major).unwrap_or(0), u32::try_from(minor).unwrap_or(0));
        let kind = if ft.is_char_device() {
            EntryKind::CharDevice { major, minor }
        } else {
            EntryKind::BlockDevice { major, minor }
        };
        (kind, Content::None, None)
    } else if ft.is_fifo() {
        (EntryKind::Fifo, Content::None, None)
    } else {
        return;
    };
    insert(items, path.to_owned(), kind, mode, content, link);
    // The source's owners, kept only by a Dockerfile's `COPY --from`.
    if let Some(item) = items.get_mut(path) {
        item.entry.uid = meta.uid();
        item.entry.gid = meta.gid();
    }
    if ft.is_file()
        && let Ok(Some(cap)) = xattr::get(&f.real, "security.capability")
        && let Some(item) = items.get_mut(path)
    {
        item.entry.xattrs.insert("security.capability".to_owned(), cap);
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

/// Every entry under a host folder, parents first: path relative to it,
/// metadata (links not followed) and host path.
fn walk_host(root: &Path, rel: &str, out: &mut Vec<(String, std::fs::Metadata, PathBuf)>) -> Result<(), ExecError> {
    let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExecError::Io { path, source }
    };
    let mut names: Vec<_> = std::fs::read_dir(&dir).map_err(io(&dir))?.collect::<Result<_, _>>().map_err(io(&dir))?;
    names.sort_by_key(std::fs::DirEntry::file_name);
    for entry in names {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let real = root.join(&path);
        let meta = std::fs::symlink_metadata(&real).map_err(io(&real))?;
        let is_dir = meta.is_dir();
        out.push((path.clone(), meta, real));
        if is_dir {
            walk_host(root, &path, out)?;
        }
    }
    Ok(())
}

/// An unpacked entry as an item, with its owner.
fn add_host(items: &mut BTreeMap<String, Item>, path: &str, meta: &std::fs::Metadata, real: &Path) {
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    let (kind, content) = if ft.is_dir() {
        (EntryKind::Dir, Content::None)
    } else if ft.is_file() {
        (EntryKind::File { size: meta.len() }, Content::Snapshot(real.to_path_buf()))
    } else if ft.is_symlink() {
        let target = std::fs::read_link(real).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        (EntryKind::Symlink { target }, Content::None)
    } else {
        return; // devices and fifos in an ADD archive are left out
    };
    let link = (ft.is_file() && meta.nlink() > 1).then_some((meta.dev(), meta.ino()));
    insert(items, path.to_owned(), kind, mode, content, link);
    if let Some(item) = items.get_mut(path) {
        item.entry.uid = meta.uid();
        item.entry.gid = meta.gid();
    }
}

/// `/etc/passwd`-style line whose fields satisfy `matches`.
fn lookup<'a>(text: &'a str, matches: impl Fn(&Vec<&'a str>) -> bool) -> Option<Vec<&'a str>> {
    text.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| matches(f))
}

/// How files leave a stage for the host (artifacts, `type=local`).
///
/// What is written on the host is owned by whoever runs bake, never by the
/// image's ids (bake does not chown), and is only ever a folder, a regular
/// file or a symlink: device nodes, FIFOs and sockets are skipped with a
/// warning, as a node from an image would open the host's device of that
/// number. Setuid and setgid bits are cleared from files unless
/// `keep_setuid`: a setuid-root program from an image, copied by root, would
/// otherwise be a way to root on the host.
pub(super) struct HostOptions {
    pub(super) keep_setuid: bool,
    /// What is being written, for the warning: "artifact `bin`".
    pub(super) what: String,
}

/// The setuid and setgid bits.
const SET_ID_BITS: u32 = 0o6000;

/// How many skipped paths the warning lists.
const SKIPPED_SHOWN: usize = 5;

/// Writes `path` of a stage's filesystem to `dest` on the host: a file to
/// `dest` (or into it, when it is a folder), a folder's contents into `dest`.
pub(super) fn export_path(
    build: &Build<'_>,
    result: &FsResult,
    path: &str,
    dest: &Path,
    span: Span,
    options: &HostOptions,
) -> Result<(), ExecError> {
    let view = build.engine.snapshots.view(&result.layers)?;
    let Some(found) = view.find(path, true)? else {
        return Err(ExecError::step(
            build.ws,
            span,
            format!("`{path}` does not exist in the stage"),
            "not found",
            None,
        ));
    };
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ExecError::Io { path: p, source }
    };
    let mut skipped = Vec::new();
    if found.meta.is_dir() {
        std::fs::create_dir_all(dest).map_err(io(dest))?;
        let mut all = Vec::new();
        view.walk(&found, &mut all)?;
        for (rel, f) in all {
            if !write_host(&dest.join(&rel), &f, options)? {
                skipped.push(format!("/{}", f.path));
            }
        }
    } else {
        let target = if dest.is_dir() {
            dest.join(path.rsplit('/').next().unwrap_or("file"))
        } else {
            if let Some(p) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            dest.to_path_buf()
        };
        if !write_host(&target, &found, options)? {
            skipped.push(format!("/{}", found.path));
        }
    }
    if !skipped.is_empty() {
        let more = skipped.len().saturating_sub(SKIPPED_SHOWN);
        let mut list = skipped.iter().take(SKIPPED_SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
        if more > 0 {
            let _ = write!(list, " and {more} more");
        }
        build.events.event(super::Event::Warning {
            message: format!(
                "{}: skipped {} that bake never writes on the host (device nodes, FIFOs, sockets): {list}",
                options.what,
                crate::lang::plural(skipped.len(), "special file"),
            ),
        });
    }
    Ok(())
}

/// One entry to the host, replacing what is there; files through a
/// temporary file and a rename. Returns false for a special file, which is
/// not written.
fn write_host(target: &Path, f: &Found, options: &HostOptions) -> Result<bool, ExecError> {
    let io = |source| ExecError::Io { path: target.to_path_buf(), source };
    let ft = f.meta.file_type();
    if ft.is_dir() {
        std::fs::create_dir_all(target).map_err(io)?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(f.meta.mode() & 0o7777)).map_err(io)?;
    } else if ft.is_symlink() {
        let link = std::fs::read_link(&f.real).map_err(io)?;
        let _ = std::fs::remove_file(target);
        std::os::unix::fs::symlink(link, target).map_err(io)?;
    } else if ft.is_file() {
        let dir = target.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let mut src = std::fs::File::open(&f.real).map_err(io)?;
        std::io::copy(&mut src, &mut tmp).map_err(io)?;
        let mut mode = f.meta.mode() & 0o7777;
        if !options.keep_setuid {
            mode &= !SET_ID_BITS;
        }
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
        tmp.persist(target).map_err(|e| io(e.error))?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_follows_docker_copy() {
        // A folder's contents go into the destination.
        assert_eq!(place("app", "src", "src/main.go", true, false), "app/main.go");
        assert_eq!(place("app", "src", "src", true, false), "app");
        assert_eq!(place("app", ".", "a/b", true, false), "app/a/b");
        // A file lands at the destination, or inside it when it is a folder.
        assert_eq!(place("usr/bin/app", "out/app", "out/app", false, false), "usr/bin/app");
        assert_eq!(place("usr/bin", "out/app", "out/app", false, true), "usr/bin/app");
        assert_eq!(place("", "app", "app", false, true), "app");
    }
}
