//! Where bake keeps its state: `BAKE_HOME`, else `$XDG_CACHE_HOME/bake`, else
//! `~/.cache/bake`.
//!
//! ```text
//! $BAKE_HOME/
//!   index/     context file indexes, one per context folder (see `context`)
//! ```

use std::path::{Path, PathBuf};

/// The environment variable that moves bake's local state.
pub const BAKE_HOME: &str = "BAKE_HOME";

/// bake's state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home at an explicit folder.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home named by the environment, as described in the module docs.
    /// Returns `None` when neither `BAKE_HOME`, `XDG_CACHE_HOME` nor `HOME` is set.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
    }

    fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<Self> {
        if let Some(home) = var(BAKE_HOME) {
            return Some(Self::new(home));
        }
        if let Some(cache) = var("XDG_CACHE_HOME") {
            return Some(Self::new(PathBuf::from(cache).join("bake")));
        }
        var("HOME").map(|home| Self::new(PathBuf::from(home).join(".cache").join("bake")))
    }

    /// The home folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Folder of the context file indexes.
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn home(vars: &[(&str, &str)]) -> Option<PathBuf> {
        let vars: Vec<(String, OsString)> = vars.iter().map(|(k, v)| ((*k).to_owned(), OsString::from(v))).collect();
        Home::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).map(|h| h.root)
    }

    #[test]
    fn precedence() {
        assert_eq!(home(&[("BAKE_HOME", "/b"), ("HOME", "/h")]), Some("/b".into()));
        assert_eq!(home(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]), Some("/x/bake".into()));
        assert_eq!(home(&[("HOME", "/h")]), Some("/h/.cache/bake".into()));
        assert_eq!(home(&[]), None);
    }
}
