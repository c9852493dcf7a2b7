//! Replays the fuzzers' corpora (`fuzz/corpus/pipeline`, and
//! `fuzz/corpus/hostile` through its generator) and the language fixtures
//! through the whole front end: parse -> resolve -> plan -> keys. None of them
//! may panic, and each must end within a second (issue 11's bound for hostile
//! input).
//!
//! The registry-side corpora are replayed too: `fuzz/corpus/tar` and
//! `fuzz/corpus/unpack` (with the hostile layers they were seeded from)
//! through the layer reader and extraction, where nothing may land outside
//! the scratch folder, and `fuzz/corpus/manifest` through the manifest,
//! index and config decoders. `fuzz/corpus/dockerfile` and the Dockerfile
//! fixtures go through the Dockerfile parser and expansion.
//!
//! The second is measured as CPU time of this process (all its threads), not
//! wall-clock time: the tests share a small machine with builds and fuzzers,
//! and a loaded machine stretches wall time without the work growing.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bound issue 11 sets on any input.
const BOUND: Duration = Duration::from_secs(1);

/// CPU time the calling thread has used (user + system), from
/// `/proc/thread-self/stat`, in clock ticks of 10 ms. The thread's own, not
/// the process's: the other tests of this file run on threads beside it.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
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
    assert!(cpu_time() > Duration::ZERO, "no CPU time read from /proc/thread-self/stat: the bound checked nothing");
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
    assert!(cpu_time() > Duration::ZERO, "no CPU time read from /proc/thread-self/stat: the bound checked nothing");
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(name);
    files(&root)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read corpus file");
            (path.display().to_string(), bytes)
        })
        .collect()
}

#[test]
fn layer_corpora_stay_inside_their_folder() {
    let mut inputs = bake_engine::fuzz::hostile_layers();
    let seeds = inputs.len();
    inputs.extend(corpus("tar"));
    inputs.extend(corpus("unpack"));
    assert!(inputs.len() > seeds + 20, "expected the tar and unpack corpora, found {}", inputs.len() - seeds);
    let mut slow = Vec::new();
    for (name, bytes) in &inputs {
        // A panic names the input through this hook-free message.
        let took = timed(|| {
            let run = std::panic::catch_unwind(|| {
                bake_engine::fuzz::tar(bytes);
                bake_engine::fuzz::unpack(bytes);
            });
            if let Err(panic) = run {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                panic!("{name}: {message}");
            }
        });
        if took > BOUND {
            slow.push(format!("{name}: {took:?}"));
        }
    }
    assert!(slow.is_empty(), "inputs slower than {BOUND:?}:\n{}", slow.join("\n"));
}

#[test]
fn manifest_corpus_never_panics() {
    let inputs = corpus("manifest");
    assert!(inputs.len() >= 10, "expected the manifest corpus, found {}", inputs.len());
    for (name, bytes) in &inputs {
        if let Err(panic) = std::panic::catch_unwind(|| bake_engine::fuzz::manifest(bytes)) {
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("{name}: {message}");
        }
    }
}

/// Writes the hostile layers into the tar and unpack corpora as `seed-*`:
/// `cargo test --test fuzz_corpus -- --ignored write_layer_seeds`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the seeds change"]
fn write_layer_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for target in ["tar", "unpack"] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        for (name, bytes) in bake_engine::fuzz::hostile_layers() {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
}

#[test]
fn dockerfile_corpus_and_fixtures_never_panic_and_end_fast() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = corpus("dockerfile");
    let seeds = inputs.len();
    for entry in std::fs::read_dir(root.join("tests/dockerfile")).expect("tests/dockerfile").filter_map(Result::ok) {
        if let Ok(bytes) = std::fs::read(entry.path().join("Dockerfile")) {
            inputs.push((entry.path().display().to_string(), bytes));
        }
    }
    assert!(seeds >= 50, "expected the dockerfile corpus, found {seeds}");
    let mut slow = Vec::new();
    for (name, bytes) in &inputs {
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        let took = timed(|| {
            if let Err(panic) = std::panic::catch_unwind(|| bake_engine::fuzz::dockerfile(text)) {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                panic!("{name}: {message}");
            }
        });
        if took > BOUND {
            slow.push(format!("{name}: {took:?}"));
        }
    }
    assert!(slow.is_empty(), "inputs slower than {BOUND:?}:\n{}", slow.join("\n"));
}
