use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use super::*;
use crate::oci::{digest_of, media};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("open");
    (dir, store)
}

fn no_grace() -> PruneOptions {
    PruneOptions { grace: Duration::ZERO, ..PruneOptions::default() }
}

fn key(n: u32) -> String {
    format!("{n:064x}")
}

fn put_json(store: &Store, doc: &serde_json::Value) -> Digest {
    store.put_blob(&serde_json::to_vec(doc).expect("json")).expect("put")
}

fn descriptor(store: &Store, d: &Digest, media_type: &str) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": d.to_string(), "size": store.stored_len(d).unwrap_or(1) })
}

/// An OCI manifest over a config and layers.
fn manifest(store: &Store, config: &Digest, layers: &[&Digest]) -> Digest {
    put_json(
        store,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor(store, config, media::OCI_CONFIG),
            "layers": layers.iter().map(|l| descriptor(store, l, media::OCI_LAYER_GZIP)).collect::<Vec<_>>(),
        }),
    )
}

fn record(manifest: &Digest) -> ImageRecord {
    ImageRecord {
        manifest: manifest.clone(),
        media_type: media::OCI_MANIFEST.to_owned(),
        size: 1,
        uncompressed_size: 2,
        created: "2026-01-01T00:00:00Z".to_owned(),
    }
}

/// Makes a blob look `by` old.
fn age(store: &Store, d: &Digest, by: Duration) {
    let path = store.blob_path(d).expect("path");
    let when = SystemTime::now().checked_sub(by).expect("past");
    File::open(path).expect("open").set_modified(when).expect("mtime");
}

fn tmp_files(store: &Store) -> usize {
    fs::read_dir(&store.inner.tmp).expect("tmp").count()
}

fn blob(n: u32, len: usize) -> Vec<u8> {
    let mut v = format!("blob {n} ").into_bytes();
    v.resize(len, b'x');
    v
}

#[test]
fn blobs_round_trip() {
    let (_d, store) = store();
    let d = store.put_blob(b"hello").expect("put");
    assert_eq!(d, digest_of(b"hello"));
    assert!(store.has_blob(&d));
    assert_eq!(store.blob_len(&d), Some(5));
    assert_eq!(store.read_blob(&d).expect("read"), b"hello");
    let mut s = String::new();
    store.open_blob(&d).expect("open").read_to_string(&mut s).expect("read");
    assert_eq!(s, "hello");
    assert_eq!(store.verify_blob(&d).expect("verify"), 5);
    // Again: same digest, one blob.
    assert_eq!(store.put_blob(b"hello").expect("put"), d);
    assert_eq!(store.usage().expect("usage").blobs, 1);
    // The empty blob is a blob.
    let e = store.put_blob(b"").expect("put empty");
    assert_eq!(store.read_blob(&e).expect("read"), b"");

    let missing = digest_of(b"nope");
    assert!(!store.has_blob(&missing));
    assert_eq!(store.blob_len(&missing), None);
    assert!(matches!(store.read_blob(&missing), Err(StoreError::MissingBlob { .. })));
    assert!(matches!(store.open_blob(&missing), Err(StoreError::MissingBlob { .. })));
    assert!(matches!(store.verify_blob(&missing), Err(StoreError::MissingBlob { .. })));
}

#[test]
fn writer_streams_large_blobs() {
    let (_d, store) = store();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = store.blob_writer().expect("writer");
    for chunk in data.chunks(70_001) {
        w.write_all(chunk).expect("write");
    }
    assert_eq!(w.len(), data.len() as u64);
    let (d, len) = w.commit(Some(&digest_of(&data))).expect("commit");
    assert_eq!((d.clone(), len), (digest_of(&data), data.len() as u64));
    let mut back = Vec::new();
    store.open_blob(&d).expect("open").read_to_end(&mut back).expect("read");
    assert_eq!(back, data);
    assert_eq!(store.verify_blob(&d).expect("verify"), len);
    assert_eq!(tmp_files(&store), 0);
    // Writing it again replaces the file and succeeds.
    let mut w = store.blob_writer().expect("writer");
    w.write_all(&data).expect("write");
    assert_eq!(w.commit(None).expect("commit").0, d);
}

#[test]
fn digest_mismatch_stores_nothing() {
    let (_d, store) = store();
    let wrong = digest_of(b"something else");
    for len in [10, 2 << 20] {
        let data = blob(1, len);
        let mut w = store.blob_writer().expect("writer");
        w.write_all(&data).expect("write");
        let Err(StoreError::DigestMismatch { expected, actual }) = w.commit(Some(&wrong)) else {
            panic!("expected a mismatch")
        };
        assert_eq!(expected, wrong);
        assert_eq!(actual, digest_of(&data));
        assert!(!store.has_blob(&actual));
    }
    assert_eq!(store.usage().expect("usage").blobs, 0);
    assert_eq!(tmp_files(&store), 0);
}

#[test]
fn dropped_writer_leaves_nothing() {
    let (_d, store) = store();
    let mut w = store.blob_writer().expect("writer");
    w.write_all(&blob(2, 3 << 20)).expect("write");
    assert_eq!(tmp_files(&store), 1);
    drop(w);
    assert_eq!(tmp_files(&store), 0);
    assert_eq!(store.usage().expect("usage").blobs, 0);
}

#[test]
fn reopen_after_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, entry) = {
        let store = Store::open(dir.path()).expect("open");
        let c = store.put_blob(b"{}").expect("config");
        let m = manifest(&store, &c, &[]);
        store.set_image("bake/app", &record(&m)).expect("set");
        let entry = CacheEntry { value: serde_json::json!({"out": 1}), blobs: vec![c] };
        store.put_cache(&key(1), &entry).expect("cache");
        (m, entry)
    };
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.image("bake/app").expect("image"), Some(record(&m)));
    assert_eq!(store.cache(&key(1)).expect("cache"), Some(entry));
    assert!(store.has_blob(&m));
}

#[test]
fn images_by_name() {
    let (_d, store) = store();
    let c = store.put_blob(b"{}").expect("config");
    let m = manifest(&store, &c, &[]);
    let names = ["registry.example.com/z:1", "bake/app", "docker.io/library/busybox:latest", "bake/app:v2"];
    for name in names {
        store.set_image(name, &record(&m)).expect("set");
    }
    let listed: Vec<String> = store.images().expect("images").into_iter().map(|(n, _)| n).collect();
    let mut sorted = names.map(str::to_owned).to_vec();
    sorted.sort();
    assert_eq!(listed, sorted);

    let mut other = record(&m);
    other.size = 99;
    store.set_image("bake/app", &other).expect("replace");
    assert_eq!(store.image("bake/app").expect("image"), Some(other));
    assert_eq!(store.images().expect("images").len(), 4);

    assert!(store.remove_image("bake/app").expect("remove"));
    assert!(!store.remove_image("bake/app").expect("remove again"));
    assert_eq!(store.image("bake/app").expect("image"), None);

    let missing = digest_of(b"not stored");
    assert!(matches!(store.set_image("x", &record(&missing)), Err(StoreError::MissingBlob { .. })));
    // A manifest whose layer is gone would be a broken image.
    let lost = store.put_blob(b"layer").expect("layer");
    let m_lost = manifest(&store, &c, &[&lost]);
    fs::remove_file(store.blob_path(&lost).expect("path")).expect("lose it");
    let Err(StoreError::MissingBlob { digest }) = store.set_image("x", &record(&m_lost)) else {
        panic!("missing layer")
    };
    assert_eq!(digest, lost);
    assert_eq!(store.image("x").expect("image"), None);
    // Foreign layers are fetched from elsewhere and may be absent.
    let foreign = put_json(
        &store,
        &serde_json::json!({
            "schemaVersion": 2,
            "config": descriptor(&store, &c, media::DOCKER_CONFIG),
            "layers": [descriptor(&store, &lost, media::DOCKER_LAYER_FOREIGN)],
        }),
    );
    store.set_image("windows", &record(&foreign)).expect("foreign layers are optional");
    assert!(matches!(store.set_image("", &record(&m)), Err(StoreError::InvalidName)));
}

#[test]
fn damaged_image_record_is_reported() {
    let (_d, store) = store();
    let path = store.image_path("bake/app");
    fs::write(&path, b"{\"name\": tru").expect("write");
    assert!(matches!(store.image("bake/app"), Err(StoreError::CorruptRecord { .. })));
    assert!(matches!(store.images(), Err(StoreError::CorruptRecord { .. })));
    assert!(store.remove_image("bake/app").expect("remove"));
    assert!(store.images().expect("images").is_empty());
}

#[test]
fn cache_entries() {
    let (_d, store) = store();
    let b = store.put_blob(b"layer").expect("put");
    let entry = CacheEntry { value: serde_json::json!({"files": ["a", "b"], "n": 3}), blobs: vec![b.clone()] };
    assert_eq!(store.cache(&key(7)).expect("miss"), None);
    store.put_cache(&key(7), &entry).expect("put");
    assert_eq!(store.cache(&key(7)).expect("hit"), Some(entry.clone()));

    assert!(matches!(store.put_cache("abc", &entry), Err(StoreError::InvalidKey { .. })));
    assert!(matches!(store.cache(&"G".repeat(64)), Err(StoreError::InvalidKey { .. })));
    assert!(matches!(store.cache(&key(7).to_uppercase().replace('0', "A")), Err(StoreError::InvalidKey { .. })));

    // An entry whose blob is gone is a miss, and a prune drops it.
    let gone = CacheEntry { value: serde_json::Value::Null, blobs: vec![b.clone(), digest_of(b"never stored")] };
    store.put_cache(&key(8), &gone).expect("put");
    assert_eq!(store.cache(&key(8)).expect("miss"), None);
    // A torn entry is a miss too.
    fs::write(store.cache_path(&key(9)).expect("path"), b"{\"value\":").expect("write");
    assert_eq!(store.cache(&key(9)).expect("miss"), None);

    let report = store.prune(&no_grace()).expect("prune");
    assert_eq!(report.cache_entries_removed, 2);
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(store.cache(&key(7)).expect("hit"), Some(entry));
    assert_eq!(store.usage().expect("usage").cache_entries, 1);
}

/// Entries A, B, C of 1000-byte blobs, put in that order; A is then used.
/// Least recently used is B, then C, then A.
#[test]
fn lru_evicts_least_recently_used_first() {
    let (_d, store) = store();
    let entry = |n: u32| {
        let d = store.put_blob(&blob(n, 1000)).expect("put");
        store.put_cache(&key(n), &CacheEntry { value: serde_json::json!(n), blobs: vec![d.clone()] }).expect("cache");
        d
    };
    let (a, b, c) = (entry(1), entry(2), entry(3));
    assert!(store.cache(&key(1)).expect("hit A").is_some());

    let report = store.prune(&PruneOptions { max_size: Some(2000), ..no_grace() }).expect("prune");
    assert_eq!((report.cache_entries_removed, report.blobs_removed, report.bytes_freed), (1, 1, 1000));
    assert_eq!(report.bytes_kept, 2000);
    assert!(!store.has_blob(&b));
    assert_eq!(store.cache(&key(2)).expect("B"), None);

    // Only C's use is older than A's.
    let report = store.prune(&PruneOptions { max_size: Some(1000), ..no_grace() }).expect("prune");
    assert_eq!(report.cache_entries_removed, 1);
    assert!(store.has_blob(&a) && !store.has_blob(&c));
    assert!(store.cache(&key(1)).expect("A").is_some());

    // Under the cap already: nothing goes.
    let report = store.prune(&PruneOptions { max_size: Some(1000), ..no_grace() }).expect("prune");
    assert_eq!(report, PruneReport { bytes_kept: 1000, ..PruneReport::default() });
}

#[test]
fn lru_counts_shared_and_pinned_blobs_once() {
    let (_d, store) = store();
    let shared = store.put_blob(&blob(0, 1000)).expect("shared");
    let own1 = store.put_blob(&blob(1, 500)).expect("own1");
    let own2 = store.put_blob(&blob(2, 500)).expect("own2");
    let img_config = store.put_blob(&blob(3, 300)).expect("config");
    let m = manifest(&store, &img_config, &[&shared]);
    store.set_image("bake/app", &record(&m)).expect("image");
    let m_len = store.stored_len(&m).expect("len");
    store.put_cache(&key(1), &CacheEntry { value: 1.into(), blobs: vec![shared.clone(), own1.clone()] }).expect("1");
    store.put_cache(&key(2), &CacheEntry { value: 2.into(), blobs: vec![shared.clone(), own2.clone()] }).expect("2");
    let usage = store.usage().expect("usage");
    assert_eq!(usage.cache_only_bytes, 1000);
    assert_eq!(usage.blob_bytes, 1000 + 1000 + 300 + m_len);

    // Evicting entry 1 frees only its own 500 bytes: the image keeps `shared`.
    let max = 1000 + 300 + m_len + 500;
    let report = store.prune(&PruneOptions { max_size: Some(max), ..no_grace() }).expect("prune");
    assert_eq!((report.cache_entries_removed, report.bytes_freed, report.bytes_kept), (1, 500, max));
    assert!(!store.has_blob(&own1) && store.has_blob(&own2) && store.has_blob(&shared));

    // A cap below what images need evicts the entries that hold something
    // else, and keeps those whose blobs the images keep anyway.
    store.put_cache(&key(3), &CacheEntry { value: 3.into(), blobs: vec![m.clone()] }).expect("3");
    let report = store.prune(&PruneOptions { max_size: Some(0), ..no_grace() }).expect("prune");
    assert_eq!((report.cache_entries_removed, report.bytes_freed), (1, 500));
    assert!(store.has_blob(&shared) && store.has_blob(&img_config) && store.has_blob(&m));
    assert!(!store.has_blob(&own2));
    assert!(store.cache(&key(3)).expect("entry 3").is_some(), "evicting it would free nothing");
    assert_eq!(store.cache(&key(2)).expect("entry 2"), None);
}

#[test]
fn gc_keeps_what_images_and_cache_entries_reach() {
    let (_d, store) = store();
    let put = |n: u32| store.put_blob(&blob(n, 100 + n as usize)).expect("put");
    // Image 1: an OCI manifest.
    let (c1, l1, l2) = (put(1), put(2), put(3));
    let m1 = manifest(&store, &c1, &[&l1, &l2]);
    store.set_image("one", &record(&m1)).expect("one");
    // Image 2: an index over a Docker v2 manifest and a platform not pulled.
    let (c2, l3) = (put(4), put(5));
    let m2 = put_json(
        &store,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": descriptor(&store, &c2, media::DOCKER_CONFIG),
            "layers": [descriptor(&store, &l3, media::DOCKER_LAYER_GZIP)],
        }),
    );
    let absent = digest_of(b"arm64 manifest, not pulled");
    let index = put_json(
        &store,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [descriptor(&store, &m2, media::DOCKER_MANIFEST), descriptor(&store, &absent, media::OCI_MANIFEST)],
        }),
    );
    store.set_image("two", &record(&index)).expect("two");
    // A cache entry naming a manifest and a plain blob.
    let (c4, l4, x) = (put(6), put(7), put(8));
    let m4 = manifest(&store, &c4, &[&l4]);
    store
        .put_cache(&key(1), &CacheEntry { value: serde_json::Value::Null, blobs: vec![m4.clone(), x.clone()] })
        .expect("c");
    // Garbage, including a manifest nothing names, whose layer is garbage too.
    let (g1, l5) = (put(9), put(10));
    let g2 = manifest(&store, &l1, &[&l5]);

    let live = [&c1, &l1, &l2, &m1, &c2, &l3, &m2, &index, &c4, &l4, &m4, &x];
    let garbage = [&g1, &l5, &g2];
    let usage = store.usage().expect("usage");
    let garbage_bytes: u64 = garbage.iter().map(|d| store.stored_len(d).expect("len")).sum();
    assert_eq!(usage.unreferenced_bytes, garbage_bytes);
    assert_eq!((usage.blobs, usage.images, usage.cache_entries), (15, 2, 1));

    let report = store.prune(&no_grace()).expect("prune");
    assert_eq!((report.blobs_removed, report.bytes_freed, report.cache_entries_removed), (3, garbage_bytes, 0));
    for d in live {
        assert!(store.has_blob(d), "{d} should be kept");
        store.verify_blob(d).expect("verify");
    }
    for d in garbage {
        assert!(!store.has_blob(d), "{d} should be removed");
    }

    // Without image one, its manifest, config and layer 2 go; layer 1 too
    // (the garbage manifest that named it is gone).
    assert!(store.remove_image("one").expect("remove"));
    let report = store.prune(&no_grace()).expect("prune");
    assert_eq!(report.blobs_removed, 4);
    // Dropping the cache leaves only image two.
    let report = store.prune(&PruneOptions { all_cache: true, ..no_grace() }).expect("prune");
    assert_eq!((report.cache_entries_removed, report.blobs_removed), (1, 4));
    let usage = store.usage().expect("usage");
    assert_eq!((usage.blobs, usage.images, usage.cache_entries, usage.unreferenced_bytes), (4, 1, 0, 0));
}

#[test]
fn grace_protects_young_blobs_and_what_they_reach() {
    let (_d, store) = store();
    let hour = Duration::from_hours(1);
    let grace = PruneOptions { grace: hour, ..PruneOptions::default() };
    let (c, l) = (store.put_blob(b"{\"config\":{}}").expect("c"), store.put_blob(b"layer").expect("l"));
    let m = manifest(&store, &c, &[&l]);
    let loose = store.put_blob(b"loose").expect("loose");
    // Young: nothing goes.
    assert_eq!(store.prune(&grace).expect("prune").blobs_removed, 0);
    // Old children of a young manifest are kept with it.
    age(&store, &c, 2 * hour);
    age(&store, &l, 2 * hour);
    age(&store, &loose, 2 * hour);
    let report = store.prune(&grace).expect("prune");
    assert_eq!(report.blobs_removed, 1);
    assert!(!store.has_blob(&loose) && store.has_blob(&c) && store.has_blob(&l));
    // Finding a blob restarts its grace period.
    for d in [&m, &c, &l] {
        age(&store, d, 2 * hour);
    }
    assert!(store.has_blob(&m));
    assert_eq!(store.prune(&grace).expect("prune").blobs_removed, 0);
    age(&store, &m, 2 * hour);
    assert_eq!(store.prune(&grace).expect("prune").blobs_removed, 3);
    assert_eq!(store.usage().expect("usage").blobs, 0);
}

#[test]
fn damaged_small_blobs_are_caught_and_removed() {
    let (_d, store) = store();
    let damage = |d: &Digest| {
        let path = store.blob_path(d).expect("path");
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
        fs::write(&path, b"\0\0\0\0\0").expect("damage");
    };
    for read in [
        |s: &Store, d: &Digest| s.read_blob(d).map(drop),
        |s: &Store, d: &Digest| s.open_blob(d).map(drop),
        |s: &Store, d: &Digest| s.verify_blob(d).map(drop),
    ] {
        let d = store.put_blob(b"hello").expect("put");
        damage(&d);
        assert!(matches!(read(&store, &d), Err(StoreError::CorruptBlob { .. })));
        assert!(!store.has_blob(&d));
        // A fresh write repairs it.
        store.put_blob(b"hello").expect("put again");
        assert_eq!(store.read_blob(&d).expect("read"), b"hello");
    }
    // put_blob does not trust a damaged copy of the same size.
    let d = store.put_blob(b"world").expect("put");
    damage(&d);
    store.put_blob(b"world").expect("put again");
    assert_eq!(store.read_blob(&d).expect("read"), b"world");
    // Recording an image verifies what it reaches.
    let c = store.put_blob(b"{}").expect("config");
    let m = manifest(&store, &c, &[]);
    damage(&c);
    assert!(matches!(store.set_image("bake/app", &record(&m)), Err(StoreError::CorruptBlob { .. })));
    assert!(!store.has_blob(&c));
}

#[test]
fn layout_is_cacache_content() {
    let (_d, store) = store();
    let d = store.put_blob(b"ours").expect("put");
    let sri = cacache::Integrity::from_hex(d.digest(), cacache::Algorithm::Sha256).expect("sri");
    assert_eq!(cacache::read_hash_sync(store.dir(), &sri).expect("cacache reads ours"), b"ours");
    assert!(cacache::exists_sync(store.dir(), &sri));
    let sri = cacache::write_hash_sync_with_algo(cacache::Algorithm::Sha256, store.dir(), b"theirs").expect("cacache");
    let theirs = digest_of(b"theirs");
    assert_eq!(sri.to_hex().1, theirs.digest());
    assert_eq!(store.read_blob(&theirs).expect("we read theirs"), b"theirs");
}

#[test]
fn prune_removes_dead_temp_files_only() {
    let (_d, store) = store();
    let mut live = store.blob_writer().expect("writer");
    live.write_all(b"in flight").expect("write");
    live.flush().expect("flush");
    // What a writer killed mid-stream leaves: an unlocked file.
    fs::write(store.inner.tmp.join("blob-dead"), vec![0u8; 4096]).expect("dead");
    let report = store.prune(&no_grace()).expect("prune");
    assert_eq!((report.temp_files_removed, report.bytes_freed), (1, 4096));
    assert_eq!(tmp_files(&store), 1);
    let (d, _) = live.commit(None).expect("commit after prune");
    assert_eq!(store.read_blob(&d).expect("read"), b"in flight");
    assert_eq!(tmp_files(&store), 0);
}

#[test]
fn unsupported_digests() {
    let (_d, store) = store();
    let sha512 = Digest::try_from(format!("sha512:{}", "ab".repeat(64))).expect("digest");
    assert!(!store.has_blob(&sha512));
    assert!(matches!(store.read_blob(&sha512), Err(StoreError::UnsupportedDigest { .. })));
    let mut w = store.blob_writer().expect("writer");
    w.write_all(b"x").expect("write");
    assert!(matches!(w.commit(Some(&sha512)), Err(StoreError::DigestMismatch { .. })));
}

/// Two entries share a blob that has to go: both go, though evicting the
/// first alone freed nothing.
#[test]
fn lru_evicts_entries_that_share_a_blob_together() {
    let (_d, store) = store();
    let x = store.put_blob(&blob(1, 1000)).expect("x");
    let y = store.put_blob(&blob(2, 100)).expect("y");
    store.put_cache(&key(1), &CacheEntry { value: 1.into(), blobs: vec![x.clone()] }).expect("1");
    store.put_cache(&key(2), &CacheEntry { value: 2.into(), blobs: vec![x.clone()] }).expect("2");
    store.put_cache(&key(3), &CacheEntry { value: 3.into(), blobs: vec![y.clone()] }).expect("3");
    let report = store.prune(&PruneOptions { max_size: Some(500), ..no_grace() }).expect("prune");
    assert_eq!((report.cache_entries_removed, report.bytes_freed, report.bytes_kept), (2, 1000, 100));
    assert!(!store.has_blob(&x) && store.has_blob(&y));
    assert!(store.cache(&key(3)).expect("3").is_some());
}

#[test]
fn contains_blob_does_not_restart_the_grace_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let digest = store.put_blob(b"maintenance must not keep this alive").expect("put");
    let path = store.blob_path(&digest).expect("path");
    let old = SystemTime::now() - Duration::from_hours(1);
    std::fs::File::options().write(true).open(&path).expect("open").set_modified(old).expect("touch");
    assert!(store.contains_blob(&digest));
    assert_eq!(std::fs::metadata(&path).expect("meta").modified().expect("mtime"), old);
    assert!(store.has_blob(&digest));
    assert!(std::fs::metadata(&path).expect("meta").modified().expect("mtime") > old);
}
