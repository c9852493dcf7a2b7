//! Fetch: images and results made local.
//!
//! Base images are resolved before the keys (their manifest digests enter
//! them), but their layers are pulled only when a step that runs reads them
//! ([`Build::materialize`]); the same goes for a registry cache hit's layers.
//! Until then a result names layers that are not in the store, and its
//! [`Origin`] says where they are. `bake run` makes its image local here too
//! ([`super::Engine::local_image`], whose parts are here).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use petgraph::graph::NodeIndex;

use super::execute::{Build, lock, record};
use super::export::TransferEvents;
use super::schedule::View;
use super::{Event, ExecError, FsResult};
use crate::graph::{Key, Op, Plan, base_name};
use crate::image::{ImageConfig, ImageError};
use crate::layer::LayerInfo;
use crate::oci::Digest;
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::registry::RegistryError;
use crate::store::{ImageRecord, Store};

/// Where a result's missing layers come from.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    /// A digest-pinned reference.
    pub image: ImageRef,
    /// The name to show and record it under (the reference as written).
    pub name: String,
    /// A registry cache entry (its key then gets a local entry once pulled),
    /// rather than a base image.
    pub cache_key: Option<Key>,
}

/// The image `image` names when the store holds it whole, and `pull` is
/// off or the reference pins a digest.
pub(super) fn stored_image(
    store: &Store,
    image: &ImageRef,
    name: &str,
    pull: bool,
) -> Result<Option<(Digest, FsResult)>, ExecError> {
    let pinned = image.digest.is_some();
    if (pinned || !pull)
        && let Some(record) = store.image(name)?
        && image.digest.as_ref().is_none_or(|d| *d == record.manifest.to_string())
        && let Ok(result) = fs_result(store, &record.manifest)
        && result.layers.iter().all(|l| store.has_blob(&l.digest))
    {
        return Ok(Some((record.manifest, result)));
    }
    Ok(None)
}

/// Records a pulled image in the store under `name`.
pub(super) fn record_pulled(
    store: &Store,
    name: &str,
    pulled: &crate::registry::Pulled,
    result: &FsResult,
) -> Result<(), ExecError> {
    let size = store.blob_len(&pulled.manifest_digest).unwrap_or(0)
        + store.blob_len(&result.config).unwrap_or(0)
        + result.layers.iter().map(|l| l.size).sum::<u64>();
    let created = ImageConfig::from_json(&store.read_blob(&result.config)?)
        .ok()
        .and_then(|c| c.json().get("created").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let record = ImageRecord {
        manifest: pulled.manifest_digest.clone(),
        media_type: pulled.media_type.clone(),
        size,
        uncompressed_size: 0,
        created,
    };
    store.set_image(name, &record)?;
    Ok(())
}

/// Manifest digests of the base images the store already has, for keys
/// computed without building (`--dry-run`, `bake graph`).
pub fn local_base_digests(store: &Store, plan: &Plan) -> BTreeMap<String, String> {
    plan.graph
        .node_indices()
        .filter_map(|n| match &plan.graph[n].op {
            Op::Pull { image, platform } => {
                let name = base_name(image, platform);
                let digest = store.image(&name).ok().flatten()?.manifest;
                Some((name, digest.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// The filesystem an image manifest in the store describes.
pub fn fs_result(store: &Store, manifest: &Digest) -> Result<FsResult, ExecError> {
    let (config, layers) = crate::image::read_manifest(store, manifest)?;
    let doc = ImageConfig::from_json(&store.read_blob(&config)?)
        .map_err(|_| ImageError::BadManifest { digest: manifest.to_string() })?;
    let diff_ids = doc.diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(ImageError::BadManifest { digest: manifest.to_string() }.into());
    }
    let layers = layers
        .into_iter()
        .zip(diff_ids)
        .map(|((digest, size, media_type), diff_id)| {
            let diff_id = Digest::try_from(diff_id.as_str())
                .map_err(|_| ImageError::BadManifest { digest: manifest.to_string() })?;
            Ok(LayerInfo { digest, diff_id, size, uncompressed_size: 0, media_type })
        })
        .collect::<Result<Vec<_>, ExecError>>()?;
    Ok(FsResult { layers, config })
}

impl Build<'_> {
    /// Resolves every needed base image into `view`; returns their manifest
    /// digests by reference, for the keys. Layers are pulled later, and only
    /// if a step that runs needs them ([`Build::materialize`]).
    pub(super) async fn bases(&self, plan: &Plan, view: &mut View) -> Result<BTreeMap<String, String>, ExecError> {
        let mut digests = BTreeMap::new();
        for n in plan.needed() {
            let Op::Pull { image, platform } = &plan.graph[n].op else { continue };
            let (digest, result, origin) = self.base(image, platform).await?;
            digests.insert(base_name(image, platform), digest.to_string());
            if let Some(origin) = origin {
                view.origins.insert(n, origin);
            }
            view.results.insert(n, Arc::new(result));
        }
        Ok(digests)
    }

    /// A base image from the store, or resolved in its registry (then with
    /// the origin of its layers).
    async fn base(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<(Digest, FsResult, Option<Origin>), ExecError> {
        let store = &self.engine.store;
        let name = base_name(image, platform);
        if let Some((digest, result)) = stored_image(store, image, &name, self.options.pull)? {
            return Ok((digest, result, None));
        }
        let resolved = match self.engine.registry.resolve_for(image, platform).await {
            Ok(resolved) => resolved,
            Err(e @ (RegistryError::NoPlatform { .. } | RegistryError::WrongPlatform { .. })) => {
                return Err(self.base_platform_error(e, image, platform));
            }
            Err(e) => return Err(e.into()),
        };
        let result = fs_result(store, &resolved.manifest_digest)?;
        let at = ImageRef { tag: None, digest: Some(resolved.manifest_digest.to_string()), ..image.clone() };
        Ok((resolved.manifest_digest, result, Some(Origin { image: at, name, cache_key: None })))
    }

    /// A base image that lacks `platform`, pointed at the first `from=` (or
    /// `copy from=`) that asks for it.
    fn base_platform_error(&self, e: RegistryError, image: &ImageRef, platform: &Platform) -> ExecError {
        let ws = self.ws;
        let from = ws.stages.iter().find_map(|s| match &s.from {
            crate::lang::Base::Image(r) if r == image && s.platform == *platform => Some(s.from_span),
            _ => None,
        });
        let copy = || {
            ws.stages.iter().find_map(|s| {
                s.instructions.iter().find_map(|i| match &i.kind {
                    crate::lang::InstructionKind::Copy(c)
                        if c.from == crate::lang::CopySource::Image(image.clone()) =>
                    {
                        Some(i.span)
                    }
                    _ => None,
                })
            })
        };
        match from.or_else(copy) {
            Some(at) => ExecError::BasePlatform {
                message: e.to_string(),
                help: miette::Diagnostic::help(&e).map(|h| h.to_string()),
                src: ws.file(at.file).src(),
                at: at.span,
                platform: platform.to_string(),
            },
            None => e.into(),
        }
    }

    /// Makes every layer of node `n`'s result local, pulling what is missing
    /// from its origin, or from the origins of the nodes it is built on. A
    /// base image pulled here is recorded in the store under its name; a
    /// registry cache entry under its key. One fetch at a time per node:
    /// steps that need the same base image wait for the first one's pull.
    pub(super) fn materialize(&self, view: &View, plan: &Plan, n: NodeIndex) -> Result<(), ExecError> {
        // Demoted meanwhile by another step's failed fetch: the node is being
        // built again; the caller waits for it.
        let Some(result) = view.results.get(&n) else {
            return Err(ExecError::CacheFetch {
                node: plan.graph[n].id.clone(),
                index: n.index(),
                message: "it is being built here instead".to_owned(),
            });
        };
        let store = &self.engine.store;
        let missing = || result.layers.iter().find(|l| !store.has_blob(&l.digest)).map(|l| l.digest.to_string());
        if missing().is_none() {
            return Ok(());
        }
        let gate: Arc<Mutex<()>> = lock(&self.fetching).entry(n).or_default().clone();
        let _one_at_a_time = lock(&gate);
        if missing().is_none() {
            return Ok(());
        }
        let Some(origin) = view.origins.get(&n) else {
            // The layers come from below: the base image, an earlier cache hit.
            if let Some(below) = plan.graph[n].chain {
                self.materialize(view, plan, below)?;
            }
            return match missing() {
                None => Ok(()),
                Some(digest) => Err(ExecError::MissingBlob { what: "layer", digest }),
            };
        };
        let what = match origin.cache_key {
            Some(_) => format!("cache {}", origin.image),
            None => origin.name.clone(),
        };
        let progress = TransferEvents::new(self.events, what.clone());
        let handle = tokio::runtime::Handle::current();
        if origin.cache_key.is_none() {
            self.events.event(Event::Pulling { image: what.clone() });
        }
        let pulled = handle.block_on(async {
            tokio::select! {
                pulled = self.engine.registry.pull(&origin.image, &progress) => pulled.map_err(ExecError::from),
                () = self.cancel.cancelled() => Err(ExecError::Interrupted),
            }
        });
        let pulled = match pulled {
            Ok(p) => p,
            Err(e) if origin.cache_key.is_some() && !matches!(e, ExecError::Interrupted) => {
                return Err(ExecError::CacheFetch {
                    node: plan.graph[n].id.clone(),
                    index: n.index(),
                    message: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        match origin.cache_key {
            Some(key) => record(store, &key, result, None)?,
            None => {
                record_pulled(store, &origin.name, &pulled, result)?;
                self.events
                    .event(Event::Pulled { image: origin.name.clone(), digest: pulled.manifest_digest.to_string() });
            }
        }
        Ok(())
    }
}
