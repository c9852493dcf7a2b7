//! Export: what a build leaves behind once its nodes ran.
//!
//! In order: every requested image (and stage built on its own) gets a
//! manifest and is recorded in the store under its name and tags
//! ([`Build::export_image`]); artifacts are written to the host
//! ([`Build::export_artifact`]); then the `--output` destinations
//! ([`Build::write_output`]) and the `--push` tags ([`Build::push`]). The
//! registry cache export lives with the registry cache (`remote.rs`).
//!
//! Steps write their layers uncompressed; the layers of an exported stage
//! are compressed here, once ([`Build::compress_result`]). Registry transfer
//! progress becomes build events through [`TransferEvents`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use petgraph::graph::NodeIndex;

use super::execute::{Build, lock, record};
use super::schedule::{State, StepOutcome};
use super::{BuildReport, BuiltImage, Direction, Event, Events, ExecError, FsResult, Output, copy};
use crate::attest::sign::{self, SigningKey};
use crate::attest::{AttestError, Subject, attestations, provenance, referrers};
use crate::graph::{Key, Op, Plan};
use crate::image::{ImageConfig, export::ExportImage};
use crate::lang::{Artifact, StageId};
use crate::layer::LayerInfo;
use crate::oci::{Compression, Digest};
use crate::reference::ImageRef;
use crate::registry::{PushImage, RegistryError};
use crate::store::CacheEntry;

/// An image of this build, ready to be written out or pushed.
struct Exported {
    image: ExportImage,
    result: Arc<FsResult>,
    /// Its stage's node.
    node: NodeIndex,
    stage: StageId,
    manifest: crate::image::Manifest,
    /// Whether its layers are in the store.
    local: bool,
}

impl Build<'_> {
    /// Writes the build's images, artifacts and outputs, and pushes.
    pub(super) async fn exports(
        &self,
        plan: &Plan,
        state: &mut State,
        report: &mut BuildReport,
    ) -> Result<(), ExecError> {
        let mut images = Vec::new();
        let mut artifacts = Vec::new();
        for n in plan.needed() {
            match &plan.graph[n].op {
                Op::Image { stage } => images.extend(self.export_image(plan, state, *stage, report)?),
                // A stage built on its own is kept (and exported) as an image
                // named after it, with no tags.
                Op::Stage { stage, .. } if plan.roots.contains(&n) && self.ws.stages[*stage].image.is_none() => {
                    images.extend(self.export_image(plan, state, *stage, report)?);
                }
                Op::Artifact { artifact } => {
                    let a = &self.ws.artifacts[*artifact];
                    artifacts.extend(self.export_artifact(plan, state, a, report)?);
                }
                _ => {}
            }
        }
        tokio::task::block_in_place(|| self.export_indexes(&mut images, report))?;
        for output in &self.options.outputs {
            tokio::task::block_in_place(|| self.write_output(output, &images, &artifacts))?;
            let (what, dest) = match output {
                Output::Oci(d) => ("oci", d),
                Output::OciDir(d) => ("oci-dir", d),
                Output::Docker(d) => ("docker", d),
                Output::Local { dest: d, .. } => ("local", d),
            };
            self.events.event(Event::Exported { what: what.to_owned(), dest: dest.clone() });
        }
        if self.options.push {
            self.push(plan, state, &images, report).await?;
        }
        Ok(())
    }

    /// A stage's image: compressed, given a manifest, recorded in the store
    /// under its name and tags when its layers are local. `None` when the
    /// stage has no result (its steps failed under `--keep-going`).
    fn export_image(
        &self,
        plan: &Plan,
        state: &mut State,
        stage: StageId,
        report: &mut BuildReport,
    ) -> Result<Option<Exported>, ExecError> {
        let store = &self.engine.store;
        let node = plan.stage_node(stage);
        if !state.view.has_result(node) {
            return Ok(None);
        }
        // Its layers are local unless pushing alone (the executor's
        // `prefetch_exports`); compressed now if a step wrote them.
        tokio::task::block_in_place(|| self.compress_result(plan, state, node))?;
        let s = &self.ws.stages[stage];
        let result = state.view.result(plan, node)?;
        let local = result.layers.iter().all(|l| store.contains_blob(&l.digest));
        let mut config = ImageConfig::from_json(&store.read_blob(&result.config)?)
            .map_err(|e| ExecError::BadConfig { digest: result.config.to_string(), message: e.to_string() })?;
        config.set_created(&self.created);
        let out = s.image.clone().unwrap_or_default();
        let manifest = crate::image::write_manifest(store, &config, &result.layers, &out.annotations, &self.created)?;
        let tags: Vec<ImageRef> = out.tags.iter().map(|(t, _)| t.clone()).collect();
        // One platform of an image built for several: recorded under its
        // name and platform; the name and tags go to the index
        // (`export_indexes`).
        let several = s.target.is_some()
            && match &s.image {
                Some(image) => image.build_for.len() > 1,
                // A stage built on its own for every target platform.
                None => s.instance != s.name,
            };
        let name = match (&s.target, several) {
            (Some(target), true) => format!("{} [{target}]", s.name),
            _ => s.name.clone(),
        };
        // An image whose layers stay in the registry is not recorded
        // locally: the store only names complete images.
        if local {
            store.set_image(&name, &manifest.record)?;
            if !several {
                for t in &tags {
                    store.set_image(&t.to_string(), &manifest.record)?;
                }
            }
        }
        let (executed, cached) = step_counts(plan, state, node);
        let millis = self.millis_since_start();
        self.events.event(Event::Image {
            name: name.clone(),
            digest: manifest.digest.to_string(),
            size: manifest.record.size,
            layers: result.layers.len(),
            executed,
            cached,
            millis,
        });
        report.images.push(BuiltImage {
            name: name.clone(),
            digest: manifest.digest.clone(),
            tags: tags.clone(),
            record: manifest.record.clone(),
            layers: result.layers.len(),
            executed,
            cached,
            millis,
        });
        let image = ExportImage {
            manifest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            config: manifest.config.clone(),
            layers: result.layers.iter().map(|l| l.digest.clone()).collect(),
            tags,
            // Only an image's platforms make an index: a stage pinned to
            // the build platform is the same platform for every target.
            name: if s.image.is_some() { s.name.clone() } else { name.clone() },
            platform: (several && s.image.is_some()).then(|| s.platform.clone()),
            index: None,
        };
        Ok(Some(Exported { image, result, node, stage, manifest, local }))
    }

    /// The images built for several platforms, each as an OCI index of its
    /// platforms' manifests, recorded under the image's name and tags when
    /// every platform is local.
    fn export_indexes(&self, images: &mut [Exported], report: &mut BuildReport) -> Result<(), ExecError> {
        let store = &self.engine.store;
        let mut names: Vec<String> = Vec::new();
        for e in images.iter().filter(|e| e.image.platform.is_some()) {
            if !names.contains(&e.image.name) {
                names.push(e.image.name.clone());
            }
        }
        for name in names {
            let mut members: Vec<usize> = (0..images.len()).filter(|&i| images[i].image.name == name).collect();
            let Some(&first) = members.first() else { continue };
            // In the order the image names its platforms.
            let order = self.ws.stages[images[first].stage].image.clone().unwrap_or_default().build_for;
            members.sort_by_key(|&i| {
                images[i].image.platform.as_ref().and_then(|p| order.iter().position(|o| o == p)).unwrap_or(usize::MAX)
            });
            let platforms: Vec<(&crate::image::Manifest, &crate::platform::Platform)> = members
                .iter()
                .filter_map(|&i| Some((&images[i].manifest, images[i].image.platform.as_ref()?)))
                .collect();
            let annotations = self.ws.stages[images[first].stage].image.clone().unwrap_or_default().annotations;
            let (digest, record) = crate::image::write_index(store, &platforms, &annotations, &self.created)?;
            if members.iter().all(|&i| images[i].local) {
                store.set_image(&name, &record)?;
                for t in &images[first].image.tags {
                    store.set_image(&t.to_string(), &record)?;
                }
            }
            let listed: Vec<String> = platforms.iter().map(|(_, p)| p.to_string()).collect();
            self.events.event(Event::Index { name: name.clone(), digest: digest.to_string(), platforms: listed });
            report.images.push(BuiltImage {
                name: name.clone(),
                digest: digest.clone(),
                tags: images[first].image.tags.clone(),
                record,
                layers: 0,
                executed: 0,
                cached: 0,
                millis: self.millis_since_start(),
            });
            for &i in &members {
                images[i].image.index = Some(digest.clone());
            }
        }
        Ok(())
    }

    /// An artifact written to the host. `None` when its stage has no result.
    fn export_artifact<'w>(
        &self,
        plan: &Plan,
        state: &State,
        a: &'w Artifact,
        report: &mut BuildReport,
    ) -> Result<Option<(&'w Artifact, Arc<FsResult>)>, ExecError> {
        let stage_node = plan.stage_node(a.from);
        if !state.view.has_result(stage_node) {
            return Ok(None);
        }
        let result = state.view.result(plan, stage_node)?;
        let host = copy::HostOptions { keep_setuid: a.keep_setuid, what: format!("artifact `{}`", a.name) };
        tokio::task::block_in_place(|| copy::export_path(self, &result, &a.path, &a.dest, a.span, &host))?;
        self.events.event(Event::Artifact { name: a.name.clone(), dest: a.dest.clone() });
        report.artifacts.push((a.name.clone(), a.dest.clone()));
        Ok(Some((a, result)))
    }

    /// One `--output` destination.
    fn write_output(
        &self,
        output: &Output,
        images: &[Exported],
        artifacts: &[(&Artifact, Arc<FsResult>)],
    ) -> Result<(), ExecError> {
        let store = &self.engine.store;
        let manifests: Vec<ExportImage> = images.iter().map(|e| e.image.clone()).collect();
        match output {
            Output::Oci(dest) => crate::image::export::oci_tar(store, &manifests, dest)?,
            Output::OciDir(dest) => crate::image::export::oci_dir(store, &manifests, dest)?,
            Output::Docker(dest) => {
                if let Some((e, index)) = images.iter().find_map(|e| Some((e, e.image.index.as_ref()?))) {
                    let platforms: Vec<String> =
                        crate::image::index_platforms(store, index).iter().map(|(_, p)| p.to_string()).collect();
                    return Err(crate::image::ImageError::SeveralPlatforms {
                        name: e.image.name.clone(),
                        first: platforms.first().cloned().unwrap_or_default(),
                        platforms: platforms.join(", "),
                    }
                    .into());
                }
                crate::image::export::docker_tar(store, &manifests, dest)?;
            }
            Output::Local { dest, keep_setuid } => {
                let several = images.len() + artifacts.len() > 1;
                let host = |name: &str| copy::HostOptions {
                    keep_setuid: *keep_setuid,
                    what: format!("`type=local` output of `{name}`"),
                };
                for e in images {
                    let to = if several { dest.join(&e.image.name) } else { dest.clone() };
                    // An error points at the image's own stage.
                    let span = self.ws.stages[e.stage].span;
                    copy::export_path(self, &e.result, "/", &to, span, &host(&e.image.name))?;
                }
                for (a, result) in artifacts {
                    let to = if several { dest.join(&a.name) } else { dest.clone() };
                    copy::export_path(self, result, &a.path, &to, a.span, &host(&a.name))?;
                }
            }
        }
        Ok(())
    }

    /// Pushes every tag of the build's images.
    async fn push(
        &self,
        plan: &Plan,
        state: &State,
        images: &[Exported],
        report: &mut BuildReport,
    ) -> Result<(), ExecError> {
        // An image built for several platforms is pushed as its index (its
        // platforms' manifests go first, see `Registry::push`), once.
        let mut pushes: Vec<PushImage> = Vec::new();
        for e in images.iter().filter(|e| !e.image.tags.is_empty()) {
            let (manifest, media_type) = match &e.image.index {
                Some(index) => (index.clone(), crate::oci::media::OCI_INDEX.to_owned()),
                None => (e.image.manifest.clone(), e.image.media_type.clone()),
            };
            if !pushes.iter().any(|p| p.manifest == manifest) {
                pushes.push(PushImage { manifest, media_type, tags: e.image.tags.clone() });
            }
        }
        if !pushes.is_empty() {
            // A key that cannot sign fails the push before anything is published.
            let key = self.options.sign.as_deref().map(SigningKey::load).transpose()?;
            let progress = TransferEvents::new(self.events, "push".to_owned());
            let pushed = match self.engine.registry.push(&pushes, &progress).await {
                // A layer from a registry cache on another registry
                // cannot be mounted: fetch it, then push again.
                Err(RegistryError::MissingBlob { .. }) => {
                    for e in images {
                        tokio::task::block_in_place(|| self.materialize(&state.view, plan, e.node))?;
                    }
                    self.engine.registry.push(&pushes, &progress).await?
                }
                other => other?,
            };
            for p in &pushed {
                self.events.event(Event::Pushed { tag: p.tag.to_string(), digest: p.digest.to_string() });
            }
            report.pushed = pushed;
            self.attach(plan, state, images).await?;
            if let Some(key) = &key {
                self.sign(key, &pushes).await?;
            }
        }
        for e in images.iter().filter(|e| e.image.tags.is_empty() && e.image.platform.is_none()) {
            self.events.event(Event::Warning {
                message: format!("image `{}` has no `tag`, so --push has nothing to push it to", e.image.name),
            });
        }
        Ok(())
    }

    /// Attaches what `options.attest` asks for to every pushed image (each
    /// platform of an index): the artifact manifests are pushed by digest
    /// into each repository the image went to, then its referrers tag
    /// (`sha256-<hex>`) is updated with them, merged with what it held.
    async fn attach(&self, plan: &Plan, state: &State, images: &[Exported]) -> Result<(), ExecError> {
        let attest = self.options.attest;
        if !attest.any() {
            return Ok(());
        }
        let store = &self.engine.store;
        let registry = &self.engine.registry;
        let progress = TransferEvents::new(self.events, "attest".to_owned());
        let mut done: Vec<&Digest> = Vec::new();
        for e in images.iter().filter(|e| !e.image.tags.is_empty()) {
            if done.contains(&&e.image.manifest) {
                continue;
            }
            done.push(&e.image.manifest);
            // The SBOM reads the layers: those left in a registry cache come first.
            if attest.sbom && !e.local {
                tokio::task::block_in_place(|| self.materialize(&state.view, plan, e.node))?;
            }
            let inputs = self.provenance_inputs(plan, e.node);
            let subject = Subject {
                name: &e.image.name,
                platform: e.image.platform.as_ref().map(ToString::to_string),
                manifest: e.image.manifest.clone(),
                media_type: &e.image.media_type,
                layers: e.result.layers.iter().map(|l| (l.digest.clone(), l.media_type.clone())).collect(),
            };
            let attached =
                tokio::task::block_in_place(|| attestations(store, &subject, attest, &inputs, &self.created))?;
            let mut repositories: Vec<(&str, &str)> = Vec::new();
            for t in &e.image.tags {
                if !repositories.contains(&(&t.registry, &t.repository)) {
                    repositories.push((&t.registry, &t.repository));
                }
            }
            for (host, repository) in repositories {
                let at = |tag: Option<String>, digest: Option<String>| ImageRef {
                    registry: host.to_owned(),
                    repository: repository.to_owned(),
                    tag,
                    digest,
                };
                let pushes: Vec<PushImage> = attached
                    .iter()
                    .map(|a| PushImage {
                        manifest: a.manifest.clone(),
                        media_type: crate::oci::media::OCI_MANIFEST.to_owned(),
                        tags: vec![at(None, Some(a.manifest.to_string()))],
                    })
                    .collect();
                registry.push(&pushes, &progress).await?;
                let tag = at(Some(referrers::fallback_tag(&e.image.manifest)), None);
                let existing = registry.manifest_bytes(&tag).await?;
                let added: Vec<serde_json::Value> = attached.iter().map(|a| a.descriptor.clone()).collect();
                let index = referrers::merge_index(existing.as_deref(), &added)
                    .ok_or_else(|| AttestError::BadReferrers { reference: tag.to_string() })?;
                let bytes = crate::oci::canonical_json(&index)
                    .map_err(|source| AttestError::Json { what: "referrers index", source })?;
                let digest = registry.put_manifest(&tag, crate::oci::media::OCI_INDEX, bytes.into()).await?;
                self.events.event(Event::Pushed { tag: tag.to_string(), digest: digest.to_string() });
            }
        }
        Ok(())
    }

    /// Signs every pushed manifest (an index and each of its platforms'
    /// manifests) in each repository it was pushed to, as the reference of
    /// its first tag there: the signature goes under the `sha256-<hex>.sig`
    /// tag, after the signatures it already held.
    async fn sign(&self, key: &SigningKey, pushes: &[PushImage]) -> Result<(), ExecError> {
        let store = &self.engine.store;
        let registry = &self.engine.registry;
        let progress = TransferEvents::new(self.events, "sign".to_owned());
        for p in pushes {
            let mut manifests = vec![p.manifest.clone()];
            if p.media_type == crate::oci::media::OCI_INDEX {
                manifests.extend(crate::image::index_platforms(store, &p.manifest).into_iter().map(|(d, _)| d));
            }
            let mut firsts: Vec<&ImageRef> = Vec::new();
            for t in &p.tags {
                if !firsts.iter().any(|f| f.registry == t.registry && f.repository == t.repository) {
                    firsts.push(t);
                }
            }
            for tag in firsts {
                let reference = ImageRef { digest: None, ..tag.clone() }.to_string();
                for manifest in &manifests {
                    let payload = sign::payload(&reference, manifest);
                    let signature = key.sign(&payload)?;
                    let at = ImageRef { tag: Some(sign::signature_tag(manifest)), digest: None, ..tag.clone() };
                    let existing = registry.manifest_bytes(&at).await?;
                    let mut layers = sign::existing_layers(existing.as_deref());
                    layers.push(sign::signature_layer(&payload, &signature));
                    let (config, doc) = sign::signature_manifest(&layers);
                    let bytes = crate::oci::canonical_json(&doc)
                        .map_err(|source| AttestError::Json { what: "signature manifest", source })?;
                    store.put_blob(&payload)?;
                    store.put_blob(&config)?;
                    let digest = store.put_blob(&bytes)?;
                    let media_type = crate::oci::media::OCI_MANIFEST.to_owned();
                    registry
                        .push(&[PushImage { manifest: digest.clone(), media_type, tags: vec![at.clone()] }], &progress)
                        .await?;
                    self.events.event(Event::Pushed { tag: at.to_string(), digest: digest.to_string() });
                }
            }
        }
        Ok(())
    }

    /// What the provenance of the image at node `n` records: the build
    /// files, the args, the targets, and the base images and contexts among
    /// `n`'s ancestors.
    fn provenance_inputs(&self, plan: &Plan, n: NodeIndex) -> provenance::Inputs {
        let mut inputs = provenance::Inputs {
            build_files: self.ws.files.iter().map(|f| (f.name.clone(), f.text.to_string())).collect(),
            args: self.ws.args.iter().filter_map(|a| Some((a.name.clone(), a.value.clone()?))).collect(),
            targets: plan.requested.clone(),
            epoch: (self.options.epoch != 0).then(|| self.created.clone()),
            ..provenance::Inputs::default()
        };
        let home = self.ws.files.first().map(|f| f.dir.clone()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![n];
        while let Some(m) = stack.pop() {
            if !seen.insert(m) {
                continue;
            }
            let node = &plan.graph[m];
            if let Op::Pull { image, .. } = &node.op {
                let digest = node.inputs.iter().find(|(k, _)| k == "digest").map(|(_, v)| v.clone());
                if let Some(digest) = digest.filter(|d| d.starts_with("sha256:")) {
                    let reference = ImageRef { digest: None, ..image.clone() };
                    inputs.bases.insert(reference.to_string(), digest);
                }
            }
            if let Some(read) = plan.reads.get(&m) {
                let folder = read.root.strip_prefix(&home).unwrap_or(&read.root).display().to_string();
                let folder = if folder.is_empty() { ".".to_owned() } else { folder };
                inputs.contexts.insert(format!("{folder}#{}", node.id), crate::oci::hex(&read.selection.digest));
            }
            stack.extend(plan.graph.neighbors_directed(m, petgraph::Direction::Incoming));
        }
        inputs
    }

    /// Gives node `n`'s result compressed layers for export. Steps write
    /// their layers uncompressed (most never leave the store: a builder's
    /// layers are only read by the steps after them); the layers of an
    /// exported stage are compressed here once, with the build's
    /// compression, and the stage's result is recorded again with them, so
    /// the next export, the registry cache and other machines get them as
    /// they are. The same tar always compresses to the same bytes.
    fn compress_result(&self, plan: &Plan, state: &mut State, n: NodeIndex) -> Result<(), ExecError> {
        let result = state.view.result(plan, n)?;
        if !self.needs_compression(&result) {
            return Ok(());
        }
        let store = &self.engine.store;
        let layers = self.compress_layers(&result.layers)?;
        let compressed = FsResult { layers, config: result.config.clone() };
        let out = state.view.out_keys.get(&n).copied();
        if let Some(key) = plan.graph[n].key {
            record(store, &key, &compressed, out)?;
        }
        if let Some(key) = state.effective.get(&n).copied() {
            record(store, &key, &compressed, out)?;
        }
        state.view_mut().results.insert(n, Arc::new(compressed));
        Ok(())
    }

    /// Whether `result` has layers a step wrote uncompressed that an export
    /// must compress.
    pub(super) fn needs_compression(&self, result: &FsResult) -> bool {
        self.options.compression != Compression::None
            && result.layers.iter().any(|l| l.media_type == crate::oci::media::OCI_LAYER)
    }

    /// `layers` with every uncompressed one compressed with the build's
    /// compression (once per diffID: the result is a cache entry).
    pub(super) fn compress_layers(&self, layers: &[LayerInfo]) -> Result<Vec<LayerInfo>, ExecError> {
        let target = self.options.compression;
        let store = &self.engine.store;
        let mut out = Vec::with_capacity(layers.len());
        for l in layers {
            if target == Compression::None || l.media_type != crate::oci::media::OCI_LAYER {
                out.push(l.clone());
                continue;
            }
            let key = Key::compressed_layer(l.diff_id.as_ref(), &format!("{target:?}")).to_hex();
            if let Some(entry) = store.cache(&key)?
                && let Ok(info) = serde_json::from_value::<LayerInfo>(entry.value)
            {
                out.push(info);
                continue;
            }
            let tar = std::io::BufReader::new(store.open_blob(&l.digest)?);
            let options = crate::layer::LayerOptions { compression: target, level: None, epoch: self.options.epoch };
            let (writer, info) = crate::layer::compress_tar(tar, store.blob_writer()?, &options)?;
            writer.commit(Some(&info.digest))?;
            let value = serde_json::to_value(&info).unwrap_or_default();
            store.put_cache(&key, &CacheEntry { value, blobs: vec![info.digest.clone()] })?;
            out.push(info);
        }
        Ok(out)
    }
}

/// Steps among `n` and its ancestors that ran and that were reused.
fn step_counts(plan: &Plan, state: &State, n: NodeIndex) -> (usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![n];
    let (mut ran, mut cached) = (0, 0);
    while let Some(m) = stack.pop() {
        if !seen.insert(m) {
            continue;
        }
        if matches!(plan.graph[m].op, Op::Copy { .. } | Op::Run { .. }) {
            match state.steps.get(&m) {
                Some(StepOutcome::Ran) => ran += 1,
                Some(StepOutcome::Cached) => cached += 1,
                None => {}
            }
        }
        stack.extend(plan.graph.neighbors_directed(m, petgraph::Direction::Incoming));
    }
    (ran, cached)
}

/// Registry transfer progress, as build events: cumulative, throttled.
pub(super) struct TransferEvents<'a> {
    events: &'a dyn Events,
    what: String,
    /// Per blob: direction, size, bytes so far, bytes at the last event.
    blobs: Mutex<HashMap<Digest, (Direction, u64, u64, u64)>>,
}

impl<'a> TransferEvents<'a> {
    pub(super) fn new(events: &'a dyn Events, what: String) -> Self {
        Self { events, what, blobs: Mutex::new(HashMap::new()) }
    }
}

impl crate::registry::Progress for TransferEvents<'_> {
    fn event(&self, event: crate::registry::TransferEvent) {
        use crate::registry::TransferEvent as T;
        const STEP: u64 = 1 << 20;
        let mut blobs = lock(&self.blobs);
        let (digest, emit) = match event {
            T::Started { digest, size, direction } => {
                blobs.insert(digest.clone(), (direction, size, 0, 0));
                (digest, true)
            }
            T::Bytes { digest, bytes } => {
                let Some(entry) = blobs.get_mut(&digest) else { return };
                entry.2 += bytes;
                let emit = entry.2 - entry.3 >= STEP || entry.2 >= entry.1;
                (digest, emit)
            }
            T::Stalled { digest, silent } => {
                let Some(&(direction, total, done, _)) = blobs.get(&digest) else { return };
                drop(blobs);
                self.events.event(Event::Stalled {
                    what: self.what.clone(),
                    digest: digest.to_string(),
                    direction,
                    done,
                    total,
                    seconds: silent.as_secs(),
                });
                return;
            }
            T::Skipped { .. } | T::Done { .. } => return,
        };
        if !emit {
            return;
        }
        let Some(entry) = blobs.get_mut(&digest) else { return };
        entry.3 = entry.2;
        let (direction, total, done) = (entry.0, entry.1, entry.2);
        drop(blobs);
        self.events.event(Event::Transfer {
            what: self.what.clone(),
            digest: digest.to_string(),
            direction,
            done,
            total,
        });
    }
}
