//! The local store through its public API, across processes.
//!
//! The multi-process tests run this test binary again as child processes:
//! the hidden, ignored `worker` test does nothing unless
//! `BAKE_STORE_TEST_WORKER` tells it what to do.
//!
//! `measure_store_throughput` prints throughput numbers:
//! `cargo test --release -p bake-engine --test store -- --ignored --exact measure_store_throughput --nocapture`

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[path = "common/tmpfs.rs"]
mod tmpfs;
use tmpfs::Tmpfs;

use bake_engine::oci::{Digest, HashReader, digest_of, media};
use bake_engine::store::{BlobWriter, CacheEntry, ImageRecord, PruneOptions, Store, StoreError};

const WORKER_ENV: &str = "BAKE_STORE_TEST_WORKER";
/// The large blob `measure_store_throughput` writes, in MiB.
const MEASURE_CHUNKS: u64 = 512;
/// How many small blobs it writes.
const MEASURE_SMALL: u64 = 10_000;
/// How many images it records.
const MEASURE_IMAGES: u64 = 200;

// ---- helpers ---------------------------------------------------------------

/// xorshift64*: deterministic test data without a dependency.
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

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn seed() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()))
}

/// `len` bytes determined by `seed`.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

fn key(space: u64, n: u64) -> String {
    format!("{space:032x}{n:032x}")
}

/// Streams `bytes` into the store in 64 KiB writes.
fn write_blob(store: &Store, bytes: &[u8]) -> Digest {
    let mut w: BlobWriter = store.blob_writer().expect("writer");
    for chunk in bytes.chunks(64 << 10) {
        w.write_all(chunk).expect("write");
    }
    w.commit(Some(&digest_of(bytes))).expect("commit").0
}

/// Writes a blob unless the store has it (which protects it for the grace
/// period), as a pull or a build would.
fn ensure_blob(store: &Store, bytes: &[u8]) -> Digest {
    let d = digest_of(bytes);
    if store.has_blob(&d) { d } else { write_blob(store, bytes) }
}

/// Stores a config and a manifest over `layers`; returns the manifest.
fn image(store: &Store, label: &str, layers: &[&Digest]) -> Digest {
    let config = store.put_blob(format!(r#"{{"config":{{"Labels":{{"t":"{label}"}}}}}}"#).as_bytes()).expect("config");
    let desc = |d: &Digest, mt: &str| serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": store.blob_len(d).expect("stored")});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": desc(&config, media::OCI_CONFIG),
        "layers": layers.iter().map(|l| desc(l, media::OCI_LAYER_GZIP)).collect::<Vec<_>>(),
    });
    store.put_blob(&serde_json::to_vec(&manifest).expect("json")).expect("manifest")
}

fn record(manifest: &Digest) -> ImageRecord {
    ImageRecord {
        manifest: manifest.clone(),
        media_type: media::OCI_MANIFEST.to_owned(),
        size: 0,
        uncompressed_size: 0,
        created: "2026-01-01T00:00:00Z".to_owned(),
    }
}

/// Verifies a manifest and everything it references; returns how many
/// blobs that was.
fn verify_closure(store: &Store, manifest: &Digest) -> usize {
    let doc: serde_json::Value = serde_json::from_slice(&store.read_blob(manifest).expect("manifest")).expect("json");
    let mut n = 1;
    let children = doc["layers"].as_array().into_iter().flatten().chain(std::iter::once(&doc["config"]));
    for child in children {
        let d: Digest = child["digest"].as_str().expect("digest").parse().expect("digest");
        store.verify_blob(&d).unwrap_or_else(|e| panic!("{d} of {manifest}: {e}"));
        n += 1;
    }
    n
}

fn spawn_worker(mode: &str, dir: &Path, id: u64) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "worker", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, format!("{mode}:{id}:{}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

/// Collects a child's output lines in the background.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
    }
    lines
}

// ---- the worker ------------------------------------------------------------

#[test]
#[ignore = "a child process of the multi-process tests; does nothing on its own"]
fn worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else { return };
    let mut parts = spec.splitn(3, ':');
    let (mode, id, dir) = (parts.next().expect("mode"), parts.next().expect("id"), parts.next().expect("dir"));
    let id: u64 = id.parse().expect("id");
    let store = Store::open(Path::new(dir)).expect("open store");
    println!("worker-ready");
    match mode {
        "hammer" => hammer(&store, id),
        "big" => big_writes(&store),
        other => panic!("unknown worker mode {other}"),
    }
}

/// Shared and own layers, images and cache entries, for a few seconds.
fn hammer(store: &Store, id: u64) {
    let deadline = Instant::now() + HAMMER_FOR;
    let mut rng = Rng::new(seed() ^ id);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let s = i % 7;
        // Same bytes in every process; one in seven large enough to be fsynced.
        let shared_len = if s == 3 { 2 << 20 } else { 48 << 10 };
        let shared = ensure_blob(store, &data(1000 + s, shared_len));
        let own = write_blob(store, &data((id << 32) | i, 16 << 10));
        let m_shared = image(store, &format!("shared {s}"), &[&shared]);
        let m_own = image(store, &format!("{id} {i}"), &[&shared, &own]);
        store.set_image(&format!("shared/img:{s}"), &record(&m_shared)).expect("set shared image");
        store.set_image(&format!("p{id}/img:{}", i % 20), &record(&m_own)).expect("set own image");
        store
            .put_cache(&key(0, s), &CacheEntry { value: serde_json::json!({"by": id, "i": i}), blobs: vec![m_shared] })
            .expect("put shared entry");
        store
            .put_cache(&key(id, i % 50), &CacheEntry { value: i.into(), blobs: vec![own.clone()] })
            .expect("put entry");
        if rng.below(4) == 0 {
            store.remove_image(&format!("p{id}/img:{}", rng.below(20))).expect("remove");
        }
        // A hit's blobs stay readable: the hit protects them.
        for k in [key(0, rng.below(7)), key(id, rng.below(50)), key(3 - id, rng.below(50))] {
            if let Some(entry) = store.cache(&k).expect("lookup") {
                for d in &entry.blobs {
                    store.verify_blob(d).unwrap_or_else(|e| panic!("hit {k}: {d}: {e}"));
                }
            }
        }
        // An image just read is readable, whoever wrote it last.
        if let Some(img) = store.image(&format!("shared/img:{}", rng.below(7))).expect("image") {
            verify_closure(store, &img.manifest);
        }
        i += 1;
    }
    println!("worker-done {i}");
}

const HAMMER_FOR: Duration = Duration::from_secs(6);
/// Long enough for any worker step from finding a blob to recording it.
const HAMMER_GRACE: Duration = Duration::from_secs(3);

/// A stream of large blob writes, each recorded as an image and a cache
/// entry, with prunes between them, until killed.
fn big_writes(store: &Store) {
    for i in 0u64.. {
        let layer = write_blob(store, &big_blob(i));
        println!("committed {i}");
        let m = image(store, &format!("big {i}"), &[&layer]);
        store.set_image(&format!("big/{}", i % 4), &record(&m)).expect("set image");
        store.put_cache(&key(9, i % 8), &CacheEntry { value: i.into(), blobs: vec![m] }).expect("put cache");
        if i % 3 == 2 {
            store.prune(&PruneOptions { grace: Duration::ZERO, ..PruneOptions::default() }).expect("prune");
        }
    }
}

/// 2 to 4 MiB.
fn big_blob(i: u64) -> Vec<u8> {
    data(7_000_000 + i, (2 << 20) + (i % 3) as usize * (1 << 20))
}

// ---- tests -----------------------------------------------------------------

#[test]
fn public_api_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("open");
    assert_eq!(store.dir(), dir.path().join("store"));
    let layer = write_blob(&store, &data(1, 3 << 20));
    let m = image(&store, "x", &[&layer]);
    store.set_image("bake/app", &record(&m)).expect("set");
    assert_eq!(verify_closure(&store, &m), 3);
    let mut file = store.open_blob(&layer).expect("open");
    let mut reader = HashReader::new(&mut file);
    std::io::copy(&mut reader, &mut std::io::sink()).expect("read");
    assert_eq!(reader.finish(), (layer.clone(), 3 << 20));

    let mut w = store.blob_writer().expect("writer");
    w.write_all(b"abc").expect("write");
    let wrong = digest_of(b"abd");
    assert!(matches!(w.commit(Some(&wrong)), Err(StoreError::DigestMismatch { .. })));
    assert!(!store.has_blob(&digest_of(b"abc")));

    // Send + Sync, usable from threads.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let d = store.put_blob(&data(t * 100 + i, 1000)).expect("put");
                    store.put_cache(&key(t, i), &CacheEntry { value: i.into(), blobs: vec![d] }).expect("cache");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(store.usage().expect("usage").cache_entries, 80);
    let report = store.prune(&PruneOptions { all_cache: true, grace: Duration::ZERO, ..PruneOptions::default() });
    assert_eq!(report.expect("prune").blobs_removed, 80);
    assert_eq!(store.images().expect("images").len(), 1);
}

/// Two processes write the same and different blobs, images and cache
/// entries into one store while this one prunes it, with eviction and
/// `all_cache` among the prunes.
#[test]
fn two_processes_share_one_store_while_it_is_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mut children: Vec<(Child, Arc<Mutex<Vec<String>>>)> = [1, 2]
        .into_iter()
        .map(|id| {
            let mut child = spawn_worker("hammer", dir.path(), id);
            let out = collect(&mut child);
            (child, out)
        })
        .collect();

    let mut prunes = 0;
    let (mut removed, mut evicted) = (0, 0);
    while children.iter_mut().any(|(c, _)| c.try_wait().expect("wait").is_none()) {
        let options = PruneOptions {
            max_size: (prunes % 3 == 1).then_some(4 << 20),
            all_cache: prunes % 7 == 6,
            grace: HAMMER_GRACE,
        };
        let report = store.prune(&options).expect("prune while others write");
        removed += report.blobs_removed;
        evicted += report.cache_entries_removed;
        prunes += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut iterations = 0;
    for (mut child, out) in children {
        let status = child.wait().expect("wait");
        std::thread::sleep(Duration::from_millis(50));
        let out = out.lock().expect("out").join("\n");
        assert!(status.success(), "worker failed: {status}\n{out}");
        let done = out.lines().find_map(|l| l.strip_prefix("worker-done ")).expect("worker finished");
        iterations += done.trim().parse::<usize>().expect("count");
    }
    eprintln!("{iterations} worker iterations, {prunes} prunes removed {removed} blobs and {evicted} entries");
    assert!(iterations > 20, "the workers barely ran");
    assert!(removed > 0 && evicted > 0, "the prunes never raced the writers");

    // Everything recorded is intact, and once nothing is young only what is
    // recorded is left.
    store.prune(&PruneOptions { grace: Duration::ZERO, ..PruneOptions::default() }).expect("final prune");
    let images = store.images().expect("images");
    assert!(images.iter().any(|(n, _)| n.starts_with("shared/")) && images.iter().any(|(n, _)| n.starts_with("p2/")));
    let mut reachable = std::collections::HashSet::new();
    for (name, img) in &images {
        verify_closure(&store, &img.manifest);
        let doc: serde_json::Value = serde_json::from_slice(&store.read_blob(&img.manifest).expect("m")).expect("json");
        reachable.insert(img.manifest.clone());
        for d in doc["layers"].as_array().into_iter().flatten().chain([&doc["config"]]) {
            reachable.insert(d["digest"].as_str().expect(name).parse::<Digest>().expect("digest"));
        }
    }
    for k in (0..7).map(|s| key(0, s)).chain((1..=2).flat_map(|id| (0..50).map(move |n| key(id, n)))) {
        if let Some(entry) = store.cache(&k).expect("lookup") {
            for d in &entry.blobs {
                store.verify_blob(d).expect("cached blob");
                reachable.insert(d.clone());
                if let Ok(bytes) = store.read_blob(d)
                    && let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes)
                {
                    for c in doc["layers"].as_array().into_iter().flatten().chain([&doc["config"]]) {
                        if let Some(c) = c["digest"].as_str() {
                            reachable.insert(c.parse::<Digest>().expect("digest"));
                        }
                    }
                }
            }
        }
    }
    let usage = store.usage().expect("usage");
    assert_eq!(usage.unreferenced_bytes, 0);
    assert_eq!(usage.blobs, reachable.len());
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
}

/// A process streaming large blobs (and recording and pruning) is killed
/// at random points; each time the store opens, everything it lists reads
/// back verified, and the blob in flight can be written afresh.
#[test]
fn sigkill_mid_write_leaves_a_consistent_store() {
    let seed = seed();
    eprintln!("seed {seed}");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..8 {
        let mut child = spawn_worker("big", dir.path(), 0);
        let out = collect(&mut child);
        let started = Instant::now();
        while !out.lock().expect("out").iter().any(|l| l.ends_with("worker-ready")) {
            assert!(started.elapsed() < Duration::from_secs(30), "worker never started");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Let it commit a few blobs (so that kills also land in recording
        // and pruning), then kill it at a random moment.
        let after = rng.below(4);
        let committed = |out: &Mutex<Vec<String>>| {
            out.lock().expect("out").iter().filter_map(|l| l.strip_prefix("committed ")?.parse::<u64>().ok()).max()
        };
        while committed(&out).map_or(0, |c| c + 1) < after {
            assert!(started.elapsed() < Duration::from_mins(1), "worker stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        let delay = Duration::from_millis(rng.below(700));
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        std::thread::sleep(Duration::from_millis(20));
        let committed = committed(&out);
        eprintln!("round {round}: killed {delay:?} after {after} commits; last committed blob {committed:?}");

        let store = Store::open(dir.path()).expect("store opens after SIGKILL");
        for (name, img) in store.images().expect("images") {
            assert!(verify_closure(&store, &img.manifest) >= 3, "{name}");
        }
        for n in 0..8 {
            if let Some(entry) = store.cache(&key(9, n)).expect("lookup") {
                for d in &entry.blobs {
                    verify_closure(&store, d);
                }
            }
        }
        store.usage().expect("usage");
        store.prune(&PruneOptions { grace: Duration::ZERO, ..PruneOptions::default() }).expect("prune");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0, "dead temp files collected");
        // The blob that was in flight, and the last one committed.
        let next = committed.map_or(0, |c| c + 1);
        for i in [next, next.saturating_sub(1)] {
            let bytes = big_blob(i);
            let d = write_blob(&store, &bytes);
            assert_eq!(store.verify_blob(&d).expect("fresh write verifies"), bytes.len() as u64);
        }
    }
}

/// Throughput of the store, release mode, page cache warm. Not a
/// benchmark harness: one run, printed.
#[test]
#[ignore = "a measurement; run in release mode with --nocapture"]
fn measure_store_throughput() {
    let dir = tempfile::tempdir_in(std::env::var_os("BAKE_MEASURE_DIR").map_or_else(std::env::temp_dir, Into::into))
        .expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("open");
    let mb = |bytes: u64, t: Duration| f64::from(u32::try_from(bytes / 1000).expect("small")) / 1e3 / t.as_secs_f64();
    let mut chunk = vec![0u8; 1 << 20];
    Rng::new(42).fill(&mut chunk);
    let total = MEASURE_CHUNKS << 20;

    // One 512 MiB blob, streamed in 1 MiB writes.
    let t = Instant::now();
    let mut w = store.blob_writer().expect("writer");
    for i in 0..MEASURE_CHUNKS {
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        w.write_all(&chunk).expect("write");
    }
    let (big, _) = w.commit(None).expect("commit");
    let put = t.elapsed();
    store.put_cache(&key(2, 0), &CacheEntry { value: 0.into(), blobs: vec![big.clone()] }).expect("keep it");

    let t = Instant::now();
    let mut file = store.open_blob(&big).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = file.read(&mut buf).expect("read");
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    assert_eq!(n, total);
    let read_raw = t.elapsed();

    let t = Instant::now();
    let mut reader = HashReader::new(std::io::BufReader::with_capacity(1 << 20, store.open_blob(&big).expect("open")));
    std::io::copy(&mut reader, &mut std::io::sink()).expect("read");
    assert_eq!(reader.finish().0, big);
    let read_hashed = t.elapsed();

    let t = Instant::now();
    store.verify_blob(&big).expect("verify");
    let verify = t.elapsed();

    // For comparison: cacache's own SyncWriter (sha256, no fsync, no
    // expected-digest check before publishing).
    let cmp = tempfile::tempdir_in(dir.path()).expect("tempdir");
    let t = Instant::now();
    let mut cw = cacache::WriteOpts::new()
        .algorithm(cacache::Algorithm::Sha256)
        .size(usize::try_from(total).expect("fits"))
        .open_hash_sync(cmp.path())
        .expect("cacache writer");
    for i in 0..MEASURE_CHUNKS {
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        cw.write_all(&chunk).expect("write");
    }
    cw.commit().expect("commit");
    let cacache_put = t.elapsed();
    drop(cmp);

    println!("512 MiB blob:");
    println!("  put (blob_writer, 1 MiB writes, fsync):  {:7.0} MB/s  ({put:.2?})", mb(total, put));
    println!("  cacache SyncWriter (no fsync), compare:  {:7.0} MB/s  ({cacache_put:.2?})", mb(total, cacache_put));
    println!("  open_blob + read, no hash:               {:7.0} MB/s  ({read_raw:.2?})", mb(total, read_raw));
    println!("  open_blob + read through sha256:         {:7.0} MB/s  ({read_hashed:.2?})", mb(total, read_hashed));
    println!("  verify_blob (cacache SyncReader):        {:7.0} MB/s  ({verify:.2?})", mb(total, verify));

    // 10,000 small blobs and cache entries.
    let blobs: Vec<Vec<u8>> = (0..MEASURE_SMALL).map(|i| data(i, 1024)).collect();
    let n = f64::from(u32::try_from(MEASURE_SMALL).expect("small"));
    let per = |t: Duration| format!("{:6.1} µs/op, {:7.0} ops/s", t.as_secs_f64() * 1e6 / n, n / t.as_secs_f64());
    let t = Instant::now();
    let digests: Vec<Digest> = blobs.iter().map(|b| store.put_blob(b).expect("put")).collect();
    let put_small = t.elapsed();
    let t = Instant::now();
    for b in &blobs {
        store.put_blob(b).expect("put");
    }
    let put_again = t.elapsed();
    let t = Instant::now();
    for (d, b) in digests.iter().zip(&blobs) {
        assert_eq!(&store.read_blob(d).expect("read"), b);
    }
    let read_small = t.elapsed();
    let t = Instant::now();
    for d in &digests {
        assert!(store.has_blob(d));
    }
    let has = t.elapsed();
    let t = Instant::now();
    for (i, d) in digests.iter().enumerate() {
        store.put_cache(&key(1, i as u64), &CacheEntry { value: i.into(), blobs: vec![d.clone()] }).expect("cache");
    }
    let put_cache = t.elapsed();
    let t = Instant::now();
    for i in 0..MEASURE_SMALL {
        assert!(store.cache(&key(1, i)).expect("hit").is_some());
    }
    let hit = t.elapsed();
    let t = Instant::now();
    let usage = store.usage().expect("usage");
    let usage_t = t.elapsed();
    let t = Instant::now();
    let report = store.prune(&PruneOptions { grace: Duration::ZERO, ..PruneOptions::default() }).expect("prune");
    let prune_noop = t.elapsed();
    assert_eq!(report.blobs_removed, 0);
    let t = Instant::now();
    let report =
        store.prune(&PruneOptions { max_size: Some(5_000 * 1024), grace: Duration::ZERO, ..PruneOptions::default() });
    let prune_half = t.elapsed();
    let report = report.expect("prune");
    assert!(report.cache_entries_removed >= 5_000);

    // Recording images: each makes a manifest, a config and a 64 KiB layer
    // durable, then writes its record with fsync.
    let images: Vec<Digest> = (0..MEASURE_IMAGES)
        .map(|i| {
            let layer = store.put_blob(&data(1_000_000 + i, 64 << 10)).expect("layer");
            image(&store, &i.to_string(), &[&layer])
        })
        .collect();
    let t = Instant::now();
    for (i, m) in images.iter().enumerate() {
        store.set_image(&format!("bake/img:{i}"), &record(m)).expect("set");
    }
    let set_image = t.elapsed();

    println!("10,000 blobs of 1 KiB ({} blobs, {} entries in the store):", usage.blobs, usage.cache_entries);
    println!("  put_blob (new):          {}  ({put_small:.2?})", per(put_small));
    println!("  put_blob (already there):{}  ({put_again:.2?})", per(put_again));
    println!("  read_blob (verified):    {}  ({read_small:.2?})", per(read_small));
    println!("  has_blob:                {}  ({has:.2?})", per(has));
    println!("  put_cache:               {}  ({put_cache:.2?})", per(put_cache));
    println!("  cache hit:               {}  ({hit:.2?})", per(hit));
    println!("  usage():                 {usage_t:.2?}");
    println!(
        "  set_image:               {:6.2} ms/op (manifest, config, 64 KiB layer; {MEASURE_IMAGES} images)",
        set_image.as_secs_f64() * 1e3 / f64::from(u32::try_from(MEASURE_IMAGES).expect("small"))
    );
    println!("  prune, nothing to do:    {prune_noop:.2?}");
    println!(
        "  prune, evict to half:    {prune_half:.2?} ({} entries, {} blobs removed)",
        report.cache_entries_removed, report.blobs_removed
    );
}

// ---- permissions -----------------------------------------------------------

/// A loop device over a temporary file, detached on drop.
struct Loop {
    device: std::path::PathBuf,
}

impl Loop {
    fn attach(file: &Path) -> Self {
        let out = Command::new("losetup").args(["--find", "--show"]).arg(file).output().expect("run losetup");
        assert!(out.status.success(), "losetup (needs root): {}", String::from_utf8_lossy(&out.stderr));
        Self { device: String::from_utf8(out.stdout).expect("utf-8").trim().into() }
    }

    fn numbers(&self) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.device).expect("stat the loop device").rdev();
        (nix::sys::stat::major(rdev).try_into().expect("major"), nix::sys::stat::minor(rdev).try_into().expect("minor"))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Runs `cat PATH` as `nobody`: its output, and whether it succeeded.
fn cat_as_nobody(path: &Path) -> (bool, Vec<u8>) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "cat"])
        .arg(path)
        .output()
        .expect("run setpriv");
    (out.status.success(), out.stdout)
}

#[test]
fn a_pulled_device_node_cannot_be_read_by_another_user_through_the_store() {
    use bake_engine::layer::{Entry, EntryKind, LayerOptions, LayerWriter};
    use std::os::unix::fs::PermissionsExt;

    assert!(nix::unistd::geteuid().is_root(), "this test attaches a loop device and unpacks as root: run it as root");
    let dir = tempfile::tempdir().expect("tempdir");
    // As an ordinary ~/.cache: others may traverse it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Loop devices count whole 512-byte sectors.
    let mut secret = b"the host disk's secret bytes ".repeat(200);
    secret.truncate(4096);
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, &secret).expect("write the disk image");
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let device = Loop::attach(&disk);
    let (major, minor) = device.numbers();

    // A layer whose block node, mode 0666, points at that loop device, in
    // world-readable folders.
    let mut writer = LayerWriter::new(Vec::new(), &LayerOptions::default());
    writer.append(&Entry::new("dev", EntryKind::Dir), None).expect("dev");
    let node = Entry { mode: 0o666, ..Entry::new("dev/disk", EntryKind::BlockDevice { major, minor }) };
    writer.append(&node, None).expect("node");
    let (blob, mut info) = writer.finish().expect("finish");
    let home = bake_engine::home::Home::new(dir.path().join("bake"));
    let engine = bake_engine::exec::Engine::open(home.clone(), &bake_engine::config::Config::default()).expect("open");
    let digest = write_blob(&engine.store, &blob);
    info.digest = digest;
    let snapshot = engine.snapshots.unpacked(&info).expect("unpack");

    // Root can use the node (as a layer means it inside the sandbox)...
    let read = std::fs::read(snapshot.join("dev/disk")).expect("root reads the node");
    assert_eq!(&read[..secret.len()], &secret[..]);
    // ... but nobody else can, through any path into the home.
    let (ok, out) = cat_as_nobody(&snapshot.join("dev/disk"));
    assert!(!ok && out.windows(16).all(|w| w != &secret[..16]), "nobody read the host disk through the store");
    for private in [home.snapshots_dir(), home.tmp_dir(), home.store_dir(), home.root().to_path_buf()] {
        let mode = std::fs::metadata(&private).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is private", private.display());
    }
}

#[test]
fn an_existing_home_open_to_others_is_tightened() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let home = bake_engine::home::Home::new(dir.path().join("bake"));
    for d in [home.snapshots_dir(), home.tmp_dir(), home.store_dir()] {
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bake_engine::exec::Engine::open(home.clone(), &bake_engine::config::Config::default()).expect("open");
    for d in [home.snapshots_dir(), home.tmp_dir(), home.store_dir()] {
        let mode = std::fs::metadata(&d).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is tightened", d.display());
    }
}

// ---- a full disk -----------------------------------------------------------

fn render(diagnostic: &dyn miette::Diagnostic) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(80)
        .render_report(&mut out, diagnostic)
        .expect("render");
    out
}

#[test]
fn a_full_disk_names_the_folder_when_writing_a_blob_or_unpacking_a_layer() {
    use bake_engine::layer::{Entry, EntryKind, LayerOptions, LayerWriter};

    let dir = tempfile::tempdir().expect("tempdir");
    let home_dir = dir.path().join("home");
    let _tmpfs = Tmpfs::mount(&home_dir, "4m");
    let home = bake_engine::home::Home::new(&home_dir);
    let engine = bake_engine::exec::Engine::open(home.clone(), &bake_engine::config::Config::default()).expect("open");

    // A blob larger than the disk.
    let mut writer = engine.store.blob_writer().expect("writer");
    let err = writer.write_all(&data(3, 6 << 20)).expect_err("the disk is full");
    let err = StoreError::disk_full(err).expect("a disk-full error");
    let text = render(&err);
    let tmp = home.store_dir().join("tmp");
    assert!(text.contains(&format!("the disk holding {} is full", tmp.display())), "{text}");
    assert!(text.contains("No space left on device") && text.contains("BAKE_HOME"), "{text}");
    drop(writer);

    // A small layer that unpacks to more than the disk holds.
    let zeros = vec![0u8; 6 << 20];
    let mut layer = LayerWriter::new(
        Vec::new(),
        &LayerOptions { compression: bake_engine::oci::Compression::Zstd, ..LayerOptions::default() },
    );
    layer
        .append(&Entry::new("zeros", EntryKind::File { size: zeros.len() as u64 }), Some(&mut &zeros[..]))
        .expect("append");
    let (blob, mut info) = layer.finish().expect("finish");
    info.digest = write_blob(&engine.store, &blob);
    let err = engine.snapshots.unpacked(&info).expect_err("the disk is full");
    let text = render(&err);
    assert!(text.contains(&format!("the disk holding {} is full", home.snapshots_dir().display())), "{text}");
    assert!(text.contains("bake::layer::disk_full"), "{text}");
}
