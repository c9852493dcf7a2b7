//! The system call filter of a `run` step: Docker's default seccomp profile,
//! kept as data and compiled here when a step starts.
//!
//! `docker-default.json` is moby's default profile, unchanged:
//! `github.com/moby/profiles/seccomp` v0.2.3 as vendored in moby/moby at
//! `vendor/github.com/moby/profiles/seccomp/default.json` (moby commit
//! `b985e2313a8676e18072b442911fc8f64f17d440`, August 2026), licensed
//! Apache-2.0, copyright Docker, Inc. and the moby contributors. Replace the file to follow a newer
//! profile; nothing else here needs to change.
//!
//! The profile is read as Docker reads it for a container with the step's
//! capabilities:
//!
//! - an entry whose `includes` names an architecture other than this one, a
//!   capability the step lacks or a newer kernel than this one is left out;
//!   so is one whose `excludes` names this architecture or a capability the
//!   step has (so `clone` is allowed only without namespace flags, and
//!   `unshare`, `mount`, `setns` are refused, unless the step has
//!   CAP_SYS_ADMIN);
//! - argument conditions (`socket` families, `personality` values, `clone`
//!   flags) become rules on 64-bit arguments, as libseccomp compares them;
//! - the default action is `EPERM`; an entry with its own errno (`clone3`
//!   gives `ENOSYS`, so that C libraries fall back to `clone`, whose flags
//!   the filter can see) becomes a second filter loaded after the first: for
//!   two errno answers the kernel keeps the newest filter's.
//!
//! [`seccompiler`] (Firecracker's, pure Rust) turns the rules into BPF. It
//! checks the architecture first and kills the process on a mismatch, so
//! unlike Docker (whose filter also lists i386 and x32 numbers) a step
//! cannot make 32-bit x86 system calls. Names this architecture does not
//! have (`chown32`, `_llseek`, ...) are skipped, as libseccomp skips them.
//! Compiling takes well under a millisecond; it is done once per step, in
//! the helper, before the fork.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use serde::Deserialize;

#[cfg(target_arch = "x86_64")]
mod x86_64;

/// Docker's default profile (see the module docs for its source).
const PROFILE: &str = include_str!("docker-default.json");

/// This machine's architecture as the profile names it (Go's `GOARCH`) and
/// as seccompiler does, with its system call numbers.
#[cfg(target_arch = "x86_64")]
const ARCH: (&str, TargetArch, &[(&str, i64)]) = ("amd64", TargetArch::x86_64, x86_64::SYSCALLS);

/// The capability names of the profile, by number (`linux/capability.h`).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_errno_ret: u32,
    syscalls: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    args: Vec<Arg>,
    errno_ret: Option<u32>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    min_kernel: Option<String>,
}

/// The filters to load, in order, for a step holding `caps` (capability
/// numbers) on a kernel of version `kernel` (major, minor).
pub(crate) fn compile(caps: &[u32], kernel: (u32, u32)) -> Result<Vec<BpfProgram>, String> {
    #[cfg(target_arch = "x86_64")]
    {
        compile_for(ARCH, caps, kernel)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (caps, kernel);
        Err(format!("bake has no system call table for {} yet", std::env::consts::ARCH))
    }
}

/// The running kernel's version, from `uname`; (0, 0) when unreadable, which
/// leaves out every entry that needs a minimum version.
pub(crate) fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    parse_version(&release).unwrap_or((0, 0))
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn compile_for(
    (arch_name, arch, table): (&str, TargetArch, &[(&str, i64)]),
    caps: &[u32],
    kernel: (u32, u32),
) -> Result<Vec<BpfProgram>, String> {
    let profile: Profile = serde_json::from_str(PROFILE).map_err(|e| format!("the seccomp profile is invalid: {e}"))?;
    let has = |name: &String| {
        CAP_NAMES.iter().position(|n| n == name).is_some_and(|i| u32::try_from(i).is_ok_and(|i| caps.contains(&i)))
    };
    let number = |name: &str| table.binary_search_by(|(n, _)| n.cmp(&name)).ok().map(|i| table[i].1);
    let mut allowed = Rules::new();
    // errno -> the calls that answer it.
    let mut errnos: BTreeMap<u32, Rules> = BTreeMap::new();
    for entry in &profile.syscalls {
        let inc = &entry.includes;
        let exc = &entry.excludes;
        let applies = (inc.arches.is_empty() || inc.arches.iter().any(|a| a == arch_name))
            && inc.caps.iter().all(has)
            && inc.min_kernel.as_deref().and_then(parse_version).is_none_or(|min| kernel >= min)
            && !exc.arches.iter().any(|a| a == arch_name)
            && !exc.caps.iter().any(has);
        if !applies {
            continue;
        }
        let rules = match entry.action.as_str() {
            "SCMP_ACT_ALLOW" => &mut allowed,
            "SCMP_ACT_ERRNO" => errnos.entry(entry.errno_ret.unwrap_or(profile.default_errno_ret)).or_default(),
            other => return Err(format!("the seccomp profile uses the action {other}, which bake does not know")),
        };
        let rule = if entry.args.is_empty() { None } else { Some(rule_of(&entry.args)?) };
        for nr in entry.names.iter().filter_map(|n| number(n)) {
            add(rules, nr, rule.clone());
        }
    }
    let mut programs =
        vec![program(allowed, SeccompAction::Errno(profile.default_errno_ret), SeccompAction::Allow, arch)?];
    for (errno, rules) in errnos {
        programs.push(program(rules, SeccompAction::Allow, SeccompAction::Errno(errno), arch)?);
    }
    Ok(programs)
}

/// A call with no rule matches whatever its arguments; rules are alternatives.
fn add(rules: &mut Rules, nr: i64, rule: Option<SeccompRule>) {
    match (rules.get_mut(&nr), rule) {
        // Already allowed whatever the arguments.
        (Some(existing), _) if existing.is_empty() => {}
        (Some(existing), Some(rule)) => existing.push(rule),
        (Some(existing), None) => existing.clear(),
        (None, rule) => {
            rules.insert(nr, rule.into_iter().collect());
        }
    }
}

fn rule_of(args: &[Arg]) -> Result<SeccompRule, String> {
    let conditions = args
        .iter()
        .map(|a| {
            let (op, value) = match a.op.as_str() {
                "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, a.value),
                "SCMP_CMP_NE" => (SeccompCmpOp::Ne, a.value),
                "SCMP_CMP_LT" => (SeccompCmpOp::Lt, a.value),
                "SCMP_CMP_LE" => (SeccompCmpOp::Le, a.value),
                "SCMP_CMP_GT" => (SeccompCmpOp::Gt, a.value),
                "SCMP_CMP_GE" => (SeccompCmpOp::Ge, a.value),
                // libseccomp: (arg & value) == valueTwo.
                "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
                other => return Err(format!("the seccomp profile compares with {other}, which bake does not know")),
            };
            SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

fn program(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, String> {
    SeccompFilter::new(rules, mismatch, matched, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| format!("cannot compile the seccomp profile: {e}"))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_knows_the_profile() {
        assert!(x86_64::SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        let profile: Profile = serde_json::from_str(PROFILE).expect("profile");
        for name in ["read", "clone", "clone3", "socket", "personality", "unshare", "mount", "cachestat", "mseal"] {
            assert!(profile.syscalls.iter().any(|e| e.names.iter().any(|n| n == name)), "{name}");
            assert!(x86_64::SYSCALLS.iter().any(|(n, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn docker_capabilities_give_two_filters_and_sys_admin_lifts_the_clone_rule() {
        let docker = crate::sandbox::init::CAPABILITIES;
        let programs = compile(&docker, (6, 1)).expect("compiles");
        // The allow list, then clone3 -> ENOSYS.
        assert_eq!(programs.len(), 2);
        let mut admin = docker.to_vec();
        admin.push(21);
        let with_admin = compile(&admin, (6, 1)).expect("compiles");
        // clone3 is allowed outright with CAP_SYS_ADMIN: no errno filter.
        assert_eq!(with_admin.len(), 1);
        assert_ne!(with_admin[0], programs[0]);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.18.44-fc-v1252"), Some((6, 18)));
        assert_eq!(parse_version("4.8"), Some((4, 8)));
        assert_eq!(parse_version("x"), None);
    }
}
