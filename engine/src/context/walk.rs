//! A parallel walk of a context folder: every entry the ignore rules keep,
//! with its stat data, symlinks never followed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::ContextError;
use super::ignore::Rules;
use super::index::Stat;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link and its target, as written (never followed).
    Symlink(String),
}

/// A file's content digest and whether it may go into the index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hashed {
    pub(crate) digest: [u8; 32],
    /// False when the file changed between the walk and the read: the digest
    /// is right for this build but the walk's stat data does not describe it.
    pub(crate) indexable: bool,
}

/// One entry of the context.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Relative to the context root, `/`-separated.
    pub(crate) path: String,
    pub(crate) kind: EntryKind,
    pub(crate) stat: Stat,
    /// Hard link count (not part of the index: it only finds hardlinks).
    pub(crate) nlink: u64,
    /// Files only: set from the index when the stat data matches, else when
    /// first selected.
    pub(crate) hashed: OnceLock<Hashed>,
}

/// What to leave out of the walk besides the ignore rules.
pub(crate) struct Walk<'a> {
    pub(crate) root: &'a Path,
    pub(crate) rules: &'a Rules,
    /// A folder (relative) never to enter: bake's own state, if it lives in
    /// the context.
    pub(crate) skip: Option<&'a str>,
}

impl Walk<'_> {
    /// Every kept entry, sorted by path.
    pub(crate) fn run(&self) -> Result<Vec<Entry>, ContextError> {
        let mut entries = self.dir("")?;
        entries.par_sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    fn dir(&self, rel: &str) -> Result<Vec<Entry>, ContextError> {
        let dir = if rel.is_empty() { self.root.to_path_buf() } else { self.root.join(rel) };
        let io = |e: std::io::Error| ContextError::Io { path: dir.clone(), source: e };
        let reader = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            // A folder removed after its parent was listed is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(io(e)),
        };
        let mut entries = Vec::new();
        let mut subdirs = Vec::new();
        for item in reader {
            let item = item.map_err(io)?;
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                return Err(ContextError::NonUtf8 { path: dir.join(&name) });
            };
            let path = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
            if self.skip == Some(path.as_str()) {
                continue;
            }
            let meta = match item.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ContextError::Io { path: self.root.join(&path), source: e });
                }
            };
            let excluded = self.rules.is_excluded(&path);
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                if excluded && !self.rules.may_reinclude_below(&path) {
                    continue;
                }
                subdirs.push(path.clone());
                if excluded {
                    continue;
                }
                EntryKind::Dir
            } else if excluded {
                continue;
            } else if ft.is_file() {
                EntryKind::File
            } else if ft.is_symlink() {
                let target = std::fs::read_link(self.root.join(&path))
                    .map_err(|e| ContextError::Io { path: self.root.join(&path), source: e })?;
                let Some(target) = target.to_str() else {
                    return Err(ContextError::NonUtf8 { path: self.root.join(&path) });
                };
                EntryKind::Symlink(target.to_owned())
            } else {
                // Sockets, FIFOs and devices have no content to copy.
                continue;
            };
            entries.push(Entry { path, kind, stat: stat(&meta), nlink: meta.nlink(), hashed: OnceLock::new() });
        }
        let nested: Vec<Result<Vec<Entry>, ContextError>> = subdirs.par_iter().map(|d| self.dir(d)).collect();
        for n in nested {
            entries.extend(n?);
        }
        Ok(entries)
    }
}

pub(crate) fn stat(meta: &std::fs::Metadata) -> Stat {
    Stat {
        size: meta.size(),
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
        ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
        ino: meta.ino(),
        mode: meta.mode(),
    }
}
