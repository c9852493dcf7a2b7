//! The registry cache: build results shared through any OCI registry.
//!
//! # Layout
//!
//! A result is stored in the cache repository as an ordinary image manifest
//! tagged `<prefix>-<key>` (the prefix is the tag the user gave, `bake` by
//! default): its config is the node's config document and its layers are
//! the node's layers, so every entry is a valid image that any registry
//! accepts, garbage-collects and replicates like another, and that `skopeo`
//! or `docker pull` can inspect. Annotations name the key and the node.
//! A tag per key (rather than one index of every key) lets CI machines push
//! at the same time without overwriting each other.
//!
//! # Lookups
//!
//! Before the build, every key the build would need and the local store lacks
//! is looked up at once (16 requests in flight per cache): a miss is one
//! manifest request, a hit two (the manifest and its config). Layers are
//! fetched only when a step that runs here needs a hit's files; a final
//! image that is pushed to the same registry has its layers mounted across
//! repositories by the registry.
//!
//! # Failure
//!
//! A cache that is unreachable, refuses access or does not answer a lookup
//! within [`LOOKUP_TIMEOUT`] is reported once as a warning and not asked again in
//! this build; the build goes on locally. Exporting to a cache that fails is
//! a warning too: the build itself has succeeded.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use petgraph::graph::NodeIndex;
use serde_json::json;

use super::execute::{Build, lock};
use super::fetch::{Origin, fs_result};
use super::schedule::State;
use super::{Event, FsResult};
use crate::graph::{Key, Op, Plan};
use crate::oci::{Digest, media};
use crate::reference::{CacheRef, ImageRef};
use crate::registry::PushImage;

/// How long one lookup may take before its cache counts as down.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lookups in flight per cache.
const LOOKUP_CONCURRENCY: usize = 16;

/// The registry caches of one build.
pub(super) struct RemoteCache<'b> {
    build: &'b Build<'b>,
    from: Vec<CacheRef>,
    to: Vec<CacheRef>,
    /// Caches (by index in `from`) that failed: not asked again.
    down: Mutex<HashSet<usize>>,
}

impl<'b> RemoteCache<'b> {
    /// The caches named on the command line, or else in `build.kdl`.
    pub(super) fn new(build: &'b Build<'b>, ws: &crate::lang::Workspace) -> Self {
        let options = build.options;
        let pick = |given: &Vec<CacheRef>, declared: &Vec<(String, crate::lang::Span)>| -> Vec<CacheRef> {
            if !given.is_empty() {
                return given.clone();
            }
            declared.iter().filter_map(|(raw, _)| raw.parse().ok()).collect()
        };
        Self {
            build,
            from: pick(&options.cache_from, &ws.cache_from),
            to: pick(&options.cache_to, &ws.cache_to),
            down: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.from.is_empty()
    }

    fn warn_down(&self, i: usize, why: &str) {
        if lock(&self.down).insert(i) {
            self.build.events.event(Event::Warning {
                message: format!("registry cache {} {why}; building without it", self.from[i]),
            });
        }
    }

    /// A found entry: its manifest and config are in the store now; its
    /// layers are remembered as held by the cache repository, for mounts.
    fn found(&self, i: usize, key: &Key, manifest: &Digest) -> Option<(Origin, FsResult)> {
        let store = &self.build.engine.store;
        let result = fs_result(store, manifest).ok()?;
        let at = ImageRef { tag: None, digest: Some(manifest.to_string()), ..self.from[i].repository.clone() };
        let digests: Vec<Digest> = result.layers.iter().map(|l| l.digest.clone()).collect();
        self.build.engine.registry.note_blobs(&at, &digests);
        let name = at.to_string();
        Some((Origin { image: at, name, cache_key: Some(*key) }, result))
    }

    /// Looks `keys` up in every cache, in order, at once per cache.
    pub(super) async fn lookup_many(&self, keys: &[(NodeIndex, Key)]) -> HashMap<NodeIndex, (Origin, FsResult)> {
        let mut found = HashMap::new();
        let registry = &self.build.engine.registry;
        for (i, cache) in self.from.iter().enumerate() {
            let wanted: Vec<&(NodeIndex, Key)> = keys.iter().filter(|(n, _)| !found.contains_key(n)).collect();
            if wanted.is_empty() || lock(&self.down).contains(&i) {
                continue;
            }
            // Each request has its own deadline: a slow answer marks the
            // cache down, the answers already in are kept.
            let lookups = futures_util::stream::iter(wanted)
                .map(|(n, key)| async move {
                    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, registry.resolve(&cache.entry(key))).await;
                    (*n, *key, answer)
                })
                .buffer_unordered(LOOKUP_CONCURRENCY)
                .collect::<Vec<_>>()
                .await;
            for (n, key, answer) in lookups {
                match answer {
                    Ok(Ok(resolved)) => {
                        if let Some(hit) = self.found(i, &key, &resolved.manifest_digest) {
                            found.insert(n, hit);
                        }
                    }
                    Ok(Err(e)) if e.is_not_found() => {}
                    Ok(Err(e)) => self.warn_down(i, &format!("failed: {e}")),
                    Err(_) => self.warn_down(i, &format!("did not answer within {} s", LOOKUP_TIMEOUT.as_secs())),
                }
            }
        }
        found
    }

    /// Looks one key up, from a worker thread (early cutoff).
    pub(super) fn lookup_one(&self, n: NodeIndex, key: &Key) -> Option<(Origin, FsResult)> {
        if self.from.is_empty() {
            return None;
        }
        let handle = tokio::runtime::Handle::current();
        handle.block_on(self.lookup_many(&[(n, *key)])).remove(&n)
    }

    /// Pushes every result of the build to the `cache-to` caches.
    pub(super) async fn export(&self, build: &Build<'_>, plan: &Plan, state: &State) {
        if self.to.is_empty() {
            return;
        }
        let store = &build.engine.store;
        let mut entries: Vec<(Key, String, FsResult)> = Vec::new();
        let mut keys_seen = HashSet::new();
        for n in plan.needed() {
            let node = &plan.graph[n];
            if !matches!(node.op, Op::Copy { .. } | Op::Run { .. } | Op::Stage { .. }) {
                continue;
            }
            let Some(key) = node.key else { continue };
            let mut keys = vec![key];
            keys.extend(state.effective.get(&n).copied());
            let result = match state.view.results.get(&n) {
                Some(r) => Some((**r).clone()),
                None => store
                    .cache(&key.to_hex())
                    .ok()
                    .flatten()
                    .and_then(|e| serde_json::from_value::<FsResult>(e.value).ok()),
            };
            let Some(mut result) = result else { continue };
            // Compressed for the trip (steps keep their layers uncompressed
            // locally), when the layers are here; the same diffIDs either way.
            if result.layers.iter().all(|l| store.contains_blob(&l.digest))
                && let Ok(layers) = tokio::task::block_in_place(|| build.compress_layers(&result.layers))
            {
                result.layers = layers;
            }
            for k in keys {
                if keys_seen.insert(k) {
                    entries.push((k, node.id.clone(), result.clone()));
                }
            }
        }
        for cache in &self.to {
            let mut pushes = Vec::new();
            for (key, node, result) in &entries {
                match entry_manifest(store, key, node, result) {
                    Ok(manifest) => pushes.push(PushImage {
                        manifest,
                        media_type: media::OCI_MANIFEST.to_owned(),
                        tags: vec![cache.entry(key)],
                    }),
                    Err(e) => build
                        .events
                        .event(Event::Warning { message: format!("cannot export {node} to the cache: {e}") }),
                }
            }
            let progress = super::export::TransferEvents::new(build.events, format!("cache {cache}"));
            let mut pushed = build.engine.registry.push(&pushes, &progress).await;
            if matches!(pushed, Err(crate::registry::RegistryError::MissingBlob { .. })) {
                // Layers from another cache, not mountable here: fetch them.
                let nodes: Vec<NodeIndex> = state.view.origins.keys().copied().collect();
                let fetched = tokio::task::block_in_place(|| {
                    nodes.iter().try_for_each(|n| build.materialize(&state.view, plan, *n))
                });
                if fetched.is_ok() {
                    pushed = build.engine.registry.push(&pushes, &progress).await;
                }
            }
            match pushed {
                Ok(_) => {
                    build.events.event(Event::CacheExported { reference: cache.to_string(), entries: pushes.len() });
                }
                Err(e) => build
                    .events
                    .event(Event::Warning { message: format!("could not export the build cache to {cache}: {e}") }),
            }
        }
    }
}

/// The manifest of a cache entry, written into the store.
fn entry_manifest(
    store: &crate::store::Store,
    key: &Key,
    node: &str,
    result: &FsResult,
) -> Result<Digest, super::ExecError> {
    let config_size = store
        .blob_len(&result.config)
        .ok_or_else(|| super::ExecError::MissingBlob { what: "config", digest: result.config.to_string() })?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": { "mediaType": media::OCI_CONFIG, "digest": result.config.to_string(), "size": config_size },
        "layers": result.layers.iter().map(|l| json!({
            "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
        "annotations": { "dev.bake.key": key.to_hex(), "dev.bake.node": node },
    });
    let bytes = crate::oci::canonical_json(&manifest).unwrap_or_default();
    Ok(store.put_blob(&bytes)?)
}
