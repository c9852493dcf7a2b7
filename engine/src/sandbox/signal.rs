//! Signal names, parsed in one place: a `stopsignal` written in a build file
//! (checked and normalised when the file is lowered) and an image's
//! `StopSignal` (turned into the signal `bake run` and `bake watch` send to a
//! container to stop it).

use nix::sys::signal::Signal;

use super::FORWARDED_SIGNALS;

/// Standard signal names, without `SIG`, as Linux numbers them (1 to 31).
const NAMES: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM",
    "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO",
    "PWR", "SYS",
];

/// A signal name (`SIGTERM`, `TERM`, `sigint`, `SIGRTMIN+3`) or number, as a
/// build file's `stopsignal` may write it, normalised to `SIGTERM` form or the
/// number as written. `None` when it names no signal.
pub(crate) fn normalize(raw: &str) -> Option<String> {
    if let Ok(n) = raw.parse::<u8>() {
        return (1..=64).contains(&n).then(|| n.to_string());
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = name
        .strip_prefix("RTMIN+")
        .or_else(|| name.strip_prefix("RTMAX-"))
        .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 30));
    (NAMES.contains(&name) || rt || name == "RTMIN" || name == "RTMAX").then(|| format!("SIG{name}"))
}

/// The signal that stops a container whose image says `StopSignal: raw`
/// (`SIGTERM`, `TERM` or `15`): that signal when bake can forward it (see
/// [`FORWARDED_SIGNALS`]), else SIGTERM.
pub fn stop_signal(raw: &str) -> Signal {
    let raw = raw.trim();
    let parsed = match raw.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let name = if raw.starts_with("SIG") { raw.to_owned() } else { format!("SIG{raw}") };
            name.parse::<Signal>().ok()
        }
    };
    parsed.filter(|s| FORWARDED_SIGNALS.contains(s)).unwrap_or(Signal::SIGTERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_file_names() {
        assert_eq!(normalize("SIGTERM").as_deref(), Some("SIGTERM"));
        assert_eq!(normalize("int").as_deref(), Some("SIGINT"));
        assert_eq!(normalize("9").as_deref(), Some("9"));
        assert_eq!(normalize("SIGRTMIN+3").as_deref(), Some("SIGRTMIN+3"));
        assert_eq!(normalize("SIGFOO"), None);
        assert_eq!(normalize("65"), None);
    }

    #[test]
    fn image_stop_signals() {
        assert_eq!(stop_signal("SIGINT"), Signal::SIGINT);
        assert_eq!(stop_signal(" QUIT "), Signal::SIGQUIT);
        assert_eq!(stop_signal("1"), Signal::SIGHUP);
        // Not forwarded, or not a signal: the default.
        assert_eq!(stop_signal("SIGKILL"), Signal::SIGTERM);
        assert_eq!(stop_signal("nonsense"), Signal::SIGTERM);
    }
}
