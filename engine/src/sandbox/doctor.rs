//! `bake doctor`: what bake needs from the machine, each part checked the
//! way bake uses it, with the fix when it is missing.
//!
//! The CLI calls [`checks`] after it has entered bake's user namespace (or
//! tried to: a user that is not root; see `userns.rs`), so the overlay probe
//! runs where steps would run. Every check reads the machine; none changes
//! it. A part is *needed* when `run` steps cannot run (or run only crippled)
//! without it; the others (binfmt handlers, the Docker socket) serve
//! optional features.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::userns::{Entered, sub_ranges};
use super::{Backend, NAT_PROGRAM};

/// One part of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short and fixed: `kernel`, `user namespaces`, ...
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to get it, when it is missing.
    pub fix: Option<String>,
    /// Missing it fails `bake doctor` (see the module docs).
    pub needed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Present,
    Missing,
    /// Not used here (root needs no user namespace).
    NotNeeded,
}

/// Everything [`checks`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether bake runs rootless here.
    pub rootless: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every needed part is present.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| !c.needed || c.status != Status::Missing)
    }
}

/// The first kernel whose overlayfs mounts in a user namespace.
const ROOTLESS_OVERLAY_KERNEL: (u32, u32) = (5, 11);

/// Checks the machine; `entered` is what the CLI's [`super::enter_user_namespace`]
/// did, `dir` the folder upper folders go to (bake's home).
pub fn checks(entered: &Entered, dir: &Path) -> Report {
    let rootless = !matches!(entered, Entered::Root);
    let mut checks = vec![kernel(rootless)];
    checks.extend(user_namespaces(entered));
    checks.push(overlay(rootless, dir));
    checks.push(nat(rootless));
    checks.push(binfmt());
    checks.push(docker_socket());
    Report { rootless, checks }
}

fn check(name: &'static str, ok: bool, detail: String, fix: Option<String>, needed: bool) -> Check {
    let status = if ok { Status::Present } else { Status::Missing };
    Check { name, status, detail, fix: if ok { None } else { fix }, needed }
}

fn not_needed(name: &'static str, detail: &str) -> Check {
    Check { name, status: Status::NotNeeded, detail: detail.to_owned(), fix: None, needed: false }
}

/// `major.minor` of a kernel release string (`6.1.0-18-amd64`).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn kernel(rootless: bool) -> Check {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let version = kernel_version(&release);
    let (major, minor) = ROOTLESS_OVERLAY_KERNEL;
    if !rootless {
        return check("kernel", version.is_some(), format!("Linux {release}"), None, false);
    }
    let ok = version.is_some_and(|v| v >= ROOTLESS_OVERLAY_KERNEL);
    check(
        "kernel",
        ok,
        format!("Linux {release} ({major}.{minor} or later mounts overlayfs in a user namespace)"),
        Some(format!(
            "a kernel older than {major}.{minor} makes bake copy each step's files (slower); upgrade the kernel, or run bake as root"
        )),
        false,
    )
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Why this machine refuses user namespaces to users, as its settings say.
fn userns_blockers() -> Vec<String> {
    let mut fixes = Vec::new();
    if read_trimmed("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        fixes.push("sysctl -w kernel.unprivileged_userns_clone=1".to_owned());
    }
    if read_trimmed("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        fixes.push("sysctl -w user.max_user_namespaces=15000".to_owned());
    }
    if read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        fixes.push(
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile that allows bake `userns`)"
                .to_owned(),
        );
    }
    fixes
}

fn user_namespaces(entered: &Entered) -> Vec<Check> {
    let names = ["user namespaces", "subordinate ids", "newuidmap"];
    if matches!(entered, Entered::Root) {
        return names.iter().map(|n| not_needed(n, "bake runs as root")).collect();
    }
    let uid = nix::unistd::getuid();
    // Inside bake's namespace the user is 0: name the user the host knows.
    let host_uid = host_uid().unwrap_or(uid.as_raw());
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(host_uid)).ok().flatten().map(|u| u.name);
    let who = name.clone().unwrap_or_else(|| host_uid.to_string());
    let userns = match entered {
        Entered::Unavailable { reason } => {
            let blockers = userns_blockers();
            let fix = if blockers.is_empty() {
                "allow unprivileged user namespaces (see the kernel's and your distribution's settings)".to_owned()
            } else {
                format!("as root: {}", blockers.join("; "))
            };
            check("user namespaces", false, format!("cannot make one: {reason}"), Some(fix), true)
        }
        _ => check("user namespaces", true, "allowed".to_owned(), None, true),
    };
    let text = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let uids = sub_ranges(&text("/etc/subuid"), name.as_deref(), host_uid);
    let gids = sub_ranges(&text("/etc/subgid"), name.as_deref(), host_uid);
    let count = |r: &[super::userns::SubRange]| r.iter().map(|r| u64::from(r.count)).sum::<u64>();
    let ranges = check(
        "subordinate ids",
        !uids.is_empty() && !gids.is_empty(),
        format!("{} uids and {} gids for {who} in /etc/subuid and /etc/subgid", count(&uids), count(&gids)),
        Some(format!(
            "as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {who} (a range no other user has)"
        )),
        true,
    );
    let tools: Vec<(String, Result<(), String>)> =
        ["newuidmap", "newgidmap"].iter().map(|p| ((*p).to_owned(), privileged_program(p))).collect();
    let problems: Vec<String> =
        tools.iter().filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{p}: {e}"))).collect();
    let tools = check(
        "newuidmap",
        problems.is_empty(),
        if problems.is_empty() { "newuidmap and newgidmap, setuid root".to_owned() } else { problems.join("; ") },
        Some("as root: apt-get install uidmap (Fedora: shadow-utils)".to_owned()),
        true,
    );
    vec![userns, ranges, tools]
}

/// The host uid this process's uid 0 stands for, from its uid map.
fn host_uid() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    map.lines().find_map(|line| {
        let f: Vec<u32> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        (f.first() == Some(&0) && f.get(1) != Some(&0)).then(|| f.get(1).copied()).flatten()
    })
}

/// Whether `program` is installed and may map ids: setuid root, or with file
/// capabilities.
fn privileged_program(program: &str) -> Result<(), String> {
    let path = find(program).ok_or_else(|| "not installed".to_owned())?;
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    // In bake's user namespace the host's root has no id of its own: it shows
    // as the overflow uid.
    let overflow = read_trimmed("/proc/sys/kernel/overflowuid").and_then(|u| u.parse().ok()).unwrap_or(65534);
    let root = meta.uid() == 0 || (super::userns::nested() && meta.uid() == overflow);
    let setuid_root = meta.mode() & 0o4000 != 0 && root;
    let capable = matches!(xattr::get(&path, "security.capability"), Ok(Some(_)));
    if setuid_root || capable {
        Ok(())
    } else {
        Err(format!("{} is neither setuid root nor has file capabilities", path.display()))
    }
}

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/bin", "/usr/sbin", "/bin"]).map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

fn overlay(rootless: bool, dir: &Path) -> Check {
    let name = "overlayfs";
    let place = if rootless { "in bake's user namespace" } else { "as root" };
    match super::probe_in(dir) {
        Backend::Overlay => {
            check(name, true, format!("mounts {place} with upper folders in {}", dir.display()), None, true)
        }
        Backend::Copy { reason } => check(
            name,
            false,
            reason,
            Some(
                "bake copies each step's files instead (slower): keep bake's home (BAKE_HOME) on ext4, xfs or btrfs"
                    .into(),
            ),
            false,
        ),
        Backend::Unavailable { reason } => check(
            name,
            false,
            format!("`run` steps cannot run: {reason}"),
            Some(if rootless {
                "the checks above say what is missing".to_owned()
            } else {
                "the sandbox needs namespaces and mounts: run bake as root on the host, or in a container started with --privileged".to_owned()
            }),
            true,
        ),
    }
}

fn nat(rootless: bool) -> Check {
    let name = "slirp4netns";
    let install = "as root: apt-get install slirp4netns; or give steps `network \"host\"` or `network \"none\"`";
    let Some(path) = find(NAT_PROGRAM) else {
        return check(name, false, "not installed: steps have no private network".into(), Some(install.into()), true);
    };
    if rootless {
        // slirp4netns opens the tun device as the user.
        let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun");
        if let Err(e) = tun {
            return check(
                name,
                false,
                format!("{} is installed, but /dev/net/tun cannot be opened: {e}", path.display()),
                Some(
                    "as root: chmod 0666 /dev/net/tun (what udev's default rules set; `modprobe tun` if it is missing)"
                        .into(),
                ),
                true,
            );
        }
    }
    check(name, true, format!("{} (the private network of steps)", path.display()), None, true)
}

fn binfmt() -> Check {
    let name = "binfmt (arm64)";
    let entry = read_trimmed("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    let fix = "as root: apt-get install qemu-user-static binfmt-support (and `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` if it is not mounted)".to_owned();
    match entry {
        Some(text) if text.lines().next() == Some("enabled") => {
            let fixed = text.lines().any(|l| l.strip_prefix("flags:").is_some_and(|f| f.contains('F')));
            check(
                name,
                fixed,
                if fixed {
                    "qemu-aarch64 registered with flag F: arm64 steps run under emulation".into()
                } else {
                    "qemu-aarch64 registered without flag F: it is not found inside a step's root filesystem".into()
                },
                Some(
                    "register it with flag F: Debian's qemu-user-static does (update-binfmts --enable qemu-aarch64)"
                        .into(),
                ),
                false,
            )
        }
        Some(_) => check(name, false, "qemu-aarch64 is registered but disabled".into(), Some(fix), false),
        None => {
            check(name, false, "no qemu-aarch64 handler: steps of other platforms cannot run".into(), Some(fix), false)
        }
    }
}

fn docker_socket() -> Check {
    let name = "docker socket";
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
    let fix = "only for loading images into Docker: start Docker, and let the user in (the `docker` group)".to_owned();
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => check(name, true, format!("{} answers", socket.display()), None, false),
        Err(e) => check(name, false, format!("cannot connect to {}: {e}", socket.display()), Some(fix), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.11.22"), Some((5, 11)));
        assert!(kernel_version("5.10.0").is_some_and(|v| v < ROOTLESS_OVERLAY_KERNEL));
        assert_eq!(kernel_version("junk"), None);
    }

    #[test]
    fn ready_only_counts_needed_parts() {
        let part = |needed, status| Check { name: "x", status, detail: String::new(), fix: None, needed };
        let report = |checks| Report { rootless: true, checks };
        assert!(report(vec![part(true, Status::Present), part(false, Status::Missing)]).ready());
        assert!(report(vec![part(true, Status::NotNeeded)]).ready());
        assert!(!report(vec![part(true, Status::Missing)]).ready());
    }
}
