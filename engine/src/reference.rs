//! Image references: `[registry/]repository[:tag][@digest]`, normalised as Docker does.
//!
//! A short name gains Docker Hub's registry and its `library/` namespace:
//! `debian:bookworm-slim` is `docker.io/library/debian:bookworm-slim`. A first
//! path component counts as a registry when it contains a `.` or a `:`, or is
//! `localhost`. A reference with neither tag nor digest means `:latest`.

use std::fmt;

/// The registry that short names resolve to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ImageRef {
    /// Registry host, with its port if any (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/debian`).
    pub repository: String,
    /// Tag; `latest` when the reference named neither tag nor digest.
    pub tag: Option<String>,
    /// Content digest (`sha256:…`) pinned by the reference.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("an image reference cannot be empty")]
    Empty,
    #[error("`{0}` is not a valid repository name: use lowercase letters, digits and `.`, `_`, `-` separators")]
    BadRepository(String),
    #[error("`{0}` is not a valid tag: up to 128 of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`")]
    BadTag(String),
    #[error("`{0}` is not a valid digest: expected `sha256:` followed by 64 lowercase hex digits")]
    BadDigest(String),
    #[error("`{0}` is not a valid registry host")]
    BadRegistry(String),
}

impl ImageRef {
    /// Parses and normalises a reference.
    pub fn parse(input: &str) -> Result<Self, RefError> {
        if input.is_empty() {
            return Err(RefError::Empty);
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                check_digest(digest)?;
                (rest, Some(digest.to_owned()))
            }
            None => (input, None),
        };
        // A tag follows the last `:` that comes after the last `/`.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                check_tag(tag)?;
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                check_registry(first)?;
                (first.to_owned(), path.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        check_repository(&path)?;
        let repository =
            if registry == DEFAULT_REGISTRY && !path.contains('/') { format!("library/{path}") } else { path };
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(Self { registry, repository, tag, digest })
    }

    /// Whether a string reads like an image reference rather than a bare name:
    /// it has a tag, a digest or a path.
    pub fn looks_explicit(input: &str) -> bool {
        input.contains([':', '/', '@'])
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn check_digest(digest: &str) -> Result<(), RefError> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if ok { Ok(()) } else { Err(RefError::BadDigest(digest.to_owned())) }
}

fn check_tag(tag: &str) -> Result<(), RefError> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(RefError::BadTag(tag.to_owned())) }
}

fn check_registry(host: &str) -> Result<(), RefError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-']);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if name_ok && port_ok { Ok(()) } else { Err(RefError::BadRegistry(host.to_owned())) }
}

fn check_repository(path: &str) -> Result<(), RefError> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
            && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
            && b.iter().all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
            && !c.contains("..")
            && !c.contains("---")
    };
    if path.len() <= 255 && path.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(RefError::BadRepository(path.to_owned()))
    }
}

impl RefError {
    /// Whose the error is: a reference is always something the user wrote.
    pub fn tier(&self) -> crate::Tier {
        crate::Tier::Input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        ImageRef::parse(s).map_or_else(|e| format!("error: {e}"), |r| r.to_string())
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("debian"), "docker.io/library/debian:latest");
        assert_eq!(norm("debian:bookworm-slim"), "docker.io/library/debian:bookworm-slim");
        assert_eq!(norm("golang:1.19"), "docker.io/library/golang:1.19");
        assert_eq!(norm("acme/app:v1"), "docker.io/acme/app:v1");
        assert_eq!(norm("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(norm("localhost/app:1"), "localhost/app:1");
        assert_eq!(norm("registry.example.com/acme/app:1.0"), "registry.example.com/acme/app:1.0");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("busybox@{d}")), format!("docker.io/library/busybox@{d}"));
        assert_eq!(norm(&format!("busybox:1.36@{d}")), format!("docker.io/library/busybox:1.36@{d}"));
    }

    #[test]
    fn rejects_bad_references() {
        assert!(norm("").starts_with("error"));
        assert!(norm("Debian").starts_with("error"));
        assert!(norm("debian:").starts_with("error"));
        assert!(norm("debian:-x").starts_with("error"));
        assert!(norm("debian@sha256:abc").starts_with("error"));
        assert!(norm("a b").starts_with("error"));
        assert!(norm("bad..name").starts_with("error"));
        assert!(norm("host:99999999/x").starts_with("error"));
    }
}

/// A registry cache: `registry/repository[:prefix]`, or buildx's
/// `type=registry,ref=registry/repository[:prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRef {
    /// The repository (no tag, no digest).
    pub repository: ImageRef,
    /// Tags are `<prefix>-<key>`.
    pub prefix: String,
}

impl CacheRef {
    /// The reference of `key`'s entry.
    pub fn entry(&self, key: &crate::graph::Key) -> ImageRef {
        ImageRef { tag: Some(format!("{}-{}", self.prefix, key.to_hex())), digest: None, ..self.repository.clone() }
    }
}

impl std::fmt::Display for CacheRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.repository.registry, self.repository.repository)?;
        if self.prefix != "bake" {
            write!(f, ":{}", self.prefix)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for CacheRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let raw = if s.starts_with("type=") {
            let mut reference = None;
            for part in s.split(',') {
                match part.split_once('=') {
                    Some(("ref", v)) => reference = Some(v),
                    // buildx options that mean nothing here: bake always
                    // exports every result of the build.
                    Some(("type", "registry") | ("mode" | "oci-mediatypes" | "image-manifest" | "ignore-error", _)) => {
                    }
                    Some(("type", other)) => {
                        return Err(format!("cache type `{other}` is not supported: use `registry`"));
                    }
                    _ => return Err(format!("`{part}` is not `type=registry` or `ref=...`")),
                }
            }
            reference.ok_or("missing `ref=`")?
        } else {
            s
        };
        if raw.contains('@') {
            return Err("a cache is a repository: it cannot be pinned by digest".to_owned());
        }
        let parsed = ImageRef::parse(raw).map_err(|e| e.to_string())?;
        // A tag is explicit when the last path segment has a `:`.
        let explicit = raw.rsplit('/').next().is_some_and(|last| last.contains(':'));
        let prefix = if explicit { parsed.tag.clone().unwrap_or_default() } else { "bake".to_owned() };
        if prefix.is_empty() || prefix.len() > 60 {
            return Err("the tag of a cache reference is a prefix of at most 60 characters".to_owned());
        }
        Ok(Self { repository: ImageRef { tag: None, digest: None, ..parsed }, prefix })
    }
}

#[cfg(test)]
mod cache_ref_tests {
    use super::*;
    use crate::graph::Key;

    #[test]
    fn cache_refs_parse() {
        let c: CacheRef = "localhost:5000/team/cache".parse().expect("parses");
        assert_eq!(c.prefix, "bake");
        assert_eq!(c.repository.repository, "team/cache");
        assert_eq!(c.to_string(), "localhost:5000/team/cache");
        let c: CacheRef = "type=registry,ref=localhost:5000/cache:main,mode=max".parse().expect("parses");
        assert_eq!(c.prefix, "main");
        assert_eq!(c.to_string(), "localhost:5000/cache:main");
        let key = Key([7; 32]);
        assert_eq!(c.entry(&key).tag.as_deref().map(str::len), Some(5 + 64));
        assert!("type=local,dest=x".parse::<CacheRef>().is_err());
        assert!("localhost:5000/cache@sha256:0000".parse::<CacheRef>().is_err());
    }
}
