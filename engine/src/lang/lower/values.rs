//! Parsing of scalar values that the language gives a meaning: context and
//! image paths (normalised), host paths, ports and Go-style durations.
//! Signal names are parsed in [`crate::sandbox`] (`signal.rs`).

use std::path::{Component, Path, PathBuf};

use crate::lang::Port;

/// A context path, relative and normalised (`./a/../b/` is `b`, `/x` is `x`,
/// the root is `.`). `None` when it climbs above the root.
pub(super) fn normalize_relative(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(if parts.is_empty() { ".".to_owned() } else { parts.join("/") })
}

/// A path inside an image filesystem: absolute and normalised; `..` stops at `/`.
pub(crate) fn normalize_absolute(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A host path with `.` and `..` folded lexically (no symlinks resolved).
pub(super) fn normalize_host(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

pub(super) fn parse_port(raw: &str) -> Option<Port> {
    let (port, protocol) = raw.split_once('/').unwrap_or((raw, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    matches!(protocol.as_str(), "tcp" | "udp" | "sctp").then_some(Port { port, protocol })
}

/// Go-style durations: `30s`, `1m30s`, `500ms`, `1h`.
pub(super) fn parse_duration(raw: &str) -> Option<u64> {
    if raw.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = raw;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(scale)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        assert_eq!(normalize_relative("./a/../b/"), Some("b".to_owned()));
        assert_eq!(normalize_relative("/src"), Some("src".to_owned()));
        assert_eq!(normalize_relative("."), Some(".".to_owned()));
        assert_eq!(normalize_relative("a/../../b"), None);
        assert_eq!(normalize_relative("../x"), None);
        assert_eq!(normalize_absolute("out/../app"), "/app");
        assert_eq!(normalize_absolute("/../../etc"), "/etc");
    }

    #[test]
    fn durations_and_ports() {
        assert_eq!(parse_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_port("8080"), Some(Port { port: 8080, protocol: "tcp".into() }));
        assert_eq!(parse_port("53/UDP"), Some(Port { port: 53, protocol: "udp".into() }));
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("80/http"), None);
    }
}
