//! Entry points for the fuzz targets in `fuzz/`, and for the test that
//! replays their corpora on every `cargo test`.
//!
//! - [`pipeline`]: the front end as one function; [`hostile`], a generator
//!   of the inputs that ask for unbounded work (nesting, expansion, many
//!   errors).
//! - [`tar`] and [`unpack`] (`layers.rs`): registry bytes as a layer, read and
//!   extracted into a scratch folder that nothing may leave;
//!   [`hostile_layers`] (`tarball.rs`) builds their seeds.
//! - [`manifest`] (`documents.rs`): registry bytes as manifests, indexes and
//!   image configs.
//! - [`dockerfile()`] (`dockerfile.rs`): text as a Dockerfile, parsed and
//!   expanded.

mod dockerfile;
mod documents;
mod layers;
mod tarball;

pub use dockerfile::dockerfile;
pub use documents::manifest;
pub use layers::{LIMITS, tar, unpack};
pub use tarball::hostile_layers;

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

/// Largest text [`hostile`] writes: past the default file size limit, so that
/// limit is exercised too, small enough for thousands of runs a minute.
const HOSTILE_MAX: usize = 1_200_000;

/// Turns fuzzer bytes into a build file made of the shapes that cost the
/// front end the most, each sized by the input: nested comments and children,
/// arg chains, doubling args and cycles, unknown properties and nodes, long
/// lines, `from=` and `copy from=` chains, slashdash and type annotations,
/// include globs (inside the fuzz folder), `env` carried by many steps, and
/// raw bytes between them.
///
/// Each pair of bytes is one shape: the first picks it, the second its size.
pub fn hostile(data: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut chunks = data.chunks(2);
    let mut n = 0usize;
    while let Some(chunk) = chunks.next() {
        if out.len() > HOSTILE_MAX {
            break;
        }
        let (op, size) = (chunk[0], usize::from(chunk.get(1).copied().unwrap_or(1)));
        n += 1;
        let p = format!("h{n}");
        match op % 21 {
            0 => {
                let k = size * 8;
                let _ = writeln!(out, "{}x{}", "/*".repeat(k), "*/".repeat(k));
            }
            1 => {
                let k = size;
                let _ = writeln!(out, "stage \"{p}\" from=\"scratch\" {}{}", "{ run \"x\" ".repeat(k), "}".repeat(k));
            }
            2 => {
                for i in 0..size * 16 {
                    let _ = writeln!(out, "arg \"{p}_{i}\" default=\"${{{p}_{}}}\"", i + 1);
                }
                let _ = writeln!(out, "arg \"{p}_{}\" default=\"end\"", size * 16);
            }
            3 => {
                let _ = writeln!(out, "arg \"{p}_0\" default=\"0123456789\"");
                for i in 0..size % 48 {
                    let _ = writeln!(out, "arg \"{p}_{}\" default=\"${{{p}_{i}}}${{{p}_{i}}}\"", i + 1);
                }
                let _ = writeln!(out, "stage \"{p}\" from=\"busybox\" {{ run \"${{{p}_{}}}\" }}", size % 48);
            }
            4 => {
                let _ = write!(out, "stage \"{p}\" from=\"scratch\"");
                for i in 0..size * 8 {
                    let _ = write!(out, " q{i}=\"v\"");
                }
                out.push('\n');
            }
            5 => {
                for i in 0..size * 64 {
                    let _ = writeln!(out, "{p}n{i}");
                }
            }
            6 => {
                let _ = writeln!(out, "stage \"{p}_0\" from=\"busybox\"");
                for i in 0..size * 4 {
                    let _ = writeln!(out, "stage \"{p}_{}\" from=\"{p}_{i}\" {{ run \"true\" }}", i + 1);
                }
            }
            7 => {
                let _ = writeln!(out, "stage \"{p}_0\" from=\"busybox\"");
                for i in 0..size * 4 {
                    let _ = writeln!(
                        out,
                        "stage \"{p}_{}\" from=\"busybox\" {{ copy \"/x\" to=\"/\" from=\"{p}_{i}\" }}",
                        i + 1
                    );
                }
            }
            8 => {
                let _ = writeln!(out, "{}stage \"{p}\" from=\"scratch\"", "/- ".repeat(size * 8));
            }
            9 => {
                let _ = writeln!(out, "{}stage \"{p}\" from=\"scratch\"", "(t)".repeat(size));
            }
            10 => {
                let _ = writeln!(out, "stage \"{p}\" from=\"{}\" {}", "a".repeat(size * 512), "x ".repeat(size));
            }
            11 => {
                for i in 0..size {
                    let _ = writeln!(out, "arg \"{p}_{i}\" default=\"${{{p}_{}}}\"", (i + 1) % size.max(1));
                }
            }
            12 => {
                let glob = ["**/build.kdl", "*/*/*", "../*", "/**", "**/../**", "[", "./**/x/**"][size % 7];
                let _ = writeln!(out, "include \"{glob}\"");
            }
            13 => {
                // The next bytes verbatim: KDL syntax the shapes above do not write.
                let take = size.min(64);
                let mut raw = Vec::new();
                for c in chunks.by_ref().take(take / 2) {
                    raw.extend_from_slice(c);
                }
                out.push_str(&String::from_utf8_lossy(&raw));
                out.push('\n');
            }
            14 => {
                let _ = writeln!(out, "target \"{p}_0\" \"{p}_1\"");
                for i in 1..size * 4 {
                    let _ = writeln!(out, "target \"{p}_{i}\" \"{p}_{}\"", i + 1);
                }
            }
            15 => {
                let _ = writeln!(out, "arg \"{p}\" default=\"{}\"", "z".repeat(size * 1024));
                for i in 0..size * 4 {
                    let _ = writeln!(out, "stage \"{p}_{i}\" from=\"busybox\" {{ run \"${{{p}}}\" }}");
                }
            }
            16 => {
                let _ = writeln!(out, "stage \"{p}\" from=\"busybox\" {{");
                for i in 0..size * 8 {
                    let _ = writeln!(out, "    bogus{i} \"x\"\n    run \"${{nope{i}}}\"");
                }
                out.push_str("}\n");
            }
            17 => {
                let _ = writeln!(out, "{}", "\"".repeat(size * 4));
            }
            18 => {
                let _ = writeln!(out, "stage \"{p}\" from=\"busybox\" context=\"{}\"", "../".repeat(size % 8));
                let _ =
                    writeln!(out, "artifact \"{p}a\" from=\"{p}\" path=\"/x\" dest=\"{}x\"", "../".repeat(size % 8));
            }
            19 => {
                let _ = writeln!(out, "{}", "{".repeat(size));
            }
            _ => {
                let _ = writeln!(out, "stage \"{p}\" from=\"busybox\" {{");
                for i in 0..size * 8 {
                    let _ = writeln!(out, "    env \"E{i}\" \"v\"");
                }
                for i in 0..size * 8 {
                    let _ = writeln!(out, "    run \"r{i}\"");
                }
                out.push_str("}\n");
            }
        }
    }
    out
}
