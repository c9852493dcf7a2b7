//! Every `kdl` block in the book is a complete build.kdl that loads and plans,
//! so the documentation cannot drift from the language.

use std::path::{Path, PathBuf};

use bake_engine::graph::Plan;
use bake_engine::lang::{LoadOptions, load_str};

fn book_pages() -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("book/src")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// `(line, code)` of every fenced block whose info string starts with `kdl`.
fn kdl_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.starts_with("```kdl") => current = Some((i + 1, String::new())),
            Some(_) if trimmed.starts_with("```") => blocks.extend(current.take()),
            Some((_, code)) => {
                code.push_str(line);
                code.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_kdl_block_in_the_book_loads_and_plans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in book_pages() {
        let text = std::fs::read_to_string(&page).expect("read page");
        for (line, code) in kdl_blocks(&text) {
            let name = format!("{}:{line}", page.file_name().unwrap_or_default().to_string_lossy());
            match load_str("build.kdl", dir.path(), &code, &LoadOptions::default()) {
                Ok(ws) => {
                    if let Err(e) = Plan::build(&ws, &[]) {
                        failures.push(format!("{name}: {e}"));
                    }
                }
                Err(e) => failures.push(format!("{name}: {:?}", miette::Report::new(e))),
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "book snippets that do not load:\n{}", failures.join("\n"));
    assert!(checked >= 10, "expected the book to hold kdl examples, found {checked}");
}

#[test]
fn summary_links_resolve() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("SUMMARY.md");
    for part in summary.split("](").skip(1) {
        let target = part.split(')').next().unwrap_or_default();
        assert!(src.join(target).is_file(), "SUMMARY.md links to missing {target}");
    }
}
