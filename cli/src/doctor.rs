//! `bake doctor`: the engine checks the machine (`sandbox::doctor`), this
//! prints one line per part, the fix under each missing one, and a verdict;
//! the exit code is 0 when every needed part is present, else 3.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bake_engine::sandbox::Entered;
use bake_engine::sandbox::doctor::{Report, Status, checks};

use crate::commands::{EXIT_ENVIRONMENT, Failure};

pub(crate) fn doctor(entered: &Entered) -> Result<(), Failure> {
    let report = checks(entered, &probe_dir());
    crate::out(&render(&report)).map_err(|_| Failure::Exit(EXIT_ENVIRONMENT))?;
    if report.ready() { Ok(()) } else { Err(Failure::Exit(EXIT_ENVIRONMENT)) }
}

/// Where upper folders would go: bake's home, or the nearest folder above
/// it that exists (the doctor creates nothing); the temporary folder without
/// a home.
fn probe_dir() -> PathBuf {
    let Some(home) = bake_engine::home::Home::from_env() else { return std::env::temp_dir() };
    home.root().ancestors().find(|d| d.is_dir()).map_or_else(std::env::temp_dir, Path::to_path_buf)
}

/// The report as printed.
pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        if report.rootless {
            "bake runs rootless here: in a user namespace of its own, as root there"
        } else {
            "bake runs as root here"
        }
    );
    let width = report.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &report.checks {
        let status = match c.status {
            Status::Present => "ok",
            Status::Missing if c.needed => "MISSING",
            Status::Missing => "missing",
            Status::NotNeeded => "-",
        };
        let _ = writeln!(out, "{status:<8} {:<width$}  {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "{:<8} {:<width$}  fix: {fix}", "", "");
        }
    }
    let missing: Vec<&str> =
        report.checks.iter().filter(|c| c.needed && c.status == Status::Missing).map(|c| c.name).collect();
    if missing.is_empty() {
        out.push_str("ready: every part `run` steps need is present (lower-case `missing`: optional)\n");
    } else {
        let _ = writeln!(out, "not ready: `run` steps need {}", missing.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use bake_engine::sandbox::doctor::Check;

    use super::*;

    fn part(name: &'static str, status: Status, detail: &str, fix: Option<&str>, needed: bool) -> Check {
        Check { name, status, detail: detail.into(), fix: fix.map(Into::into), needed }
    }

    #[test]
    fn a_rootless_machine_without_subordinate_ids() {
        let report = Report {
            rootless: true,
            checks: vec![
                part("kernel", Status::Present, "Linux 6.1.0", None, false),
                part("user namespaces", Status::Present, "allowed", None, true),
                part("subordinate ids", Status::Missing, "0 uids and 0 gids for bob", Some("usermod ..."), true),
                part("binfmt (arm64)", Status::Missing, "no qemu-aarch64 handler", Some("apt-get install ..."), false),
            ],
        };
        insta::assert_snapshot!(render(&report), @r"
        bake runs rootless here: in a user namespace of its own, as root there
        ok       kernel           Linux 6.1.0
        ok       user namespaces  allowed
        MISSING  subordinate ids  0 uids and 0 gids for bob
                                  fix: usermod ...
        missing  binfmt (arm64)   no qemu-aarch64 handler
                                  fix: apt-get install ...
        not ready: `run` steps need subordinate ids
        ");
    }

    #[test]
    fn root_needs_no_user_namespace() {
        let report = Report {
            rootless: false,
            checks: vec![
                part("user namespaces", Status::NotNeeded, "bake runs as root", None, false),
                part("overlayfs", Status::Present, "mounts as root", None, true),
            ],
        };
        insta::assert_snapshot!(render(&report), @r"
        bake runs as root here
        -        user namespaces  bake runs as root
        ok       overlayfs        mounts as root
        ready: every part `run` steps need is present (lower-case `missing`: optional)
        ");
    }
}
