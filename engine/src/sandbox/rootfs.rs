//! Where things are mounted in the container, worked out before it starts.
//!
//! Mount targets (`/dev`, `/proc`, `/etc/hosts`, caches, secrets) are looked
//! up in the merged view of the lower folders, following symbolic links
//! *inside* the view, so an image whose `/root` links to `/host/...` cannot
//! make bake mount over a host folder. What is missing is created on the
//! side, never in the step's upper folder:
//!
//! - overlay backend: in a "skeleton" folder mounted as the topmost lower
//!   layer. It holds only the mountpoints and copies of the folders above
//!   them (same mode, owner and times as in the image), so the container sees
//!   the same tree plus the mountpoints, and the upper folder sees nothing.
//! - copy backend: directly in the copied root filesystem; the diff knows
//!   them and leaves them out.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::snapshot::MergedView;

/// How many symbolic links one lookup may follow.
const MAX_LINKS: usize = 40;

/// A mount target resolved in the view.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Canonical components of the part that exists (all folders, except
    /// possibly the last when nothing is missing).
    pub(crate) existing: Vec<String>,
    /// Components to create below it.
    pub(crate) missing: Vec<String>,
    /// For an existing target: whether it is a folder.
    pub(crate) is_dir: Option<bool>,
}

impl Resolved {
    /// The target relative to the container's root.
    pub(crate) fn relative(&self) -> PathBuf {
        self.existing.iter().chain(&self.missing).collect()
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect()
}

/// Resolves the absolute `target` in `view`, symlinks and `..` included, as
/// the kernel would inside the container.
pub(crate) fn resolve(view: &MergedView, target: &str) -> Result<Resolved, String> {
    let mut pending: Vec<String> = components(target).into_iter().rev().collect();
    let mut existing: Vec<String> = Vec::new();
    let mut links = 0;
    let mut is_dir = Some(true);
    while let Some(name) = pending.pop() {
        if name == ".." {
            existing.pop();
            continue;
        }
        let rel = existing.iter().chain(std::iter::once(&name)).cloned().collect::<Vec<_>>().join("/");
        let found = view.find(&rel, false).map_err(|e| e.to_string())?;
        let Some(found) = found else {
            // Missing from here on: the rest is created, `..` taken lexically.
            let mut missing = vec![name];
            while let Some(next) = pending.pop() {
                if next == ".." {
                    if missing.pop().is_none() || missing.is_empty() {
                        return Err(format!("`{target}` goes up out of a folder the image does not have"));
                    }
                } else {
                    missing.push(next);
                }
            }
            return Ok(Resolved { existing, missing, is_dir: None });
        };
        if found.meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("too many levels of symbolic links in `{target}`"));
            }
            let link = std::fs::read_link(&found.real).map_err(|e| e.to_string())?;
            let link = link.to_string_lossy();
            if link.starts_with('/') {
                existing.clear();
            }
            pending.extend(components(&link).into_iter().rev());
            continue;
        }
        let dir = found.meta.is_dir();
        if !dir && !pending.is_empty() {
            return Err(format!("`/{rel}` is not a folder in the image"));
        }
        existing.push(name);
        is_dir = Some(dir);
    }
    Ok(Resolved { existing, missing: Vec::new(), is_dir })
}

/// Makes `target` exist below `base` as a folder (`dir`) or an empty file,
/// creating what is missing. With `mirror`, the existing folders above it are
/// created too, with the view's metadata (the overlay skeleton); their times
/// are set by [`finish_mirror`] once everything is created. Returns the
/// created paths, relative to `base`, parents first.
pub(crate) fn create(
    base: &Path,
    target: &Resolved,
    dir: bool,
    mirror: Option<&MergedView>,
    mirrored: &mut Vec<(PathBuf, std::fs::Metadata)>,
) -> std::io::Result<Vec<String>> {
    let mut created = Vec::new();
    if target.missing.is_empty() {
        return Ok(created);
    }
    if let Some(view) = mirror {
        let mut rel = String::new();
        for name in &target.existing {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(name);
            let path = base.join(&rel);
            if std::fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            let Some(found) = view.find(&rel, false).map_err(std::io::Error::other)? else { continue };
            if !found.meta.is_dir() {
                // The target itself exists and is not a folder: nothing to mirror.
                continue;
            }
            std::fs::create_dir(&path)?;
            std::os::unix::fs::lchown(&path, Some(found.meta.uid()), Some(found.meta.gid()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(found.meta.mode() & 0o7777))?;
            mirrored.push((path, found.meta));
        }
    }
    let mut rel: PathBuf = target.existing.iter().collect();
    for (i, name) in target.missing.iter().enumerate() {
        rel.push(name);
        let path = base.join(&rel);
        let last = i + 1 == target.missing.len();
        let made = if last && !dir {
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map(drop)
        } else {
            std::fs::create_dir(&path)
        };
        match made {
            // Made for an earlier target (two caches in one new folder).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() == (dir || !last) => continue,
            other => other?,
        }
        let mode = if last && !dir { 0o644 } else { 0o755 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        std::os::unix::fs::lchown(&path, Some(0), Some(0))?;
        created.push(rel.to_string_lossy().into_owned());
    }
    Ok(created)
}

/// Gives the mirrored folders of a skeleton the image's times, deepest
/// first (creating a child changes a folder's mtime).
pub(crate) fn finish_mirror(mirrored: &mut [(PathBuf, std::fs::Metadata)]) -> std::io::Result<()> {
    mirrored.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, meta) in mirrored.iter() {
        set_times(path, meta)?;
    }
    Ok(())
}

/// Sets atime and mtime from `meta`, not following a final symlink.
pub(crate) fn set_times(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(nix::fcntl::AT_FDCWD, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(t: &Path) -> MergedView {
        let l = t.join("l");
        std::fs::create_dir_all(l.join("etc")).expect("mkdir");
        std::fs::create_dir_all(l.join("real/home")).expect("mkdir");
        std::fs::create_dir_all(l.join("run")).expect("mkdir");
        std::fs::write(l.join("etc/hosts"), "x").expect("write");
        std::os::unix::fs::symlink("/real/home", l.join("home")).expect("link");
        std::os::unix::fs::symlink("../run/resolve/stub.conf", l.join("etc/resolv.conf")).expect("link");
        std::os::unix::fs::symlink("../../../../../..", l.join("etc/up")).expect("link");
        MergedView::new(vec![l])
    }

    #[test]
    fn targets_resolve_inside_the_view() {
        let t = tempfile::tempdir().expect("tempdir");
        let v = view(t.path());
        let hosts = resolve(&v, "/etc/hosts").expect("hosts");
        assert_eq!((hosts.relative(), hosts.is_dir), (PathBuf::from("etc/hosts"), Some(false)));
        // A dangling link is followed to where it points; the rest is missing.
        let resolv = resolve(&v, "/etc/resolv.conf").expect("resolv");
        assert_eq!(resolv.existing, ["run"]);
        assert_eq!(resolv.missing, ["resolve", "stub.conf"]);
        let cache = resolve(&v, "/home/u/.cache").expect("cache");
        assert_eq!(cache.relative(), PathBuf::from("real/home/u/.cache"));
        // `..` cannot leave the view's root.
        let up = resolve(&v, "/etc/up/proc").expect("up");
        assert_eq!(up.relative(), PathBuf::from("proc"));
        assert!(resolve(&v, "/etc/hosts/x").is_err());
    }

    #[test]
    fn the_skeleton_mirrors_parent_folders() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().expect("tempdir");
        let v = view(t.path());
        std::fs::set_permissions(t.path().join("l/real"), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let skel = t.path().join("skel");
        std::fs::create_dir(&skel).expect("mkdir");
        let mut mirrored = Vec::new();
        let target = resolve(&v, "/home/u/.cache").expect("resolve");
        let created = create(&skel, &target, true, Some(&v), &mut mirrored).expect("create");
        assert_eq!(created, ["real/home/u", "real/home/u/.cache"]);
        finish_mirror(&mut mirrored).expect("times");
        let real = std::fs::metadata(skel.join("real")).expect("stat");
        let image = std::fs::metadata(t.path().join("l/real")).expect("stat");
        assert_eq!(real.mode(), image.mode());
        assert_eq!(real.mtime_nsec(), image.mtime_nsec());
        let secret = resolve(&v, "/run/secrets/x").expect("resolve");
        let created = create(&skel, &secret, false, Some(&v), &mut mirrored).expect("create");
        assert_eq!(created, ["run/secrets", "run/secrets/x"]);
        assert!(skel.join("run/secrets/x").is_file());
        // A second target in the same new folder, and the same one again.
        let other = resolve(&v, "/run/secrets/y").expect("resolve");
        let created = create(&skel, &other, false, Some(&v), &mut mirrored).expect("create");
        assert_eq!(created, ["run/secrets/y"]);
        assert!(create(&skel, &other, false, Some(&v), &mut mirrored).expect("again").is_empty());
        assert!(create(&skel, &other, true, Some(&v), &mut mirrored).is_err());
    }
}
