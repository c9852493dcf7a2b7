//! Unit tests of the path rules; the writer, reader and extraction are tested
//! end to end in `engine/tests/layer.rs`.

use super::read::normalize;
use super::*;

#[test]
fn layer_order_puts_a_directory_before_its_siblings() {
    let mut paths = vec!["a-b", "a/c", "a", "a/b/c", "a.txt", "a/b", "b", "a/.wh.x", "A"];
    paths.sort_by(|a, b| cmp_paths(a, b));
    assert_eq!(paths, ["A", "a", "a/.wh.x", "a/b", "a/b/c", "a/c", "a-b", "a.txt", "b"]);
    // Plain byte order would have put `a-b` and `a.txt` between `a` and `a/b`.
    assert_eq!(cmp_paths("a", "a"), Ordering::Equal);
}

#[test]
fn entries_sort_by_the_name_they_are_written_under() {
    let mut entries = vec![
        Entry::new("d/z", EntryKind::Whiteout),
        Entry::new("d/a", EntryKind::File { size: 0 }),
        Entry::new("d", EntryKind::Opaque),
        Entry::new("d", EntryKind::Dir),
    ];
    sort_entries(&mut entries);
    let tar_paths: Vec<_> = entries.iter().map(|e| e.tar_path().into_owned()).collect();
    assert_eq!(tar_paths, ["d", "d/.wh..wh..opq", "d/.wh.z", "d/a"]);
    assert_eq!(Entry::new("", EntryKind::Opaque).tar_path(), ".wh..wh..opq");
    assert_eq!(Entry::new("top", EntryKind::Whiteout).tar_path(), ".wh.top");
}

#[test]
fn writer_paths_are_strict() {
    assert!(check_path("usr/bin/env").is_ok());
    assert!(check_path("with space/ünïcode").is_ok());
    for bad in ["", "/etc", "etc/", "a//b", "./a", "a/./b", "a/..", "../x", ".wh.x", "a/.wh..wh..opq", "a\0b"] {
        assert!(check_path(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn reader_paths_are_normalised_or_refused() {
    assert_eq!(normalize("./etc/passwd").as_deref(), Ok("etc/passwd"));
    assert_eq!(normalize("etc//x/").as_deref(), Ok("etc/x"));
    assert_eq!(normalize("./").as_deref(), Ok(""));
    assert!(normalize("/etc/passwd").is_err());
    assert!(normalize("../evil").is_err());
    assert!(normalize("a/../../evil").is_err());
    // `..` is refused even when it would stay inside.
    assert!(normalize("a/../b").is_err());
}

#[test]
fn levels_are_checked() {
    let gzip = |level| LayerOptions { compression: Compression::Gzip, level, epoch: 0 };
    assert_eq!(gzip(None).effective_level(), Ok(Some(6)));
    assert!(gzip(Some(10)).effective_level().is_err());
    let zstd = LayerOptions { compression: Compression::Zstd, level: None, epoch: 0 };
    assert_eq!(zstd.effective_level(), Ok(Some(3)));
    assert_eq!(LayerOptions { compression: Compression::None, level: Some(99), epoch: 0 }.effective_level(), Ok(None));
}

#[test]
fn names_with_a_nul_byte_are_refused() {
    // A PAX `path` record may hold any byte: found by the `tar` fuzz seeds.
    let (_, tar) = crate::fuzz::hostile_layers().into_iter().find(|(name, _)| name == "pax-nul").expect("the seed");
    let error = entries(&tar[..], Compression::None, |_, _| Ok(())).expect_err("a NUL in a name");
    assert!(matches!(&error, LayerError::Malformed { reason, .. } if reason.contains("NUL")), "{error}");
}
