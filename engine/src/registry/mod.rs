//! Registry access: pulling base images into the store, pushing built images.
//!
//! # Pulling (`pull.rs`)
//!
//! [`Registry::resolve_for`] turns a reference into one image manifest for a
//! platform ([`Registry::resolve`]: linux/amd64, for bake's own cache
//! entries). It asks the mirrors configured for the reference's registry
//! first, in order, then the registry itself; a mirror serves the same
//! repository paths (`docker.io/library/busybox` is asked of a mirror as
//! `MIRROR/library/busybox`). The manifest is fetched raw, accepting every
//! media type bake reads (OCI and Docker v2, images and indexes); an index or
//! a Docker manifest list is resolved to its best entry for the platform
//! (containerd's order, see [`crate::platform`]), fetched by digest; a single
//! manifest whose config names another platform is refused. Every document is checked against the digest it was asked for,
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
//! # Pushing (`push.rs`)
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
//!
//! # Layout
//!
//! This file holds the client ([`Registry`]) and what pulls and pushes
//! share (the store, the blob origins used for cross-repository mounts);
//! `pull.rs` and `push.rs` add their halves of its methods; `progress.rs`
//! holds the transfer events both send; `endpoint.rs` one registry's HTTP
//! client and token, `retry.rs` and `deadline.rs` the retry and timeout
//! rules, `sink.rs` the streaming of a blob into the store, `manifest.rs`
//! the decoding of manifests and indexes, `error.rs` the typed errors.

mod deadline;
mod endpoint;
mod error;
pub(crate) mod manifest;
mod progress;
mod pull;
mod push;
mod retry;
mod sink;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use deadline::Limit;
pub use endpoint::Credentials;
pub use error::RegistryError;
pub use retry::RetryPolicy;

use crate::config::{Config, normalize_registry};
use crate::oci::Digest;
use crate::reference::ImageRef;
use crate::store::Store;
use endpoint::Endpoints;

pub use progress::{Direction, NoProgress, Progress, SkipReason, TransferEvent};
pub use pull::{MAX_INDEX_DEPTH, Pulled, Resolved};
pub use push::{PushImage, Pushed};

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
