//! Layer packing throughput: bake's [`LayerWriter`] against `tar | gzip`,
//! `tar | pigz` and `tar | zstd` on the same 500 MB tree, in the same run.
//!
//! The tree is generated (so every machine packs the same bytes) and shaped
//! like `/usr/lib`: 250 packages, each with source-like text, ELF-like
//! binaries (code-like words, string tables, zero padding, noise), some
//! incompressible data and tiny files; about 14,000 files, 500 MB, which
//! gzip -6 shrinks to about 0.42. It is written once under cargo's bench
//! scratch folder and reused.
//!
//! Every variant walks the tree, reads every file (from the page cache: one
//! `tar` pass warms it) and counts the compressed bytes; bake also computes
//! both digests, as it always does. `bake tar` (no compression) shows what
//! walking, reading and hashing cost. Throughput is content bytes (10⁶ per
//! MB) per second, the median of [`ROUNDS`] rounds.
//!
//! This is a hand-rolled harness, not criterion: criterion needs at least 10
//! samples per variant, and single-threaded `gzip -6` takes ~17 s per sample
//! here, so the run would not fit in ten minutes. Rounds run every variant
//! in turn, so background load on a shared two-core machine hits all of them
//! alike and the ratios stay fair.
//!
//! `cargo bench -p bake-engine --bench layer [-- FILTER...]`;
//! `BAKE_BENCH_ROUNDS=N` changes the number of rounds.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bake_engine::layer::{self, Entry, EntryKind, LayerOptions, LayerWriter};
use bake_engine::oci::Compression;
use rayon::prelude::*;

const ROUNDS: usize = 5;
const PACKAGES: u64 = 250;

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rounds = std::env::var("BAKE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let tree = cached_tree();
    let content_bytes = tree_bytes(&tree);
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "layer packing: {} ({:.0} MB of content), {rounds} rounds, {threads} CPUs, bake with {threads} threads",
        tree.display(),
        mb(content_bytes)
    );

    let dir = tree.display().to_string();
    let mut variants = vec![
        Variant::bake("bake tar", Compression::None),
        Variant::bake("bake gzip -6", Compression::Gzip),
        Variant::bake("bake zstd -3", Compression::Zstd),
        Variant::shell("tar | gzip -6", &format!("tar -C '{dir}' -cf - . | gzip -6 | wc -c")),
    ];
    if has("pigz") {
        variants.push(Variant::shell("tar | pigz -6", &format!("tar -C '{dir}' -cf - . | pigz -6 | wc -c")));
    }
    variants.push(Variant::shell("tar | zstd -3", &format!("tar -C '{dir}' -cf - . | zstd -3 -c | wc -c")));
    variants.push(Variant::shell("tar | zstd -3 -T0", &format!("tar -C '{dir}' -cf - . | zstd -3 -T0 -c | wc -c")));
    variants.retain(|v| filters.is_empty() || filters.iter().any(|f| v.name.contains(f.as_str())));

    // Read the tree once, so every variant starts from the page cache.
    Variant::shell("warm-up", &format!("tar -C '{dir}' -cf - . | wc -c")).run(&tree);
    // Per variant and round: wall time and CPU time (every thread and child).
    let mut samples: Vec<Vec<(Duration, f64)>> = vec![Vec::new(); variants.len()];
    let mut sizes = vec![0u64; variants.len()];
    for round in 1..=rounds {
        for (i, variant) in variants.iter().enumerate() {
            let cpu = cpu_seconds();
            let start = Instant::now();
            sizes[i] = variant.run(&tree);
            let elapsed = start.elapsed();
            let cpu = cpu_seconds() - cpu;
            samples[i].push((elapsed, cpu));
            eprintln!("round {round}: {:<18} {:>7.2} s {cpu:>7.2} CPU s", variant.name, elapsed.as_secs_f64());
        }
    }

    let speed = |d: Duration| mb(content_bytes) / d.as_secs_f64();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\n{:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "", "median", "min", "max", "CPU s", "MB", "ratio"
    );
    let _ = writeln!(
        table,
        "{:<18} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "variant", "MB/s", "MB/s", "MB/s", "median", "out", "out/in"
    );
    for ((variant, runs), size) in variants.iter().zip(&samples).zip(&sizes) {
        let mut times: Vec<Duration> = runs.iter().map(|r| r.0).collect();
        times.sort();
        let (median, fastest, slowest) = (speed(median_of(&times)), speed(times[0]), speed(times[times.len() - 1]));
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.1).collect();
        cpu.sort_by(f64::total_cmp);
        let ratio = mb(*size) / mb(content_bytes);
        let _ = writeln!(
            table,
            "{:<18} {median:>8.1} {slowest:>8.1} {fastest:>8.1} {:>8.2} {:>8.1} {ratio:>7.3}",
            variant.name,
            median_of(&cpu),
            mb(*size)
        );
    }
    // Speed ratios: of the medians, and the median of each round's ratio (the
    // two runs of a pair are close in time, so they share the machine's load).
    let _ = writeln!(table, "\n{:<36} {:>9} {:>9}", "speed ratio", "medians", "paired");
    let find = |name: &str| variants.iter().position(|v| v.name == name);
    for (bake, cli) in [
        ("bake gzip -6", "tar | gzip -6"),
        ("bake gzip -6", "tar | pigz -6"),
        ("bake zstd -3", "tar | zstd -3"),
        ("bake zstd -3", "tar | zstd -3 -T0"),
    ] {
        let (Some(b), Some(c)) = (find(bake), find(cli)) else { continue };
        let wall = |i: usize| samples[i].iter().map(|r| r.0).collect::<Vec<_>>();
        let (mut bt, mut ct) = (wall(b), wall(c));
        let mut paired: Vec<f64> = bt.iter().zip(&ct).map(|(b, c)| c.as_secs_f64() / b.as_secs_f64()).collect();
        paired.sort_by(f64::total_cmp);
        bt.sort();
        ct.sort();
        let of_medians = median_of(&ct).as_secs_f64() / median_of(&bt).as_secs_f64();
        let _ = writeln!(table, "{:<36} {of_medians:>8.2}x {:>8.2}x", format!("{bake} / {cli}"), median_of(&paired));
    }
    print!("{table}");
    io::stdout().flush().expect("stdout");
}

enum Run {
    Bake(Compression),
    Shell(String),
}

struct Variant {
    name: &'static str,
    run: Run,
}

impl Variant {
    fn bake(name: &'static str, compression: Compression) -> Self {
        Self { name, run: Run::Bake(compression) }
    }

    fn shell(name: &'static str, pipeline: &str) -> Self {
        Self { name, run: Run::Shell(format!("set -o pipefail; {pipeline}")) }
    }

    /// Packs the tree; the compressed size.
    fn run(&self, tree: &Path) -> u64 {
        match &self.run {
            Run::Bake(compression) => pack(tree, *compression),
            Run::Shell(script) => {
                let out = Command::new("bash").args(["-c", script]).output().expect("bash");
                assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).trim().parse().expect("wc -c prints a number")
            }
        }
    }
}

/// What a build does to make a layer from a folder: walk, sort, stream.
fn pack(root: &Path, compression: Compression) -> u64 {
    let mut entries = Vec::new();
    walk(root, "", &mut entries);
    layer::sort_entries_by(&mut entries, |(e, _)| e);
    let options = LayerOptions { compression, ..LayerOptions::default() };
    let threads = std::env::var("BAKE_BENCH_THREADS").ok().and_then(|t| t.parse().ok());
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    let mut writer = LayerWriter::with_threads(io::sink(), &options, threads);
    for (entry, source) in &entries {
        match source {
            Some(path) => {
                let mut file = fs::File::open(path).expect("open");
                writer.append(entry, Some(&mut file)).expect("append");
            }
            None => writer.append(entry, None).expect("append"),
        }
    }
    writer.finish().expect("finish").1.size
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(Entry, Option<PathBuf>)>) {
    for item in fs::read_dir(dir).expect("read_dir") {
        let item = item.expect("dir entry");
        let name = item.file_name().into_string().expect("UTF-8 names");
        let path = item.path();
        let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let meta = fs::symlink_metadata(&path).expect("stat");
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_symlink() {
            let target = fs::read_link(&path).expect("readlink").into_os_string().into_string().expect("UTF-8");
            EntryKind::Symlink { target }
        } else {
            EntryKind::File { size: meta.len() }
        };
        let entry = Entry { mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), ..Entry::new(&rel, kind) };
        let source = matches!(entry.kind, EntryKind::File { .. }).then(|| path.clone());
        let is_dir = entry.kind == EntryKind::Dir;
        out.push((entry, source));
        if is_dir {
            walk(&path, &rel, out);
        }
    }
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut entries = Vec::new();
    walk(dir, "", &mut entries);
    entries.iter().map(|(e, _)| if let EntryKind::File { size } = e.kind { size } else { 0 }).sum()
}

fn median_of<T: Copy>(sorted: &[T]) -> T {
    sorted[sorted.len() / 2]
}

/// CPU seconds used so far by this process's threads and its waited-for
/// children (the shell pipelines), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
    // utime, stime, cutime, cstime, in clock ticks (100 per second on Linux).
    let ticks: u32 = fields[11..15].iter().map(|f| f.parse::<u32>().expect("ticks")).sum();
    f64::from(ticks) / 100.0
}

fn has(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

#[allow(clippy::cast_precision_loss)]
fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

// ------------------------------------------------------------------ the tree

/// The generated tree, written on first use under `target/tmp` and reused
/// while this file is unchanged.
fn cached_tree() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-fixtures");
    let version = blake3::hash(include_bytes!("layer.rs")).to_hex();
    let dir = base.join(format!("layer-tree-{}", &version[..12]));
    if dir.join(".complete").exists() {
        return dir.join("tree");
    }
    // Older versions of the tree are 500 MB each: remove them.
    if let Ok(items) = fs::read_dir(&base) {
        for item in items.flatten() {
            if item.file_name().to_string_lossy().starts_with("layer-tree-") {
                let _ = fs::remove_dir_all(item.path());
            }
        }
    }
    let start = Instant::now();
    let tree = dir.join("tree");
    (0..PACKAGES).into_par_iter().for_each(|p| package(&tree, p));
    fs::write(dir.join(".complete"), "").expect("marker");
    eprintln!("generated {} in {:.1} s", tree.display(), start.elapsed().as_secs_f64());
    tree
}

/// xorshift64*: fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }
}

const WORDS: &[&str] = &[
    "static", "int", "return", "if", "else", "for", "while", "struct", "const", "void", "char", "unsigned", "size_t",
    "buffer", "length", "offset", "error", "result", "value", "index", "count", "node", "list", "next", "prev", "data",
    "ptr", "self", "config", "options", "handle", "context", "state", "flags", "mode", "path", "name", "file",
    "stream", "read", "write", "open", "close", "alloc", "free", "init", "update", "parse", "format", "string",
    "bytes", "table", "entry", "key", "hash", "map", "insert", "remove", "lookup", "begin", "end", "=", "==", "!=",
    "->", "(", ")", "{", "}", ";", "0", "1", "NULL", "true", "false", "def", "import", "from", "class", "print", "the",
    "a", "to", "of", "and", "is", "in", "this", "that", "function", "returns", "when", "not",
];

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        for _ in 0..rng.below(4) {
            out.extend_from_slice(b"    ");
        }
        for _ in 0..4 + rng.below(9) {
            out.extend_from_slice(WORDS[rng.index(WORDS.len())].as_bytes());
            out.push(b' ');
        }
        if rng.below(8) == 0 {
            out.extend_from_slice(rng.below(100_000).to_string().as_bytes());
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// ELF-like: 4 KiB chunks of code-like words, string tables, zero padding
/// and noise.
fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    let opcodes: Vec<u32> = (0..24).map(|_| u32::try_from(rng.next() >> 32).unwrap_or(0) & 0xffff_ff00).collect();
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        match rng.below(20) {
            0..=9 => {
                for _ in 0..1024 {
                    let word = opcodes[rng.index(opcodes.len())] | u32::try_from(rng.below(4)).unwrap_or(0);
                    out.extend_from_slice(&word.to_le_bytes());
                }
            }
            10..=14 => {
                let mut strings = text(rng, 4096);
                for b in &mut strings {
                    if *b == b' ' || *b == b'\n' {
                        *b = 0;
                    }
                }
                out.extend_from_slice(&strings);
            }
            15..=17 => out.resize(out.len() + 4096, 0),
            _ => out.extend((0..512).flat_map(|_| rng.next().to_le_bytes())),
        }
    }
    out.truncate(len);
    out
}

fn noise(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len.div_ceil(8)).flat_map(|_| rng.next().to_le_bytes()).collect();
    out.truncate(len);
    out
}

fn size(rng: &mut Rng, min: u64, spread: u64) -> usize {
    usize::try_from(min + rng.below(spread)).unwrap_or(0)
}

fn package(tree: &Path, p: u64) {
    let mut rng = Rng::new(p + 1);
    let root = tree.join(format!("usr/lib/pkg{p:03}"));
    let write = |rel: &str, data: &[u8]| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, data).expect("write");
    };
    for i in 0..30 {
        let dir = ["src", "include", "doc", "python"][i % 4];
        let len = size(&mut rng, 500, 12_000);
        write(&format!("{dir}/file{i:02}.txt"), &text(&mut rng, len));
    }
    for i in 0..4 {
        let len = size(&mut rng, 100_000, 600_000);
        write(&format!("lib{p}-{i}.so.1"), &binary(&mut rng, len));
    }
    for i in 0..3 {
        let len = size(&mut rng, 20_000, 80_000);
        write(&format!("data/blob{i}.gz"), &noise(&mut rng, len));
    }
    for i in 0..20 {
        let len = size(&mut rng, 50, 300);
        write(&format!("etc/conf{i:02}"), &text(&mut rng, len));
    }
    std::os::unix::fs::symlink(format!("lib{p}-0.so.1"), root.join(format!("lib{p}.so"))).expect("symlink");
}
