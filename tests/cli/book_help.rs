//! The book shows `bake ... --help` output verbatim; this keeps it true. Each
//! ```console block that starts with `$ bake ... --help` must hold exactly what
//! the binary prints at 80 columns. `BAKE_UPDATE_BOOK=1 cargo test` rewrites
//! the blocks instead of failing.

use std::process::Command;

use crate::harness::root;

fn help(args: &[&str]) -> String {
    let out = Command::new(crate::harness::bake_bin()).args(args).env("COLUMNS", "80").output().expect("run bake");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_blocks_in_the_book_match_the_binary() {
    let update = std::env::var_os("BAKE_UPDATE_BOOK").is_some();
    let mut checked = 0;
    let mut stale = Vec::new();
    for page in std::fs::read_dir(root().join("book/src")).expect("book/src").filter_map(Result::ok) {
        let path = page.path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut out = String::with_capacity(text.len());
        let mut lines = text.split_inclusive('\n').peekable();
        while let Some(line) = lines.next() {
            out.push_str(line);
            let command = line.trim_end().strip_prefix("$ bake ").filter(|c| c.ends_with("--help"));
            let Some(command) = command else { continue };
            let mut shown = String::new();
            while let Some(l) = lines.peek() {
                if l.starts_with("```") {
                    break;
                }
                shown.push_str(l);
                lines.next();
            }
            let args: Vec<&str> = command.split_whitespace().collect();
            let actual = help(&args);
            if shown != actual {
                stale.push(format!("{}: `bake {command}`", path.display()));
            }
            out.push_str(&actual);
            checked += 1;
        }
        if update && out != text {
            std::fs::write(&path, out).expect("write");
        }
    }
    assert!(checked > 0, "the book shows no help output");
    assert!(
        update || stale.is_empty(),
        "help in the book differs from the binary (BAKE_UPDATE_BOOK=1 updates it):\n{}",
        stale.join("\n")
    );
}
