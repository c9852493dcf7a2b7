//! Pushing: the three phases of [`Registry::push`] (blobs, manifests by
//! digest (an index's platform manifests before the index), tags), the plan made before any request, and blob upload with
//! cross-repository mounts. See the module docs of [`super`] for why the
//! phases are ordered so.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::deadline::{Limit as Deadline, answered, notice_every, timeout};
use super::endpoint::Endpoint;
use super::error::classify;
use super::manifest::{self, Unusable};
use super::{Direction, Progress, Registry, RegistryError, SkipReason, TransferEvent};
use crate::config::normalize_registry;
use crate::oci::{Digest, media};
use crate::reference::ImageRef;

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

impl Registry {
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

    /// The manifest at `reference` (a tag) as its bytes, or `None` when the
    /// repository has nothing there. For the referrers tag of attestations.
    pub async fn manifest_bytes(&self, reference: &ImageRef) -> Result<Option<Vec<u8>>, RegistryError> {
        let (endpoint, target) = self.push_target(reference).await?;
        let what = format!("manifest {reference}");
        let got = self
            .inner
            .retry
            .run(|| async {
                let ctx = endpoint.ctx(&what, false);
                answered(&endpoint.timeouts, ctx, async {
                    endpoint
                        .client
                        .pull_manifest_raw(&target, &endpoint.auth, &media::MANIFESTS)
                        .await
                        .map_err(|e| classify(e, ctx))
                })
                .await
            })
            .await;
        match got {
            Ok((raw, _)) => Ok(Some(raw.to_vec())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Puts `bytes` as a manifest at `reference` (a tag or a digest), with
    /// nothing else: its blobs must already be in the repository.
    pub async fn put_manifest(
        &self,
        reference: &ImageRef,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, RegistryError> {
        let (endpoint, target) = self.push_target(reference).await?;
        let plan = ManifestPlan {
            host: endpoint.host.clone(),
            repository: reference.repository.clone(),
            digest: crate::oci::digest_of(&bytes),
            media_type: media_type.to_owned(),
            bytes,
            tags: Vec::new(),
        };
        self.push_manifest(&endpoint, &target, &plan).await?;
        Ok(plan.digest)
    }

    /// The endpoint of `reference`'s registry, authorized to push, and the
    /// reference in oci-client's terms.
    async fn push_target(&self, reference: &ImageRef) -> Result<(Endpoint, oci_client::Reference), RegistryError> {
        let host = normalize_registry(&reference.registry).to_owned();
        let endpoint = self.inner.endpoints.get(&host).await?;
        endpoint.authorize(&endpoint.reference(&reference.repository, None, None), true, &self.inner.retry).await?;
        let target = endpoint.reference(&reference.repository, reference.tag.as_deref(), reference.digest.as_deref());
        Ok((endpoint, target))
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
        let mut plan = PushPlan::default();
        let mut seen = Seen::default();
        for image in images {
            // An index: its platforms' manifests are pushed before it, by
            // digest, and only the index gets the tags.
            let children = match image.media_type.as_str() {
                media::OCI_MANIFEST | media::DOCKER_MANIFEST => Vec::new(),
                media::OCI_INDEX => self.index_children(&image.manifest)?,
                _ => {
                    return Err(RegistryError::PushUnsupported {
                        digest: image.manifest.to_string(),
                        media_type: image.media_type.clone(),
                    });
                }
            };
            let bytes = self.stored_manifest(&image.manifest)?;
            let mut parts = Vec::with_capacity(children.len() + 1);
            for (digest, media_type) in children {
                let child = self.stored_manifest(&digest)?;
                let blobs = manifest_blobs(&child, &digest)?;
                parts.push((digest, media_type, child, blobs));
            }
            let blobs = if image.media_type == media::OCI_INDEX {
                Vec::new()
            } else {
                manifest_blobs(&bytes, &image.manifest)?
            };
            parts.push((image.manifest.clone(), image.media_type.clone(), bytes, blobs));
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
                if seen.repositories.insert((host.clone(), repository.clone())) {
                    plan.repositories.push((host.clone(), repository.clone()));
                }
                let last = parts.len() - 1;
                for (i, (digest, media_type, bytes, blobs)) in parts.iter().enumerate() {
                    for (blob, size) in blobs {
                        let b = *seen.blobs.entry((host.clone(), blob.clone())).or_insert_with(|| {
                            plan.blobs.push(BlobPlan {
                                host: host.clone(),
                                digest: blob.clone(),
                                size: *size,
                                repositories: Vec::new(),
                                image: image.manifest.to_string(),
                            });
                            plan.blobs.len() - 1
                        });
                        if !plan.blobs[b].repositories.contains(&repository) {
                            plan.blobs[b].repositories.push(repository.clone());
                        }
                    }
                    let key = (host.clone(), repository.clone(), digest.clone());
                    let m = *seen.manifests.entry(key).or_insert_with(|| {
                        plan.manifests.push(ManifestPlan {
                            host: host.clone(),
                            repository: repository.clone(),
                            digest: digest.clone(),
                            media_type: media_type.clone(),
                            bytes: bytes.clone(),
                            tags: Vec::new(),
                        });
                        plan.manifests.len() - 1
                    });
                    // A reference by digest alone needs no tag: phase 2 pushes it.
                    if i == last && tag.tag.is_some() && !plan.manifests[m].tags.contains(tag) {
                        plan.manifests[m].tags.push(tag.clone());
                    }
                }
            }
        }
        Ok(plan)
    }

    /// A manifest's bytes from the store.
    fn stored_manifest(&self, digest: &Digest) -> Result<Bytes, RegistryError> {
        let store = &self.inner.store;
        if !store.has_blob(digest) {
            return Err(RegistryError::MissingImage { digest: digest.to_string() });
        }
        Ok(Bytes::from(store.read_blob(digest)?))
    }

    /// The platform manifests an index in the store lists: digests and
    /// media types. Nested indexes are not pushed.
    fn index_children(&self, digest: &Digest) -> Result<Vec<(Digest, String)>, RegistryError> {
        let bytes = self.stored_manifest(digest)?;
        let invalid = |reason: String| RegistryError::Invalid { reference: digest.to_string(), what: "index", reason };
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not a valid image index: {e}")))?;
        index
            .manifests()
            .iter()
            .map(|d| {
                let media_type = d.media_type().to_string();
                if matches!(media_type.as_str(), media::OCI_MANIFEST | media::DOCKER_MANIFEST) {
                    Ok((d.digest().clone(), media_type))
                } else {
                    Err(RegistryError::PushUnsupported { digest: d.digest().to_string(), media_type })
                }
            })
            .collect()
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

/// What a push plan has already placed, by registry and repository.
#[derive(Default)]
struct Seen {
    repositories: HashSet<(String, String)>,
    blobs: HashMap<(String, Digest), usize>,
    manifests: HashMap<(String, String, Digest), usize>,
}

/// The config and layers of a manifest's bytes, with their sizes.
fn manifest_blobs(bytes: &[u8], digest: &Digest) -> Result<Vec<(Digest, u64)>, RegistryError> {
    let parsed = manifest::parse_manifest(bytes).map_err(|u| RegistryError::Invalid {
        reference: digest.to_string(),
        what: "manifest",
        reason: match u {
            Unusable::Invalid(reason) => reason,
            Unusable::Unsupported { media_type, .. } => media_type,
        },
    })?;
    Ok(std::iter::once(parsed.config()).chain(parsed.layers()).map(|d| (d.digest().clone(), d.size())).collect())
}
