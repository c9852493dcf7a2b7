//! A small tmpfs for tests that need a full disk on demand (root only).
//!
//! Include it from a test crate with
//!
//! ```ignore
//! #[path = "common/tmpfs.rs"]
//! mod tmpfs;
//! use tmpfs::Tmpfs;
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted at a folder, unmounted on drop.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it: "4m") at
    /// `dir`, creating the folder; fails the test when it cannot (not root).
    pub(crate) fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
