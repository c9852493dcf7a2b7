//! The context against real folders.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// A context whose files are old enough to be trusted by the index.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        write(dir.path(), path, text);
    }
    dir
}

/// Waits until files written now are no longer racy.
fn settle() {
    std::thread::sleep(Duration::from_nanos(u64::try_from(RACY_NS).expect("positive")) + Duration::from_millis(20));
}

fn paths(sel: &Selection) -> Vec<&str> {
    sel.entries.iter().map(|e| e.path.as_str()).collect()
}

fn open(dir: &Path) -> Context {
    Context::open(dir, None).expect("open")
}

#[test]
fn selects_files_folders_globs_and_the_whole_context() {
    let d = tree(&[("a.txt", "a"), ("src/main.go", "m"), ("src/lib/x.go", "x"), ("b.md", "b")]);
    let ctx = open(d.path());
    assert_eq!(paths(&ctx.select(&["a.txt"], &[]).expect("file")), ["a.txt"]);
    assert_eq!(paths(&ctx.select(&["src"], &[]).expect("dir")), ["src", "src/lib", "src/lib/x.go", "src/main.go"]);
    assert_eq!(paths(&ctx.select(&["*.txt", "*.md"], &[]).expect("glob")), ["a.txt", "b.md"]);
    assert_eq!(paths(&ctx.select(&["src/*.go"], &[]).expect("glob")), ["src/main.go"]);
    assert_eq!(ctx.select(&["."], &[]).expect("all").len(), 6);
    // Leading `/` and `./` are the context root; overlapping sources count once.
    assert_eq!(paths(&ctx.select(&["/a.txt", "./a.txt"], &[]).expect("dedup")), ["a.txt"]);
}

#[test]
fn missing_sources_and_escapes_are_errors() {
    let d = tree(&[("a.txt", "a")]);
    let ctx = open(d.path());
    assert!(matches!(ctx.select(&["nope"], &[]), Err(ContextError::NoMatch { .. })));
    assert!(matches!(ctx.select(&["*.go"], &[]), Err(ContextError::NoMatch { .. })));
    assert!(matches!(ctx.select(&["../etc/passwd"], &[]), Err(ContextError::Escape { .. })));
    assert!(matches!(ctx.select(&["a/../../x"], &[]), Err(ContextError::Escape { .. })));
    assert!(matches!(ctx.select(&["[a"], &[]), Err(ContextError::Pattern { .. })));
    assert!(matches!(Context::open(&d.path().join("missing"), None), Err(ContextError::Missing { .. })));
}

#[test]
fn dockerignore_then_bakeignore() {
    let d = tree(&[
        (".dockerignore", "*.log\nbuild\n!build/keep.txt\nsecret.txt\n"),
        (".bakeignore", "!secret.txt\n"),
        ("app.log", "l"),
        ("sub/app.log", "l"),
        ("build/out.bin", "o"),
        ("build/keep.txt", "k"),
        ("secret.txt", "s"),
    ]);
    let ctx = open(d.path());
    let all = ctx.select(&["."], &[]).expect("all");
    assert_eq!(paths(&all), [".bakeignore", ".dockerignore", "build/keep.txt", "secret.txt", "sub", "sub/app.log"]);
    // An ignored file named explicitly is a clear error.
    let Err(ContextError::NoMatch { help: Some(help), .. }) = ctx.select(&["app.log"], &[]) else {
        panic!("expected no match")
    };
    assert!(help.contains(".dockerignore"), "{help}");
    // A folder whose own entry is ignored still selects what was re-included.
    assert_eq!(paths(&ctx.select(&["build"], &[]).expect("build")), ["build/keep.txt"]);
}

#[test]
fn bad_ignore_pattern_names_file_and_line() {
    let d = tree(&[(".dockerignore", "ok\n[unclosed\n")]);
    let Err(ContextError::IgnorePattern { line, .. }) = Context::open(d.path(), None) else {
        panic!("expected an error")
    };
    assert_eq!(line, 2);
}

#[test]
fn excludes_are_relative_to_each_source() {
    let d = tree(&[("src/README.md", "r"), ("src/main.go", "m"), ("src/docs/a.md", "a"), ("top.md", "t")]);
    let ctx = open(d.path());
    assert_eq!(
        paths(&ctx.select(&["src"], &["*.md"]).expect("sel")),
        ["src", "src/docs", "src/docs/a.md", "src/main.go"]
    );
    assert_eq!(paths(&ctx.select(&["src"], &["**/*.md"]).expect("sel")), ["src", "src/docs", "src/main.go"]);
    assert_eq!(paths(&ctx.select(&["src"], &["docs"]).expect("sel")), ["src", "src/README.md", "src/main.go"]);
    assert!(ctx.select(&["src"], &["[x"]).is_err());
}

#[test]
fn symlinks_are_kept_as_links_and_never_followed() {
    let outside = tree(&[("secret", "s")]);
    let d = tree(&[("a.txt", "a")]);
    std::os::unix::fs::symlink(outside.path(), d.path().join("out")).expect("link");
    std::os::unix::fs::symlink("a.txt", d.path().join("alias")).expect("link");
    let ctx = open(d.path());
    let sel = ctx.select(&["."], &[]).expect("all");
    assert_eq!(paths(&sel), ["a.txt", "alias", "out"]);
    assert_eq!(sel.entries[1].kind, EntryKind::Symlink("a.txt".to_owned()));
    // Going through a link that leaves the context finds nothing, and says why.
    let Err(ContextError::NoMatch { help: Some(help), .. }) = ctx.select(&["out/secret"], &[]) else {
        panic!("expected no match")
    };
    assert!(help.contains("symbolic link"), "{help}");
}

#[test]
fn digest_covers_content_mode_and_names_but_not_mtime_or_location() {
    let a = tree(&[("x/f", "one"), ("x/g", "two")]);
    let b = tree(&[("x/f", "one"), ("x/g", "two")]);
    let digest = |d: &Path| open(d).select(&["x"], &[]).expect("sel").digest;
    assert_eq!(digest(a.path()), digest(b.path()), "same tree, another folder");

    let f = std::fs::File::options().write(true).open(b.path().join("x/f")).expect("open");
    f.set_modified(SystemTime::now() - Duration::from_hours(1)).expect("touch");
    drop(f);
    assert_eq!(digest(a.path()), digest(b.path()), "mtime is not content");

    write(b.path(), "x/f", "ONE");
    assert_ne!(digest(a.path()), digest(b.path()), "content");
    write(b.path(), "x/f", "one");
    std::fs::set_permissions(b.path().join("x/f"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    assert_ne!(digest(a.path()), digest(b.path()), "mode");
    std::fs::set_permissions(b.path().join("x/f"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    std::fs::rename(b.path().join("x/g"), b.path().join("x/h")).expect("rename");
    assert_ne!(digest(a.path()), digest(b.path()), "names");
}

#[test]
fn warm_index_reads_nothing_and_sees_every_change() {
    let d = tree(&[("a", "1"), ("b", "2"), ("dir/c", "3")]);
    let index = tempfile::tempdir().expect("tempdir");
    let cold = Context::open(d.path(), Some(index.path())).expect("open");
    let first = cold.select(&["."], &[]).expect("sel").digest;
    assert_eq!(cold.files_read(), 3);
    // Just written: racy, so not trusted yet.
    cold.save_index().expect("save");
    let racy = Context::open(d.path(), Some(index.path())).expect("open");
    assert_eq!(racy.select(&["."], &[]).expect("sel").digest, first);
    assert_eq!(racy.files_read(), 3, "racy entries are read again");

    // A walk that starts once they settled trusts them.
    settle();
    let settled = Context::open(d.path(), Some(index.path())).expect("open");
    settled.select(&["."], &[]).expect("sel");
    settled.save_index().expect("save");
    let warm = Context::open(d.path(), Some(index.path())).expect("open");
    assert_eq!(warm.select(&["."], &[]).expect("sel").digest, first);
    assert_eq!(warm.files_read(), 0, "a settled, unchanged tree is only stat'ed");

    // Same size, new content: the stat data changed, so the file is read.
    write(d.path(), "b", "9");
    let changed = Context::open(d.path(), Some(index.path())).expect("open");
    assert_ne!(changed.select(&["."], &[]).expect("sel").digest, first);
    assert_eq!(changed.files_read(), 1);
}

#[test]
fn index_inside_the_context_is_not_walked() {
    let d = tree(&[("a", "1")]);
    let index = d.path().join(".bake/index");
    let ctx = Context::open(d.path(), Some(&index)).expect("open");
    ctx.select(&["."], &[]).expect("sel");
    settle();
    ctx.save_index().expect("save");
    let again = Context::open(d.path(), Some(&index)).expect("open");
    assert_eq!(paths(&again.select(&["."], &[]).expect("sel")), [".bake", "a"]);
}

#[test]
fn a_file_removed_after_the_walk_is_reported() {
    let d = tree(&[("a", "1"), ("b", "2")]);
    let ctx = open(d.path());
    std::fs::remove_file(d.path().join("b")).expect("rm");
    let Err(ContextError::Vanished { path }) = ctx.select(&["."], &[]) else { panic!("expected vanished") };
    assert!(path.ends_with("b"));
}

#[test]
fn sockets_and_fifos_are_skipped() {
    let d = tree(&[("a", "1")]);
    let _sock = std::os::unix::net::UnixListener::bind(d.path().join("sock")).expect("bind");
    assert_eq!(paths(&open(d.path()).select(&["."], &[]).expect("sel")), ["a"]);
}
