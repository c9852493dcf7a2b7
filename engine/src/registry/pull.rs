//! Pulling: resolving a reference to its manifest and config for a platform
//! (mirrors first, then the registry; an index followed down to its platform
//! entry; every document checked against its digest) and fetching the layers
//! the store lacks. See the module docs of [`super`] for the whole story.

use std::collections::HashSet;
use std::str::FromStr;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::LayerDescriptor;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};

use super::deadline::{Limit as Deadline, answered, notice_every, timeout};
use super::endpoint::Endpoint;
use super::error::{classify, from_io};
use super::manifest::{self, Kind, Unusable};
use super::sink::BlobSink;
use super::{Direction, Progress, Registry, RegistryError, SkipReason, TransferEvent};
use crate::config::normalize_registry;
use crate::oci::{Digest, digest_of, media};
use crate::platform::Platform;
use crate::reference::ImageRef;

/// A config blob larger than this is refused rather than held in memory: 4
/// MiB, containerd's limit for the documents it reads whole.
const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// A manifest or index larger than this is refused: 4 MiB, as containerd
/// and distribution (which refuses to store a larger one).
const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Indexes nested in indexes followed at most. Real images have one level
/// (an index of platform manifests); a few tools nest one more.
pub const MAX_INDEX_DEPTH: usize = 4;

/// An image manifest resolved for a platform; its manifest and config are
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

impl Registry {
    /// Manifest digest of `r` for linux/amd64 (an index is resolved to that
    /// platform's manifest), its manifest and config blobs fetched into the
    /// store. Mirrors first for the reference's registry, then the registry.
    /// A single manifest is taken whatever its config says (bake's own
    /// registry cache entries are of every platform).
    pub async fn resolve(&self, r: &ImageRef) -> Result<Resolved, RegistryError> {
        self.resolve_with(r, &Platform::legacy(), false).await
    }

    /// [`resolve`](Self::resolve) for `platform`: an index is resolved to
    /// its best entry for it, and a single manifest whose config names
    /// another platform is an error.
    pub async fn resolve_for(&self, r: &ImageRef, platform: &Platform) -> Result<Resolved, RegistryError> {
        self.resolve_with(r, platform, true).await
    }

    async fn resolve_with(&self, r: &ImageRef, platform: &Platform, check: bool) -> Result<Resolved, RegistryError> {
        let resolved = match self.resolve_local(r, platform)? {
            Some(resolved) => resolved,
            None => self.resolve_remote(r, platform).await?.0,
        };
        if check && let Err(actual) = manifest::check_config_platform(&resolved.config, platform) {
            return Err(RegistryError::WrongPlatform {
                reference: r.to_string(),
                wanted: platform.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(resolved)
    }

    /// [`resolve`](Self::resolve), then every layer blob the store lacks,
    /// a few at a time, streamed and verified by digest, with retries.
    pub async fn pull(&self, r: &ImageRef, progress: &dyn Progress) -> Result<Pulled, RegistryError> {
        self.pull_with(r, &Platform::legacy(), false, progress).await
    }

    /// [`pull`](Self::pull) of the image for `platform`, as
    /// [`resolve_for`](Self::resolve_for) resolves it.
    pub async fn pull_for(
        &self,
        r: &ImageRef,
        platform: &Platform,
        progress: &dyn Progress,
    ) -> Result<Pulled, RegistryError> {
        self.pull_with(r, platform, true, progress).await
    }

    async fn pull_with(
        &self,
        r: &ImageRef,
        platform: &Platform,
        check: bool,
        progress: &dyn Progress,
    ) -> Result<Pulled, RegistryError> {
        let inner = &self.inner;
        let (resolved, source) = match self.resolve_local(r, platform)? {
            Some(resolved) => (resolved, None),
            None => {
                let (resolved, source) = self.resolve_remote(r, platform).await?;
                (resolved, Some(source))
            }
        };
        if check && let Err(actual) = manifest::check_config_platform(&resolved.config, platform) {
            return Err(RegistryError::WrongPlatform {
                reference: r.to_string(),
                wanted: platform.to_string(),
                actual: actual.to_string(),
            });
        }
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

    /// Resolves a digest-pinned reference from the store alone, when every
    /// document it needs is there.
    fn resolve_local(&self, r: &ImageRef, platform: &Platform) -> Result<Option<Resolved>, RegistryError> {
        let store = &self.inner.store;
        let Some(pinned) = &r.digest else { return Ok(None) };
        let mut digest = parse_digest(pinned, r)?;
        if !store.has_blob(&digest) {
            return Ok(None);
        }
        let mut raw = store.read_blob(&digest)?;
        let (mut media_type, kind) = manifest::detect(&raw).map_err(unusable(r, "manifest"))?;
        if kind == Kind::Index {
            let Ok(entry) = manifest::select(&raw, platform).map_err(unusable(r, "index"))? else {
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
    async fn resolve_remote(&self, r: &ImageRef, platform: &Platform) -> Result<(Resolved, String), RegistryError> {
        let sources = self.inner.endpoints.sources(r);
        let mut errors = Vec::new();
        for host in &sources {
            match self.resolve_from(host, r, platform).await {
                Ok(resolved) => return Ok((resolved, host.clone())),
                // A broken store is no reason to ask elsewhere; nor is an
                // image served without the platform: a mirror serves the
                // same images as its registry.
                Err(e) if e.is_local() || matches!(e, RegistryError::NoPlatform { .. }) => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        Err(one_or_all(errors, r.to_string(), r))
    }

    /// Resolves `r` from one host.
    async fn resolve_from(&self, host: &str, r: &ImageRef, platform: &Platform) -> Result<Resolved, RegistryError> {
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
            let entry = manifest::select(&raw, platform).map_err(unusable(r, "index"))?.map_err(|available| {
                RegistryError::NoPlatform { reference: r.to_string(), platform: platform.to_string(), available }
            })?;
            self.store_document(&raw, &digest)?;
            digest = entry.digest().clone();
            let child = endpoint.reference(&r.repository, None, Some(digest.as_ref()));
            raw = self.fetch_manifest(&endpoint, &child, &what).await?;
            let actual = digest_of(&raw);
            if actual != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: host.to_owned(),
                    what: format!("the {platform} manifest of {what}"),
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
