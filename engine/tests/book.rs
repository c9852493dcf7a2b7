//! The book's examples are checked against the code, so the documentation
//! cannot drift from the language.
//!
//! Fenced blocks are picked by their info string (the text after the opening
//! fence), matched exactly after trimming:
//!
//! - ```` ```kdl ````: a complete `build.kdl`; it must load and plan.
//! - ```` ```kdl config ````: a complete bake config file (`config.kdl`); it
//!   must parse with [`Config::from_str`].
//!
//! Any other info string that starts with `kdl` fails the test, so that a
//! typo cannot silently exempt a block. Blocks of other languages (`text`,
//! `console`, `json`, ...) are not checked.

use std::path::{Path, PathBuf};

use bake_engine::config::Config;
use bake_engine::graph::Plan;
use bake_engine::lang::{LoadOptions, load_str};

fn book_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src")
}

fn book_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(book_src())
        .expect("book/src")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// What a fenced `kdl` block holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// ```` ```kdl ````
    Build,
    /// ```` ```kdl config ````
    Config,
    /// Another info string starting with `kdl`.
    Unknown(String),
}

/// A `kdl` block of a page.
struct Block {
    line: usize,
    kind: Kind,
    code: String,
}

/// Every fenced block whose info string starts with `kdl`.
fn kdl_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    // The fence of the block we are in (its backticks), and the block if it is kdl.
    let mut open: Option<(String, Option<Block>)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let ticks = trimmed.len() - trimmed.trim_start_matches('`').len();
        match &mut open {
            None if ticks >= 3 => {
                let fence = trimmed[..ticks].to_owned();
                let info = trimmed[ticks..].trim();
                let block = info.starts_with("kdl").then(|| Block {
                    line: i + 1,
                    kind: match info {
                        "kdl" => Kind::Build,
                        "kdl config" => Kind::Config,
                        other => Kind::Unknown(other.to_owned()),
                    },
                    code: String::new(),
                });
                open = Some((fence, block));
            }
            // A closing fence: at least as many backticks, nothing after them.
            Some((fence, _)) if ticks >= fence.len() && trimmed[ticks..].trim().is_empty() => {
                if let Some((_, Some(block))) = open.take() {
                    blocks.push(block);
                }
            }
            Some((_, Some(block))) => {
                block.code.push_str(line);
                block.code.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn every_kdl_block_in_the_book_loads_and_plans() {
    // Each snippet is a service's file two folders below a monorepo's root,
    // so `context=".."` and `context="../.."` stay inside the workspace.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("services/app");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // The Dockerfile that `dockerfile` nodes of the book name.
    std::fs::create_dir_all(dir.join("svc")).expect("mkdir");
    std::fs::write(
        dir.join("svc/Dockerfile"),
        "FROM golang:1.19 AS builder\nRUN mkdir /out && touch /out/app\nFROM busybox:1.35 AS app\nCOPY --from=builder /out/app /app\n",
    )
    .expect("write a Dockerfile");
    let options = LoadOptions { workspace: Some(root.path().to_path_buf()), ..LoadOptions::default() };
    let (mut builds, mut configs) = (0, 0);
    let mut failures = Vec::new();
    for page in book_pages() {
        let text = std::fs::read_to_string(&page).expect("read page");
        let file = page.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for block in kdl_blocks(&text) {
            let name = format!("{file}:{}", block.line);
            match &block.kind {
                Kind::Build => {
                    builds += 1;
                    match load_str("build.kdl", &dir, &block.code, &options) {
                        Ok(ws) => {
                            if let Err(e) = Plan::build(&ws, &[]) {
                                failures.push(format!("{name}: {e}"));
                            }
                        }
                        Err(e) => failures.push(format!("{name}: {:?}", miette::Report::new(e))),
                    }
                }
                Kind::Config => {
                    configs += 1;
                    if let Err(e) = Config::from_str("config.kdl", &block.code) {
                        failures.push(format!("{name}: {:?}", miette::Report::new(e)));
                    }
                }
                Kind::Unknown(info) => failures.push(format!(
                    "{name}: unknown block kind ```{info}: use ```kdl for a build.kdl, ```kdl config for a config file"
                )),
            }
        }
    }
    assert!(failures.is_empty(), "book snippets that do not load:\n{}", failures.join("\n"));
    assert!(builds >= 10, "expected the book to hold build.kdl examples, found {builds}");
    assert!(configs >= 1, "expected the book to hold config file examples, found {configs}");
    eprintln!("checked {builds} build.kdl blocks and {configs} config blocks");
}

#[test]
fn block_kinds_follow_the_info_string() {
    let text = "```kdl\nstage \"a\" from=\"scratch\"\n```\n\n```kdl config\nstore max-size=1\n```\n\n\
                ````text\n```kdl\nnot a block\n```\n````\n\n```kdl conifg\nx\n```\n";
    let blocks = kdl_blocks(text);
    let kinds: Vec<&Kind> = blocks.iter().map(|b| &b.kind).collect();
    assert_eq!(kinds, [&Kind::Build, &Kind::Config, &Kind::Unknown("kdl conifg".to_owned())]);
    assert_eq!(blocks[0].code, "stage \"a\" from=\"scratch\"\n");
    assert_eq!(blocks[1].code, "store max-size=1\n");
    assert_eq!(blocks[1].line, 5);
}

#[test]
fn summary_links_resolve() {
    let src = book_src();
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("SUMMARY.md");
    for part in summary.split("](").skip(1) {
        let target = part.split(')').next().unwrap_or_default();
        assert!(src.join(target).is_file(), "SUMMARY.md links to missing {target}");
    }
}
