//! Layers end to end: determinism, round trips, agreement with sha256sum,
//! gzip, zstd and GNU tar, hostile tarballs, whiteouts and metadata.
//!
//! Extraction tests create device nodes, whiteouts and trusted xattrs, and
//! set owners: they need root, as bake does to unpack layers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bake_engine::layer::{
    self, Entry, EntryKind, LayerError, LayerInfo, LayerOptions, LayerWriter, Limits, UnpackOptions, UnpackStats,
};
use bake_engine::oci::{Compression, Digest};

const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

/// `cap_net_bind_service=ep` as the kernel stores it (VFS_CAP_REVISION_2).
const CAP_NET_BIND_SERVICE: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// `cap_dac_override,cap_fowner=ep`: its permitted mask is `\n` (0x0a), which
/// the `tar` crate's PAX parser cannot read.
const CAP_WITH_NEWLINE: [u8; 20] = [1, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// An entry and its content (files only).
type Item = (Entry, Option<Vec<u8>>);

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry::new(path, kind)
}

fn file(path: &str, content: &[u8]) -> Item {
    (entry(path, EntryKind::File { size: content.len() as u64 }), Some(content.to_vec()))
}

/// Deterministic pseudo-random bytes (xorshift), for content gzip cannot
/// shrink much.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A layer with every kind of entry and every header feature: long paths
/// (USTAR prefix and PAX), long link targets, big ids, xattrs, setuid and
/// sticky bits, several compression blocks' worth of text and noise.
fn sample() -> Vec<Item> {
    let text: Vec<u8> = (0..40_000).flat_map(|i| format!("line {i}: the quick brown fox\n").into_bytes()).collect();
    let long_dir = format!("deep/{}", "d".repeat(120));
    let very_long = format!("deep/{}/{}", "x".repeat(150), "y".repeat(150));
    let mut entries = vec![
        (entry("bin", EntryKind::Dir), None),
        (
            Entry {
                mode: 0o4755,
                xattrs: BTreeMap::from([("security.capability".to_owned(), CAP_NET_BIND_SERVICE.to_vec())]),
                ..entry("bin/ping", EntryKind::File { size: 4 })
            },
            Some(b"ELF\x7f".to_vec()),
        ),
        (entry("bin/ping2", EntryKind::Hardlink { target: "bin/ping".to_owned() }), None),
        (entry("bin/sh", EntryKind::Symlink { target: "/bin/busybox".to_owned() }), None),
        (
            Entry {
                mode: 0o755,
                xattrs: BTreeMap::from([("security.capability".to_owned(), CAP_WITH_NEWLINE.to_vec())]),
                ..entry("bin/tool", EntryKind::File { size: 5 })
            },
            Some(b"tool\n".to_vec()),
        ),
        (entry("deep", EntryKind::Dir), None),
        (entry(&long_dir, EntryKind::Dir), None),
        file(&format!("{long_dir}/file.txt"), b"split into prefix and name"),
        (entry(&very_long, EntryKind::Symlink { target: format!("../{}", "t".repeat(300)) }), None),
        (entry("dev", EntryKind::Dir), None),
        (Entry { mode: 0o666, ..entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }) }, None),
        (Entry { mode: 0o660, ..entry("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }) }, None),
        (entry("dev/pipe", EntryKind::Fifo), None),
        (entry("etc", EntryKind::Opaque), None),
        file("etc/big.bin", &noise(300_000, 7)),
        file("etc/empty", b""),
        file("etc/text", &text),
        (entry("etc/removed", EntryKind::Whiteout), None),
        (Entry { uid: 3_000_000, gid: 70_000, ..entry("home", EntryKind::Dir) }, None),
        (Entry { mode: 0o1777, ..entry("tmp", EntryKind::Dir) }, None),
        (
            Entry {
                uid: 1000,
                gid: 1000,
                xattrs: BTreeMap::from([("user.note".to_owned(), b"a=b\nc".to_vec())]),
                ..entry("ünïcode name", EntryKind::File { size: 3 })
            },
            Some(b"hi\n".to_vec()),
        ),
    ];
    layer::sort_entries_by(&mut entries, |(e, _)| e);
    entries
}

fn pack_with(entries: &[Item], options: &LayerOptions, threads: usize, chunk: usize) -> (Vec<u8>, LayerInfo) {
    let mut writer = LayerWriter::with_threads(Vec::new(), options, threads);
    for (e, content) in entries {
        let mut reader = content.as_deref().map(|c| Chunked { data: c, chunk });
        writer.append(e, reader.as_mut().map(|r| r as &mut dyn Read)).expect("append");
    }
    writer.finish().expect("finish")
}

fn pack(entries: &[Item], compression: Compression) -> (Vec<u8>, LayerInfo) {
    pack_with(entries, &LayerOptions { compression, ..LayerOptions::default() }, 2, usize::MAX)
}

/// A reader that hands out at most `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn read_back(blob: &[u8], compression: Compression) -> (Vec<Item>, Digest) {
    let mut out = Vec::new();
    let diff_id = layer::entries(blob, compression, |e, content| {
        let mut data = Vec::new();
        content.read_to_end(&mut data).expect("content");
        let data = matches!(e.kind, EntryKind::File { .. }).then_some(data);
        out.push((e, data));
        Ok(())
    })
    .expect("entries");
    (out, diff_id)
}

fn hex(d: &Digest) -> &str {
    d.as_ref().strip_prefix("sha256:").expect("sha256 digest")
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stderr(Stdio::inherit()).output().expect("spawn");
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

fn sha256sum(path: &Path) -> String {
    let out = String::from_utf8(run(Command::new("sha256sum").arg(path))).expect("utf8");
    out.split_whitespace().next().expect("hash").to_owned()
}

#[test]
fn same_entries_same_bytes_for_any_run_thread_count_and_chunking() {
    let entries = sample();
    for compression in ALL {
        for level in [None, Some(1)] {
            let options = LayerOptions { compression, level, epoch: 0 };
            let (first, info) = pack_with(&entries, &options, 1, usize::MAX);
            for (threads, chunk) in [(1, usize::MAX), (2, usize::MAX), (4, 7), (3, 4096)] {
                let (blob, other) = pack_with(&entries, &options, threads, chunk);
                assert!(blob == first, "{compression:?} level {level:?} with {threads} threads differs");
                assert_eq!(other, info);
            }
            assert_eq!(info.size, first.len() as u64);
            assert_eq!(info.media_type, compression.media_type());
        }
    }
    // The diff_id does not depend on the compression; the epoch changes it.
    let diff_ids: Vec<_> = ALL.iter().map(|c| pack(&entries, *c).1.diff_id).collect();
    assert!(diff_ids.iter().all(|d| *d == diff_ids[0]));
    let (_, none) = pack(&entries, Compression::None);
    assert_eq!(none.digest, none.diff_id);
    let later = LayerOptions { compression: Compression::None, level: None, epoch: 1_700_000_000 };
    assert_ne!(pack_with(&entries, &later, 1, usize::MAX).1.diff_id, none.diff_id);
}

#[test]
fn what_is_written_reads_back_the_same() {
    let entries = sample();
    for compression in ALL {
        let (blob, info) = pack(&entries, compression);
        let (read, diff_id) = read_back(&blob, compression);
        assert_eq!(diff_id, info.diff_id);
        assert_eq!(read.len(), entries.len());
        for (got, want) in read.iter().zip(&entries) {
            assert_eq!(got.0, want.0);
            let want_content = match want.0.kind {
                EntryKind::File { .. } => Some(want.1.clone().unwrap_or_default()),
                _ => None,
            };
            assert!(got.1 == want_content, "content of {}", want.0.path);
        }
    }
}

#[test]
fn digests_match_sha256sum_gzip_and_zstd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = sample();
    for (compression, tool) in
        [(Compression::None, None), (Compression::Gzip, Some("gzip")), (Compression::Zstd, Some("zstd"))]
    {
        let (blob, info) = pack(&entries, compression);
        let path = dir.path().join("blob");
        std::fs::write(&path, &blob).expect("write blob");
        assert_eq!(sha256sum(&path), hex(&info.digest), "{compression:?} digest");
        let tar = match tool {
            Some(tool) => run(Command::new(tool).args(["-d", "-c"]).arg(&path)),
            None => blob.clone(),
        };
        let tar_path = dir.path().join("tar");
        std::fs::write(&tar_path, &tar).expect("write tar");
        assert_eq!(sha256sum(&tar_path), hex(&info.diff_id), "{compression:?} diff_id");
        assert_eq!(tar.len() as u64, info.uncompressed_size);
    }
    // gzip's header: no mtime, no name, one member (gzip -l counts one).
    let (blob, _) = pack(&entries, Compression::Gzip);
    assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
}

#[test]
fn gnu_tar_lists_and_extracts_what_was_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = sample();
    let options = LayerOptions { compression: Compression::Gzip, level: None, epoch: 1_700_000_000 };
    let (blob, _) = pack_with(&entries, &options, 2, usize::MAX);
    let path = dir.path().join("layer.tar.gz");
    std::fs::write(&path, &blob).expect("write blob");

    let listing = run(Command::new("tar").env("TZ", "UTC").args(["--numeric-owner", "-tzvf"]).arg(&path));
    let listing = String::from_utf8(listing).expect("utf8");
    let lines: Vec<&str> = listing.lines().map(str::trim_end).collect();
    assert_eq!(lines.len(), entries.len(), "{listing}");
    // GNU tar lists each entry once, in the order written, with the mode,
    // numeric owner, size, and the epoch as mtime.
    let expected = [
        "drwxr-xr-x 0/0               0 2023-11-14 22:13 bin/",
        "-rwsr-xr-x 0/0               4 2023-11-14 22:13 bin/ping",
        "hrw-r--r-- 0/0               0 2023-11-14 22:13 bin/ping2 link to bin/ping",
        "lrwxrwxrwx 0/0               0 2023-11-14 22:13 bin/sh -> /bin/busybox",
        "crw-rw-rw- 0/0             1,3 2023-11-14 22:13 dev/null",
        "brw-rw---- 0/0             8,0 2023-11-14 22:13 dev/sda",
        "prw-r--r-- 0/0               0 2023-11-14 22:13 dev/pipe",
        "-rw-r--r-- 0/0               0 2023-11-14 22:13 etc/.wh..wh..opq",
        "-rw-r--r-- 0/0               0 2023-11-14 22:13 etc/.wh.removed",
        "-rw-r--r-- 0/0          300000 2023-11-14 22:13 etc/big.bin",
        "drwxr-xr-x 3000000/70000     0 2023-11-14 22:13 home/",
        "drwxrwxrwt 0/0               0 2023-11-14 22:13 tmp/",
        "-rw-r--r-- 1000/1000         3 2023-11-14 22:13 ünïcode name",
    ];
    for want in expected {
        let want_words: Vec<&str> = want.split_whitespace().collect();
        assert!(
            lines.iter().any(|l| l.split_whitespace().collect::<Vec<_>>() == want_words),
            "no `{want}` in\n{listing}"
        );
    }
    let names: Vec<&str> = lines.iter().map(|l| l.splitn(6, char::is_whitespace).last().unwrap_or("")).collect();
    assert!(names.iter().any(|n| n.contains(&"y".repeat(150))), "the PAX path is used");

    // GNU tar extracts it, xattrs included.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpzf"])
        .arg(&path)
        .arg("-C")
        .arg(&out));
    let text = std::fs::read(out.join("etc/text")).expect("text");
    assert_eq!(Some(&text), entries.iter().find(|(e, _)| e.path == "etc/text").and_then(|(_, c)| c.as_ref()));
    let ping = std::fs::symlink_metadata(out.join("bin/ping")).expect("ping");
    assert_eq!(ping.mode() & 0o7777, 0o4755);
    assert_eq!(ping.nlink(), 2);
    assert_eq!(ping.mtime(), 1_700_000_000);
    assert_eq!(
        xattr::get(out.join("bin/ping"), "security.capability").expect("xattr"),
        Some(CAP_NET_BIND_SERVICE.to_vec())
    );
    assert_eq!(xattr::get(out.join("ünïcode name"), "user.note").expect("xattr"), Some(b"a=b\nc".to_vec()));
    assert_eq!(
        xattr::get(out.join("bin/tool"), "security.capability").expect("xattr"),
        Some(CAP_WITH_NEWLINE.to_vec())
    );
}

#[test]
fn the_writer_refuses_bad_entries_and_stays_usable() {
    let mut w = LayerWriter::new(Vec::new(), &LayerOptions::default());
    w.append(&entry("b", EntryKind::Dir), None).expect("b");
    let refused = |w: &mut LayerWriter<Vec<u8>>, e: Entry| w.append(&e, None).expect_err("refused");
    assert!(matches!(refused(&mut w, entry("a", EntryKind::Dir)), LayerError::OutOfOrder { .. }));
    assert!(matches!(refused(&mut w, entry("b", EntryKind::Dir)), LayerError::Duplicate { .. }));
    // `b-c` sorts after `b/...` in layer order, so `b/z` cannot follow it.
    w.append(&entry("b/y", EntryKind::Fifo), None).expect("b/y");
    for bad in ["/abs", "c/", "c//d", "c/../d", "c/./d", "c/.wh.d", ""] {
        assert!(matches!(refused(&mut w, entry(bad, EntryKind::Dir)), LayerError::InvalidEntry { .. }), "{bad:?}");
    }
    let hardlink = entry("c", EntryKind::Hardlink { target: "b/nope".to_owned() });
    assert!(matches!(refused(&mut w, hardlink), LayerError::InvalidEntry { .. }));
    let mode = Entry { mode: 0o100_644, ..entry("c", EntryKind::Dir) };
    assert!(matches!(refused(&mut w, mode), LayerError::InvalidEntry { .. }));
    let mut content: &[u8] = b"x";
    let err = w.append(&entry("c", EntryKind::Dir), Some(&mut content)).expect_err("dir with content");
    assert!(matches!(err, LayerError::InvalidEntry { .. }));
    w.append(&entry("c", EntryKind::Dir), None).expect("still usable");

    // Content of the wrong size breaks the writer.
    let mut short: &[u8] = b"abc";
    let err = w.append(&entry("d", EntryKind::File { size: 4 }), Some(&mut short)).expect_err("short");
    assert!(matches!(err, LayerError::ContentSize { expected: 4, .. }), "{err}");
    assert!(matches!(w.append(&entry("e", EntryKind::Dir), None), Err(LayerError::Broken)));
    assert!(matches!(w.finish(), Err(LayerError::Broken)));

    let mut w = LayerWriter::new(Vec::new(), &LayerOptions::default());
    let mut long: &[u8] = b"abcde";
    let err = w.append(&entry("d", EntryKind::File { size: 4 }), Some(&mut long)).expect_err("long");
    assert!(matches!(err, LayerError::ContentSize { .. }));

    let bad_level = LayerOptions { compression: Compression::Gzip, level: Some(12), epoch: 0 };
    let w = LayerWriter::new(Vec::new(), &bad_level);
    assert!(matches!(w.finish(), Err(LayerError::Options { .. })));
    let bad_epoch = LayerOptions { epoch: -1, ..LayerOptions::default() };
    assert!(matches!(LayerWriter::new(Vec::new(), &bad_epoch).finish(), Err(LayerError::Options { .. })));
}

#[test]
fn layers_made_by_gnu_tar_read_with_normalised_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("sub/a.txt"), "a").expect("write");
    std::fs::write(src.join(".wh.gone"), "").expect("write");
    let blob = run(Command::new("tar").arg("-C").arg(&src).args(["-czf", "-", "."]));
    let (read, _) = read_back(&blob, Compression::Gzip);
    let mut paths: Vec<_> = read.iter().map(|(e, _)| (e.path.as_str(), e.kind.clone())).collect();
    paths.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        paths,
        [("gone", EntryKind::Whiteout), ("sub", EntryKind::Dir), ("sub/a.txt", EntryKind::File { size: 1 })]
    );

    // GNU's own format (long names in `L`/`K` members) and POSIX format with
    // xattrs (PAX records with fractional times and binary values).
    let long = "n".repeat(150);
    std::fs::write(src.join(&long), "long").expect("write");
    std::os::unix::fs::symlink("t".repeat(200), src.join("longlink")).expect("symlink");
    xattr::set(src.join("sub/a.txt"), "user.bin", b"x\ny\0z").expect("set xattr");
    for format in ["--format=gnu", "--format=posix"] {
        let blob = run(Command::new("tar").arg("-C").arg(&src).args([format, "--xattrs", "-cf", "-", "."]));
        let (read, _) = read_back(&blob, Compression::None);
        let find = |p: &str| read.iter().find(|(e, _)| e.path == p).unwrap_or_else(|| panic!("{format}: no {p}"));
        assert_eq!(find(&long).1.as_deref(), Some(&b"long"[..]), "{format}");
        assert_eq!(find("longlink").0.kind, EntryKind::Symlink { target: "t".repeat(200) }, "{format}");
        if format == "--format=posix" {
            assert_eq!(find("sub/a.txt").0.xattrs.get("user.bin").map(Vec::as_slice), Some(&b"x\ny\0z"[..]));
        }
        let scene = Scene::new();
        scene.unpack(&blob, format).expect("unpack GNU tar's layer");
        assert_eq!(std::fs::read(scene.dest.join(&long)).expect("long"), b"long");
        let gone = std::fs::symlink_metadata(scene.dest.join("gone")).expect("whiteout");
        assert!(gone.file_type().is_char_device(), "{format}: `.wh.gone` is a whiteout");
    }

    // Several gzip members (as pigz or a concatenation makes) read as one stream.
    let tar = run(Command::new("tar").arg("-C").arg(&src).args(["-cf", "-", "sub"]));
    let (head, tail) = tar.split_at(700);
    let mut multi = Vec::new();
    for part in [head, tail] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(part).expect("gzip");
        multi.extend(gz.finish().expect("gzip"));
    }
    let (read, diff_id) = read_back(&multi, Compression::Gzip);
    assert_eq!(read.len(), 2);
    assert_eq!(diff_id, bake_engine::oci::digest_of(&tar));
}

// ---------------------------------------------------------------- extraction

/// A destination inside a parent folder holding things a hostile layer would
/// like to reach.
struct Scene {
    _dir: tempfile::TempDir,
    parent: PathBuf,
    dest: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let parent = dir.path().to_path_buf();
        let dest = parent.join("dest");
        std::fs::create_dir(&dest).expect("dest");
        std::fs::write(parent.join("x"), "precious").expect("x");
        std::fs::create_dir(parent.join("outside")).expect("outside");
        std::fs::write(parent.join("outside/keep"), "keep").expect("keep");
        Self { _dir: dir, parent, dest }
    }

    /// Everything outside `dest`: path, kind, size, mode, link count, mtime.
    fn outside(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, skip: &Path, out: &mut Vec<String>) {
            let mut items: Vec<_> =
                std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()).collect();
            items.sort();
            for path in items {
                if path == skip {
                    continue;
                }
                let m = std::fs::symlink_metadata(&path).expect("stat");
                let rel = path.strip_prefix(root).expect("inside").display().to_string();
                out.push(format!(
                    "{rel} {:o} {} {} {}",
                    m.mode(),
                    m.len(),
                    m.nlink(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                ));
                if m.is_dir() {
                    walk(&path, root, skip, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.parent, &self.parent, &self.dest, &mut out);
        out
    }

    fn unpack(&self, blob: &[u8], name: &str) -> Result<UnpackStats, LayerError> {
        let options =
            UnpackOptions { name, compression: Compression::None, expected_diff_id: None, limits: Limits::default() };
        layer::unpack(blob, &self.dest, &options)
    }
}

/// One raw tar member, written byte by byte so nothing sanitises it.
struct Raw<'a> {
    name: &'a str,
    typeflag: u8,
    link: &'a str,
    content: &'a [u8],
}

fn raw(name: &str, typeflag: u8, link: &str) -> Raw<'static> {
    // Leaked: fixtures live for the test.
    Raw {
        name: Box::leak(name.to_owned().into_boxed_str()),
        typeflag,
        link: Box::leak(link.to_owned().into_boxed_str()),
        content: b"",
    }
}

fn raw_file(name: &str, content: &'static [u8]) -> Raw<'static> {
    Raw { content, ..raw(name, b'0', "") }
}

fn raw_tar(members: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        old.name[..m.name.len()].copy_from_slice(m.name.as_bytes());
        old.linkname[..m.link.len()].copy_from_slice(m.link.as_bytes());
        h.set_mode(if m.typeflag == b'5' { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(m.content.len() as u64);
        h.set_entry_type(tar::EntryType::new(m.typeflag));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(m.content);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn hostile_layers_are_refused_and_nothing_leaves_the_destination() {
    let probe = Scene::new();
    let parent = probe.parent.display().to_string();
    let passwd_links = std::fs::metadata("/etc/passwd").expect("passwd").nlink();
    let cases: Vec<(&str, Vec<Raw<'static>>, &str)> = vec![
        ("dotdot", vec![raw_file("../evil", b"x")], "../evil"),
        ("absolute", vec![raw_file("/etc/bake-evil", b"x")], "/etc/bake-evil"),
        ("absolute-into-parent", vec![raw_file(&format!("{parent}/evil"), b"x")], "/evil"),
        ("inner-dotdot", vec![raw_file("a/../../evil", b"x")], "a/../../evil"),
        ("dotdot-dir", vec![raw("../evil-dir/", b'5', "")], "../evil-dir"),
        ("link-to-root", vec![raw("link", b'2', "/"), raw_file("link/etc/bake-evil", b"x")], "link/etc/bake-evil"),
        ("link-to-root-parent", vec![raw("link", b'2', "/"), raw_file(&format!("link{parent}/evil"), b"x")], "link"),
        ("link-up", vec![raw("link", b'2', "../../.."), raw_file("link/evil", b"x")], "link/evil"),
        ("link-up-one", vec![raw("link", b'2', ".."), raw_file("link/outside/evil", b"x")], "link/outside/evil"),
        (
            "nested-link-up",
            vec![raw("sub/", b'5', ""), raw("sub/up", b'2', "../.."), raw_file("sub/up/evil", b"x")],
            "sub/up/evil",
        ),
        (
            "link-chain",
            vec![raw("a", b'2', "b"), raw("b", b'2', "c/../.."), raw("c/", b'5', ""), raw_file("a/evil", b"x")],
            "a/evil",
        ),
        ("link-as-dir", vec![raw("link", b'2', "/"), raw("link/etc/", b'5', "")], "link/etc"),
        ("link-then-hardlink", vec![raw("link", b'2', ".."), raw("link/hl", b'1', "x")], "link/hl"),
        ("hardlink-absolute", vec![raw("hl", b'1', "/etc/passwd")], "hl"),
        ("hardlink-up", vec![raw("hl", b'1', "../x")], "hl"),
        ("hardlink-through-link", vec![raw("link", b'2', ".."), raw("hl", b'1', "link/x")], "hl"),
        ("whiteout-dotdot", vec![raw_file(".wh..", b"")], ".wh.."),
        ("whiteout-up", vec![raw_file("../.wh.x", b"")], "../.wh.x"),
    ];
    for (name, members, needle) in cases {
        let scene = Scene::new();
        let before = scene.outside();
        let layer_name = format!("sha256:{name}");
        let err = scene.unpack(&raw_tar(&members), &layer_name).expect_err(name);
        let message = err.to_string();
        assert!(matches!(err, LayerError::Unsafe { .. }), "{name}: {message}");
        assert!(message.contains(&layer_name) && message.contains(needle), "{name}: {message}");
        assert_eq!(scene.outside(), before, "{name} wrote outside the destination");
        assert!(!Path::new("/etc/bake-evil").exists(), "{name}");
        assert_eq!(std::fs::metadata("/etc/passwd").expect("passwd").nlink(), passwd_links, "{name}");
    }
}

#[test]
fn links_inside_the_destination_are_fine() {
    let scene = Scene::new();
    let before = scene.outside();
    let blob = raw_tar(&[
        raw("d/", b'5', ""),
        raw("inside", b'2', "d"),
        raw_file("inside/file", b"through an inner link"),
        raw("d/sub/", b'5', ""),
        raw("d/sub/up", b'2', "../.."),
        raw_file("d/sub/up/top", b"up, but not out"),
        // A name that already is a symlink (even one leading out) is replaced,
        // never written through.
        raw("passwd", b'2', "/etc/passwd"),
        raw_file("passwd", b"mine"),
        raw("abs", b'2', "/etc/shadow"),
        raw("hl", b'1', "inside/file"),
    ]);
    let stats = scene.unpack(&blob, "inner").expect("unpack");
    assert_eq!(std::fs::read(scene.dest.join("d/file")).expect("d/file"), b"through an inner link");
    assert_eq!(std::fs::read(scene.dest.join("top")).expect("top"), b"up, but not out");
    assert!(std::fs::symlink_metadata(scene.dest.join("passwd")).expect("passwd").is_file());
    assert_eq!(std::fs::read_link(scene.dest.join("abs")).expect("abs"), Path::new("/etc/shadow"));
    assert_eq!(std::fs::metadata(scene.dest.join("hl")).expect("hl").nlink(), 2);
    assert_eq!(stats.files, 3);
    assert_eq!(scene.outside(), before);
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let scene = Scene::new();
    let mut entries = vec![
        (entry("dir", EntryKind::Dir), None),
        (entry("dir", EntryKind::Opaque), None),
        file("dir/kept", b"k"),
        (entry("file", EntryKind::Whiteout), None),
        (entry("new", EntryKind::Opaque), None),
    ];
    layer::sort_entries_by(&mut entries, |(e, _)| e);
    let (blob, info) = pack(&entries, Compression::Gzip);
    let options = UnpackOptions {
        name: "whiteouts",
        compression: Compression::Gzip,
        expected_diff_id: Some(&info.diff_id),
        limits: Limits::default(),
    };
    let stats = layer::unpack(&blob[..], &scene.dest, &options).expect("unpack");
    assert_eq!(stats.whiteouts, 3);
    assert_eq!(stats.diff_id, info.diff_id);

    let whiteout = std::fs::symlink_metadata(scene.dest.join("file")).expect("whiteout");
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!scene.dest.join(".wh.file").exists());
    for dir in ["dir", "new"] {
        assert_eq!(xattr::get(scene.dest.join(dir), "trusted.overlay.opaque").expect("xattr"), Some(b"y".to_vec()));
        assert!(!scene.dest.join(dir).join(".wh..wh..opq").exists());
    }
    assert_eq!(std::fs::read(scene.dest.join("dir/kept")).expect("kept"), b"k");

    // Docker-style: whiteouts as plain files in a foreign tar, and aufs
    // metadata that is skipped.
    let scene = Scene::new();
    let blob = raw_tar(&[raw_file("a/.wh..wh..opq", b""), raw_file(".wh.b", b""), raw_file(".wh..wh.plnk/123", b"")]);
    let stats = scene.unpack(&blob, "docker").expect("unpack");
    assert_eq!(stats.whiteouts, 2);
    assert!(std::fs::symlink_metadata(scene.dest.join("b")).expect("b").file_type().is_char_device());
    assert_eq!(xattr::get(scene.dest.join("a"), "trusted.overlay.opaque").expect("xattr"), Some(b"y".to_vec()));
    assert!(!scene.dest.join(".wh..wh.plnk").exists());
}

#[test]
fn modes_owners_mtimes_and_xattrs_survive_extraction() {
    let scene = Scene::new();
    let entries = sample();
    let epoch = 1_600_000_000;
    let options = LayerOptions { compression: Compression::Zstd, level: None, epoch };
    let (blob, info) = pack_with(&entries, &options, 2, usize::MAX);
    let unpack_options = UnpackOptions {
        name: "metadata",
        compression: Compression::Zstd,
        expected_diff_id: Some(&info.diff_id),
        limits: Limits::default(),
    };
    let stats = layer::unpack(&blob[..], &scene.dest, &unpack_options).expect("unpack");
    assert_eq!(stats.devices_skipped, 0);
    assert_eq!(stats.owners_skipped, 0);
    assert_eq!(stats.xattrs_skipped, 0);
    assert_eq!(stats.uncompressed_size, info.uncompressed_size);

    let meta = |p: &str| std::fs::symlink_metadata(scene.dest.join(p)).expect(p);
    let ping = meta("bin/ping");
    assert_eq!(ping.mode() & 0o7777, 0o4755, "setuid survives the chown");
    assert_eq!(ping.nlink(), 2, "bin/ping2 is a hardlink");
    assert_eq!(
        xattr::get(scene.dest.join("bin/ping"), "security.capability").expect("xattr"),
        Some(CAP_NET_BIND_SERVICE.to_vec())
    );
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    let home = meta("home");
    assert_eq!((home.uid(), home.gid()), (3_000_000, 70_000));
    let unicode = meta("ünïcode name");
    assert_eq!((unicode.uid(), unicode.gid(), unicode.mode() & 0o7777), (1000, 1000, 0o644));
    assert_eq!(xattr::get(scene.dest.join("ünïcode name"), "user.note").expect("xattr"), Some(b"a=b\nc".to_vec()));
    assert_eq!(
        xattr::get(scene.dest.join("bin/tool"), "security.capability").expect("xattr"),
        Some(CAP_WITH_NEWLINE.to_vec())
    );
    let null = meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), null.mode() & 0o7777), (nix::sys::stat::makedev(1, 3), 0o666));
    assert!(meta("dev/sda").file_type().is_block_device());
    assert!(meta("dev/pipe").file_type().is_fifo());
    assert_eq!(std::fs::read_link(scene.dest.join("bin/sh")).expect("link"), Path::new("/bin/busybox"));
    assert_eq!(xattr::get(scene.dest.join("etc"), "trusted.overlay.opaque").expect("xattr"), Some(b"y".to_vec()));
    assert!(meta("etc/removed").file_type().is_char_device());
    let big = std::fs::read(scene.dest.join("etc/big.bin")).expect("big");
    assert_eq!(big, noise(300_000, 7));
    // Every mtime is the epoch: files, links, devices, and directories that
    // had entries written into them afterwards.
    for p in ["bin", "bin/ping", "bin/sh", "dev", "dev/null", "etc/text", "home", "tmp", "deep"] {
        assert_eq!(meta(p).mtime(), epoch, "{p}");
    }
}

#[test]
fn a_wrong_diff_id_is_an_error_naming_the_layer() {
    let scene = Scene::new();
    let (blob, _) = pack(&[file("a", b"a")], Compression::Gzip);
    let wrong = bake_engine::oci::digest_of(b"something else");
    let options = UnpackOptions {
        name: "sha256:abc",
        compression: Compression::Gzip,
        expected_diff_id: Some(&wrong),
        limits: Limits::default(),
    };
    let err = layer::unpack(&blob[..], &scene.dest, &options).expect_err("mismatch");
    assert!(matches!(err, LayerError::DiffId { .. }));
    assert!(err.to_string().contains("sha256:abc"));
    // A truncated or mislabelled blob is a read error, not a panic.
    let options = UnpackOptions {
        name: "cut",
        compression: Compression::Gzip,
        expected_diff_id: None,
        limits: Limits::default(),
    };
    let err = layer::unpack(&blob[..blob.len() / 2], &Scene::new().dest, &options).expect_err("truncated");
    assert!(matches!(err, LayerError::Read { .. }), "{err}");
    let options = UnpackOptions {
        name: "zstd?",
        compression: Compression::Zstd,
        expected_diff_id: None,
        limits: Limits::default(),
    };
    assert!(matches!(layer::unpack(&blob[..], &Scene::new().dest, &options), Err(LayerError::Read { .. })));
}

#[test]
fn overlay_xattrs_in_a_layer_are_dropped() {
    let scene = Scene::new();
    let e = Entry {
        xattrs: BTreeMap::from([
            ("trusted.overlay.redirect".to_owned(), b"/elsewhere".to_vec()),
            ("trusted.overlay.opaque".to_owned(), b"y".to_vec()),
        ]),
        ..entry("d", EntryKind::Dir)
    };
    let (blob, _) = pack(&[(e, None)], Compression::None);
    let stats = scene.unpack(&blob, "overlay").expect("unpack");
    assert_eq!(stats.xattrs_skipped, 2);
    assert_eq!(xattr::get(scene.dest.join("d"), "trusted.overlay.opaque").expect("xattr"), None);
}

// ---- limits ----------------------------------------------------------------

const MIB: u64 = 1 << 20;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// A ustar header for a regular file of `size` bytes.
fn file_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("name");
    h.set_mode(0o644);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A gzip blob of `prefix`, then `mib` MiB of zeros, then `suffix`, made of
/// concatenated gzip members: the zeros' member is compressed once and
/// repeated, so a blob that expands to gigabytes costs a few kilobytes.
fn zeros_blob(prefix: &[u8], mib: u64, suffix: &[u8]) -> Vec<u8> {
    let zeros = gzip(&vec![0; usize::try_from(MIB).expect("usize")]);
    let mut blob = gzip(prefix);
    for _ in 0..mib {
        blob.extend_from_slice(&zeros);
    }
    blob.extend_from_slice(&gzip(suffix));
    blob
}

/// A layer holding one file of `mib` MiB of zeros: its blob and info.
fn zeros_layer(name: &str, mib: u64) -> (Vec<u8>, LayerInfo) {
    let header = file_header(name, mib * MIB);
    let mut tar = header.clone();
    tar.resize(tar.len() + usize::try_from(mib * MIB).expect("usize"), 0);
    tar.extend_from_slice(&[0; 1024]);
    let blob = zeros_blob(&header, mib, &[0; 1024]);
    let info = LayerInfo {
        digest: bake_engine::oci::digest_of(&blob),
        diff_id: bake_engine::oci::digest_of(&tar),
        size: blob.len() as u64,
        uncompressed_size: tar.len() as u64,
        media_type: bake_engine::oci::media::OCI_LAYER_GZIP.to_owned(),
    };
    (blob, info)
}

/// An engine over a fresh home with the given unpack limits, and the home.
fn engine_with(config: &bake_engine::config::Config) -> (bake_engine::exec::Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = bake_engine::home::Home::new(dir.path().join("home"));
    (bake_engine::exec::Engine::open(home, config).expect("open"), dir)
}

fn store_blob(store: &bake_engine::store::Store, blob: &[u8]) -> Digest {
    let mut w = store.blob_writer().expect("writer");
    w.write_all(blob).expect("write");
    w.commit(None).expect("commit").0
}

/// What a snapshot folder holds besides nothing: every name in it.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
    )
}

#[test]
fn a_decompression_bomb_stops_at_the_layer_limit_and_leaves_no_snapshot() {
    let config = bake_engine::config::Config { max_layer_size: Some(32 * MIB), ..Default::default() };
    let (engine, dir) = engine_with(&config);
    // A small file, the end of the archive, then 1 GiB of zeros that only a
    // reader checking the whole stream (for the diff_id) decompresses.
    let mut head = file_header("small", 3);
    head.extend_from_slice(&[b'a'; 512]);
    let blob = zeros_blob(&head, 1024, b"");
    assert!((blob.len() as u64) < 2 * MIB, "the bomb is small: {} bytes", blob.len());
    let digest = store_blob(&engine.store, &blob);
    let info = LayerInfo {
        diff_id: bake_engine::oci::digest_of(b"whatever it would be"),
        size: blob.len() as u64,
        uncompressed_size: 0,
        media_type: bake_engine::oci::media::OCI_LAYER_GZIP.to_owned(),
        digest: digest.clone(),
    };
    let started = std::time::Instant::now();
    let err = engine.snapshots.unpacked(&info).expect_err("refused");
    eprintln!("the bomb was refused after {:?}", started.elapsed());
    let text = err.to_string();
    assert!(text.contains(&digest.to_string()) && text.contains("32 MiB"), "{text}");
    let help = miette::Diagnostic::help(&err).map(|h| h.to_string()).unwrap_or_default();
    assert!(help.contains("BAKE_MAX_LAYER_SIZE") && help.contains("max-layer-size"), "{help}");
    let snapshots = dir.path().join("home/snapshots");
    assert_eq!(leftovers(&snapshots), Vec::<String>::new(), "no partial snapshot");
}

#[test]
fn a_declared_size_past_the_limit_fails_before_anything_is_written() {
    let scene = Scene::new();
    // A header that claims a terabyte, and no content at all.
    let mut tar = file_header("huge", 1 << 40);
    tar.extend_from_slice(&[0; 1024]);
    let err = scene.unpack(&tar, "sha256:declared").expect_err("refused");
    assert!(matches!(err, LayerError::TooLarge { limit: Limits::MAX_LAYER_BYTES, .. }), "{err}");
    assert!(std::fs::symlink_metadata(scene.dest.join("huge")).is_err(), "nothing written");
}

#[test]
fn entries_paths_and_extension_headers_are_bounded() {
    let dest = Scene::new();
    let names: Vec<String> = (0..=1000).map(|i| format!("f{i:04}")).collect();
    let members: Vec<Raw<'_>> = names.iter().map(|n| raw_file(n, b"")).collect();
    let options = UnpackOptions {
        name: "sha256:many",
        compression: Compression::None,
        expected_diff_id: None,
        limits: Limits { max_entries: 1000, ..Limits::default() },
    };
    let err = layer::unpack(&raw_tar(&members)[..], &dest.dest, &options).expect_err("too many");
    assert!(matches!(err, LayerError::TooManyEntries { limit: 1000, .. }), "{err}");

    // A path longer than PATH_MAX, through PAX.
    let mut tar = Vec::new();
    let mut builder = tar::Builder::new(&mut tar);
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut h, "d/".repeat(2600), &b""[..]).expect("long path");
    builder.finish().expect("finish");
    drop(builder);
    let err = Scene::new().unpack(&tar, "sha256:long").expect_err("too long");
    assert!(err.to_string().contains("longer than Linux's 4096"), "{err}");
    assert!(err.to_string().len() < 400, "the message shows the start of the path only: {err}");

    // A PAX header that claims a gigabyte is refused before it is read.
    let mut h = tar::Header::new_ustar();
    h.set_path("pax").expect("name");
    h.set_size(1 << 30);
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_cksum();
    let err = Scene::new().unpack(h.as_bytes(), "sha256:pax").expect_err("huge pax");
    assert!(std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("too large")), "{err}");
}

#[test]
fn the_layers_of_one_image_together_stay_within_the_image_limit() {
    let config = bake_engine::config::Config {
        max_layer_size: Some(32 * MIB),
        max_image_size: Some(48 * MIB),
        ..Default::default()
    };
    let (engine, dir) = engine_with(&config);
    let (a, info_a) = zeros_layer("a", 20);
    let (b, info_b) = zeros_layer("b", 20);
    let (c, info_c) = zeros_layer("c", 20);
    for blob in [&a, &b, &c] {
        store_blob(&engine.store, blob);
    }
    // Each fits alone, and two fit together.
    engine.snapshots.unpacked_all(&[info_a.clone(), info_b.clone()]).expect("40 MiB fit in 48");
    let err = engine.snapshots.unpacked_all(&[info_a, info_b, info_c.clone()]).expect_err("60 MiB do not");
    let text = err.to_string();
    assert!(text.contains("48 MiB") && text.contains(&info_c.digest.to_string()), "{text}");
    let help = miette::Diagnostic::help(&err).map(|h| h.to_string()).unwrap_or_default();
    assert!(help.contains("BAKE_MAX_IMAGE_SIZE") && help.contains("max-image-size"), "{help}");
    let snapshots = leftovers(&dir.path().join("home/snapshots"));
    assert!(!snapshots.iter().any(|n| n.starts_with(info_c.diff_id.digest())), "no snapshot of c: {snapshots:?}");
    assert!(!snapshots.iter().any(|n| n.starts_with(".unpack-")), "no partial unpack: {snapshots:?}");
}
