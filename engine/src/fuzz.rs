//! The front end as one function, for the fuzzer (`fuzz/`) and for the test
//! that replays its corpus on every `cargo test`.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::graph::{KeyOptions, Plan};
use crate::lang::{LoadOptions, load_str};

/// An empty folder the fuzzed `build.kdl` pretends to live in.
fn sandbox() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bake-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// Parse, resolve, plan every target, and compute keys. Never panics on any
/// input (that is what the fuzzer checks); errors are simply dropped.
pub fn pipeline(text: &str) {
    let dir = sandbox();
    let options = LoadOptions { set: vec![("FUZZ".to_owned(), "x".to_owned())], ..LoadOptions::default() };
    let Ok(ws) = load_str("build.kdl", dir, text, &options) else {
        return;
    };
    let mut names: Vec<Vec<String>> = vec![Vec::new()];
    names.extend(ws.member_names().into_iter().map(|n| vec![n.to_owned()]));
    for targets in names {
        let Ok(mut plan) = Plan::build(&ws, &targets) else {
            continue;
        };
        let _ = plan.render(&ws, crate::graph::Format::Dot);
        // Hash only contexts inside the sandbox: `context="/"` would walk the host.
        if ws.stages.iter().all(|s| s.context.starts_with(dir)) {
            let _ = plan.compute_keys(&ws, &KeyOptions { include_pruned: true, ..KeyOptions::default() });
            let _ = plan.render(&ws, crate::graph::Format::Json);
        }
    }
}
