//! Registry access against a real registry (Debian's `docker-registry`):
//! push, skip, pull, mount, indexes, Docker media types, mirrors, auth, and
//! what a failure leaves behind.

#[path = "common/fake_registry.rs"]
mod fake_registry;
#[path = "common/registry.rs"]
mod registry_harness;

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bake_engine::config::Config;
use bake_engine::oci::{Digest, canonical_json, digest_of, media};
use bake_engine::reference::ImageRef;
use bake_engine::registry::{
    Credentials, Direction, Progress, PushImage, Registry, RegistryError, RegistryOptions, RetryPolicy, SkipReason,
    TransferEvent,
};
use bake_engine::store::Store;
use registry_harness::{KillSwitch, TestRegistry};
use serde_json::json;

// ---- fixtures ---------------------------------------------------------------

/// A store in a temp folder.
fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("store");
    (dir, store)
}

/// Fast retries, so fault tests end quickly.
fn options(credentials: Credentials) -> RegistryOptions {
    RegistryOptions {
        retry: RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        },
        concurrency: 4,
        credentials,
    }
}

fn new_client(store: &Store) -> Registry {
    client_with(&Config::default(), store, Credentials::Anonymous)
}

fn client_with(config: &Config, store: &Store, credentials: Credentials) -> Registry {
    Registry::with_options(config, store.clone(), options(credentials)).expect("registry client")
}

fn r(text: &str) -> ImageRef {
    ImageRef::parse(text).expect("valid reference")
}

/// A gzipped tar with the given files: the blob and its diff ID.
fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, *data).expect("tar entry");
    }
    let raw = tar.into_inner().expect("tar");
    let diff_id = digest_of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("gzip"), diff_id)
}

/// Incompressible bytes, stored as a "layer" (the registry does not look
/// inside), with a made-up diff ID: hashing is slow in debug builds.
fn big_layer(size: usize, seed: u64) -> (Vec<u8>, Digest) {
    let mut x = seed | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(size);
    (bytes, digest_of(&seed.to_le_bytes()))
}

/// An image assembled by hand in the store.
#[derive(Debug, Clone)]
struct TestImage {
    manifest: Digest,
    bytes: Vec<u8>,
    media_type: String,
    config: Digest,
    layers: Vec<Digest>,
}

impl TestImage {
    fn blobs(&self) -> Vec<Digest> {
        std::iter::once(self.config.clone()).chain(self.layers.iter().cloned()).collect()
    }

    fn push(&self, tags: &[&str]) -> PushImage {
        PushImage {
            manifest: self.manifest.clone(),
            media_type: self.media_type.clone(),
            tags: tags.iter().map(|t| r(t)).collect(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Oci,
    Docker,
    /// OCI, with a layer descriptor that lists URLs, which distribution
    /// refuses for a distributable layer: its manifest fails validation.
    RejectedByRegistry,
}

fn image(store: &Store, arch: &str, layers: &[(Vec<u8>, Digest)], flavour: Flavour) -> TestImage {
    let docker = flavour == Flavour::Docker;
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/hello"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.to_string()).collect::<Vec<_>>() },
        "history": layers.iter().map(|_| json!({"created_by": "bake test"})).collect::<Vec<_>>(),
    });
    let config_bytes = canonical_json(&config).expect("config json");
    let config_digest = store.put_blob(&config_bytes).expect("put config");
    let mut layer_descs = Vec::new();
    let mut layer_digests = Vec::new();
    for (i, (blob, _)) in layers.iter().enumerate() {
        let digest = store.put_blob(blob).expect("put layer");
        let mut desc = json!({
            "mediaType": if docker { media::DOCKER_LAYER_GZIP } else { media::OCI_LAYER_GZIP },
            "digest": digest.to_string(),
            "size": blob.len(),
        });
        if flavour == Flavour::RejectedByRegistry && i == 0 {
            desc["urls"] = json!(["https://example.com/layer"]);
        }
        layer_descs.push(desc);
        layer_digests.push(digest);
    }
    let media_type = if docker { media::DOCKER_MANIFEST } else { media::OCI_MANIFEST };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": if docker { media::DOCKER_CONFIG } else { media::OCI_CONFIG },
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layer_descs,
    });
    let bytes = canonical_json(&manifest).expect("manifest json");
    let digest = store.put_blob(&bytes).expect("put manifest");
    TestImage {
        manifest: digest,
        bytes,
        media_type: media_type.to_owned(),
        config: config_digest,
        layers: layer_digests,
    }
}

fn simple_image(store: &Store, seed: &str) -> TestImage {
    let base = layer(&[("etc/base", b"shared base layer")]);
    let top = layer(&[("app", seed.as_bytes())]);
    image(store, "amd64", &[base, top], Flavour::Oci)
}

/// Records every event; optionally runs an action on some of them.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<TransferEvent>>,
}

impl Recorder {
    fn events(&self) -> Vec<TransferEvent> {
        self.events.lock().expect("events").clone()
    }

    fn started(&self, direction: Direction) -> Vec<Digest> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                TransferEvent::Started { digest, direction: d, .. } if d == direction => Some(digest),
                _ => None,
            })
            .collect()
    }

    fn skipped(&self, reason: SkipReason) -> Vec<Digest> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                TransferEvent::Skipped { digest, reason: r } if r == reason => Some(digest),
                _ => None,
            })
            .collect()
    }

    fn bytes(&self) -> u64 {
        self.events().iter().map(|e| if let TransferEvent::Bytes { bytes, .. } = e { *bytes } else { 0 }).sum()
    }
}

impl Progress for Recorder {
    fn event(&self, e: TransferEvent) {
        self.events.lock().expect("events").push(e);
    }
}

fn sorted(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort_by_key(ToString::to_string);
    digests
}

// ---- push, skip, pull --------------------------------------------------------

#[tokio::test]
async fn push_skopeo_repush_and_pull_into_a_fresh_store() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let img = simple_image(&store, "hello");
    let client = new_client(&store);

    let progress = Recorder::default();
    let pushed = client
        .push(&[img.push(&[&format!("{addr}/bake/app:v1"), &format!("{addr}/bake/app:latest")])], &progress)
        .await
        .expect("push");
    assert_eq!(pushed.len(), 2);
    assert!(pushed.iter().all(|p| p.digest == img.manifest));
    assert_eq!(sorted(progress.started(Direction::Push)), sorted(img.blobs()));
    let blob_bytes: u64 = img.blobs().iter().map(|d| store.blob_len(d).expect("len")).sum();
    assert_eq!(progress.bytes(), blob_bytes);

    // A real client sees the image, byte for byte.
    assert_eq!(registry.skopeo_digest("bake/app:v1"), Some(img.manifest.to_string()));
    assert_eq!(registry.skopeo_digest("bake/app:latest"), Some(img.manifest.to_string()));
    assert_eq!(registry.skopeo_raw("bake/app:v1"), Some(img.bytes.clone()));

    // Again: every blob is there, nothing is uploaded.
    let again = Recorder::default();
    client.push(&[img.push(&[&format!("{addr}/bake/app:v1")])], &again).await.expect("push again");
    assert!(again.started(Direction::Push).is_empty(), "{:?}", again.events());
    assert_eq!(sorted(again.skipped(SkipReason::Present)), sorted(img.blobs()));

    // Pull into a fresh store.
    let (_dir2, fresh) = new_store();
    let puller = new_client(&fresh);
    let pulled_progress = Recorder::default();
    let pulled = puller.pull(&r(&format!("{addr}/bake/app:v1")), &pulled_progress).await.expect("pull");
    assert_eq!(pulled.manifest_digest, img.manifest);
    assert_eq!(pulled.config_digest, img.config);
    assert_eq!(pulled.media_type, media::OCI_MANIFEST);
    assert_eq!(pulled.config.rootfs().diff_ids().len(), 2);
    assert_eq!(fresh.read_blob(&img.manifest).expect("manifest stored"), img.bytes);
    for digest in img.blobs() {
        assert_eq!(fresh.verify_blob(&digest).expect("verified"), store.blob_len(&digest).expect("len"));
    }
    assert_eq!(sorted(pulled_progress.started(Direction::Pull)), sorted(img.layers.clone()));

    // Pulled again: nothing to fetch.
    let second = Recorder::default();
    puller.pull(&r(&format!("{addr}/bake/app:v1")), &second).await.expect("pull again");
    assert!(second.started(Direction::Pull).is_empty());
    assert_eq!(sorted(second.skipped(SkipReason::Present)), sorted(img.layers.clone()));

    // A digest-pinned reference whose documents are stored needs no network.
    registry.kill();
    let pinned = r(&format!("{addr}/bake/app@{}", img.manifest));
    let offline = puller.pull(&pinned, &()).await.expect("pinned pull from the store");
    assert_eq!(offline.manifest_digest, img.manifest);
    let tagged = puller.resolve(&r(&format!("{addr}/bake/app:v1"))).await.expect_err("tags need the registry");
    assert!(tagged.is_unreachable(), "{tagged:?}");
}

#[tokio::test]
async fn pinned_digests_are_checked() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let img = simple_image(&store, "pinned");
    new_client(&store).push(&[img.push(&[&format!("{addr}/bake/pinned:v1")])], &()).await.expect("push");

    let (_dir2, fresh) = new_store();
    let c = new_client(&fresh);
    let ok = c.resolve(&r(&format!("{addr}/bake/pinned:v1@{}", img.manifest))).await.expect("pinned");
    assert_eq!(ok.manifest_digest, img.manifest);
    let other = digest_of(b"some other manifest");
    let err = c.resolve(&r(&format!("{addr}/bake/pinned@{other}"))).await.expect_err("unknown digest");
    assert!(err.is_not_found(), "{err:?}");
    let err = c.resolve(&r(&format!("{addr}/bake/nothing:v1"))).await.expect_err("unknown repository");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
}

// ---- indexes and Docker media types -----------------------------------------

/// Pushes raw manifest bytes under a tag, as another tool would.
async fn push_raw(addr: &str, reference: &str, bytes: Vec<u8>, media_type: &str) {
    let client = oci_client::Client::try_from(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
    .expect("client");
    let reference: oci_client::Reference = format!("{addr}/{reference}").parse().expect("reference");
    client.push_manifest_raw(&reference, bytes, media_type.parse().expect("header")).await.expect("push raw manifest");
}

fn index_entry(img: &TestImage, os: &str, arch: &str) -> serde_json::Value {
    json!({
        "mediaType": img.media_type,
        "digest": img.manifest.to_string(),
        "size": img.bytes.len(),
        "platform": { "os": os, "architecture": arch },
    })
}

#[tokio::test]
async fn an_index_resolves_to_linux_amd64() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let arm = image(&store, "arm64", &[layer(&[("arch", b"arm64")])], Flavour::Oci);
    let amd = image(&store, "amd64", &[layer(&[("arch", b"amd64")])], Flavour::Oci);
    let win = image(&store, "amd64", &[layer(&[("arch", b"windows")])], Flavour::Oci);
    // The platform manifests by digest only: no tag.
    let repo = format!("{addr}/bake/multi");
    let images: Vec<PushImage> =
        [&arm, &amd, &win].iter().map(|i| i.push(&[&format!("{repo}@{}", i.manifest)])).collect();
    let pushed = new_client(&store).push(&images, &()).await.expect("push platform manifests");
    assert!(pushed.is_empty(), "digest-only references push no tag: {pushed:?}");
    assert!(registry.tags("bake/multi").is_empty());

    let index = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [index_entry(&win, "windows", "amd64"), index_entry(&arm, "linux", "arm64"), index_entry(&amd, "linux", "amd64")],
    });
    let index_bytes = canonical_json(&index).expect("index json");
    push_raw(addr, "bake/multi:latest", index_bytes.clone(), media::OCI_INDEX).await;

    let (_dir2, fresh) = new_store();
    let c = new_client(&fresh);
    let progress = Recorder::default();
    let pulled = c.pull(&r(&format!("{repo}:latest")), &progress).await.expect("pull index");
    assert_eq!(pulled.manifest_digest, amd.manifest);
    assert_eq!(progress.started(Direction::Pull), amd.layers);
    assert!(!fresh.has_blob(&arm.layers[0]));
    // The index is kept as served, so its digest pins the image offline too.
    let index_digest = digest_of(&index_bytes);
    assert_eq!(fresh.read_blob(&index_digest).expect("index stored"), index_bytes);
    registry.kill();
    let offline = c.resolve(&r(&format!("{repo}@{index_digest}"))).await.expect("pinned index from the store");
    assert_eq!(offline.manifest_digest, amd.manifest);
}

#[tokio::test]
async fn an_index_without_linux_amd64_is_a_typed_error() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let arm = image(&store, "arm64", &[layer(&[("arch", b"arm64")])], Flavour::Oci);
    new_client(&store).push(&[arm.push(&[&format!("{addr}/bake/armonly@{}", arm.manifest)])], &()).await.expect("push");
    let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [index_entry(&arm, "linux", "arm64")] });
    push_raw(addr, "bake/armonly:1", canonical_json(&index).expect("json"), media::OCI_INDEX).await;
    let err = new_client(&store).resolve(&r(&format!("{addr}/bake/armonly:1"))).await.expect_err("no amd64");
    let RegistryError::NoPlatform { available, .. } = &err else { panic!("{err:?}") };
    assert_eq!(available, "linux/arm64");
}

#[tokio::test]
async fn docker_v2_manifests_and_lists_are_read_and_kept_raw() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let img = image(&store, "amd64", &[layer(&[("docker", b"v2")])], Flavour::Docker);
    new_client(&store).push(&[img.push(&[&format!("{addr}/bake/docker:v2")])], &()).await.expect("push docker v2");
    assert_eq!(registry.skopeo_raw("bake/docker:v2"), Some(img.bytes.clone()));

    let list = json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST_LIST,
        "manifests": [index_entry(&img, "linux", "amd64")],
    });
    push_raw(addr, "bake/docker:list", canonical_json(&list).expect("json"), media::DOCKER_MANIFEST_LIST).await;

    for tag in ["v2", "list"] {
        let (_dir2, fresh) = new_store();
        let pulled = new_client(&fresh).pull(&r(&format!("{addr}/bake/docker:{tag}")), &()).await.expect("pull");
        assert_eq!(pulled.manifest_digest, img.manifest);
        assert_eq!(pulled.media_type, media::DOCKER_MANIFEST);
        // Parsed with OCI media types, stored as served.
        assert_eq!(pulled.manifest.layers()[0].media_type().to_string(), media::OCI_LAYER_GZIP);
        assert_eq!(pulled.manifest.config().media_type().to_string(), media::OCI_CONFIG);
        assert_eq!(fresh.read_blob(&img.manifest).expect("raw manifest"), img.bytes);
        assert!(fresh.has_blob(&img.layers[0]));
    }
}

// ---- mirrors -----------------------------------------------------------------

#[tokio::test]
async fn short_names_resolve_through_a_mirror() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let img = simple_image(&store, "mirrored");
    new_client(&store).push(&[img.push(&[&format!("{addr}/library/mirrored:1.0")])], &()).await.expect("push");

    let config =
        Config::from_str("config.kdl", &format!("registry \"docker.io\" {{ mirror \"{addr}\" }}\n")).expect("config");
    let (_dir2, fresh) = new_store();
    let c = client_with(&config, &fresh, Credentials::Anonymous);
    let pulled = c.pull(&r("mirrored:1.0"), &()).await.expect("pull through the mirror");
    assert_eq!(pulled.reference.to_string(), "docker.io/library/mirrored:1.0");
    assert_eq!(pulled.manifest_digest, img.manifest);
    assert!(img.layers.iter().all(|l| fresh.has_blob(l)));

    // Pinned through the mirror, checked against the digest.
    let pinned = c.resolve(&r(&format!("mirrored@{}", img.manifest))).await.expect("pinned via mirror");
    assert_eq!(pinned.manifest_digest, img.manifest);

    // Not on the mirror: bake falls back to docker.io, which is out of reach
    // here; the error lists both.
    let err = c.resolve(&r("notmirrored:1")).await.expect_err("nowhere");
    let RegistryError::AllSources { errors, .. } = &err else { panic!("{err:?}") };
    assert_eq!(errors.len(), 2, "{err:?}");
    assert!(errors[0].is_not_found(), "{err:?}");
}

// ---- push failures -----------------------------------------------------------

#[tokio::test]
async fn a_manifest_the_registry_rejects_publishes_no_tag_of_any_image() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let good = simple_image(&store, "good");
    let bad = image(&store, "amd64", &[layer(&[("bad", b"urls")])], Flavour::RejectedByRegistry);
    let err = new_client(&store)
        .push(&[good.push(&[&format!("{addr}/bake/good:v1")]), bad.push(&[&format!("{addr}/bake/bad:v1")])], &())
        .await
        .expect_err("the second manifest is rejected");
    let RegistryError::Rejected { message, .. } = &err else { panic!("{err:?}") };
    assert!(message.contains("blob unknown"), "{message}");
    assert!(registry.tags("bake/good").is_empty(), "{:?}", registry.tags("bake/good"));
    assert!(registry.tags("bake/bad").is_empty());
    assert_eq!(registry.skopeo_digest("bake/good:v1"), None);
}

/// Kills the registry on the first byte moved in `direction`.
struct KillOnFirstByte {
    switch: KillSwitch,
    direction: Direction,
    started: Mutex<Option<Digest>>,
}

impl Progress for KillOnFirstByte {
    fn event(&self, e: TransferEvent) {
        match e {
            TransferEvent::Started { digest, direction, .. } if direction == self.direction => {
                self.started.lock().expect("lock").get_or_insert(digest);
            }
            TransferEvent::Bytes { .. } if self.started.lock().expect("lock").is_some() => self.switch.kill(),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_registry_killed_during_an_upload_is_a_typed_error() {
    let mut registry = TestRegistry::start();
    let addr = registry.addr.clone();
    let (_dir, store) = new_store();
    let img = image(&store, "amd64", &[big_layer(24 << 20, 7)], Flavour::Oci);
    let progress =
        KillOnFirstByte { switch: registry.kill_switch(), direction: Direction::Push, started: Mutex::default() };
    let err = new_client(&store)
        .push(&[img.push(&[&format!("{addr}/bake/killed:v1")])], &progress)
        .await
        .expect_err("killed");
    assert!(err.is_unreachable(), "{err:?}");
    assert!(err.to_string().contains(&addr), "{err}");
    registry.restart();
    assert!(registry.tags("bake/killed").is_empty());
}

#[tokio::test]
async fn a_registry_killed_during_a_download_leaves_nothing_in_the_store() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let img = image(&store, "amd64", &[big_layer(24 << 20, 11)], Flavour::Oci);
    new_client(&store).push(&[img.push(&[&format!("{addr}/bake/big:v1")])], &()).await.expect("push");

    let (_dir2, fresh) = new_store();
    let progress =
        KillOnFirstByte { switch: registry.kill_switch(), direction: Direction::Pull, started: Mutex::default() };
    let err = new_client(&fresh).pull(&r(&format!("{addr}/bake/big:v1")), &progress).await.expect_err("killed");
    assert!(err.is_unreachable(), "{err:?}");
    assert!(!fresh.has_blob(&img.layers[0]));
    assert!(fresh.has_blob(&img.manifest), "the manifest came before the kill");
}

/// Kills the registry once `blobs` blobs are done (uploaded or skipped).
struct KillAfterBlobs {
    switch: KillSwitch,
    blobs: usize,
    done: AtomicUsize,
}

impl Progress for KillAfterBlobs {
    fn event(&self, e: TransferEvent) {
        if matches!(e, TransferEvent::Done { .. } | TransferEvent::Skipped { .. })
            && self.done.fetch_add(1, Ordering::SeqCst) + 1 == self.blobs
        {
            self.switch.kill();
        }
    }
}

#[tokio::test]
async fn a_registry_killed_between_blobs_and_manifests_publishes_nothing() {
    let mut registry = TestRegistry::start();
    let addr = registry.addr.clone();
    let (_dir, store) = new_store();
    let one = simple_image(&store, "one");
    let two = simple_image(&store, "two");
    // Shared base layer: 5 distinct blobs.
    let progress = KillAfterBlobs { switch: registry.kill_switch(), blobs: 5, done: AtomicUsize::new(0) };
    let err = new_client(&store)
        .push(&[one.push(&[&format!("{addr}/bake/one:v1")]), two.push(&[&format!("{addr}/bake/one:v2")])], &progress)
        .await
        .expect_err("killed before the manifests");
    assert!(err.is_unreachable(), "{err:?}");
    registry.restart();
    assert!(registry.tags("bake/one").is_empty(), "{:?}", registry.tags("bake/one"));
    // The blobs themselves made it.
    for digest in one.blobs().into_iter().chain(two.blobs()) {
        let (status, _) = registry.http("HEAD", &format!("/v2/bake/one/blobs/{digest}")).expect("registry answers");
        assert_eq!(status, 200, "{digest}");
    }
}

#[tokio::test]
async fn an_unreachable_registry_is_named() {
    let registry = TestRegistry::start();
    let addr = registry.addr.clone();
    registry.kill();
    let (_dir, store) = new_store();
    let err = new_client(&store).resolve(&r(&format!("{addr}/bake/x:1"))).await.expect_err("down");
    assert!(matches!(err, RegistryError::Unreachable { ref registry, .. } if *registry == addr), "{err:?}");
    let img = simple_image(&store, "x");
    let err = new_client(&store).push(&[img.push(&[&format!("{addr}/bake/x:1")])], &()).await.expect_err("down");
    assert!(err.is_unreachable(), "{err:?}");
}

// ---- cross-repository mounts -------------------------------------------------

#[tokio::test]
async fn blobs_are_mounted_across_repositories() {
    let registry = TestRegistry::start();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let img = simple_image(&store, "mount");
    let c = new_client(&store);

    // One push, two repositories: uploaded to the first, mounted into the second.
    let progress = Recorder::default();
    c.push(&[img.push(&[&format!("{addr}/bake/first:v1"), &format!("{addr}/bake/second:v1")])], &progress)
        .await
        .expect("push");
    assert_eq!(sorted(progress.started(Direction::Push)), sorted(img.blobs()));
    assert_eq!(sorted(progress.skipped(SkipReason::Mounted)), sorted(img.blobs()));
    assert_eq!(registry.skopeo_digest("bake/second:v1"), Some(img.manifest.to_string()));

    // A later push of the same blobs into a third repository mounts them too.
    let later = Recorder::default();
    c.push(&[img.push(&[&format!("{addr}/bake/third:v1")])], &later).await.expect("push");
    assert!(later.started(Direction::Push).is_empty());
    assert_eq!(sorted(later.skipped(SkipReason::Mounted)), sorted(img.blobs()));

    // A base layer pulled from a repository is mounted from there.
    let (_dir2, fresh) = new_store();
    let other = new_client(&fresh);
    other.pull(&r(&format!("{addr}/bake/first:v1")), &()).await.expect("pull base");
    let base = layer(&[("etc/base", b"shared base layer")]);
    let derived = image(&fresh, "amd64", &[base, layer(&[("app", b"derived")])], Flavour::Oci);
    let derived_progress = Recorder::default();
    other.push(&[derived.push(&[&format!("{addr}/bake/derived:v1")])], &derived_progress).await.expect("push");
    assert_eq!(derived_progress.skipped(SkipReason::Mounted), vec![derived.layers[0].clone()]);
    assert_eq!(
        sorted(derived_progress.started(Direction::Push)),
        sorted(vec![derived.config.clone(), derived.layers[1].clone()])
    );
}

// ---- auth --------------------------------------------------------------------

#[tokio::test]
async fn credentials_come_from_a_docker_config() {
    let registry = TestRegistry::start_with_auth();
    let addr = &registry.addr;
    let (_dir, store) = new_store();
    let img = simple_image(&store, "secret");

    let err =
        new_client(&store).push(&[img.push(&[&format!("{addr}/bake/secret:v1")])], &()).await.expect_err("anonymous");
    let RegistryError::Unauthorized { help, .. } = &err else { panic!("{err:?}") };
    assert!(help.contains(&format!("docker login {addr}")), "{help}");
    let err = new_client(&store).resolve(&r(&format!("{addr}/bake/secret:v1"))).await.expect_err("anonymous");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");

    let creds = Credentials::File(registry.docker_config());
    let c = client_with(&Config::default(), &store, creds.clone());
    c.push(&[img.push(&[&format!("{addr}/bake/secret:v1")])], &()).await.expect("push with credentials");
    assert_eq!(registry.skopeo_digest("bake/secret:v1"), Some(img.manifest.to_string()));
    let (_dir2, fresh) = new_store();
    let pulled = client_with(&Config::default(), &fresh, creds).pull(&r(&format!("{addr}/bake/secret:v1")), &()).await;
    assert_eq!(pulled.expect("pull with credentials").manifest_digest, img.manifest);
}

// ---- registries that stall or misbehave (fake, see common/fake_registry.rs) --

/// Short limits, so a stall ends a test in seconds.
fn impatient() -> Config {
    let timeouts = bake_engine::config::Timeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_millis(600),
        idle: Duration::from_millis(800),
    };
    Config { timeouts, ..Config::default() }
}

/// Collects every transfer event.
#[derive(Default)]
struct Recorded(Mutex<Vec<TransferEvent>>);

impl Progress for Recorded {
    fn event(&self, event: TransferEvent) {
        self.0.lock().expect("lock").push(event);
    }
}

/// An image the fake serves: its manifest, config and one layer.
struct FakeImage {
    manifest: Vec<u8>,
    config: Vec<u8>,
    config_digest: Digest,
    layer: Vec<u8>,
    layer_digest: Digest,
}

fn fake_image() -> FakeImage {
    let (layer, diff_id) = big_layer(256 << 10, 7);
    let layer_digest = digest_of(&layer);
    let config = canonical_json(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "config": {}
    }))
    .expect("json");
    let config_digest = digest_of(&config);
    let manifest = canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": media::OCI_LAYER_GZIP, "digest": layer_digest.to_string(), "size": layer.len()}]
    }))
    .expect("json");
    FakeImage { manifest, config, config_digest, layer, layer_digest }
}

/// Serves `image`'s manifest (under every tag) and config, and answers
/// every other request (its layer) with `layer`.
fn serve_image(
    image: std::sync::Arc<FakeImage>,
    layer: impl Fn(&FakeImage) -> fake_registry::Reply + Send + Sync + 'static,
) -> fake_registry::FakeRegistry {
    fake_registry::FakeRegistry::start(move |_, path| {
        if path == "/v2/" {
            fake_registry::Reply::status(200)
        } else if path.contains("/manifests/") {
            fake_registry::Reply::json(media::OCI_MANIFEST, image.manifest.clone())
        } else if path.ends_with(&image.config_digest.to_string()) {
            fake_registry::Reply::json("application/octet-stream", image.config.clone())
        } else {
            layer(&image)
        }
    })
}

#[tokio::test]
async fn a_registry_that_never_answers_times_out_naming_it() {
    let fake = fake_registry::FakeRegistry::start(|_, _| fake_registry::Reply::Silent);
    let (_dir, store) = new_store();
    let client = client_with(&impatient(), &store, Credentials::Anonymous);
    let started = std::time::Instant::now();
    let err = client.resolve(&r(&format!("{}/stalls/forever:1", fake.addr))).await.expect_err("stalled");
    // 3 attempts of 0.6 s and short backoffs; the bound only guards against a hang.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let RegistryError::Timeout { registry, limit, .. } = &err else { panic!("{err:?}") };
    assert_eq!(registry, &fake.addr);
    assert_eq!(*limit, bake_engine::registry::Limit::FirstByte);
    assert!(err.is_transient() && err.is_unreachable());
    assert_eq!(fake.requests(), 3, "each attempt is retried");
    let text = err.to_string();
    assert!(text.contains(&format!("registry {} stalled", fake.addr)) && text.contains("600ms"), "{text}");
}

#[tokio::test]
async fn a_blob_that_stops_midway_is_reported_stalled_then_times_out() {
    let image = std::sync::Arc::new(fake_image());
    let fake = serve_image(image.clone(), |image| fake_registry::Reply::Partial {
        headers: vec![],
        body: image.layer.clone(),
        sent: 100 << 10,
    });
    let (_dir, store) = new_store();
    let client = client_with(&impatient(), &store, Credentials::Anonymous);
    let progress = Recorded::default();
    let err = client.pull(&r(&format!("{}/stalls/midway:1", fake.addr)), &progress).await.expect_err("stalled");
    let RegistryError::Timeout { limit, stalled, .. } = &err else { panic!("{err:?}") };
    assert_eq!(*limit, bake_engine::registry::Limit::Idle);
    assert!(stalled.contains(&format!("after {} of {} bytes", 100 << 10, image.layer.len())), "{stalled}");
    let events = progress.0.lock().expect("lock");
    assert!(
        events.iter().any(|e| matches!(e, TransferEvent::Stalled { digest, .. } if *digest == image.layer_digest)),
        "{events:?}"
    );
    // Nothing half-written became a blob.
    assert!(!store.has_blob(&image.layer_digest));
}

/// Serves documents by digest (and `top` under every tag), `/v2/` with 200.
fn document_server(docs: Vec<(Digest, Vec<u8>, &'static str)>, top: usize) -> fake_registry::FakeRegistry {
    fake_registry::FakeRegistry::start(move |_, path| {
        if path == "/v2/" {
            return fake_registry::Reply::status(200);
        }
        if path.ends_with("/manifests/1") {
            let (_, bytes, media_type) = &docs[top];
            return fake_registry::Reply::json(media_type, bytes.clone());
        }
        match docs.iter().find(|(d, _, _)| path.ends_with(&d.to_string())) {
            Some((_, bytes, media_type)) => fake_registry::Reply::json(media_type, bytes.clone()),
            None => fake_registry::Reply::status(404),
        }
    })
}

#[tokio::test]
async fn a_deeply_nested_index_is_refused_as_such() {
    let image = fake_image();
    let mut docs = vec![(digest_of(&image.manifest), image.manifest.clone(), media::OCI_MANIFEST)];
    for _ in 0..200 {
        let (below, bytes, media_type) = docs.last().expect("one").clone();
        let index = canonical_json(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [{"mediaType": media_type, "digest": below.to_string(), "size": bytes.len()}]
        }))
        .expect("json");
        docs.push((digest_of(&index), index, media::OCI_INDEX));
    }
    let fake = document_server(docs, 200);
    let (_dir, store) = new_store();
    let err = new_client(&store).resolve(&r(&format!("{}/deep/index:1", fake.addr))).await.expect_err("too deep");
    assert!(matches!(err, RegistryError::IndexTooDeep { max: bake_engine::registry::MAX_INDEX_DEPTH, .. }), "{err:?}");
    assert!(err.to_string().contains("index nested deeper than 4 levels"), "{err}");
    assert!(fake.requests() < 20, "bake followed the chain: {} requests", fake.requests());
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_with_its_size() {
    let big = canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": digest_of(b"{}").to_string(), "size": 2},
        "layers": [],
        "annotations": {"padding": "x".repeat(5 << 20)}
    }))
    .expect("json");
    let fake = document_server(vec![(digest_of(&big), big, media::OCI_MANIFEST)], 0);
    let (_dir, store) = new_store();
    let err = new_client(&store).resolve(&r(&format!("{}/huge/manifest:1", fake.addr))).await.expect_err("too large");
    let RegistryError::TooLarge { max, size, .. } = &err else { panic!("{err:?}") };
    assert_eq!(*max, 4 << 20);
    assert!(*size > 5 << 20);
}

#[tokio::test]
async fn a_redirect_to_a_link_local_address_is_named_as_such() {
    let image = std::sync::Arc::new(fake_image());
    // Where cloud metadata services answer.
    let fake =
        serve_image(image.clone(), |_| fake_registry::Reply::redirect("http://169.254.169.254/latest/meta-data/iam/"));
    let (_dir, store) = new_store();
    let client = client_with(&impatient(), &store, Credentials::Anonymous);
    let err =
        client.pull(&r(&format!("{}/redirects/away:1", fake.addr)), &Recorded::default()).await.expect_err("refused");
    let text = err.to_string();
    assert!(matches!(&err, RegistryError::Redirected { .. }), "{err:?}");
    assert!(text.contains("169.254.169.254, a link-local address"), "{text}");
    assert!(!store.has_blob(&image.layer_digest));
}
