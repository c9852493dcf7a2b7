//! The build context: which files a `copy` reads, and their digests.
//!
//! # How it works
//!
//! [`Context::open`] walks the context folder once, in parallel, keeping what
//! the ignore rules keep (`.dockerignore`, then `.bakeignore`, with Docker's own
//! matching rules: see [`ignore`]). The walk only stats: it records each
//! entry's kind, size, mode, mtime, ctime and inode, never following a
//! symlink.
//!
//! The walk is merged with the context's *file index* (`$BAKE_HOME/index/`),
//! which remembers the stat data each file's digest was computed under. A file
//! whose stat data is unchanged takes its digest from the index; the others
//! are hashed (blake3) only when a `copy` selects them. So a build where
//! nothing changed reads no file at all, and a build where one file changed
//! reads one.
//!
//! [`Context::select`] resolves a `copy`'s sources (paths or globs) and
//! `exclude=` patterns to a [`Selection`], whose digest covers exactly the
//! selected entries: path, kind, permission bits, content digest or link
//! target. Nothing machine-specific enters it, so the same tree gives the
//! same digest on every machine, and touching a file changes nothing.
//!
//! # Racy entries
//!
//! A file written in the same clock tick as the walk that stat'ed it could
//! change again without its mtime changing. As git does, entries modified less
//! than [`RACY_NS`] (or [`RACY_COARSE_NS`] on whole-second filesystems)
//! before the walk started are hashed but not trusted by the
//! next build: they are left out of the saved index and read again.
//!
//! # Failure
//!
//! The index is a speed-up, never a source of truth: a missing, corrupt or
//! foreign index reads as empty, and a failed save costs speed, not
//! correctness. It is written to a temporary file and renamed, so concurrent
//! builds never see half an index. A file that vanishes or keeps changing
//! while it is read is an error naming it; the next build starts over.

pub(crate) mod ignore;
mod index;
mod walk;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use miette::Diagnostic;
use rayon::prelude::*;

pub use walk::EntryKind;

use ignore::Rules;
use index::Record;
use walk::{Entry, Hashed, Walk};

/// Files modified this close to the walk's start are not trusted next time,
/// on filesystems with sub-second timestamps (the kernel's file clock ticks
/// every few milliseconds).
pub const RACY_NS: i64 = 100_000_000;
/// The same margin where timestamps look whole-second (ext3, FAT, some
/// network filesystems): an mtime with zero nanoseconds.
pub const RACY_COARSE_NS: i64 = 2_000_000_000;

/// The ignore files read at a context's root, in order (later lines win).
pub const IGNORE_FILES: [&str; 2] = [".dockerignore", ".bakeignore"];

/// Largest ignore file read, in bytes: 1 MiB is tens of thousands of
/// patterns, and bounds what a symlinked device or a generated file costs.
pub const MAX_IGNORE_FILE: u64 = 1 << 20;

/// Errors reading a build context.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ContextError {
    #[error("the build context {} does not exist or is not a folder", dir.display())]
    #[diagnostic(
        code(bake::context::missing),
        help("a stage's context is the folder of its build.kdl, or its `context=` property")
    )]
    Missing {
        dir: PathBuf,
        #[source]
        source: Option<std::io::Error>,
    },

    #[error("cannot read {}", path.display())]
    #[diagnostic(code(bake::context::io))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} has a name that is not UTF-8", path.display())]
    #[diagnostic(code(bake::context::non_utf8), help("rename it, or leave it out with .dockerignore or .bakeignore"))]
    NonUtf8 { path: PathBuf },

    #[error("{}:{line}: bad pattern `{pattern}`: {reason}", file.display())]
    #[diagnostic(code(bake::context::ignore_pattern), help("patterns follow Docker's .dockerignore rules"))]
    IgnorePattern { file: PathBuf, line: usize, pattern: String, reason: &'static str },

    #[error("bad pattern `{pattern}`: {reason}")]
    #[diagnostic(code(bake::context::pattern))]
    Pattern { pattern: String, reason: &'static str },

    #[error("no file matches `{source_path}` in the context {}", dir.display())]
    #[diagnostic(code(bake::context::no_match))]
    NoMatch {
        source_path: String,
        dir: PathBuf,
        #[help]
        help: Option<String>,
    },

    #[error("`{source_path}` leaves the build context")]
    #[diagnostic(
        code(bake::context::escape),
        help("copy sources are relative to the context folder and stay inside it")
    )]
    Escape { source_path: String },

    #[error("the ignore file {} leads outside the workspace, to {}", path.display(), resolved.display())]
    #[diagnostic(
        code(bake::context::ignore_outside),
        help(
            "an ignore file may be a symlink only to a file inside the workspace; replace it with a copy, or allow the folder with `--allow-path DIR`"
        )
    )]
    IgnoreOutside { path: PathBuf, resolved: PathBuf },

    #[error("the ignore file {} is larger than {MAX_IGNORE_FILE} bytes", path.display())]
    #[diagnostic(
        code(bake::context::ignore_too_large),
        help("an ignore file holds patterns, one a line; this one is not")
    )]
    IgnoreTooLarge { path: PathBuf },

    #[error("{} disappeared while the build was reading the context", path.display())]
    #[diagnostic(code(bake::context::vanished), help("something removed it during the build; build again"))]
    Vanished { path: PathBuf },

    #[error("{} kept changing while it was read", path.display())]
    #[diagnostic(
        code(bake::context::unstable),
        help("something is writing to it during the build; build again when it is done")
    )]
    Unstable { path: PathBuf },
}

/// A walked build context.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    entries: Vec<Entry>,
    /// Where the index lives, if it persists.
    index_path: Option<PathBuf>,
    /// Wall-clock nanoseconds when the walk started.
    walk_started_ns: i64,
    /// The index on disk no longer matches what `save_index` would write.
    dirty: AtomicBool,
    /// Files read and hashed by this context (not taken from the index).
    files_read: AtomicUsize,
}

/// What one `copy` reads from the context.
#[derive(Debug, Clone)]
pub struct Selection {
    /// blake3 over the selected entries, in path order.
    pub digest: [u8; 32],
    pub entries: Vec<Selected>,
}

impl Selection {
    /// Number of selected entries (files, folders and links).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One selected entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Relative to the context root.
    pub path: String,
    /// The source match it was selected by (a path the copy named, or a glob
    /// match), relative to the context root; `.` for the root itself.
    pub root: String,
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
    /// Content digest (blake3), for files.
    pub digest: Option<[u8; 32]>,
    /// Inode and link count, to keep hardlinked files hardlinked.
    pub ino: u64,
    pub nlink: u64,
}

impl Context {
    /// Walks `dir`, reading its ignore files, and merges the walk with the
    /// index kept in `index_dir` (none: hash everything selected). An ignore
    /// file that is a symlink must lead inside `dir`.
    pub fn open(dir: &Path, index_dir: Option<&Path>) -> Result<Self, ContextError> {
        Self::open_within(dir, index_dir, None)
    }

    /// [`Context::open`] for a context of a workspace: an ignore file that is
    /// a symlink may lead anywhere inside `boundary` (the workspace root and
    /// the allowed folders), and nowhere else.
    pub fn open_within(
        dir: &Path,
        index_dir: Option<&Path>,
        boundary: Option<&crate::lang::Boundary>,
    ) -> Result<Self, ContextError> {
        Self::open_with_ignore(dir, index_dir, boundary, None)
    }

    /// [`Context::open_within`] with `ignore_file` read in place of the
    /// context's `.dockerignore` (a Dockerfile's `NAME.dockerignore` beside
    /// it, as BuildKit reads it); `.bakeignore` still applies after it.
    pub fn open_with_ignore(
        dir: &Path,
        index_dir: Option<&Path>,
        boundary: Option<&crate::lang::Boundary>,
        ignore_file: Option<&Path>,
    ) -> Result<Self, ContextError> {
        let root = std::fs::canonicalize(dir)
            .map_err(|e| ContextError::Missing { dir: dir.to_path_buf(), source: Some(e) })?;
        if !root.is_dir() {
            return Err(ContextError::Missing { dir: dir.to_path_buf(), source: None });
        }
        let own = crate::lang::Boundary::new(&root, &[]);
        let rules = read_rules_with(&root, boundary.unwrap_or(&own), ignore_file)?;
        let index_path = index_dir
            .map(|d| d.join(format!("{}.idx", &blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex()[..32])));
        // Never walk into bake's own state when it lives inside the context.
        let skip = index_dir
            .and_then(|d| std::fs::canonicalize(d).ok())
            .and_then(|d| d.strip_prefix(&root).ok().map(|p| p.to_string_lossy().into_owned()))
            .filter(|p| !p.is_empty());
        let walk_started_ns = now_ns();
        let entries = Walk { root: &root, rules: &rules, skip: skip.as_deref() }.run()?;
        let ctx = Self {
            root,
            entries,
            index_path,
            walk_started_ns,
            dirty: AtomicBool::new(false),
            files_read: AtomicUsize::new(0),
        };
        if let Some(path) = &ctx.index_path {
            ctx.merge(&index::load(path));
        }
        Ok(ctx)
    }

    /// The canonical context folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of entries the ignore rules keep.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many files this context has read and hashed so far; the rest came
    /// from the index. A no-change build reads none.
    pub fn files_read(&self) -> usize {
        self.files_read.load(Ordering::Relaxed)
    }

    /// Takes the digests of unchanged files from the index (both sorted by path).
    fn merge(&self, records: &[Record]) {
        let mut reused = 0;
        let mut i = 0;
        for rec in records {
            while i < self.entries.len() && self.entries[i].path < rec.path {
                i += 1;
            }
            if let Some(e) = self.entries.get(i)
                && e.path == rec.path
                && e.kind == EntryKind::File
                && e.stat == rec.stat
            {
                let _ = e.hashed.set(Hashed { digest: rec.digest, indexable: true });
                reused += 1;
            }
        }
        if reused != records.len() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves a `copy`'s sources and excludes to the entries it reads, hashing
    /// the files the index does not vouch for.
    pub fn select(&self, sources: &[&str], exclude: &[&str]) -> Result<Selection, ContextError> {
        self.select_with(sources, exclude, false)
    }

    /// [`Context::select`]; with `optional`, a source that matches nothing
    /// selects nothing instead of failing (`copy ... optional=#true`).
    pub fn select_with(&self, sources: &[&str], exclude: &[&str], optional: bool) -> Result<Selection, ContextError> {
        let excludes = Rules::from_patterns(exclude.iter().copied())
            .map_err(|e| ContextError::Pattern { pattern: e.pattern, reason: e.reason })?;
        // (entry index, the root it was selected under)
        let mut picked: Vec<(usize, String)> = Vec::new();
        for source in sources {
            let source = ignore::clean(source.trim_start_matches('/'));
            if source == ".." || source.starts_with("../") {
                return Err(ContextError::Escape { source_path: source });
            }
            let roots = self.roots(&source)?;
            if roots.is_empty() && !optional {
                return Err(self.no_match(&source));
            }
            for root in roots {
                self.under(&root, &excludes, &mut picked);
            }
        }
        picked.sort_by_key(|(i, _)| *i);
        picked.dedup_by_key(|(i, _)| *i);

        picked.par_iter().try_for_each(|(i, _)| self.hash(&self.entries[*i]).map(|_| ()))?;

        let mut h = blake3::Hasher::new();
        h.update(b"bake-selection-v1\0");
        let mut entries = Vec::with_capacity(picked.len());
        for (i, root) in picked {
            let e = &self.entries[i];
            let digest = e.hashed.get().map(|x| x.digest);
            let mode = e.stat.mode & 0o7777;
            let (tag, payload): (&[u8], Vec<u8>) = match &e.kind {
                EntryKind::File => (b"f", digest.unwrap_or_default().to_vec()),
                EntryKind::Dir => (b"d", Vec::new()),
                EntryKind::Symlink(t) => (b"l", t.as_bytes().to_vec()),
            };
            for part in [e.path.as_bytes(), tag, &mode.to_le_bytes(), &payload] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part);
            }
            entries.push(Selected {
                path: e.path.clone(),
                root,
                kind: e.kind.clone(),
                mode,
                size: e.stat.size,
                digest,
                ino: e.stat.ino,
                nlink: e.nlink,
            });
        }
        Ok(Selection { digest: *h.finalize().as_bytes(), entries })
    }

    /// The entry paths a source names: itself, or what its glob matches.
    fn roots(&self, source: &str) -> Result<Vec<String>, ContextError> {
        if source == "." {
            return Ok(vec![".".to_owned()]);
        }
        if ignore::is_glob(source) {
            let re =
                ignore::glob(source).map_err(|reason| ContextError::Pattern { pattern: source.to_owned(), reason })?;
            return Ok(self.entries.iter().filter(|e| re.is_match(&e.path)).map(|e| e.path.clone()).collect());
        }
        // A literal path: an entry, or a folder whose own entry was ignored
        // but whose re-included children were kept.
        let found = self.find(source).is_some() || self.first_under(source).is_some();
        Ok(if found { vec![source.to_owned()] } else { Vec::new() })
    }

    /// Adds `root` and everything below it that `excludes` keeps.
    fn under(&self, root: &str, excludes: &Rules, picked: &mut Vec<(usize, String)>) {
        let keep = |path: &str| -> bool {
            if excludes.is_empty() {
                return true;
            }
            let rel = if root == "." {
                path
            } else if path == root {
                root.rsplit('/').next().unwrap_or(root)
            } else {
                &path[root.len() + 1..]
            };
            !excludes.is_excluded(rel)
        };
        if root == "." {
            picked
                .extend((0..self.entries.len()).filter(|&i| keep(&self.entries[i].path)).map(|i| (i, root.to_owned())));
            return;
        }
        if let Some(i) = self.find(root)
            && keep(root)
        {
            picked.push((i, root.to_owned()));
        }
        if let Some(start) = self.first_under(root) {
            let prefix = format!("{root}/");
            for (i, e) in self.entries.iter().enumerate().skip(start) {
                if !e.path.starts_with(&prefix) {
                    break;
                }
                if keep(&e.path) {
                    picked.push((i, root.to_owned()));
                }
            }
        }
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.entries.binary_search_by(|e| e.path.as_str().cmp(path)).ok()
    }

    /// Index of the first entry below `dir`, if any. Strings that share a
    /// prefix are contiguous in sorted order, so the entries below `dir`
    /// start at the lower bound of `dir/` and run while the prefix holds.
    fn first_under(&self, dir: &str) -> Option<usize> {
        let prefix = format!("{dir}/");
        let start = self.entries.partition_point(|e| e.path.as_str() < prefix.as_str());
        self.entries.get(start).filter(|e| e.path.starts_with(&prefix)).map(|_| start)
    }

    fn no_match(&self, source: &str) -> ContextError {
        let on_disk =
            if ignore::is_glob(source) { None } else { std::fs::symlink_metadata(self.root.join(source)).ok() };
        let ignore_files: Vec<&str> =
            IGNORE_FILES.into_iter().filter(|name| self.root.join(name).symlink_metadata().is_ok()).collect();
        let through_link = source
            .match_indices('/')
            .map(|(i, _)| &source[..i])
            .find(|p| self.find(p).is_some_and(|i| matches!(self.entries[i].kind, EntryKind::Symlink(_))));
        let help = if let Some(link) = through_link {
            Some(format!("`{link}` is a symbolic link; bake does not follow links inside the context"))
        } else if let Some(kind) = on_disk.as_ref().and_then(|m| special_kind(m.file_type())) {
            Some(format!(
                "`{source}` is {kind}: a build context holds only files, folders and symbolic links, so bake leaves \
                 it out; copy a regular file instead"
            ))
        } else if on_disk.is_some() && !ignore_files.is_empty() {
            Some(format!("it exists, but {} leaves it out of the context", ignore_files.join(" or ")))
        } else if on_disk.is_some() {
            Some("it exists, but is not part of the context".to_owned())
        } else {
            crate::lang::did_you_mean(source, self.entries.iter().map(|e| e.path.as_str()))
                .map(|p| format!("did you mean `{p}`?"))
        };
        ContextError::NoMatch { source_path: source.to_owned(), dir: self.root.clone(), help }
    }

    /// A file's digest: from the index, or read now.
    fn hash(&self, e: &Entry) -> Result<Option<[u8; 32]>, ContextError> {
        if e.kind != EntryKind::File {
            return Ok(None);
        }
        if let Some(h) = e.hashed.get() {
            return Ok(Some(h.digest));
        }
        let path = self.root.join(&e.path);
        let hashed = hash_file(&path, &e.stat)?;
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
        Ok(Some(e.hashed.get_or_init(|| hashed).digest))
    }

    /// Writes the index if this context learned anything. Racy entries (see
    /// the module docs) are left out.
    pub fn save_index(&self) -> Result<(), ContextError> {
        let Some(path) = &self.index_path else {
            return Ok(());
        };
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let started = self.walk_started_ns;
        let records: Vec<Record> = self
            .entries
            .iter()
            .filter_map(|e| {
                let h = e.hashed.get()?;
                (h.indexable && settled(&e.stat, started)).then(|| Record {
                    path: e.path.clone(),
                    stat: e.stat,
                    digest: h.digest,
                })
            })
            .collect();
        index::save(path, &records).map_err(|source| ContextError::Io { path: path.clone(), source })?;
        self.dirty.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// Whether a file's stat data was set long enough before `started` that a
/// later change must show in it.
fn settled(stat: &index::Stat, started: i64) -> bool {
    let margin = if stat.mtime_ns % 1_000_000_000 == 0 { RACY_COARSE_NS } else { RACY_NS };
    let horizon = started.saturating_sub(margin);
    stat.mtime_ns < horizon && stat.ctime_ns < horizon
}

/// The rules of a context's ignore files. Each must be a regular file, or a
/// symlink to one inside `boundary`: a symlink out of the project would
/// otherwise be read, and its lines echoed in "bad pattern" errors.
pub(crate) fn read_rules(root: &Path, boundary: &crate::lang::Boundary) -> Result<Rules, ContextError> {
    read_rules_with(root, boundary, None)
}

/// [`read_rules`], with `dockerignore` (when given) read instead of the
/// context's `.dockerignore`.
pub(crate) fn read_rules_with(
    root: &Path,
    boundary: &crate::lang::Boundary,
    dockerignore: Option<&Path>,
) -> Result<Rules, ContextError> {
    let mut rules = Rules::default();
    for name in IGNORE_FILES {
        let file = match dockerignore {
            Some(own) if name == ".dockerignore" => own.to_path_buf(),
            _ => root.join(name),
        };
        match std::fs::symlink_metadata(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ContextError::Io { path: file, source: e }),
            Ok(meta) if meta.file_type().is_symlink() => {
                if let crate::lang::Resolved::Outside(resolved) = boundary.check(&file) {
                    return Err(ContextError::IgnoreOutside { path: file, resolved });
                }
            }
            Ok(_) => {}
        }
        if std::fs::metadata(&file).is_ok_and(|m| !m.is_file()) {
            return Err(ContextError::Io {
                path: file,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&file)
            .and_then(|f| f.take(MAX_IGNORE_FILE + 1).read_to_end(&mut bytes))
            .and_then(|_| String::from_utf8(std::mem::take(&mut bytes)).map_err(std::io::Error::other));
        let text = match read {
            Ok(t) if t.len() as u64 > MAX_IGNORE_FILE => return Err(ContextError::IgnoreTooLarge { path: file }),
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ContextError::Io { path: file, source: e });
            }
        };
        let parsed = Rules::parse_file(&text).map_err(|(line, e)| ContextError::IgnorePattern {
            file: file.clone(),
            line,
            pattern: e.pattern,
            reason: e.reason,
        })?;
        rules.extend(parsed);
    }
    Ok(rules)
}

/// Reads and hashes a file, checking on the open descriptor that it did not
/// change while being read (retried a few times).
fn hash_file(path: &Path, walked: &index::Stat) -> Result<Hashed, ContextError> {
    const ATTEMPTS: usize = 3;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => ContextError::Vanished { path: path.to_path_buf() },
        _ => ContextError::Io { path: path.to_path_buf(), source: e },
    };
    for _ in 0..ATTEMPTS {
        let mut file = std::fs::File::open(path).map_err(io)?;
        let before = walk::stat(&file.metadata().map_err(io)?);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let after = walk::stat(&file.metadata().map_err(io)?);
        if before == after {
            return Ok(Hashed { digest: *hasher.finalize().as_bytes(), indexable: after == *walked });
        }
    }
    Err(ContextError::Unstable { path: path.to_path_buf() })
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What a file that the context leaves out is, for messages: `a FIFO`.
fn special_kind(ft: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("a device node")
    } else {
        None
    }
}

impl ContextError {
    /// Whose the error is: the files named, or the disk they are on (and
    /// whoever edits them during the build).
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::Io { .. } | Self::Vanished { .. } | Self::Unstable { .. } => crate::Tier::Environment,
            Self::Missing { .. }
            | Self::NonUtf8 { .. }
            | Self::IgnorePattern { .. }
            | Self::Pattern { .. }
            | Self::NoMatch { .. }
            | Self::Escape { .. }
            | Self::IgnoreOutside { .. }
            | Self::IgnoreTooLarge { .. } => crate::Tier::Input,
        }
    }
}

#[cfg(test)]
mod tests;
