//! Registry access: pulling base images into the store, pushing built images.
//!
//! # Pulling
//!
//! [`Registry::resolve`] turns a reference into one linux/amd64 image
//! manifest. It asks the mirrors configured for the reference's registry
//! first, in order, then the registry itself; a mirror serves the same
//! repository paths (`docker.io/library/busybox` is asked of a mirror as
//! `MIRROR/library/busybox`). The manifest is fetched raw, accepting every
//! media type bake reads (OCI and Docker v2, images and indexes); an index or
//! a Docker manifest list is resolved to its linux/amd64 entry, fetched by
//! digest. Every document is checked against the digest it was asked for,
//! whichever source served it, so a digest-pinned reference means exactly
//! that image. Raw bytes go into the store as served, never re-serialized,
//! so digests hold; the parsed manifest has its Docker media types converted
//! to OCI's (see `manifest.rs`). A digest-pinned reference whose documents are
//! all in the store resolves without the network.
//!
//! [`Registry::pull`] then fetches the layers the store lacks, a few at a
//! time, each streamed to a store writer on a blocking thread (see `sink.rs`),
//! checked against its size as it arrives and against its digest by
//! oci-client and again by the store's commit. A layer that its source fails
//! to serve is asked of the other sources.
//!
//! # Pushing
//!
//! [`Registry::push`] publishes a set of images in three phases, so that a
//! failure leaves no tag pointing at anything:
//!
//! 1. **Blobs**: every config and layer blob into every repository a tag
//!    names. A HEAD first skips what the repository has. A blob that another
//!    repository on the same registry holds (one this push uploaded it to, or
//!    one it was pulled from by this process) is mounted across repositories
//!    instead of uploaded; a registry that answers a mount with 202 (token
//!    registries scope a token to one repository) gets an upload. Uploads
//!    stream from the store file in one monolithic PUT.
//! 2. **Manifests by digest**: each manifest, as the exact bytes in the
//!    store, into each repository under its digest. This is where a registry
//!    validates a manifest (blobs present, URLs allowed); a manifest without a
//!    tag is reachable only by its digest, so nothing is published yet.
//! 3. **Tags**: the same bytes under each tag.
//!
//! A failure in phases 1 or 2 publishes no tag of any image. Phase 3 only
//! fails if the network does (the registry accepted every manifest already);
//! tags pushed before such a failure stay.
//!
//! # Failure
//!
//! Every request is retried with exponential backoff when the failure may be
//! transient: a connection that failed or broke off, 5xx, 429
//! ([`RetryPolicy`]). Other answers are final and become typed errors: a 401
//! is [`RegistryError::Unauthorized`] ("run `docker login`"), an unreachable
//! registry is [`RegistryError::Unreachable`], naming it. Credentials come
//! from Docker's `config.json` (`auths`, `credsStore`, `credHelpers`).
//! Loopback registries and those marked `insecure` in the config file are
//! spoken to over plain HTTP, the others over HTTPS (see `endpoint.rs`).

mod deadline;
mod endpoint;
mod error;
pub(crate) mod manifest;
mod retry;
mod sink;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::LayerDescriptor;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use tokio::sync::mpsc;

pub use deadline::Limit;
pub use endpoint::Credentials;
pub use error::RegistryError;
pub use retry::RetryPolicy;

use crate::config::{Config, normalize_registry};
use crate::oci::{Digest, digest_of, media};
use crate::reference::ImageRef;
use crate::store::Store;
use deadline::{Limit as Deadline, answered, notice_every, timeout};
use endpoint::{Endpoint, Endpoints};
use error::{classify, from_io};
use manifest::{Kind, Unusable};
use sink::BlobSink;

/// A config blob larger than this is refused rather than held in memory: 4
/// MiB, containerd's limit for the documents it reads whole.
const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// A manifest or index larger than this is refused: 4 MiB, as containerd
/// and distribution (which refuses to store a larger one).
const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Indexes nested in indexes followed at most. Real images have one level
/// (an index of platform manifests); a few tools nest one more.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Pulls and pushes images between registries and the local store.
///
/// Cheap to clone; clones share HTTP clients, tokens and what they learnt
/// about which repositories hold which blobs.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Endpoints,
    store: Store,
    retry: RetryPolicy,
    concurrency: usize,
    /// Repositories known to hold a blob, by registry host: filled by pulls
    /// and pushes, read to mount blobs across repositories.
    origins: Mutex<HashMap<(String, Digest), Vec<String>>>,
}

/// Settings that do not come from the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    pub retry: RetryPolicy,
    /// Blobs transferred at once.
    pub concurrency: usize,
    pub credentials: Credentials,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self { retry: RetryPolicy::default(), concurrency: 4, credentials: Credentials::default() }
    }
}

/// An image manifest resolved for linux/amd64; its manifest and config are
/// in the store.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference as asked for.
    pub reference: ImageRef,
    /// Digest of the platform manifest (not of the index that listed it).
    pub manifest_digest: Digest,
    /// The manifest, with Docker media types converted to OCI's.
    pub manifest: ImageManifest,
    /// The media type of the manifest as stored (OCI or Docker v2).
    pub media_type: String,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
}

/// An image whose layers are all in the store too.
pub type Pulled = Resolved;

/// An image in the store to push, under some tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushImage {
    /// The manifest's digest; the manifest, its config and its layers are in the store.
    pub manifest: Digest,
    /// The manifest's media type (sent as its Content-Type).
    pub media_type: String,
    pub tags: Vec<ImageRef>,
}

/// One tag pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub tag: ImageRef,
    pub digest: Digest,
}

/// Which way a blob travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Pull,
    Push,
}

/// Why a blob was not transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The destination had it already.
    Present,
    /// The registry linked it from another repository.
    Mounted,
}

/// Progress of blob transfers (layers when pulling; configs and layers when
/// pushing). A push sends one `Skipped` or `Started`…`Done` per blob and
/// repository. `Started` comes again for a digest when a transfer is
/// retried, and its byte count restarts from zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    Started {
        digest: Digest,
        size: u64,
        direction: Direction,
    },
    Bytes {
        digest: Digest,
        bytes: u64,
    },
    Skipped {
        digest: Digest,
        reason: SkipReason,
    },
    Done {
        digest: Digest,
    },
    /// No byte has moved for `silent`: sent every few seconds while a
    /// transfer (or the answer to an upload) stalls, until it moves again
    /// or the idle timeout ends it.
    Stalled {
        digest: Digest,
        silent: std::time::Duration,
    },
}

/// Receives transfer events. It is called from the transfer tasks, so it
/// should be quick (send to a channel, bump a counter).
pub trait Progress: Send + Sync {
    fn event(&self, event: TransferEvent);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: TransferEvent) {}
}

impl Progress for () {
    fn event(&self, _: TransferEvent) {}
}

impl Registry {
    /// A registry client following the config file's mirrors and insecure
    /// registries, with Docker's credentials, default retries and concurrency.
    pub fn new(config: &Config, store: Store) -> Result<Self, RegistryError> {
        Self::with_options(config, store, RegistryOptions::default())
    }

    pub fn with_options(config: &Config, store: Store, options: RegistryOptions) -> Result<Self, RegistryError> {
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints: Endpoints::new(config.clone(), options.credentials),
                store,
                retry: options.retry,
                concurrency: options.concurrency.max(1),
                origins: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration this client follows.
    pub fn config(&self) -> &Config {
        self.inner.endpoints.config()
    }

    /// Manifest digest of `r` for linux/amd64 (an index is resolved to that
    /// platform's manifest), its manifest and config blobs fetched into the
    /// store. Mirrors first for the reference's registry, then the registry.
    pub async fn resolve(&self, r: &ImageRef) -> Result<Resolved, RegistryError> {
        if let Some(resolved) = self.resolve_local(r)? {
            return Ok(resolved);
        }
        self.resolve_remote(r).await.map(|(resolved, _)| resolved)
    }

    /// [`resolve`](Self::resolve), then every layer blob the store lacks,
    /// a few at a time, streamed and verified by digest, with retries.
    pub async fn pull(&self, r: &ImageRef, progress: &dyn Progress) -> Result<Pulled, RegistryError> {
        let inner = &self.inner;
        let (resolved, source) = match self.resolve_local(r)? {
            Some(resolved) => (resolved, None),
            None => {
                let (resolved, source) = self.resolve_remote(r).await?;
                (resolved, Some(source))
            }
        };
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        for layer in resolved.manifest.layers() {
            if !seen.insert(layer.digest().clone()) {
                continue;
            }
            if inner.store.has_blob(layer.digest()) {
                progress.event(TransferEvent::Skipped { digest: layer.digest().clone(), reason: SkipReason::Present });
            } else {
                missing.push(layer);
            }
        }
        if missing.is_empty() {
            return Ok(resolved);
        }
        // The source that served the manifest first, then the others.
        let mut sources = inner.endpoints.sources(r);
        if let Some(source) = source {
            sources.retain(|s| *s != source);
            sources.insert(0, source);
        }
        let sources = &sources;
        futures_util::stream::iter(missing)
            .map(|layer| self.fetch_layer(r, sources, layer, progress))
            .buffer_unordered(inner.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(resolved)
    }

    /// Push images: every blob of every image first (HEAD first and skip
    /// when present; mount across repositories of the same registry when
    /// possible), then the manifests by digest, then the tags, so that a
    /// failure before the tags publishes none of them (see the module docs).
    /// Manifests are pushed as their exact bytes from the store.
    pub async fn push(&self, images: &[PushImage], progress: &dyn Progress) -> Result<Vec<Pushed>, RegistryError> {
        let plan = self.plan_push(images)?;
        let inner = &self.inner;

        // Endpoints and push tokens for every repository before any upload:
        // a missing login or an unreachable registry fails here.
        let mut endpoints: HashMap<String, Endpoint> = HashMap::new();
        for (host, repository) in &plan.repositories {
            let endpoint = match endpoints.get(host) {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let endpoint = inner.endpoints.get(host).await?;
                    endpoints.insert(host.clone(), endpoint.clone());
                    endpoint
                }
            };
            endpoint.authorize(&endpoint.reference(repository, None, None), true, &inner.retry).await?;
        }
        // Every host of the plan got its endpoint just above.
        let endpoint_of =
            |host: &str| endpoints.get(host).ok_or_else(|| RegistryError::Internal(format!("no endpoint for {host}")));

        // 1. Blobs. The repositories of one blob go one after the other, so
        //    the first upload can be mounted into the rest.
        futures_util::stream::iter(&plan.blobs)
            .map(|blob| async move {
                let endpoint = endpoint_of(&blob.host)?;
                for repository in &blob.repositories {
                    self.push_blob(endpoint, repository, blob, progress).await?;
                }
                Ok::<(), RegistryError>(())
            })
            .buffer_unordered(inner.concurrency)
            .try_collect::<Vec<()>>()
            .await?;

        // 2. Manifests by digest: validated by the registry, published nowhere.
        for manifest in &plan.manifests {
            let endpoint = endpoint_of(&manifest.host)?;
            let target = endpoint.reference(&manifest.repository, None, Some(manifest.digest.as_ref()));
            self.push_manifest(endpoint, &target, manifest).await?;
        }

        // 3. Tags.
        let mut pushed = Vec::new();
        for manifest in &plan.manifests {
            let endpoint = endpoint_of(&manifest.host)?;
            for tag in &manifest.tags {
                let target = endpoint.reference(&manifest.repository, tag.tag.as_deref(), None);
                self.push_manifest(endpoint, &target, manifest).await?;
                pushed.push(Pushed { tag: tag.clone(), digest: manifest.digest.clone() });
            }
        }
        Ok(pushed)
    }

    /// Resolves a digest-pinned reference from the store alone, when every
    /// document it needs is there.
    fn resolve_local(&self, r: &ImageRef) -> Result<Option<Resolved>, RegistryError> {
        let store = &self.inner.store;
        let Some(pinned) = &r.digest else { return Ok(None) };
        let mut digest = parse_digest(pinned, r)?;
        if !store.has_blob(&digest) {
            return Ok(None);
        }
        let mut raw = store.read_blob(&digest)?;
        let (mut media_type, kind) = manifest::detect(&raw).map_err(unusable(r, "manifest"))?;
        if kind == Kind::Index {
            let Ok(entry) = manifest::select_linux_amd64(&raw).map_err(unusable(r, "index"))? else {
                return Ok(None);
            };
            digest = entry.digest().clone();
            if !store.has_blob(&digest) {
                return Ok(None);
            }
            raw = store.read_blob(&digest)?;
            let (child_type, child_kind) = manifest::detect(&raw).map_err(unusable(r, "manifest"))?;
            if child_kind != Kind::Manifest {
                return Ok(None);
            }
            media_type = child_type;
        }
        let parsed = manifest::parse_manifest(&raw).map_err(unusable(r, "manifest"))?;
        let config_digest = parsed.config().digest().clone();
        if !store.has_blob(&config_digest) {
            return Ok(None);
        }
        let config = parse_config(&store.read_blob(&config_digest)?, r)?;
        Ok(Some(Resolved {
            reference: r.clone(),
            manifest_digest: digest,
            manifest: parsed,
            media_type,
            config_digest,
            config,
        }))
    }

    /// Resolves from the mirrors, then the registry. Returns the host that answered.
    async fn resolve_remote(&self, r: &ImageRef) -> Result<(Resolved, String), RegistryError> {
        let sources = self.inner.endpoints.sources(r);
        let mut errors = Vec::new();
        for host in &sources {
            match self.resolve_from(host, r).await {
                Ok(resolved) => return Ok((resolved, host.clone())),
                // A broken store is no reason to ask elsewhere.
                Err(e) if e.is_local() => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        Err(one_or_all(errors, r.to_string(), r))
    }

    /// Resolves `r` from one host.
    async fn resolve_from(&self, host: &str, r: &ImageRef) -> Result<Resolved, RegistryError> {
        let inner = &self.inner;
        let endpoint = inner.endpoints.get(host).await?;
        // As asked of this host: a mirror shows as itself.
        let what = ImageRef { registry: host.to_owned(), ..r.clone() }.to_string();
        let reference = endpoint.reference(&r.repository, r.tag.as_deref(), r.digest.as_deref());
        endpoint.authorize(&reference, false, &inner.retry).await?;

        // The document the reference names, checked against a pinned digest.
        let mut raw = self.fetch_manifest(&endpoint, &reference, &what).await?;
        let mut digest = digest_of(&raw);
        if let Some(pinned) = &r.digest {
            let pinned = parse_digest(pinned, r)?;
            if digest != pinned {
                return Err(RegistryError::DigestMismatch {
                    registry: host.to_owned(),
                    what: format!("the manifest of {what}"),
                    expected: pinned.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let (mut media_type, mut kind) = manifest::detect(&raw).map_err(unusable(r, "manifest"))?;
        let mut depth = 0;
        while kind == Kind::Index {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(RegistryError::IndexTooDeep { reference: r.to_string(), max: MAX_INDEX_DEPTH });
            }
            let entry = manifest::select_linux_amd64(&raw)
                .map_err(unusable(r, "index"))?
                .map_err(|available| RegistryError::NoPlatform { reference: r.to_string(), available })?;
            self.store_document(&raw, &digest)?;
            digest = entry.digest().clone();
            let child = endpoint.reference(&r.repository, None, Some(digest.as_ref()));
            raw = self.fetch_manifest(&endpoint, &child, &what).await?;
            let actual = digest_of(&raw);
            if actual != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: host.to_owned(),
                    what: format!("the linux/amd64 manifest of {what}"),
                    expected: digest.to_string(),
                    actual: actual.to_string(),
                });
            }
            (media_type, kind) = manifest::detect(&raw).map_err(unusable(r, "manifest"))?;
        }
        let parsed = manifest::parse_manifest(&raw).map_err(unusable(r, "manifest"))?;
        self.store_document(&raw, &digest)?;
        self.remember(host, &r.repository, &digest);

        // The config: small, in memory, checked against its descriptor.
        let config_desc = parsed.config().clone();
        let config_digest = config_desc.digest().clone();
        let config_bytes = if inner.store.has_blob(&config_digest) {
            inner.store.read_blob(&config_digest)?
        } else {
            let bytes = self.fetch_small_blob(&endpoint, &r.repository, &config_desc).await?;
            self.store_document(&bytes, &config_digest)?;
            bytes
        };
        self.remember(host, &r.repository, &config_digest);
        let config = parse_config(&config_bytes, r)?;
        Ok(Resolved {
            reference: r.clone(),
            manifest_digest: digest,
            manifest: parsed,
            media_type,
            config_digest,
            config,
        })
    }

    /// A manifest's raw bytes, with retries.
    async fn fetch_manifest(
        &self,
        endpoint: &Endpoint,
        reference: &oci_client::Reference,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let (raw, _) = self
            .inner
            .retry
            .run(|| async {
                let ctx = endpoint.ctx(what, false);
                answered(&endpoint.timeouts, ctx, async {
                    endpoint
                        .client
                        .pull_manifest_raw(reference, &endpoint.auth, &media::MANIFESTS)
                        .await
                        .map_err(|e| classify(e, ctx))
                })
                .await
            })
            .await?;
        if raw.len() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::TooLarge {
                registry: endpoint.host.clone(),
                what: format!("the manifest of {what}"),
                size: raw.len() as u64,
                max: MAX_MANIFEST_SIZE as u64,
            });
        }
        Ok(raw.to_vec())
    }

    /// A small blob (a config) into memory, checked against its descriptor.
    async fn fetch_small_blob(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {} in {}/{repository}", desc.digest(), endpoint.host);
        if desc.size() > MAX_CONFIG_SIZE {
            return Err(RegistryError::TooLarge {
                registry: endpoint.host.clone(),
                what: format!("the image config, {what},"),
                size: desc.size(),
                max: MAX_CONFIG_SIZE,
            });
        }
        let reference = endpoint.reference(repository, None, None);
        let digest = desc.digest().to_string();
        let layer = LayerDescriptor { digest: &digest, urls: desc.urls() };
        self.inner
            .retry
            .run(|| async {
                let ctx = endpoint.ctx(&what, false);
                // Small: the whole answer within the first-byte limit.
                answered(&endpoint.timeouts, ctx, async {
                    let mut stream =
                        endpoint.client.pull_blob_stream(&reference, &layer).await.map_err(|e| classify(e, ctx))?;
                    let mut out = Vec::new();
                    while let Some(chunk) = stream.next().await {
                        out.extend_from_slice(&chunk.map_err(|e| from_io(e, ctx))?);
                        check_size(endpoint, &what, out.len() as u64, desc.size(), false)?;
                    }
                    check_size(endpoint, &what, out.len() as u64, desc.size(), true)?;
                    Ok(out)
                })
                .await
            })
            .await
    }

    /// One layer into the store, from the first source that serves it.
    async fn fetch_layer(
        &self,
        r: &ImageRef,
        sources: &[String],
        layer: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let inner = &self.inner;
        let mut errors = Vec::new();
        for host in sources {
            let attempt = async {
                let endpoint = inner.endpoints.get(host).await?;
                endpoint.authorize(&endpoint.reference(&r.repository, None, None), false, &inner.retry).await?;
                inner.retry.run(|| self.download(&endpoint, &r.repository, layer, progress)).await
            };
            match attempt.await {
                Ok(()) => {
                    self.remember(host, &r.repository, layer.digest());
                    progress.event(TransferEvent::Done { digest: layer.digest().clone() });
                    return Ok(());
                }
                Err(e) if e.is_local() => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        Err(one_or_all(errors, format!("layer {} of {r}", layer.digest()), r))
    }

    /// One attempt at streaming a blob into the store.
    async fn download(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        desc: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {} in {}/{repository}", desc.digest(), endpoint.host);
        let ctx = endpoint.ctx(&what, false);
        let reference = endpoint.reference(repository, None, None);
        let digest = desc.digest().to_string();
        let layer = LayerDescriptor { digest: &digest, urls: desc.urls() };
        let mut stream = answered(&endpoint.timeouts, ctx, async {
            endpoint.client.pull_blob_stream(&reference, &layer).await.map_err(|e| classify(e, ctx))
        })
        .await?;
        progress.event(TransferEvent::Started {
            digest: desc.digest().clone(),
            size: desc.size(),
            direction: Direction::Pull,
        });
        let mut sink = BlobSink::new(self.inner.store.clone());
        let mut received = 0u64;
        let idle = endpoint.timeouts.idle;
        let every = notice_every(idle);
        let mut silent = std::time::Duration::ZERO;
        loop {
            // `next` is cancel-safe: a tick that wins loses no data.
            let wait = every.min(idle.saturating_sub(silent));
            let chunk = match tokio::time::timeout(wait, stream.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    silent += wait;
                    if silent >= idle {
                        let stalled = format!("no data for {what} after {received} of {} bytes", desc.size());
                        return Err(timeout(ctx, Deadline::Idle, idle, stalled));
                    }
                    progress.event(TransferEvent::Stalled { digest: desc.digest().clone(), silent });
                    continue;
                }
            };
            silent = std::time::Duration::ZERO;
            let chunk = chunk.map_err(|e| from_io(e, ctx))?;
            let n = chunk.len() as u64;
            received += n;
            check_size(endpoint, &what, received, desc.size(), false)?;
            sink.write(chunk).await?;
            progress.event(TransferEvent::Bytes { digest: desc.digest().clone(), bytes: n });
        }
        check_size(endpoint, &what, received, desc.size(), true)?;
        sink.commit(desc.digest()).await
    }

    /// One blob into one repository: present, mounted or uploaded.
    async fn push_blob(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        blob: &BlobPlan,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let inner = &self.inner;
        let digest = blob.digest.to_string();
        let what = format!("blob {digest} in {}/{repository}", endpoint.host);
        let target = endpoint.reference(repository, None, None);
        let exists = || async {
            inner
                .retry
                .run(|| async {
                    let ctx = endpoint.ctx(&what, true);
                    answered(&endpoint.timeouts, ctx, async {
                        endpoint.client.blob_exists(&target, &digest).await.map_err(|e| classify(e, ctx))
                    })
                    .await
                })
                .await
        };
        let skipped = |reason| {
            self.remember(&endpoint.host, repository, &blob.digest);
            progress.event(TransferEvent::Skipped { digest: blob.digest.clone(), reason });
            Ok(())
        };
        if exists().await? {
            return skipped(SkipReason::Present);
        }
        for source in self.origins(&endpoint.host, &blob.digest, repository) {
            let from = endpoint.reference(&source, None, None);
            // 201 is a mount. Anything else means "upload it instead": a 202
            // (the registry could not mount and opened an upload session,
            // which oci-client reports as a spec violation), or an error.
            let mount =
                tokio::time::timeout(endpoint.timeouts.first_byte, endpoint.client.mount_blob(&target, &from, &digest));
            if matches!(mount.await, Ok(Ok(()))) {
                return skipped(SkipReason::Mounted);
            }
        }
        let Some(size) = inner.store.blob_len(&blob.digest) else {
            return Err(RegistryError::MissingBlob {
                digest,
                image: blob.image.clone(),
                reference: format!("{}/{repository}", endpoint.host),
            });
        };
        if size != blob.size {
            return Err(RegistryError::Invalid {
                reference: blob.image.clone(),
                what: "manifest",
                reason: format!("it gives blob {digest} {} bytes, the store holds {size}", blob.size),
            });
        }
        let mut first = true;
        let (target, what, exists) = (&target, what.as_str(), &exists);
        inner
            .retry
            .run(|| {
                let retried = !std::mem::take(&mut first);
                async move {
                    // An attempt that broke off may have landed after all.
                    if retried && exists().await? {
                        return Ok(());
                    }
                    self.upload(endpoint, target, &blob.digest, size, what, progress).await
                }
            })
            .await?;
        self.remember(&endpoint.host, repository, &blob.digest);
        progress.event(TransferEvent::Done { digest: blob.digest.clone() });
        Ok(())
    }

    /// One attempt at uploading a blob from the store, streamed.
    async fn upload(
        &self,
        endpoint: &Endpoint,
        target: &oci_client::Reference,
        digest: &Digest,
        size: u64,
        what: &str,
        progress: &dyn Progress,
    ) -> Result<(), RegistryError> {
        let file = self.inner.store.open_blob(digest)?;
        // oci-client wants a 'static stream, so the stream reports the bytes
        // it hands over through a channel that this task turns into events.
        let (counts, mut counted) = mpsc::unbounded_channel::<u64>();
        let body =
            tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20).map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    // The receiver lives as long as the upload; a failed send
                    // only means the upload was abandoned.
                    let _ = counts.send(bytes.len() as u64);
                }
                chunk.map_err(oci_client::errors::OciDistributionError::from)
            });
        progress.event(TransferEvent::Started { digest: digest.clone(), size, direction: Direction::Push });
        let digest_str = digest.to_string();
        let upload = endpoint.client.push_blob_stream(target, body, &digest_str, Some(size));
        tokio::pin!(upload);
        // Idle while bytes remain to be sent; then the answer is due within
        // the first-byte limit.
        let timeouts = &endpoint.timeouts;
        let mut last = tokio::time::Instant::now();
        let mut noticed = std::time::Duration::ZERO;
        let mut sent = 0u64;
        let result = loop {
            let (limit, deadline) =
                if sent < size { (timeouts.idle, Deadline::Idle) } else { (timeouts.first_byte, Deadline::FirstByte) };
            let tick = last + (noticed + notice_every(limit)).min(limit);
            tokio::select! {
                result = &mut upload => break result,
                Some(bytes) = counted.recv() => {
                    sent += bytes;
                    last = tokio::time::Instant::now();
                    noticed = std::time::Duration::ZERO;
                    progress.event(TransferEvent::Bytes { digest: digest.clone(), bytes });
                }
                () = tokio::time::sleep_until(tick) => {
                    noticed = last.elapsed();
                    if noticed >= limit {
                        let stalled = if sent < size {
                            format!("{what} accepted no data after {sent} of {size} bytes")
                        } else {
                            format!("no answer after sending {what}")
                        };
                        return Err(timeout(endpoint.ctx(what, true), deadline, limit, stalled));
                    }
                    progress.event(TransferEvent::Stalled { digest: digest.clone(), silent: noticed });
                }
            }
        };
        while let Ok(bytes) = counted.try_recv() {
            progress.event(TransferEvent::Bytes { digest: digest.clone(), bytes });
        }
        result.map(|_| ()).map_err(|e| classify(e, endpoint.ctx(what, true)))
    }

    /// Puts a manifest's exact bytes at `target` (a digest or a tag), with retries.
    async fn push_manifest(
        &self,
        endpoint: &Endpoint,
        target: &oci_client::Reference,
        manifest: &ManifestPlan,
    ) -> Result<(), RegistryError> {
        let what = format!("manifest {} for {}", manifest.digest, target);
        self.inner
            .retry
            .run(|| async {
                let ctx = endpoint.ctx(&what, true);
                answered(&endpoint.timeouts, ctx, async {
                    // Parsed into oci-client's header type, whichever it is.
                    let content_type = manifest.media_type.parse().map_err(|_| RegistryError::Invalid {
                        reference: target.to_string(),
                        what: "media type",
                        reason: format!("`{}` cannot be sent as a Content-Type", manifest.media_type),
                    })?;
                    endpoint
                        .client
                        .push_manifest_raw(target, manifest.bytes.clone(), content_type)
                        .await
                        .map_err(|e| classify(e, ctx))
                })
                .await
            })
            .await
            .map(|_| ())
    }

    /// Reads every image to push from the store and lays out the work.
    fn plan_push(&self, images: &[PushImage]) -> Result<PushPlan, RegistryError> {
        let store = &self.inner.store;
        let mut plan = PushPlan::default();
        let mut blob_index: HashMap<(String, Digest), usize> = HashMap::new();
        let mut manifest_index: HashMap<(String, String, Digest), usize> = HashMap::new();
        let mut repositories = HashSet::new();
        for image in images {
            if !matches!(image.media_type.as_str(), media::OCI_MANIFEST | media::DOCKER_MANIFEST) {
                return Err(RegistryError::PushUnsupported {
                    digest: image.manifest.to_string(),
                    media_type: image.media_type.clone(),
                });
            }
            if !store.has_blob(&image.manifest) {
                return Err(RegistryError::MissingImage { digest: image.manifest.to_string() });
            }
            let bytes = Bytes::from(store.read_blob(&image.manifest)?);
            let parsed = manifest::parse_manifest(&bytes).map_err(|u| RegistryError::Invalid {
                reference: image.manifest.to_string(),
                what: "manifest",
                reason: match u {
                    Unusable::Invalid(reason) => reason,
                    Unusable::Unsupported { media_type, .. } => media_type,
                },
            })?;
            let blobs: Vec<(Digest, u64)> = std::iter::once(parsed.config())
                .chain(parsed.layers())
                .map(|d| (d.digest().clone(), d.size()))
                .collect();
            for tag in &image.tags {
                if let Some(pinned) = &tag.digest
                    && *pinned != image.manifest.to_string()
                {
                    return Err(RegistryError::Invalid {
                        reference: tag.to_string(),
                        what: "push target",
                        reason: format!("it pins {pinned}, but the image to push is {}", image.manifest),
                    });
                }
                let host = normalize_registry(&tag.registry).to_owned();
                let repository = tag.repository.clone();
                if repositories.insert((host.clone(), repository.clone())) {
                    plan.repositories.push((host.clone(), repository.clone()));
                }
                for (digest, size) in &blobs {
                    let i = *blob_index.entry((host.clone(), digest.clone())).or_insert_with(|| {
                        plan.blobs.push(BlobPlan {
                            host: host.clone(),
                            digest: digest.clone(),
                            size: *size,
                            repositories: Vec::new(),
                            image: image.manifest.to_string(),
                        });
                        plan.blobs.len() - 1
                    });
                    if !plan.blobs[i].repositories.contains(&repository) {
                        plan.blobs[i].repositories.push(repository.clone());
                    }
                }
                let key = (host.clone(), repository.clone(), image.manifest.clone());
                let i = *manifest_index.entry(key).or_insert_with(|| {
                    plan.manifests.push(ManifestPlan {
                        host: host.clone(),
                        repository: repository.clone(),
                        digest: image.manifest.clone(),
                        media_type: image.media_type.clone(),
                        bytes: bytes.clone(),
                        tags: Vec::new(),
                    });
                    plan.manifests.len() - 1
                });
                // A reference by digest alone needs no tag: phase 2 pushes it.
                if tag.tag.is_some() && !plan.manifests[i].tags.contains(tag) {
                    plan.manifests[i].tags.push(tag.clone());
                }
            }
        }
        Ok(plan)
    }

    /// Writes a small document to the store, checking that it lands under `digest`.
    fn store_document(&self, bytes: &[u8], digest: &Digest) -> Result<(), RegistryError> {
        if self.inner.store.has_blob(digest) {
            return Ok(());
        }
        let stored = self.inner.store.put_blob(bytes)?;
        if stored != *digest {
            return Err(RegistryError::Internal(format!("a document hashed to {digest} was stored as {stored}")));
        }
        Ok(())
    }

    fn lock_origins(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Digest), Vec<String>>> {
        // Every update is one push onto a list: a panicking holder cannot
        // leave the map inconsistent, so recover it.
        self.inner.origins.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that `repository` on `host` holds a blob.
    /// Notes that the repository of `r` holds `digests` (a registry cache
    /// entry's layers), so a push to another repository of the same
    /// registry mounts them instead of needing them locally.
    pub fn note_blobs(&self, r: &ImageRef, digests: &[Digest]) {
        let host = normalize_registry(&r.registry);
        for d in digests {
            self.remember(host, &r.repository, d);
        }
    }

    fn remember(&self, host: &str, repository: &str, digest: &Digest) {
        let mut origins = self.lock_origins();
        let repos = origins.entry((host.to_owned(), digest.clone())).or_default();
        if !repos.iter().any(|r| r == repository) {
            repos.push(repository.to_owned());
        }
    }

    /// Up to 3 other repositories on `host` known to hold a blob, latest first.
    fn origins(&self, host: &str, digest: &Digest, except: &str) -> Vec<String> {
        self.lock_origins()
            .get(&(host.to_owned(), digest.clone()))
            .map(|repos| repos.iter().rev().filter(|r| *r != except).take(3).cloned().collect())
            .unwrap_or_default()
    }
}

/// The work of one push.
#[derive(Default)]
struct PushPlan {
    /// Every (host, repository) pushed to, in order of appearance.
    repositories: Vec<(String, String)>,
    blobs: Vec<BlobPlan>,
    manifests: Vec<ManifestPlan>,
}

/// One blob on one registry, and the repositories that need it.
struct BlobPlan {
    host: String,
    digest: Digest,
    /// Its size by the manifest.
    size: u64,
    repositories: Vec<String>,
    /// The first image that needs it, for "missing blob" errors.
    image: String,
}

/// One manifest into one repository, with its tags there.
struct ManifestPlan {
    host: String,
    repository: String,
    digest: Digest,
    media_type: String,
    bytes: Bytes,
    tags: Vec<ImageRef>,
}

/// The only error when one source was tried, else all of them.
fn one_or_all(mut errors: Vec<RegistryError>, what: String, r: &ImageRef) -> RegistryError {
    if errors.len() == 1
        && let Some(e) = errors.pop()
    {
        return e;
    }
    RegistryError::AllSources { reference: what, registry: normalize_registry(&r.registry).to_owned(), errors }
}

/// Maps a manifest that cannot be used to an error about `r`.
fn unusable<'a>(r: &'a ImageRef, what: &'static str) -> impl Fn(Unusable) -> RegistryError + 'a {
    move |u| match u {
        Unusable::Invalid(reason) => RegistryError::Invalid { reference: r.to_string(), what, reason },
        Unusable::Unsupported { media_type, help } => {
            RegistryError::Unsupported { reference: r.to_string(), media_type, help }
        }
    }
}

/// Fails a transfer that sends more than its descriptor's size, or (at the
/// end) a different size.
fn check_size(endpoint: &Endpoint, what: &str, received: u64, expected: u64, end: bool) -> Result<(), RegistryError> {
    if received > expected || (end && received != expected) {
        return Err(RegistryError::Protocol {
            registry: endpoint.host.clone(),
            message: format!("{what} is {expected} bytes by its descriptor, the registry sent {received}"),
        });
    }
    Ok(())
}

fn parse_digest(text: &str, r: &ImageRef) -> Result<Digest, RegistryError> {
    Digest::from_str(text).map_err(|e| RegistryError::Invalid {
        reference: r.to_string(),
        what: "digest",
        reason: e.to_string(),
    })
}

fn parse_config(bytes: &[u8], r: &ImageRef) -> Result<ImageConfiguration, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Invalid {
        reference: r.to_string(),
        what: "image config",
        reason: e.to_string(),
    })
}
