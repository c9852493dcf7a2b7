//! Writing images out of the store: an OCI image layout (as a folder or a
//! tar), or a `docker load` archive.
//!
//! Archives are deterministic: entries in a fixed order, mode 0644, owner
//! 0:0, mtime 0. A tar output is written to a temporary file beside its
//! destination and renamed into place, so a failed export never leaves half
//! a file where the user expects an image.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::ImageError;
use crate::oci::{Digest, media};
use crate::reference::ImageRef;
use crate::store::Store;

/// One image to export.
#[derive(Debug, Clone)]
pub struct ExportImage {
    pub manifest: Digest,
    pub media_type: String,
    pub config: Digest,
    pub layers: Vec<Digest>,
    /// References to record (OCI `ref.name` annotations, Docker `RepoTags`).
    pub tags: Vec<ImageRef>,
    /// Used when an image has no tags.
    pub name: String,
    /// The platform it is for, when its image is built for several.
    pub platform: Option<crate::platform::Platform>,
    /// The index in the store that lists it with its other platforms: an
    /// OCI layout names the index under the tags, not this manifest.
    pub index: Option<Digest>,
}

/// Where exported files go.
trait Sink {
    fn add(&mut self, path: &str, size: u64, content: &mut dyn Read) -> Result<(), ImageError>;
}

struct DirSink {
    root: PathBuf,
}

impl Sink for DirSink {
    fn add(&mut self, path: &str, _size: u64, content: &mut dyn Read) -> Result<(), ImageError> {
        let dest = self.root.join(path);
        let err = |source| ImageError::Output { path: dest.clone(), source };
        if path.starts_with("blobs/") && dest.exists() {
            return Ok(());
        }
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::copy(content, &mut tmp).map_err(err)?;
        tmp.persist(&dest).map_err(|e| err(e.error))?;
        Ok(())
    }
}

struct TarSink<W: Write> {
    tar: tar::Builder<W>,
    path: PathBuf,
    dirs: BTreeSet<String>,
}

impl<W: Write> Sink for TarSink<W> {
    fn add(&mut self, path: &str, size: u64, content: &mut dyn Read) -> Result<(), ImageError> {
        let err = |source| ImageError::Output { path: self.path.clone(), source };
        // Parent folders first, once each, as `tar` would list them.
        let mut parent = String::new();
        for part in path.split('/').take(path.split('/').count().saturating_sub(1)) {
            parent = if parent.is_empty() { part.to_owned() } else { format!("{parent}/{part}") };
            if self.dirs.insert(parent.clone()) {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                self.tar.append_data(&mut h, format!("{parent}/"), std::io::empty()).map_err(err)?;
            }
        }
        let mut h = header(tar::EntryType::Regular, 0o644, size);
        self.tar.append_data(&mut h, path, content).map_err(err)
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// An OCI image layout folder (created, or added to).
pub fn oci_dir(store: &Store, images: &[ExportImage], dest: &Path) -> Result<(), ImageError> {
    let mut sink = DirSink { root: dest.to_path_buf() };
    oci_layout(store, images, &mut sink)
}

/// An OCI image layout as a tar file.
pub fn oci_tar(store: &Store, images: &[ExportImage], dest: &Path) -> Result<(), ImageError> {
    write_tar(dest, |sink| oci_layout(store, images, sink))
}

/// A `docker load` archive: `manifest.json` with `RepoTags`, configs and
/// layers (Docker decompresses gzip layers itself on load).
pub fn docker_tar(store: &Store, images: &[ExportImage], dest: &Path) -> Result<(), ImageError> {
    write_tar(dest, |sink| {
        let mut entries = Vec::new();
        let mut written = BTreeSet::new();
        for image in images {
            for d in std::iter::once(&image.config).chain(&image.layers) {
                if written.insert(d.to_string()) {
                    blob(store, d, sink)?;
                }
            }
            let tags: Vec<String> = if image.tags.is_empty() {
                vec![format!("{}:latest", image.name)]
            } else {
                image.tags.iter().map(familiar).collect()
            };
            entries.push(json!({
                "Config": blob_path(&image.config),
                "RepoTags": tags,
                "Layers": image.layers.iter().map(blob_path).collect::<Vec<_>>(),
            }));
        }
        let manifest = serde_json::to_vec(&Value::Array(entries)).unwrap_or_default();
        sink.add("manifest.json", manifest.len() as u64, &mut manifest.as_slice())
    })
}

fn write_tar(dest: &Path, f: impl FnOnce(&mut dyn Sink) -> Result<(), ImageError>) -> Result<(), ImageError> {
    let err = |source| ImageError::Output { path: dest.to_path_buf(), source };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(err)?;
    let writer = std::io::BufWriter::with_capacity(1 << 20, tmp);
    let mut sink = TarSink { tar: tar::Builder::new(writer), path: dest.to_path_buf(), dirs: BTreeSet::new() };
    f(&mut sink)?;
    let writer = sink.tar.into_inner().map_err(err)?;
    let tmp = writer.into_inner().map_err(|e| err(e.into_error()))?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(dest).map_err(|e| err(e.error))?;
    Ok(())
}

fn oci_layout(store: &Store, images: &[ExportImage], sink: &mut dyn Sink) -> Result<(), ImageError> {
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    sink.add("oci-layout", layout.len() as u64, &mut &layout[..])?;
    let mut written = BTreeSet::new();
    let mut manifests = Vec::new();
    for image in images {
        for d in std::iter::once(&image.config).chain(&image.layers).chain(std::iter::once(&image.manifest)) {
            if written.insert(d.to_string()) {
                blob(store, d, sink)?;
            }
        }
        // A platform of an index: the index is named once, after all of
        // its manifests' blobs are written.
        let (digest, media_type) = match &image.index {
            None => (&image.manifest, image.media_type.as_str()),
            Some(index) => {
                if !written.insert(index.to_string()) {
                    continue;
                }
                blob(store, index, sink)?;
                (index, media::OCI_INDEX)
            }
        };
        let size = store.blob_len(digest).unwrap_or(0);
        // As BuildKit writes layouts: the tag in `ref.name` (what skopeo's and
        // umoci's `layout:TAG` look up), the full name beside it.
        let names: Vec<(String, String)> = if image.tags.is_empty() {
            vec![("latest".to_owned(), image.name.clone())]
        } else {
            image.tags.iter().map(|t| (t.tag.clone().unwrap_or_else(|| "latest".to_owned()), t.to_string())).collect()
        };
        for (tag, full) in names {
            manifests.push(json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": size,
                "annotations": {
                    "org.opencontainers.image.ref.name": tag,
                    "io.containerd.image.name": full,
                },
            }));
        }
    }
    let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
    let bytes = crate::oci::canonical_json(&index).unwrap_or_default();
    sink.add("index.json", bytes.len() as u64, &mut bytes.as_slice())
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.digest())
}

fn blob(store: &Store, d: &Digest, sink: &mut dyn Sink) -> Result<(), ImageError> {
    let size = store.blob_len(d).unwrap_or(0);
    let mut file = std::io::BufReader::with_capacity(1 << 20, store.open_blob(d)?);
    sink.add(&blob_path(d), size, &mut file)
}

/// A reference as Docker shows it: `busybox:latest`, `team/app:1`, or the
/// full name for other registries.
pub fn familiar(r: &ImageRef) -> String {
    let name = if r.registry == crate::reference::DEFAULT_REGISTRY {
        r.repository.strip_prefix("library/").unwrap_or(&r.repository).to_owned()
    } else {
        format!("{}/{}", r.registry, r.repository)
    };
    format!("{name}:{}", r.tag.as_deref().unwrap_or("latest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names() {
        let f = |s: &str| familiar(&ImageRef::parse(s).expect("ref"));
        assert_eq!(f("busybox"), "busybox:latest");
        assert_eq!(f("team/app:1"), "team/app:1");
        assert_eq!(f("localhost:5000/app:dev"), "localhost:5000/app:dev");
    }
}
