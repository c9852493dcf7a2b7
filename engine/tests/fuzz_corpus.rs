//! Replays the fuzzers' corpora (`fuzz/corpus/pipeline`, and
//! `fuzz/corpus/hostile` through its generator) and the language fixtures
//! through the whole front end: parse -> resolve -> plan -> keys. None of them
//! may panic, and each must end within a second (issue 11's bound for hostile
//! input).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The bound issue 11 sets on any input.
const BOUND: Duration = Duration::from_secs(1);

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Runs one input, returning how long it took.
fn timed(run: impl FnOnce()) -> Duration {
    let started = Instant::now();
    run();
    started.elapsed()
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
}
