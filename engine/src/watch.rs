//! `bake watch`: which file changes matter, and when a burst of them is over.
//!
//! # What is watched
//!
//! A [`WatchSet`] is computed from a plan: the workspace's own files
//! (`build.kdl` and every included file), and for every context `copy` the
//! selected targets need, its context folder, the sources it names and its
//! `exclude=` patterns, and the context's ignore files. A change is
//! *relevant* when it is one of the workspace files, an ignore file at a
//! context's root, or a path a `copy` source covers (the source itself,
//! something below it, or a match of its glob) that the ignore rules and the
//! copy's excludes keep. So a file no target reads, the store, `--output`
//! folders, `.git` and editors' swap and backup files never trigger a build.
//!
//! # Events
//!
//! Context folders are watched recursively with inotify (notify's
//! `RecommendedWatcher`); when the kernel's watch limit is hit, a polling
//! watcher takes over. notify can miss the events of files made in a folder
//! it has just been told about (notify-rs/notify#727), but the folder's own
//! creation is an event, and every build walks its contexts from scratch, so
//! no change is lost, only coalesced.
//!
//! [`Watcher::next_batch`] waits for a relevant event, then keeps collecting
//! until no relevant event came for the quiet period (an editor's save is a
//! few events within milliseconds; a `git checkout` a stream of them), or
//! until a maximum delay, so a process that never stops writing still gets
//! builds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use miette::Diagnostic;
use notify::Watcher as _;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::context::IGNORE_FILES;
use crate::context::ignore::Rules;
use crate::graph::{Op, Plan};
use crate::lang::{CopySource, Workspace};

/// Errors setting up the watch.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum WatchError {
    #[error("cannot watch {}", path.display())]
    #[diagnostic(code(bake::watch::notify))]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// What one context contributes.
#[derive(Debug, Clone)]
struct ContextWatch {
    root: PathBuf,
    /// `.dockerignore` then `.bakeignore`.
    ignore: Rules,
    /// Each copy's sources and excludes; a source of `.` covers everything.
    copies: Vec<(Rules, bool, Rules)>,
}

/// The paths whose changes invalidate a build of the selected targets.
#[derive(Debug, Clone)]
pub struct WatchSet {
    files: BTreeSet<PathBuf>,
    contexts: Vec<ContextWatch>,
    /// Never relevant, even inside a context (the store, outputs).
    excluded: Vec<PathBuf>,
}

impl WatchSet {
    /// The watch set of `plan` (its needed nodes) over `ws`. `excluded`
    /// folders never trigger (the store, output folders).
    pub fn new(ws: &Workspace, plan: &Plan, excluded: &[PathBuf]) -> Self {
        let files = ws.files.iter().map(|f| absolute(&f.path)).collect();
        let mut contexts: Vec<ContextWatch> = Vec::new();
        for n in plan.needed() {
            let Op::Copy { stage, copy, .. } = &plan.graph[n].op else { continue };
            if copy.from != CopySource::Context {
                continue;
            }
            let root = absolute(&ws.stages[*stage].context);
            let everything = copy.sources.iter().any(|s| matches!(crate::context::ignore::clean(s).as_str(), "." | ""));
            let sources = Rules::from_patterns(copy.sources.iter().map(String::as_str)).unwrap_or_default();
            let exclude = Rules::from_patterns(copy.exclude.iter().map(String::as_str)).unwrap_or_default();
            let i = match contexts.iter().position(|c| c.root == root) {
                Some(i) => i,
                None => {
                    contexts.push(ContextWatch { ignore: ignore_rules(&root, &ws.boundary), root, copies: Vec::new() });
                    contexts.len() - 1
                }
            };
            contexts[i].copies.push((sources, everything, exclude));
        }
        // Artifacts are written by every build: never a reason for the next.
        let excluded = excluded.iter().chain(ws.artifacts.iter().map(|a| &a.dest)).map(|p| absolute(p)).collect();
        Self { files, contexts, excluded }
    }

    /// Only these files (a workspace that does not load: its files).
    pub fn files(files: &[PathBuf]) -> Self {
        Self { files: files.iter().map(|f| absolute(f)).collect(), contexts: Vec::new(), excluded: Vec::new() }
    }

    /// Folders to watch recursively, and single files' folders.
    fn watch_roots(&self) -> Vec<(PathBuf, bool)> {
        let mut roots: Vec<(PathBuf, bool)> = self.contexts.iter().map(|c| (c.root.clone(), true)).collect();
        for f in &self.files {
            if let Some(dir) = f.parent()
                && !roots.iter().any(|(r, recursive)| *recursive && dir.starts_with(r))
                && !roots.iter().any(|(r, _)| r == dir)
            {
                roots.push((dir.to_path_buf(), false));
            }
        }
        roots
    }

    /// Whether a change to `path` (absolute) can change the build. The
    /// empty path stands for "events were lost": always relevant.
    pub fn relevant(&self, path: &Path) -> bool {
        if self.files.contains(path) || path.as_os_str().is_empty() {
            return true;
        }
        if self.excluded.iter().any(|e| path.starts_with(e)) || is_scratch_file(path) {
            return false;
        }
        self.contexts.iter().any(|c| {
            let Ok(rel) = path.strip_prefix(&c.root) else { return false };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel.is_empty() {
                return false;
            }
            if IGNORE_FILES.contains(&rel.as_str()) {
                return true;
            }
            if rel == ".git" || rel.starts_with(".git/") || c.ignore.is_excluded(&rel) {
                return false;
            }
            // Excludes are relative to the copied folder, which may be any
            // ancestor: a false match only costs a no-op build.
            let excluded = |exclude: &Rules| {
                let mut tail = rel.as_str();
                loop {
                    if exclude.is_excluded(tail) {
                        return true;
                    }
                    match tail.split_once('/') {
                        Some((_, rest)) => tail = rest,
                        None => return false,
                    }
                }
            };
            c.copies
                .iter()
                .any(|(sources, everything, exclude)| (*everything || sources.is_excluded(&rel)) && !excluded(exclude))
        })
    }
}

/// Editors' swap, backup and probe files.
fn is_scratch_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    matches!(extension, "swp" | "swo" | "swx" | "kate-swp")
        || name.ends_with('~')
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
        || name == "4913"
}

/// The context's ignore rules, read as a build reads them (an ignore file
/// that leads out of the workspace, or is not a regular file, is not read);
/// none when they cannot be read, since the build then reports why.
fn ignore_rules(root: &Path, boundary: &crate::lang::Boundary) -> Rules {
    crate::context::read_rules(root, boundary).unwrap_or_default()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// File events from the folders of a [`WatchSet`].
pub struct Watcher {
    _inner: Box<dyn notify::Watcher + Send>,
    rx: UnboundedReceiver<(Instant, PathBuf)>,
    roots: Vec<(PathBuf, bool)>,
}

impl Watcher {
    /// Starts watching what `set` needs.
    pub fn start(set: &WatchSet) -> Result<Self, WatchError> {
        let (tx, rx) = unbounded_channel();
        let handler = move |res: notify::Result<notify::Event>| {
            let now = Instant::now();
            match res {
                // Events were lost (the kernel's queue overflowed) or the
                // watcher failed: anything may have changed.
                Ok(event) if event.need_rescan() => {
                    let _ = tx.send((now, PathBuf::new()));
                }
                Err(_) => {
                    let _ = tx.send((now, PathBuf::new()));
                }
                Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
                Ok(event) => {
                    for p in event.paths {
                        let _ = tx.send((now, p));
                    }
                }
            }
        };
        let roots = set.watch_roots();
        let mut watcher: Box<dyn notify::Watcher + Send> = match notify::recommended_watcher(handler.clone()) {
            Ok(w) => Box::new(w),
            Err(e) => return Err(WatchError::Notify { path: PathBuf::from("."), source: e }),
        };
        for (root, recursive) in &roots {
            let mode = if *recursive { notify::RecursiveMode::Recursive } else { notify::RecursiveMode::NonRecursive };
            if let Err(e) = watcher.watch(root, mode) {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    // inotify's limit: poll instead.
                    let config = notify::Config::default().with_poll_interval(Duration::from_millis(250));
                    let mut poll = notify::PollWatcher::new(handler, config)
                        .map_err(|source| WatchError::Notify { path: root.clone(), source })?;
                    for (root, recursive) in &roots {
                        let mode = if *recursive {
                            notify::RecursiveMode::Recursive
                        } else {
                            notify::RecursiveMode::NonRecursive
                        };
                        poll.watch(root, mode).map_err(|source| WatchError::Notify { path: root.clone(), source })?;
                    }
                    return Ok(Self { _inner: Box::new(poll), rx, roots });
                }
                return Err(WatchError::Notify { path: root.clone(), source: e });
            }
        }
        Ok(Self { _inner: watcher, rx, roots })
    }

    /// Whether this watcher covers the folders `set` needs.
    pub fn covers(&self, set: &WatchSet) -> bool {
        let mut want = set.watch_roots();
        let mut have = self.roots.clone();
        want.sort();
        have.sort();
        want == have
    }

    /// Waits for the next burst of relevant changes: returns when no relevant
    /// event came for `quiet` (or `max` after the first), with the time of
    /// the first event and the changed paths. `None` when the watcher stopped.
    pub async fn next_batch(
        &mut self,
        set: &WatchSet,
        quiet: Duration,
        max: Duration,
    ) -> Option<(Instant, BTreeSet<PathBuf>)> {
        let (first, path) = loop {
            let (at, path) = self.rx.recv().await?;
            if set.relevant(&path) {
                break (at, path);
            }
        };
        let mut paths = BTreeSet::from([path]);
        let deadline = tokio::time::Instant::from_std(first + max);
        loop {
            let wait = tokio::time::sleep(quiet);
            tokio::select! {
                next = self.rx.recv() => match next {
                    Some((_, p)) if set.relevant(&p) => { paths.insert(p); }
                    Some(_) => {}
                    None => break,
                },
                () = wait => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Some((first, paths))
    }
}

impl WatchError {
    /// Whose the error is: the kernel's (inotify limits, permissions).
    pub fn tier(&self) -> crate::Tier {
        crate::Tier::Environment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_copy_reads_is_relevant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join(".dockerignore"), "**/*.log\n").expect("write");
        std::fs::create_dir_all(root.join("templates")).expect("mkdir");
        let kdl = r#"
image "app" from="scratch" {
    copy "templates" to="/templates" exclude="*.bak"
    copy "main.go" to="/src/"
}
"#;
        std::fs::write(root.join("build.kdl"), kdl).expect("write");
        let ws = crate::lang::load(&root.join("build.kdl"), &crate::lang::LoadOptions::default()).expect("loads");
        let plan = Plan::build(&ws, &[]).expect("plans");
        let set = WatchSet::new(&ws, &plan, &[root.join("out")]);
        let root = absolute(root);
        assert!(set.relevant(&root.join("build.kdl")));
        assert!(set.relevant(&root.join("templates/index.html")));
        assert!(set.relevant(&root.join("templates/new/page.html")));
        assert!(set.relevant(&root.join("main.go")));
        assert!(set.relevant(&root.join(".dockerignore")));
        assert!(!set.relevant(&root.join("README.md")));
        assert!(!set.relevant(&root.join("templates/debug.log")));
        assert!(!set.relevant(&root.join("templates/old.bak")));
        assert!(!set.relevant(&root.join("templates/.index.html.swp")));
        assert!(!set.relevant(&root.join("templates/index.html~")));
        assert!(!set.relevant(&root.join("out/templates/x")));
        assert!(!set.relevant(&root.join(".git/index")));
    }
}
