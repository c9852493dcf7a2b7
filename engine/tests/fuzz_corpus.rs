//! Replays the fuzzers' corpora (`fuzz/corpus/pipeline`, and
//! `fuzz/corpus/hostile` through its generator) and the language fixtures
//! through the whole front end: parse -> resolve -> plan -> keys. None of them
//! may panic, and each must end within a second (issue 11's bound for hostile
//! input).
//!
//! The second is measured as CPU time of this process (all its threads), not
//! wall-clock time: the tests share a small machine with builds and fuzzers,
//! and a loaded machine stretches wall time without the work growing.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bound issue 11 sets on any input.
const BOUND: Duration = Duration::from_secs(1);

/// CPU time this process has used (user + system, every thread), from
/// `/proc/self/stat`, in clock ticks of 10 ms.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold
    // spaces: the first is field 3 (the state), so field N is at N - 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime.
    let ticks = field(14) + field(15);
    Duration::from_millis(ticks * 10)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs one input, returning the CPU time it took.
fn timed(run: impl FnOnce()) -> Duration {
    let started = cpu_time();
    run();
    cpu_time().saturating_sub(started)
}

#[test]
fn corpus_and_fixtures_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut inputs = files(&root.join("fuzz/corpus/pipeline"));
    for entry in std::fs::read_dir(root.join("tests/lang")).expect("tests/lang").filter_map(Result::ok) {
        inputs.push(entry.path().join("build.kdl"));
    }
    inputs.sort();
    let mut ran = 0;
    let mut slow = Vec::new();
    for path in &inputs {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let took = timed(|| bake_engine::fuzz::pipeline(text));
            if took > BOUND {
                slow.push(format!("{}: {took:?}", path.display()));
            }
            ran += 1;
        }
    }
    assert!(ran >= 20, "expected a corpus to replay, ran {ran}");
    assert!(slow.is_empty(), "inputs slower than {BOUND:?}:\n{}", slow.join("\n"));
    assert!(cpu_time() > Duration::ZERO, "no CPU time read from /proc/self/stat: the bound checked nothing");
}

#[test]
fn hostile_corpus_ends_fast_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let inputs = files(&root.join("fuzz/corpus/hostile"));
    assert!(inputs.len() >= 20, "expected the hostile corpus, found {}", inputs.len());
    let mut slow = Vec::new();
    for path in &inputs {
        let bytes = std::fs::read(path).expect("read corpus file");
        let text = bake_engine::fuzz::hostile(&bytes);
        let took = timed(|| bake_engine::fuzz::pipeline(&text));
        if took > BOUND {
            slow.push(format!("{} ({} bytes of build file): {took:?}", path.display(), text.len()));
        }
    }
    assert!(slow.is_empty(), "inputs slower than {BOUND:?}:\n{}", slow.join("\n"));
    assert!(cpu_time() > Duration::ZERO, "no CPU time read from /proc/self/stat: the bound checked nothing");
}
