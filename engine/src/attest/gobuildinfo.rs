//! The build information Go (1.18 and later) embeds in its binaries: the
//! `\xff Go buildinf:` header, then the Go version and the module list as
//! length-prefixed strings. [`read`] finds it in a binary's bytes and
//! [`parse`] reads the module list (`mod`, `dep` and `=>` lines).
//!
//! Binaries of older Go versions, which point at the strings instead of
//! holding them, are not read: they give no modules.

/// The header's first 14 bytes; the header is aligned to 16 bytes.
const MAGIC: &[u8] = b"\xff Go buildinf:";
/// The header's length, after which the strings start.
const HEADER: usize = 32;
/// The flag saying the strings follow the header (Go 1.18 and later).
const INLINE: u8 = 0x2;

/// What a Go binary says about its build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildInfo {
    /// `go1.19.13`.
    pub go_version: String,
    /// The main package's import path.
    pub path: String,
    /// The main module, then its dependencies in the binary's order.
    pub modules: Vec<Module>,
}

/// One module of a Go binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    /// `(devel)` for a main module built from a work tree.
    pub version: String,
    /// The `h1:` hash from go.sum, when there is one.
    pub sum: Option<String>,
    /// Whether it is the main module (`mod`) rather than a dependency.
    pub main: bool,
}

/// Whether `bytes` look like an executable worth searching (ELF).
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// The build information in a binary's bytes, if it has some in the
/// inline format.
pub fn read(binary: &[u8]) -> Option<BuildInfo> {
    let start = (0..binary.len().saturating_sub(HEADER)).step_by(16).find(|&i| binary[i..].starts_with(MAGIC))?;
    let header = binary.get(start..start + HEADER)?;
    if header[15] & INLINE == 0 {
        return None;
    }
    let mut rest = binary.get(start + HEADER..)?;
    let go_version = string(&mut rest)?;
    let modinfo = string(&mut rest)?;
    // The module list sits between two 16-byte sentinels (not UTF-8).
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        modinfo
    };
    let mut info = parse(&String::from_utf8_lossy(modinfo));
    info.go_version = String::from_utf8_lossy(go_version).into_owned();
    Some(info)
}

/// A uvarint-length-prefixed string, consumed from `rest`.
fn string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len: u64 = 0;
    let mut shift = 0;
    let mut used: usize = 0;
    for &b in rest.iter().take(10) {
        used += 1;
        len |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let len = usize::try_from(len).ok()?;
    let all: &'a [u8] = rest;
    let bytes = all.get(used..used.checked_add(len)?)?;
    *rest = &all[used + len..];
    Some(bytes)
}

/// Reads the module list `go version -m` prints: `path`, `mod`, `dep` and
/// `=>` (the replacement of the line before) lines, tab-separated.
pub fn parse(modinfo: &str) -> BuildInfo {
    let mut info = BuildInfo::default();
    for line in modinfo.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let module = |main| {
            Some(Module {
                path: (*fields.get(1)?).to_owned(),
                version: fields.get(2).map_or_else(String::new, |v| (*v).to_owned()),
                sum: fields.get(3).filter(|s| !s.is_empty()).map(|s| (*s).to_owned()),
                main,
            })
        };
        match fields.first() {
            Some(&"path") => info.path = fields.get(1).map_or_else(String::new, |p| (*p).to_owned()),
            Some(&"mod") => info.modules.extend(module(true)),
            Some(&"dep") => info.modules.extend(module(false)),
            // A replacement by another module version counts as that
            // module; one by a local folder (`./greet`, version `(devel)`)
            // keeps the name and version the build asked for, with no sum.
            Some(&"=>") => {
                if let (Some(last), Some(replaced)) = (info.modules.last_mut(), module(false)) {
                    if replaced.path.starts_with(['.', '/']) {
                        last.sum = None;
                    } else {
                        last.path = replaced.path;
                        last.version = replaced.version;
                        last.sum = replaced.sum;
                    }
                }
            }
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push(u8::try_from(n & 0x7f).unwrap_or(0) | 0x80);
            n >>= 7;
        }
        out.push(u8::try_from(n).unwrap_or(0));
    }

    /// A binary as Go 1.18+ lays it out: the header at a 16-byte boundary.
    fn binary(version: &str, modinfo: &str) -> Vec<u8> {
        let mut b = b"\x7fELF".to_vec();
        b.resize(48, 0);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&[8, INLINE]);
        b.resize(48 + HEADER, 0);
        varint(version.len(), &mut b);
        b.extend_from_slice(version.as_bytes());
        let mut wrapped = b"0123456789abcdef".to_vec();
        wrapped.extend_from_slice(modinfo.as_bytes());
        wrapped.extend_from_slice(b"\n\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2");
        varint(wrapped.len(), &mut b);
        b.extend_from_slice(&wrapped);
        b.extend_from_slice(&[0; 64]);
        b
    }

    #[test]
    fn reads_version_and_modules() {
        let modinfo = "path\texample.com/svc\nmod\texample.com/svc\t(devel)\t\n\
                       dep\tgolang.org/x/text\tv0.3.7\th1:olpwvP2KacW1ZWvsR7uQhoyTYvKAupfQrRGBFM352Gk=\n\
                       dep\texample.com/old\tv1.0.0\n=>\texample.com/new\tv1.2.0\th1:abc=\n\
                       dep\texample.com/local\tv0.0.0\th1:x=\n=>\t./local\t(devel)\t\n\
                       build\t-compiler=gc";
        let info = read(&binary("go1.19.13", modinfo)).unwrap_or_default();
        assert_eq!(info.go_version, "go1.19.13");
        assert_eq!(info.path, "example.com/svc");
        let got: Vec<(&str, &str, bool)> =
            info.modules.iter().map(|m| (m.path.as_str(), m.version.as_str(), m.main)).collect();
        assert_eq!(
            got,
            [
                ("example.com/svc", "(devel)", true),
                ("golang.org/x/text", "v0.3.7", false),
                ("example.com/new", "v1.2.0", false),
                ("example.com/local", "v0.0.0", false)
            ]
        );
        assert_eq!(info.modules[1].sum.as_deref(), Some("h1:olpwvP2KacW1ZWvsR7uQhoyTYvKAupfQrRGBFM352Gk="));
        assert_eq!(info.modules[0].sum, None);
        assert_eq!(info.modules[3].sum, None);
    }

    #[test]
    fn a_binary_without_buildinfo_gives_none() {
        assert_eq!(read(b"\x7fELF plain C program"), None);
        // Truncated after the header: no strings to read.
        let mut b = binary("go1.19", "");
        b.truncate(48 + HEADER + 2);
        assert_eq!(read(&b), None);
    }

    /// Debian's skopeo (which the tests need anyway) is a Go binary, built
    /// in GOPATH mode: a version and a path, no modules.
    #[test]
    fn reads_a_real_go_binary() {
        let bytes = std::fs::read("/usr/bin/skopeo").expect("skopeo is installed (scripts/test.sh)");
        let info = read(&bytes).expect("skopeo has Go build information");
        assert!(info.go_version.starts_with("go1."), "{info:?}");
        assert!(info.path.contains("skopeo"), "{info:?}");
    }
}
