//! Replays the fuzzer's corpus (`fuzz/corpus/pipeline`) and the language
//! fixtures through the whole front end: none of them may panic.

use std::path::Path;

#[test]
fn corpus_and_fixtures_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut inputs = Vec::new();
    for dir in ["fuzz/corpus/pipeline"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            inputs.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    for entry in std::fs::read_dir(root.join("tests/lang")).expect("tests/lang").filter_map(Result::ok) {
        inputs.push(entry.path().join("build.kdl"));
    }
    inputs.sort();
    let mut ran = 0;
    for path in &inputs {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if let Ok(text) = std::str::from_utf8(&bytes) {
            bake_engine::fuzz::pipeline(text);
            ran += 1;
        }
    }
    assert!(ran >= 20, "expected a corpus to replay, ran {ran}");
}
