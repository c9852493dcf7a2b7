//! Platforms: an operating system, an architecture and a variant, as OCI
//! indexes and image configs name them (`linux/amd64`, `linux/arm/v7`).
//!
//! Names are normalized the way containerd's `platforms` package does, so
//! that `aarch64`, `arm64` and `arm64/v8` are one platform, `arm` is
//! `arm/v7`, `x86_64` is `amd64` and `amd64/v1` is `amd64`. A wanted
//! platform matches an index entry through an ordered list of platforms
//! that can run its binaries ([`Platform::candidates`]): `amd64/v3` takes
//! `v3`, then `v2`, then `amd64`, then `386`; `arm/v7` takes `v6` and `v5`
//! after itself; `arm64` takes the 32-bit `arm` variants last.
//!
//! [`Emulation`] answers, before a build starts, whether this kernel runs a
//! platform's binaries: natively, or through a binfmt_misc handler (qemu's
//! user-mode emulators) that works inside a sandbox's mount namespace.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use miette::Diagnostic;

/// One platform, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// `""` when there is none (`amd64`, `arm64`), `v7` for `arm/v7`.
    pub variant: String,
}

/// A platform string that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Diagnostic)]
#[error("`{written}` is not a platform: {reason}")]
#[diagnostic(
    code(bake::platform::invalid),
    help("a platform is OS/ARCH[/VARIANT], for example linux/amd64, linux/arm64 or linux/arm/v7")
)]
pub struct PlatformError {
    pub written: String,
    pub reason: &'static str,
}

impl Platform {
    /// A platform from its parts, normalized.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Self {
        let os = match os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let (architecture, variant) = normalize_arch(architecture, variant);
        Self { os, architecture, variant }
    }

    /// The platform bake assumed for every image before it knew platforms:
    /// keys of steps built for it carry no platform, so they are the keys
    /// they always were.
    pub fn legacy() -> Self {
        Self::new("linux", "amd64", "")
    }

    /// This machine's own platform (the OS of an image is always linux: a
    /// container on another OS runs in a Linux virtual machine).
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", ""),
            "x86" => ("386", ""),
            "arm" => ("arm", "v7"),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Self::new("linux", arch, variant)
    }

    /// The platforms whose images run here when this one is wanted, best
    /// first (containerd's `platforms.Only`).
    pub fn candidates(&self) -> Vec<Platform> {
        let mut out = vec![self.clone()];
        let with = |variant: String| Platform { variant, ..self.clone() };
        match self.architecture.as_str() {
            "amd64" => {
                if let Some(level) = version(&self.variant).filter(|&v| v > 1) {
                    out.extend((2..level).rev().map(|v| with(format!("v{v}"))));
                    out.push(with(String::new()));
                }
                out.push(Platform { os: self.os.clone(), architecture: "386".to_owned(), variant: String::new() });
            }
            "arm" => {
                if let Some(level) = version(&self.variant).filter(|&v| v > 5) {
                    out.extend((5..level).rev().map(|v| with(format!("v{v}"))));
                }
            }
            "arm64" => {
                let variant = if self.variant.is_empty() { "v8" } else { self.variant.as_str() };
                let (major, minor) = match variant.trim_start_matches('v').split_once('.') {
                    Some((major, minor)) => (major.parse::<u32>().ok(), minor.parse::<u32>().unwrap_or(0)),
                    None => (variant.trim_start_matches('v').parse::<u32>().ok(), 0),
                };
                let arm64 = |major: u32, minor: u32| {
                    // `v8` is written as no variant once normalized.
                    let v = match (major, minor) {
                        (8, 0) => String::new(),
                        (m, 0) => format!("v{m}"),
                        (m, n) => format!("v{m}.{n}"),
                    };
                    with(v)
                };
                if let Some(mut major) = major.filter(|&m| m >= 8) {
                    let mut minor = minor;
                    if major == 9 {
                        out.extend((0..minor).rev().map(|n| arm64(9, n)));
                        // v9.x came from v8.(x+5).
                        minor += 5;
                        major = 8;
                        out.push(arm64(8, minor));
                    }
                    out.extend((0..minor).rev().map(|n| arm64(major, n)));
                }
                let arm = Platform { os: self.os.clone(), architecture: "arm".to_owned(), variant: "v8".to_owned() };
                out.extend(arm.candidates());
            }
            _ => {}
        }
        let mut seen = Vec::new();
        out.retain(|p| {
            let fresh = !seen.contains(p);
            seen.push(p.clone());
            fresh
        });
        out
    }

    /// How well `offered` fits this wanted platform: `Some(0)` is an exact
    /// match, larger is a fallback, `None` does not run here.
    pub fn rank(&self, offered: &Platform) -> Option<usize> {
        self.candidates().iter().position(|c| c == offered)
    }

    /// The index of the best of `offered` for this platform.
    pub fn best<'p>(&self, offered: impl IntoIterator<Item = &'p Platform>) -> Option<usize> {
        let candidates = self.candidates();
        offered
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| candidates.iter().position(|c| c == p).map(|rank| (rank, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// BuildKit's `TARGETVARIANT`/`BUILDVARIANT`: the variant as written in
    /// the platform string (`""` for `linux/arm64`).
    pub fn variant(&self) -> &str {
        &self.variant
    }

    /// Whether binaries of this platform run on `host` without emulation.
    pub fn runs_natively_on(&self, host: &Platform) -> bool {
        self.os == host.os && host.rank(self).is_some()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// `OS/ARCH[/VARIANT]`; a lone `ARCH` means linux, a lone OS this
    /// machine's architecture on it.
    fn from_str(s: &str) -> Result<Self, PlatformError> {
        let err = |reason| PlatformError { written: s.to_owned(), reason };
        let parts: Vec<&str> = s.trim().split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("an empty part"));
        }
        if parts.iter().flat_map(|p| p.chars()).any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
            return Err(err("only letters, digits, `_`, `-` and `.` may appear between the slashes"));
        }
        match parts.as_slice() {
            [one] if is_known_os(&one.to_ascii_lowercase()) => {
                let host = Self::host();
                Ok(Self::new(one, &host.architecture, &host.variant))
            }
            [arch] => known(Self::new("linux", arch, ""), s),
            [os, arch] => known(Self::new(os, arch, ""), s),
            [os, arch, variant] => known(Self::new(os, arch, variant), s),
            _ => Err(err("more than three parts")),
        }
    }
}

impl serde::Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Refuses an OS or architecture Go (and so containerd) does not know.
fn known(p: Platform, written: &str) -> Result<Platform, PlatformError> {
    if !is_known_os(&p.os) {
        return Err(PlatformError { written: written.to_owned(), reason: "unknown operating system" });
    }
    if !is_known_arch(&p.architecture) {
        return Err(PlatformError { written: written.to_owned(), reason: "unknown architecture" });
    }
    Ok(p)
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (arch, variant) = (arch.to_ascii_lowercase(), variant.to_ascii_lowercase());
    let (arch, variant): (&str, String) = match arch.as_str() {
        "i386" => ("386", String::new()),
        "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { String::new() } else { variant }),
        "aarch64" | "arm64" => ("arm64", if matches!(variant.as_str(), "8" | "v8") { String::new() } else { variant }),
        "armhf" => ("arm", "v7".to_owned()),
        "armel" => ("arm", "v6".to_owned()),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7".to_owned(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        _ => (arch.as_str(), variant),
    };
    (arch.to_owned(), variant)
}

/// `v3` -> 3.
fn version(variant: &str) -> Option<u32> {
    variant.strip_prefix('v').unwrap_or(variant).parse().ok()
}

fn is_known_os(os: &str) -> bool {
    matches!(
        os,
        "aix"
            | "android"
            | "darwin"
            | "dragonfly"
            | "freebsd"
            | "hurd"
            | "illumos"
            | "ios"
            | "js"
            | "linux"
            | "nacl"
            | "netbsd"
            | "openbsd"
            | "plan9"
            | "solaris"
            | "windows"
            | "zos"
    )
}

fn is_known_arch(arch: &str) -> bool {
    matches!(
        arch,
        "386"
            | "amd64"
            | "amd64p32"
            | "arm"
            | "armbe"
            | "arm64"
            | "arm64be"
            | "ppc64"
            | "ppc64le"
            | "loong64"
            | "mips"
            | "mipsle"
            | "mips64"
            | "mips64le"
            | "mips64p32"
            | "mips64p32le"
            | "ppc"
            | "riscv"
            | "riscv64"
            | "s390"
            | "s390x"
            | "sparc"
            | "sparc64"
            | "wasm"
    )
}

/// The name `uname -m` gives for an architecture, which is also the suffix
/// of qemu's user-mode emulator for it (`qemu-aarch64`).
pub fn machine_name(p: &Platform) -> Option<&'static str> {
    Some(match p.architecture.as_str() {
        "amd64" => "x86_64",
        "386" => "i386",
        "arm64" => "aarch64",
        "arm" => "arm",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64le" => "mips64el",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

/// How this kernel runs a platform's binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// The processor runs them.
    Native,
    /// A binfmt_misc handler runs them: its name and interpreter.
    Binfmt { handler: String, interpreter: String },
}

/// Why a platform's `run` steps cannot run on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Diagnostic)]
pub enum EmulationError {
    #[error("this machine cannot run {platform} programs: {reason}")]
    #[diagnostic(
        code(bake::platform::no_emulator),
        help(
            "install qemu's user-mode emulators and register them with binfmt_misc:\n  \
             apt-get install qemu-user-static binfmt-support\n  \
             mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc   (if it is not mounted)\n  \
             update-binfmts --enable\n\
             or build without `run` steps for {platform}: cross-compile in a stage pinned to \
             platform=\"${{BUILDPLATFORM}}\" and copy the result"
        )
    )]
    Missing { platform: Platform, reason: String },
}

impl EmulationError {
    /// A machine that lacks an emulator is the environment's problem.
    pub fn tier(&self) -> crate::Tier {
        crate::Tier::Environment
    }
}

/// The binfmt_misc folder of this kernel.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Whether this machine runs `wanted`'s binaries, looking at the binfmt_misc
/// handlers in `binfmt` (normally [`BINFMT_DIR`]). A handler counts only
/// when it is enabled and has the `F` flag: the kernel then opened the
/// interpreter when it was registered, so it works in a sandbox whose root
/// filesystem has no qemu.
pub fn emulation(wanted: &Platform, host: &Platform, binfmt: &Path) -> Result<Emulation, EmulationError> {
    if wanted.runs_natively_on(host) {
        return Ok(Emulation::Native);
    }
    let missing = |reason: String| EmulationError::Missing { platform: wanted.clone(), reason };
    if wanted.os != "linux" {
        return Err(missing(format!("bake runs steps on linux only, not on {}", wanted.os)));
    }
    let Some(machine) = machine_name(wanted) else {
        return Err(missing(format!("bake knows no emulator for {}", wanted.architecture)));
    };
    if !binfmt.join("status").exists() {
        return Err(missing(format!("binfmt_misc is not mounted at {}", binfmt.display())));
    }
    let name = format!("qemu-{machine}");
    let entry = binfmt.join(&name);
    let text = std::fs::read_to_string(&entry)
        .map_err(|_| missing(format!("no binfmt_misc handler `{name}` is registered in {}", binfmt.display())))?;
    let mut enabled = false;
    let mut flags = "";
    let mut interpreter = "";
    for line in text.lines() {
        if line == "enabled" {
            enabled = true;
        } else if let Some(f) = line.strip_prefix("flags: ") {
            flags = f;
        } else if let Some(i) = line.strip_prefix("interpreter ") {
            interpreter = i;
        }
    }
    if !enabled {
        return Err(missing(format!("the binfmt_misc handler `{name}` is disabled")));
    }
    if !flags.contains('F') {
        return Err(missing(format!(
            "the binfmt_misc handler `{name}` lacks the F (fix binary) flag, so its interpreter {interpreter} \
             cannot be found inside a sandbox"
        )));
    }
    Ok(Emulation::Binfmt { handler: name, interpreter: interpreter.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_normalizes_as_containerd() {
        for (written, normal) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v9", "linux/arm64/v9"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("LINUX/AMD64", "linux/amd64"),
            ("macos/arm64", "darwin/arm64"),
            ("arm64", "linux/arm64"),
            ("windows/amd64", "windows/amd64"),
            ("linux/riscv64", "linux/riscv64"),
        ] {
            assert_eq!(p(written).to_string(), normal, "{written}");
        }
        assert_eq!(p("linux"), Platform::host());
        for bad in ["", "linux/", "/amd64", "linux/amd64/v2/x", "linux/z80", "plan10/amd64", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn candidates_follow_containerd_order() {
        let names = |s: &str| p(s).candidates().iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(names("linux/amd64"), ["linux/amd64", "linux/386"]);
        assert_eq!(names("linux/amd64/v3"), ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]);
        assert_eq!(names("linux/arm/v7"), ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]);
        assert_eq!(names("linux/arm/v5"), ["linux/arm/v5"]);
        assert_eq!(
            names("linux/arm64"),
            ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
        );
        assert_eq!(names("linux/arm64/v8.2")[..3], ["linux/arm64/v8.2", "linux/arm64/v8.1", "linux/arm64"]);
        // v9.0 is compatible with v8.5 and below.
        let v9 = names("linux/arm64/v9");
        assert_eq!(v9[..3], ["linux/arm64/v9", "linux/arm64/v8.5", "linux/arm64/v8.4"]);
        assert!(v9.contains(&"linux/arm64".to_owned()));
    }

    #[test]
    fn best_match_in_an_index() {
        let offered: Vec<Platform> =
            ["linux/arm64/v8", "linux/amd64/v3", "linux/amd64", "linux/arm/v6", "linux/386"].map(p).to_vec();
        assert_eq!(p("linux/amd64").best(&offered), Some(2));
        assert_eq!(p("linux/amd64/v3").best(&offered), Some(1));
        assert_eq!(p("linux/amd64/v2").best(&offered), Some(2));
        assert_eq!(p("linux/arm64").best(&offered), Some(0));
        assert_eq!(p("linux/arm/v7").best(&offered), Some(3));
        assert_eq!(p("linux/arm/v5").best(&offered), None);
        // amd64 without a plain entry falls back to 386, never to a higher level.
        let v3_only: Vec<Platform> = ["linux/amd64/v3", "linux/386"].map(p).to_vec();
        assert_eq!(p("linux/amd64").best(&v3_only), Some(1));
        assert_eq!(p("windows/amd64").best(&offered), None);
    }

    #[test]
    fn native_platforms() {
        let amd64 = p("linux/amd64");
        assert!(p("linux/386").runs_natively_on(&amd64));
        assert!(!p("linux/arm64").runs_natively_on(&amd64));
        assert!(p("linux/arm/v7").runs_natively_on(&p("linux/arm64")));
    }

    #[test]
    fn emulation_reads_binfmt_misc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let amd64 = p("linux/amd64");
        let arm64 = p("linux/arm64");
        assert_eq!(emulation(&amd64, &amd64, dir.path()), Ok(Emulation::Native));
        let err = emulation(&arm64, &amd64, dir.path()).expect_err("not mounted");
        assert!(err.to_string().contains("binfmt_misc is not mounted"), "{err}");
        std::fs::write(dir.path().join("status"), "enabled\n").expect("write");
        let err = emulation(&arm64, &amd64, dir.path()).expect_err("no handler");
        assert!(err.to_string().contains("qemu-aarch64"), "{err}");
        let handler = dir.path().join("qemu-aarch64");
        std::fs::write(&handler, "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: P\n")
            .expect("write");
        let err = emulation(&arm64, &amd64, dir.path()).expect_err("no F flag");
        assert!(err.to_string().contains("F (fix binary)"), "{err}");
        std::fs::write(&handler, "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n")
            .expect("write");
        assert_eq!(
            emulation(&arm64, &amd64, dir.path()),
            Ok(Emulation::Binfmt {
                handler: "qemu-aarch64".to_owned(),
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".to_owned()
            })
        );
        std::fs::write(&handler, "disabled\nflags: PF\n").expect("write");
        assert!(emulation(&arm64, &amd64, dir.path()).is_err());
    }
}
