//! The layer fuzz targets: [`tar`] reads arbitrary bytes as a layer and
//! checks what the reader yields, [`unpack`] extracts them into a scratch
//! folder and checks that nothing was made or changed outside it.
//!
//! Both detect gzip and zstd by their magic numbers (a registry says which by
//! the media type) and bound the layer at [`LIMITS`], so a bomb costs
//! milliseconds, not 16 GiB.
//!
//! # Nothing outside the scratch folder
//!
//! [`unpack`] runs on a thread of its own. When it can (as root), that
//! thread unshares its file-system attributes and `chroot`s into a fresh
//! folder, `BASE`, holding only:
//!
//! ```text
//! BASE/scratch/inner      where the layer is unpacked
//! BASE/canary             a file a hardlink or write from outside would change
//! BASE/canary-dir/file    the same, one folder down
//! ```
//!
//! So every way out lands inside `BASE`: an absolute path or symlink starts
//! at `BASE`, and `..` stops there. After the layer, `BASE` must hold those
//! names and nothing else, the canaries unchanged and linked once, and
//! `scratch` nothing but `inner`. Any difference is a panic, which the fuzzer
//! reports as a crash. Without root (a replay in an unprivileged test) the
//! same checks run without the `chroot`, so they see escapes by `..` and
//! relative symlinks but not absolute paths, which an unprivileged process
//! could not write anyway.
//!
//! The `chroot` hides `/proc`, through which xattrs are set on symlinks and
//! devices: those are counted as skipped there, as on a host without `/proc`.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::layer::{Entry, EntryKind, Limits, MAX_PATH, UnpackOptions, WHITEOUT_PREFIX, entries_within};
use crate::oci::Compression;

/// How large a fuzzed layer may be: far below the real limits, so bombs and
/// huge declared sizes stop quickly.
pub const LIMITS: Limits = Limits { max_bytes: 4 << 20, max_entries: 4096 };

const CANARY: &[u8] = b"canary\n";

/// The compression the bytes announce by their magic number.
fn compression(data: &[u8]) -> Compression {
    match data {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// Reads `data` as a layer (and also as a plain tar if it looks compressed),
/// checking every entry the reader yields against [`Entry`]'s promises.
/// Panics on a broken promise; errors are fine.
pub fn tar(data: &[u8]) {
    let mut ways = vec![Compression::None];
    if compression(data) != Compression::None {
        ways.push(compression(data));
    }
    for way in ways {
        let mut buf = vec![0u8; 64 * 1024];
        let _ = entries_within(data, way, &LIMITS, |entry, content| {
            check_entry(&entry);
            let mut read = 0u64;
            loop {
                match content.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => read += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let size = match entry.kind {
                EntryKind::File { size } => size,
                _ => 0,
            };
            assert!(read <= size, "entry `{}` gave {read} bytes of content, more than its {size}", entry.path);
            Ok(())
        });
    }
}

/// A layer path as [`Entry`] promises it: relative, no empty, `.` or `..`
/// component, no `.wh.` component, not longer than Linux allows.
fn check_path(path: &str, what: &str) {
    assert!(path.len() <= MAX_PATH, "{what} of {} bytes", path.len());
    if path.is_empty() {
        return;
    }
    for component in path.split('/') {
        assert!(!matches!(component, "" | "." | ".."), "{what} `{path}` has a `{component}` component");
        assert!(!component.starts_with(WHITEOUT_PREFIX), "{what} `{path}` has a whiteout component");
        assert!(!component.contains('\0'), "{what} `{path}` has a NUL byte");
    }
}

fn check_entry(entry: &Entry) {
    check_path(&entry.path, "path");
    if entry.kind != EntryKind::Opaque {
        assert!(!entry.path.is_empty(), "an entry of kind {:?} for the layer root", entry.kind);
    }
    match &entry.kind {
        EntryKind::Hardlink { target } => {
            assert!(!target.is_empty(), "hardlink `{}` to the root", entry.path);
            check_path(target, "hardlink target");
        }
        EntryKind::Symlink { target } => {
            assert!(!target.is_empty() && !target.contains('\0'), "symlink `{}` to {target:?}", entry.path);
        }
        _ => {}
    }
    assert!(entry.mode <= 0o7777, "entry `{}` has mode {:o}", entry.path, entry.mode);
}

/// The folder [`unpack`] works in, one per process.
fn base() -> PathBuf {
    std::env::temp_dir().join(format!("bake-fuzz-unpack-{}", std::process::id()))
}

/// Makes `BASE` afresh: the scratch folder and the canaries.
fn prepare(base: &Path) -> io::Result<()> {
    if base.exists() {
        fs::remove_dir_all(base)?;
    }
    fs::create_dir_all(base.join("scratch/inner"))?;
    fs::create_dir_all(base.join("canary-dir"))?;
    fs::write(base.join("canary"), CANARY)?;
    fs::write(base.join("canary-dir/file"), CANARY)?;
    for path in [base.join("canary"), base.join("canary-dir/file")] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Unpacks `data` as a layer into a scratch folder and panics if anything
/// outside it was created, removed or changed (see the module docs).
pub fn unpack(data: &[u8]) {
    let base = base();
    prepare(&base).unwrap_or_else(|e| panic!("cannot prepare {}: {e}", base.display()));
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let root = confine(&base);
                let dest = root.join("scratch/inner");
                let options = UnpackOptions {
                    name: "fuzz",
                    compression: compression(data),
                    expected_diff_id: None,
                    limits: LIMITS,
                };
                let _ = crate::layer::unpack(data, &dest, &options);
            })
            .join()
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let escaped = escapes(&base);
    assert!(escaped.is_empty(), "the layer reached outside its folder:\n{}", escaped.join("\n"));
    let _ = fs::remove_dir_all(&base);
}

/// Confines this thread to `base` when it can: the path to use for `base`
/// from now on (`/` once confined).
fn confine(base: &Path) -> PathBuf {
    if !nix::unistd::geteuid().is_root() {
        return base.to_path_buf();
    }
    // CLONE_FS gives this thread its own root and working folder, so the
    // chroot leaves the fuzzer's other threads (and its corpus paths) alone.
    let confined = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
        .and_then(|()| nix::unistd::chroot(base))
        .and_then(|()| nix::unistd::chdir("/"));
    match confined {
        Ok(()) => PathBuf::from("/"),
        Err(e) => panic!("cannot confine the unpack thread to {}: {e}", base.display()),
    }
}

/// What differs in `base` from what [`prepare`] made, `inner` aside.
fn escapes(base: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    for (dir, expected) in [
        (base.to_path_buf(), &["canary", "canary-dir", "scratch"][..]),
        (base.join("scratch"), &["inner"][..]),
        (base.join("canary-dir"), &["file"][..]),
    ] {
        let names = names(&dir);
        if names != expected {
            found.push(format!("{} holds {names:?}, expected {expected:?}", dir.display()));
        }
    }
    for canary in [base.join("canary"), base.join("canary-dir/file")] {
        match fs::symlink_metadata(&canary) {
            Ok(meta) => {
                let content = fs::read(&canary).unwrap_or_default();
                if !meta.is_file() || meta.nlink() != 1 || meta.mode() & 0o7777 != 0o644 || content != CANARY {
                    found.push(format!(
                        "{} changed: file {}, {} links, mode {:o}, {} bytes",
                        canary.display(),
                        meta.is_file(),
                        meta.nlink(),
                        meta.mode() & 0o7777,
                        content.len()
                    ));
                }
            }
            Err(e) => found.push(format!("{}: {e}", canary.display())),
        }
    }
    match fs::symlink_metadata(base.join("scratch/inner")) {
        Ok(meta) if meta.is_dir() => {}
        other => found.push(format!("scratch/inner is no longer a folder: {other:?}")),
    }
    found
}
