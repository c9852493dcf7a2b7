//! The workspace boundary: the host paths a build file may name.
//!
//! A build file is often someone else's (a pull request from a fork, a
//! vendored service), so what it can reach on the host is bounded. Every host
//! path it writes (`include`, `context=`, an artifact's `dest=`, and the
//! ignore files a context reads) must resolve inside the *workspace root*:
//! the folder of the root `build.kdl`, or the folder given with `-C`. The
//! user, not the build file, can widen that with allowed folders
//! (`--allow-path`, `BAKE_ALLOW_PATHS`, `allow-path` in bake's config).
//!
//! A path is checked where it finally leads: `..` is folded and symlinks are
//! resolved for the part that exists, so a symlink inside the project that
//! points out counts as outside. The part that does not exist yet (an
//! artifact's destination) is folded lexically, which is where it will be
//! created; a symlink there that leads nowhere (dangling, or a loop) cannot
//! be followed to a place we can check, so it counts as outside too.

use std::path::{Component, Path, PathBuf};

/// The folders a build file may name: the workspace root and the allowed ones,
/// each resolved (symlinks followed) once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary {
    root: PathBuf,
    allowed: Vec<PathBuf>,
}

/// Where a path leads, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Inside the workspace root or an allowed folder.
    Inside(PathBuf),
    /// Anywhere else (or through a symlink that cannot be followed).
    Outside(PathBuf),
}

impl Boundary {
    /// The boundary of a workspace rooted at `root`, widened by `allowed`
    /// folders (relative ones are taken from the current folder).
    pub fn new(root: &Path, allowed: &[PathBuf]) -> Self {
        let settle = |p: &Path| match resolve(&absolute(p)) {
            (path, true) => path,
            (path, false) => normalize(&path),
        };
        Self { root: settle(root), allowed: allowed.iter().map(|p| settle(p)).collect() }
    }

    /// The workspace root, resolved.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folders allowed beyond the root, resolved.
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }

    /// Whether an already resolved path is inside the boundary.
    pub fn contains(&self, resolved: &Path) -> bool {
        resolved.starts_with(&self.root) || self.allowed.iter().any(|a| resolved.starts_with(a))
    }

    /// Resolves `path` (absolute, or relative to the current folder) and says
    /// whether it stays inside.
    pub fn check(&self, path: &Path) -> Resolved {
        match resolve(&absolute(path)) {
            (resolved, true) if self.contains(&resolved) => Resolved::Inside(resolved),
            (resolved, _) => Resolved::Outside(resolved),
        }
    }
}

/// `path` made absolute against the current folder (lexically).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
    }
}

/// Resolves an absolute path: symlinks and `..` in the longest prefix that
/// exists (as the kernel would), the rest folded lexically. The flag is
/// `false` when a component of the rest is itself a symlink that could not be
/// followed (dangling or looping): where it leads is unknown.
pub(crate) fn resolve(path: &Path) -> (PathBuf, bool) {
    for ancestor in path.ancestors() {
        let Ok(mut out) = std::fs::canonicalize(ancestor) else {
            continue;
        };
        let rest = path.strip_prefix(ancestor).unwrap_or(Path::new(""));
        let mut followable = true;
        for part in rest.components() {
            match part {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(name) => {
                    out.push(name);
                    if std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
                        followable = false;
                    }
                }
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return (out, followable);
    }
    (normalize(path), true)
}

/// `.` and `..` folded lexically; `..` stops at the root.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_dotdot_are_resolved_before_the_check() {
        let outside = tempfile::tempdir().expect("tempdir");
        let ws = tempfile::tempdir().expect("tempdir");
        let root = ws.path().join("proj");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.join("out")).expect("symlink");
        std::os::unix::fs::symlink(root.join("sub"), root.join("in")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("nothing"), root.join("dangling")).expect("symlink");
        let b = Boundary::new(&root, &[]);
        let inside = |p: &str| matches!(b.check(&root.join(p)), Resolved::Inside(_));
        assert!(inside("sub/build.kdl"));
        assert!(inside("in/x/../y"));
        assert!(inside("new/dir/../file"));
        assert!(!inside("../proj2"));
        assert!(!inside("sub/../../x"));
        assert!(!inside("out"));
        assert!(!inside("out/file"));
        assert!(!inside("in/../out/x"));
        assert!(!inside("dangling"));
        assert!(!inside("/etc/shadow"));
        let widened = Boundary::new(&root, &[outside.path().to_path_buf()]);
        assert!(matches!(widened.check(&root.join("out/file")), Resolved::Inside(_)));
    }
}
