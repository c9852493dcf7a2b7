//! Hand-built tar streams for the layer fuzz targets: a small writer that
//! writes what no honest writer would (`..`, absolute paths, links out of the
//! layer, huge declared sizes), and [`hostile_layers`], the seeds built with
//! it. `engine/tests/fuzz_corpus.rs` replays the seeds and writes them to
//! `fuzz/corpus/{tar,unpack}`.

use std::io::Write as _;

/// A tar stream under construction: every header is written as asked, with
/// a valid checksum and no check of its own.
#[derive(Default)]
pub(super) struct Tar {
    out: Vec<u8>,
}

/// The fields of one USTAR header.
struct Header<'a> {
    name: &'a [u8],
    typeflag: u8,
    size: u64,
    link: &'a [u8],
    mode: u32,
    device: (u32, u32),
}

impl Header<'_> {
    fn block(&self) -> [u8; 512] {
        let mut h = [0u8; 512];
        let name = &self.name[..self.name.len().min(100)];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(format!("{:07o}\0", self.mode & 0o7777).as_bytes());
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        if self.size < 8u64.pow(11) {
            h[124..136].copy_from_slice(format!("{:011o}\0", self.size).as_bytes());
        } else {
            // GNU base-256: the high bit set, the number big-endian.
            h[124] = 0x80;
            h[128..136].copy_from_slice(&self.size.to_be_bytes());
        }
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = self.typeflag;
        let link = &self.link[..self.link.len().min(100)];
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[329..337].copy_from_slice(format!("{:07o}\0", self.device.0 & 0o777_7777).as_bytes());
        h[337..345].copy_from_slice(format!("{:07o}\0", self.device.1 & 0o777_7777).as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }
}

impl Tar {
    fn header(&mut self, header: &Header<'_>) -> &mut Self {
        self.out.extend_from_slice(&header.block());
        self
    }

    fn content(&mut self, content: &[u8]) -> &mut Self {
        self.out.extend_from_slice(content);
        self.out.resize(self.out.len().next_multiple_of(512), 0);
        self
    }

    fn entry(&mut self, name: &str, typeflag: u8, link: &str) -> &mut Self {
        let mode = if typeflag == b'5' { 0o755 } else { 0o644 };
        self.header(&Header { name: name.as_bytes(), typeflag, size: 0, link: link.as_bytes(), mode, device: (0, 0) })
    }

    pub(super) fn file(&mut self, name: &str, content: &[u8]) -> &mut Self {
        let size = content.len() as u64;
        self.header(&Header { name: name.as_bytes(), typeflag: b'0', size, link: b"", mode: 0o644, device: (0, 0) });
        self.content(content)
    }

    pub(super) fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, b'5', "")
    }

    pub(super) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, b'2', target)
    }

    pub(super) fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, b'1', target)
    }

    fn device(&mut self, name: &str, typeflag: u8, major: u32, minor: u32) -> &mut Self {
        let header =
            Header { name: name.as_bytes(), typeflag, size: 0, link: b"", mode: 0o666, device: (major, minor) };
        self.header(&header)
    }

    /// A header declaring `size` bytes of content, and only `given` of them.
    fn claims(&mut self, name: &str, typeflag: u8, size: u64, given: usize) -> &mut Self {
        self.header(&Header { name: name.as_bytes(), typeflag, size, link: b"", mode: 0o644, device: (0, 0) });
        self.content(&vec![b'x'; given])
    }

    /// A PAX extended header with these records, for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3;
            // The length counts its own digits.
            let mut len = body + body.to_string().len();
            if len.to_string().len() + body != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let size = data.len() as u64;
        self.header(&Header { name: b"PaxHeaders/x", typeflag: b'x', size, link: b"", mode: 0o644, device: (0, 0) });
        self.content(&data)
    }

    /// A GNU long name (`L`) or long link (`K`) header for the next entry.
    fn gnu_long(&mut self, typeflag: u8, name: &str) -> &mut Self {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        let size = data.len() as u64;
        self.header(&Header { name: b"././@LongLink", typeflag, size, link: b"", mode: 0o644, device: (0, 0) });
        self.content(&data)
    }

    /// The stream, ended by two zero blocks.
    pub(super) fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.resize(out.len() + 1024, 0);
        out
    }
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(tar);
    encoder.finish().unwrap_or_default()
}

fn zstd(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 1).unwrap_or_default()
}

/// Hostile layers, by name: every way out of the destination that bake
/// refuses or contains, and the malformed headers it must survive. Some come
/// gzip- or zstd-compressed too, as registries serve them.
pub fn hostile_layers() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut seed = |name: &'static str, build: &dyn Fn(&mut Tar)| {
        let mut tar = Tar::default();
        build(&mut tar);
        seeds.push((name, tar.finish()));
    };
    seed("plain", &|t| {
        t.dir("etc").file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n").symlink("bin", "usr/bin").dir("usr/bin");
        t.file("usr/bin/sh", b"\x7fELF").hardlink("usr/bin/ash", "usr/bin/sh").device("dev/null", b'3', 1, 3);
    });
    seed("dotdot", &|t| {
        t.file("../escape", b"x").file("a/../../escape", b"x");
    });
    seed("absolute", &|t| {
        t.file("/escape", b"x").file("/canary", b"overwritten").dir("/etc/escape");
    });
    seed("symlink-parent", &|t| {
        t.symlink("up", "..").file("up/escape", b"x");
    });
    seed("symlink-absolute", &|t| {
        t.symlink("root", "/").file("root/canary", b"overwritten").file("root/escape", b"x");
    });
    seed("symlink-chain", &|t| {
        t.dir("b").symlink("b/c", "../..").symlink("a", "b/c").file("a/escape", b"x");
        t.symlink("d", "b/../b/../..").dir("d/escape");
    });
    seed("symlink-loop", &|t| {
        t.symlink("l", "l").file("l/x", b"x").symlink("m", "n").symlink("n", "m").file("m/x", b"x");
    });
    seed("symlink-replaced-by-dir", &|t| {
        t.symlink("s", "..").dir("s").file("s/x", b"x").symlink("s/y", "../..").file("s/y/escape", b"x");
    });
    seed("hardlink-out", &|t| {
        t.hardlink("h", "../canary").hardlink("i", "/canary").hardlink("j", "../canary-dir/file");
    });
    seed("hardlink-through-symlink", &|t| {
        t.symlink("up", "..").hardlink("h", "up/canary").symlink("s", "/canary").hardlink("k", "s");
        t.file("k", b"replaced").file("s", b"replaced");
    });
    seed("hardlink-to-dir", &|t| {
        t.dir("d").hardlink("h", "d").hardlink("r", ".").hardlink("e", "").hardlink("self", "self");
    });
    seed("whiteouts", &|t| {
        t.file(".wh..", b"").file(".wh...", b"").file(".wh.", b"").file(".wh..wh..opq", b"");
        t.file("../.wh.canary", b"").symlink("up", "..").file("up/.wh.canary", b"").file("up/.wh..wh..opq", b"");
        t.dir("a").file("a/.wh.b/c", b"").file(".wh.a", b"").file("a/x", b"").file(".wh..wh.plnk/1", b"");
    });
    seed("whiteout-parents", &|t| {
        t.dir("a/b").file("a/b/c", b"x").file("a/.wh.b", b"").file("a/b/.wh..wh..opq", b"").file(".wh.a", b"");
    });
    seed("devices", &|t| {
        t.device("null", b'3', 1, 3).device("sda", b'4', 8, 0).device("fifo", b'6', 0, 0);
        t.symlink("up", "..").device("up/escape", b'3', 1, 3).device("/dev/escape", b'4', 8, 0);
    });
    seed("long-names", &|t| {
        let long = format!("{}/x", "d".repeat(250));
        t.pax(&[("path", long.as_bytes())]).file("short", b"pax path");
        t.pax(&[("path", b"../pax-escape")]).file("innocent", b"x");
        t.gnu_long(b'L', "../../gnu-escape").file("innocent2", b"x");
        t.gnu_long(b'K', "/canary").hardlink("gnu-link", "innocent");
        t.pax(&[("linkpath", b"../canary")]).hardlink("pax-link", "innocent");
        t.pax(&[("path", "a/".repeat(2100).as_bytes())]).file("too-long", b"x");
    });
    seed("pax-records", &|t| {
        t.pax(&[("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\n\x00"), ("size", b"3")]).file("cap", b"abc");
        t.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y"), ("SCHILY.xattr.user.x", b"1")]).dir("opaque");
        t.pax(&[("mtime", b"-1.5"), ("uid", b"4294967296"), ("gid", b"65534")]).file("ids", b"");
        t.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.name", b"sparse")]).file("sparse", b"");
        t.pax(&[("size", b"18446744073709551615")]).file("huge", b"");
    });
    seed("pax-nul", &|t| {
        t.pax(&[("path", b"nul\0byte")]).file("nul", b"x");
    });
    seed("sparse", &|t| {
        t.claims("sparse", b'S', 512, 512).file("after", b"x");
    });
    seed("huge-sizes", &|t| {
        t.claims("big", b'0', 1 << 40, 512).claims("bigger", b'0', u64::MAX >> 2, 0);
    });
    seed("truncated", &|t| {
        t.claims("short", b'0', 4096, 100);
    });
    seed("replace", &|t| {
        t.file("a", b"file").dir("a").file("a/b", b"x").file("a", b"again").dir("c").file("c/d", b"x");
        t.symlink("c", "a").dir("e").file("e", b"x");
    });
    seed("modes", &|t| {
        t.header(&Header { name: b"locked", typeflag: b'5', size: 0, link: b"", mode: 0, device: (0, 0) });
        t.file("locked/x", b"x");
        t.header(&Header { name: b"suid", typeflag: b'0', size: 0, link: b"", mode: 0o7777, device: (0, 0) });
    });
    seed("root-entries", &|t| {
        t.dir("./").dir(".").dir("/").file("./.", b"x").symlink(".", "..").file("./x", b"x");
    });

    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, tar) in seeds {
        if matches!(name, "plain" | "symlink-chain" | "hardlink-out" | "whiteouts" | "long-names") {
            out.push((format!("{name}.gz"), gzip(&tar)));
            out.push((format!("{name}.zst"), zstd(&tar)));
        }
        out.push((name.to_owned(), tar));
    }
    // A bomb: far more zeros than the targets' limit.
    let zeros = vec![0u8; 8 << 20];
    let mut bomb = Tar::default();
    bomb.claims("bomb", b'0', zeros.len() as u64, 0);
    let mut bomb = bomb.finish();
    bomb.truncate(512);
    bomb.extend_from_slice(&zeros);
    out.push(("bomb.zst".to_owned(), zstd(&bomb)));
    out.push(("bomb.gz".to_owned(), gzip(&bomb)));
    out
}
