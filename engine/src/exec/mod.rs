//! The executor: runs a [`Plan`] and produces images.
//!
//! # How a build runs
//!
//! 1. **Bases.** Every external image the needed nodes use is made local
//!    first: taken from the store when it is there, pulled otherwise. Its
//!    manifest digest then enters the keys, so a base image that moved under
//!    its tag rebuilds everything on top of it.
//! 2. **Keys.** [`Plan::compute_keys`] hashes the contexts (a no-op build
//!    only stats files) and keys every node.
//! 3. **Nodes**, in dependency order. A filesystem node (`copy`, `run`,
//!    `stage`) whose key has a result in the store is not executed: its
//!    result is the layers and config recorded under that key. Otherwise it
//!    runs and its result is recorded, last, under its key. Failures are
//!    never cached.
//! 4. **Exports**: images are written to the store under their tags and
//!    names, then to `--output` destinations, then pushed.
//!
//! A node's result ([`FsResult`]) is the full list of layers of the
//! filesystem it leaves behind, plus a config document in the store that
//! already holds those layers' diffIDs and history. An `image` node only
//! writes a manifest around its stage's result.
//!
//! # Copies
//!
//! A `copy` becomes exactly one layer. Its entries follow Docker's `COPY`
//! rules: a folder source copies its contents, a file source lands at the
//! destination or inside it when the destination is a folder (ends with `/`,
//! names several sources, or already is one); entries are owned by 0:0 unless
//! `chown=` says otherwise (names resolved in the stage's own `/etc/passwd`
//! and `/etc/group`); `chmod=` sets every copied entry's mode. Parent
//! folders that the stage already has keep their metadata; new ones are
//! 0755 root. Context files are hashed again while they are written and
//! compared with the digest their key was computed from, so a file edited in
//! the middle of a build fails the build instead of caching the wrong content.

mod base;
mod copy;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use miette::{Diagnostic, SourceSpan};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::graph::{KeyOptions, Op, Plan, PlanError};
use crate::home::Home;
use crate::image::{ImageConfig, ImageError, export::ExportImage};
use crate::lang::{InstructionKind, Span, StageId, Workspace};
use crate::layer::{LayerError, LayerInfo};
use crate::oci::{Compression, Digest};
use crate::reference::ImageRef;
use crate::registry::{PushImage, Pushed, Registry, RegistryError};
use crate::snapshot::{SnapshotError, Snapshots};
use crate::store::{CacheEntry, ImageRecord, Store, StoreError};

/// Errors while building.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ExecError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Registry(#[from] RegistryError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Snapshot(#[from] SnapshotError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Layer(#[from] LayerError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Image(#[from] ImageError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),

    /// Something the user wrote cannot be carried out.
    #[error("{message}")]
    #[diagnostic(code(bake::exec::step))]
    Step {
        message: String,
        #[source_code]
        src: crate::lang::Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{} changed while the build was copying it", path.display())]
    #[diagnostic(code(bake::exec::context_changed), help("something edited the file during the build; build again"))]
    ContextChanged { path: PathBuf },

    #[error("cannot access {}", path.display())]
    #[diagnostic(code(bake::exec::io))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the build was interrupted")]
    #[diagnostic(code(bake::exec::interrupted))]
    Interrupted,

    #[error("a build task failed: {0}")]
    #[diagnostic(code(bake::exec::task))]
    Task(String),
}

impl ExecError {
    /// An error about what the user wrote at `span`.
    pub(crate) fn step(ws: &Workspace, span: Span, message: String, label: &str, help: Option<String>) -> Self {
        Self::Step { message, src: ws.file(span.file).src(), at: span.span, label: label.to_owned(), help }
    }
}

/// Where to write images besides the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout as a tar file.
    Oci(PathBuf),
    /// An OCI image layout folder.
    OciDir(PathBuf),
    /// A `docker load` archive.
    Docker(PathBuf),
    /// Files: each image's filesystem and each artifact, in a folder.
    Local(PathBuf),
}

impl std::str::FromStr for Output {
    type Err = String;

    /// `type=oci,dest=FILE.tar`, `type=oci-dir,dest=DIR`,
    /// `type=docker,dest=FILE.tar`, `type=local,dest=DIR`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut kind = None;
        let mut dest = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v),
                Some(("dest", v)) if !v.is_empty() => dest = Some(PathBuf::from(v)),
                _ => return Err(format!("`{part}` is not `type=...` or `dest=...`")),
            }
        }
        let dest = dest.ok_or("missing `dest=`")?;
        match kind {
            Some("oci") => Ok(Self::Oci(dest)),
            Some("oci-dir") => Ok(Self::OciDir(dest)),
            Some("docker") => Ok(Self::Docker(dest)),
            Some("local") => Ok(Self::Local(dest)),
            Some(other) => Err(format!("unknown output type `{other}`: expected oci, oci-dir, docker or local")),
            None => Err("missing `type=`".to_owned()),
        }
    }
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Ignore recorded results: run every step.
    pub no_cache: bool,
    /// Push every tag of the requested images.
    pub push: bool,
    pub outputs: Vec<Output>,
    /// `SOURCE_DATE_EPOCH`: every timestamp in layers and configs.
    pub epoch: i64,
    pub compression: Compression,
    /// Ask the registry for every tagged base image, even one in the store.
    pub pull: bool,
    /// Secrets `run` steps may mount.
    pub secrets: Vec<Secret>,
    /// Steps that may run at once; 0 means one per core.
    pub jobs: usize,
    /// Fires on Ctrl-C: running steps are killed, their mounts undone, and
    /// the build returns [`ExecError::Interrupted`].
    pub cancel: tokio_util::sync::CancellationToken,
}

/// `--secret id=ID,src=PATH` or `--secret id=ID,env=VARIABLE`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub id: String,
    pub source: SecretSource,
}

/// Where a secret's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// Never shows a secret's value (there is none in it) nor more than needed.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.id)
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mut id, mut source) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("id", v)) if !v.is_empty() => id = Some(v.to_owned()),
                Some(("src" | "source", v)) if !v.is_empty() => source = Some(SecretSource::File(PathBuf::from(v))),
                Some(("env", v)) if !v.is_empty() => source = Some(SecretSource::Env(v.to_owned())),
                _ => return Err(format!("`{part}` is not `id=...`, `src=...` or `env=...`")),
            }
        }
        let id = id.ok_or("missing `id=`")?;
        // As BuildKit: without a source, the variable named like the id.
        let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
        Ok(Self { id, source })
    }
}

/// What the engine reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A base image is being pulled.
    Pulling {
        image: String,
    },
    Pulled {
        image: String,
        digest: String,
    },
    /// A step starts running.
    Started {
        node: String,
        description: String,
    },
    /// A step's result came from the cache.
    Cached {
        node: String,
        description: String,
    },
    /// A line a `run` step printed (stdout or stderr).
    Output {
        node: String,
        line: String,
    },
    /// A step finished.
    Finished {
        node: String,
        millis: u64,
    },
    /// An image was written to the store.
    Image {
        name: String,
        digest: String,
        size: u64,
    },
    /// A tag was pushed.
    Pushed {
        tag: String,
        digest: String,
    },
    /// An output was written.
    Exported {
        what: String,
        dest: PathBuf,
    },
    /// An artifact was written to the host.
    Artifact {
        name: String,
        dest: PathBuf,
    },
    /// Something worth knowing that does not fail the build.
    Warning {
        message: String,
    },
}

/// Receives events; must be cheap.
pub trait Events: Send + Sync {
    fn event(&self, event: Event);
}

/// Ignores every event.
pub struct Quiet;

impl Events for Quiet {
    fn event(&self, _: Event) {}
}

impl<F: Fn(Event) + Send + Sync> Events for F {
    fn event(&self, event: Event) {
        self(event);
    }
}

/// A filesystem node's result: its layers (bottom first) and the config
/// document that records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsResult {
    pub layers: Vec<LayerInfo>,
    pub config: Digest,
}

/// An image the build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub name: String,
    pub digest: Digest,
    pub tags: Vec<ImageRef>,
    pub record: ImageRecord,
    pub layers: usize,
}

/// What a build did.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    pub images: Vec<BuiltImage>,
    /// `copy` and `run` steps that ran.
    pub executed: usize,
    /// `copy` and `run` steps whose result came from the cache.
    pub cached: usize,
    pub pushed: Vec<Pushed>,
    /// Artifacts written: name and destination.
    pub artifacts: Vec<(String, PathBuf)>,
}

/// Everything a build needs besides the workspace.
#[derive(Clone)]
pub struct Engine {
    pub home: Home,
    pub store: Store,
    pub snapshots: Snapshots,
    pub registry: Registry,
    /// The store's size cap from the config: enforced after each build.
    pub max_size: Option<u64>,
}

impl Engine {
    /// Opens the store under `home` and a registry client for `config`.
    pub fn open(home: Home, config: &Config) -> Result<Self, ExecError> {
        let store = Store::open(&home.store_dir())?;
        let snapshots = Snapshots::new(home.snapshots_dir(), store.clone());
        let registry = Registry::new(config, store.clone())?;
        Ok(Self { home, store, snapshots, registry, max_size: config.store_max_size })
    }

    /// Builds `targets` of `ws` (empty: the default target).
    pub async fn build(
        &self,
        ws: &Workspace,
        targets: &[String],
        options: &BuildOptions,
        events: &dyn Events,
    ) -> Result<BuildReport, ExecError> {
        let mut plan = Plan::build(ws, targets)?;
        let mut build = Build {
            engine: self,
            ws,
            options,
            events,
            created: crate::image::timestamp(options.epoch),
            results: HashMap::new(),
            report: BuildReport::default(),
            cancel: options.cancel.child_token(),
        };
        let base_digests = build.bases(&plan).await?;
        let key_options = KeyOptions {
            index_dir: Some(self.home.index_dir()),
            base_digests,
            include_pruned: false,
            compression: options.compression,
            epoch: options.epoch,
        };
        tokio::task::block_in_place(|| plan.compute_keys(ws, &key_options))?;
        tokio::task::block_in_place(|| build.nodes(&plan))?;
        build.exports(&plan).await?;
        if let Some(max_size) = self.max_size {
            let options = crate::store::PruneOptions { max_size: Some(max_size), ..Default::default() };
            let pruned = tokio::task::block_in_place(|| -> Result<(), ExecError> {
                self.store.prune(&options)?;
                self.snapshots.prune()?;
                Ok(())
            });
            // The build succeeded; a store that stays too big is worth a word, not a failure.
            if let Err(e) = pruned {
                events.event(Event::Warning { message: format!("could not trim the store to its size cap: {e}") });
            }
        }
        Ok(build.report)
    }
}

struct Build<'a> {
    engine: &'a Engine,
    ws: &'a Workspace,
    options: &'a BuildOptions,
    events: &'a dyn Events,
    /// RFC 3339 of the epoch.
    created: String,
    results: HashMap<NodeIndex, Arc<FsResult>>,
    report: BuildReport,
    /// The build's own cancellation: fired by the caller's token (Ctrl-C) or
    /// by a failing step, to stop the steps running beside it.
    cancel: tokio_util::sync::CancellationToken,
}

impl Build<'_> {
    /// Makes every needed base image local; returns their manifest digests
    /// by reference, for the keys.
    async fn bases(&mut self, plan: &Plan) -> Result<BTreeMap<String, String>, ExecError> {
        let mut digests = BTreeMap::new();
        for n in plan.needed() {
            let Op::Pull { image } = &plan.graph[n].op else { continue };
            let (digest, result) = self.base(image).await?;
            digests.insert(image.to_string(), digest.to_string());
            self.results.insert(n, Arc::new(result));
        }
        Ok(digests)
    }

    /// A base image from the store, or pulled.
    async fn base(&self, image: &ImageRef) -> Result<(Digest, FsResult), ExecError> {
        self.engine.local_image(image, self.options.pull, self.events).await
    }

    fn nodes(&mut self, plan: &Plan) -> Result<(), ExecError> {
        // Say once, up front, when `run` steps will use the copy fallback.
        if plan.needed().any(|n| matches!(plan.graph[n].op, Op::Run { .. })) {
            let tmp = self.engine.home.root().join("tmp");
            let _ = std::fs::create_dir_all(&tmp);
            if let crate::sandbox::Backend::Copy { reason } = crate::sandbox::probe_in(&tmp) {
                self.events.event(Event::Warning {
                    message: format!(
                        "overlayfs cannot be used here ({reason}): `run` steps use the slower copy fallback"
                    ),
                });
            }
        }
        let mut pending: Vec<NodeIndex> = plan
            .needed()
            .filter(|n| matches!(plan.graph[*n].op, Op::Copy { .. } | Op::Run { .. } | Op::Stage { .. }))
            .collect();
        let jobs = if self.options.jobs == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        } else {
            self.options.jobs
        };
        let handle = tokio::runtime::Handle::current();
        // In waves: every node whose inputs are all done is ready; cached ones
        // are taken at once, the others run in parallel, `jobs` at a time.
        while !pending.is_empty() {
            let (ready, rest): (Vec<NodeIndex>, Vec<NodeIndex>) = pending.into_iter().partition(|&n| {
                plan.graph.neighbors_directed(n, petgraph::Direction::Incoming).all(|p| self.results.contains_key(&p))
            });
            pending = rest;
            if ready.is_empty() {
                return Err(ExecError::Task("no step is ready to run: the graph has an unresolved input".to_owned()));
            }
            let mut to_run = Vec::new();
            for n in ready {
                let node = &plan.graph[n];
                let key = node.key.map(|k| k.to_hex()).unwrap_or_default();
                if !self.options.no_cache
                    && let Some(entry) = self.engine.store.cache(&key)?
                    && let Ok(result) = serde_json::from_value::<FsResult>(entry.value)
                {
                    if !matches!(node.op, Op::Stage { .. }) {
                        self.report.cached += 1;
                        let description = crate::graph::describe(node, self.ws);
                        self.events.event(Event::Cached { node: node.id.clone(), description });
                    }
                    self.results.insert(n, Arc::new(result));
                } else {
                    to_run.push(n);
                }
            }
            for chunk in to_run.chunks(jobs) {
                let outcomes = {
                    let this: &Self = self;
                    std::thread::scope(|scope| {
                        let running: Vec<_> = chunk
                            .iter()
                            .map(|&n| {
                                let node = &plan.graph[n];
                                if !matches!(node.op, Op::Stage { .. }) {
                                    let description = crate::graph::describe(node, this.ws);
                                    this.events.event(Event::Started { node: node.id.clone(), description });
                                }
                                let handle = handle.clone();
                                scope.spawn(move || {
                                    let _runtime = handle.enter();
                                    let started = Instant::now();
                                    let result = this.execute(plan, n);
                                    if result.is_err() {
                                        // Stop the steps running beside it.
                                        this.cancel.cancel();
                                    }
                                    (n, result, started.elapsed())
                                })
                            })
                            .collect();
                        running
                            .into_iter()
                            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                            .collect::<Vec<_>>()
                    })
                };
                let mut failure: Option<ExecError> = None;
                for (n, result, elapsed) in outcomes {
                    let node = &plan.graph[n];
                    match result {
                        Ok(result) => {
                            let key = node.key.map(|k| k.to_hex()).unwrap_or_default();
                            let mut blobs: Vec<Digest> = result.layers.iter().map(|l| l.digest.clone()).collect();
                            blobs.push(result.config.clone());
                            let value = serde_json::to_value(&result).unwrap_or_default();
                            self.engine.store.put_cache(&key, &CacheEntry { value, blobs })?;
                            if !matches!(node.op, Op::Stage { .. }) {
                                self.report.executed += 1;
                                let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                                self.events.event(Event::Finished { node: node.id.clone(), millis });
                            }
                            self.results.insert(n, Arc::new(result));
                        }
                        // The step that failed is the news, not the ones it stopped.
                        Err(e) if failure.as_ref().is_none_or(|f| matches!(f, ExecError::Interrupted)) => {
                            failure = Some(e);
                        }
                        Err(_) => {}
                    }
                }
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn execute(&self, plan: &Plan, n: NodeIndex) -> Result<FsResult, ExecError> {
        let node = &plan.graph[n];
        let parent = node.chain.and_then(|p| self.results.get(&p)).cloned();
        match &node.op {
            Op::Copy { stage, index, copy, .. } => {
                let mut config = self.state_before(plan, n, *stage, *index, parent.as_deref())?;
                let span = node.span.unwrap_or(self.ws.stages[*stage].span);
                let source = match &copy.from {
                    crate::lang::CopySource::Context => copy::Source::Context(plan.reads.get(&n)),
                    crate::lang::CopySource::Stage(s) => copy::Source::Fs(
                        self.result(plan.stage_node(*s))?,
                        format!("stage `{}`", self.ws.stages[*s].name),
                    ),
                    crate::lang::CopySource::Image(r) => {
                        let pull = plan
                            .graph
                            .neighbors_directed(n, petgraph::Direction::Incoming)
                            .find(|p| matches!(&plan.graph[*p].op, Op::Pull { image } if image == r));
                        let pull = pull.ok_or_else(|| ExecError::Task(format!("no pull of {r} before its copy")))?;
                        copy::Source::Fs(self.result(pull)?, format!("image `{r}`"))
                    }
                };
                let layers = parent.as_ref().map(|p| p.layers.clone()).unwrap_or_default();
                let layer =
                    copy::Copier { build: self, span, config: &config, parent_layers: &layers }.run(copy, &source)?;
                let by = format!("copy {} -> {}", copy.sources.join(" "), copy.dest);
                config.add_layer(layer.diff_id.as_ref(), &self.created, &by);
                let mut layers = layers;
                layers.push(layer);
                let config = self.engine.store.put_blob(&config.to_bytes())?;
                Ok(FsResult { layers, config })
            }
            Op::Run { stage, index, run, .. } => {
                let mut config = self.state_before(plan, n, *stage, *index, parent.as_deref())?;
                let span = node.span.unwrap_or(self.ws.stages[*stage].span);
                let layers = parent.as_ref().map(|p| p.layers.clone()).unwrap_or_default();
                let layer = run::Step { build: self, node: &node.id, span, config: &config, parent_layers: &layers }
                    .run(run)?;
                config.add_layer(layer.diff_id.as_ref(), &self.created, &format!("run {}", run.script));
                let mut layers = layers;
                layers.push(layer);
                let config = self.engine.store.put_blob(&config.to_bytes())?;
                Ok(FsResult { layers, config })
            }
            Op::Stage { stage, .. } => {
                let index = self.ws.stages[*stage].instructions.len();
                let config = self.state_before(plan, n, *stage, index, parent.as_deref())?;
                let layers = parent.map(|p| p.layers.clone()).unwrap_or_default();
                let config = self.engine.store.put_blob(&config.to_bytes())?;
                Ok(FsResult { layers, config })
            }
            Op::Pull { .. } | Op::Image { .. } | Op::Artifact { .. } => {
                unreachable!("only filesystem nodes are executed")
            }
        }
    }

    /// A finished node's result.
    fn result(&self, n: NodeIndex) -> Result<Arc<FsResult>, ExecError> {
        self.results.get(&n).cloned().ok_or_else(|| ExecError::Task(format!("node {} has no result", n.index())))
    }

    /// The config in force just before instruction `index` of `stage`: the
    /// parent's, with the metadata instructions since the parent applied.
    fn state_before(
        &self,
        plan: &Plan,
        n: NodeIndex,
        stage: StageId,
        index: usize,
        parent: Option<&FsResult>,
    ) -> Result<ImageConfig, ExecError> {
        let mut config = match parent {
            Some(p) => ImageConfig::from_json(&self.engine.store.read_blob(&p.config)?)
                .map_err(|e| ExecError::Task(format!("config {} in the store is not JSON: {e}", p.config)))?,
            None => ImageConfig::scratch(),
        };
        let start = plan.graph[n]
            .chain
            .and_then(|p| match &plan.graph[p].op {
                Op::Copy { stage: s, index: i, .. } | Op::Run { stage: s, index: i, .. } if *s == stage => Some(i + 1),
                _ => None,
            })
            .unwrap_or(0);
        for ins in &self.ws.stages[stage].instructions[start..index] {
            if !matches!(ins.kind, InstructionKind::Copy(_) | InstructionKind::Run(_)) {
                config.apply(&ins.kind);
                config.history(&self.created, &describe_instruction(&ins.kind), true);
            }
        }
        Ok(config)
    }

    async fn exports(&mut self, plan: &Plan) -> Result<(), ExecError> {
        let store = &self.engine.store;
        let mut exports = Vec::new();
        let mut artifacts = Vec::new();
        for n in plan.needed() {
            let requested_stage = matches!(&plan.graph[n].op, Op::Stage { stage, .. } if plan.roots.contains(&n) && self.ws.stages[*stage].image.is_none());
            match &plan.graph[n].op {
                Op::Image { stage } | Op::Stage { stage, .. }
                    if requested_stage || matches!(plan.graph[n].op, Op::Image { .. }) =>
                {
                    // A stage built on its own is kept (and exported) as an
                    // image named after it, with no tags.
                    let s = &self.ws.stages[*stage];
                    let result = self.result(plan.stage_node(*stage))?;
                    let mut config = ImageConfig::from_json(&store.read_blob(&result.config)?)
                        .map_err(|e| ExecError::Task(format!("stage config is not JSON: {e}")))?;
                    config.set_created(&self.created);
                    let out = s.image.clone().unwrap_or_default();
                    let manifest =
                        crate::image::write_manifest(store, &config, &result.layers, &out.annotations, &self.created)?;
                    let tags: Vec<ImageRef> = out.tags.iter().map(|(t, _)| t.clone()).collect();
                    store.set_image(&s.name, &manifest.record)?;
                    for t in &tags {
                        store.set_image(&t.to_string(), &manifest.record)?;
                    }
                    self.events.event(Event::Image {
                        name: s.name.clone(),
                        digest: manifest.digest.to_string(),
                        size: manifest.record.size,
                    });
                    self.report.images.push(BuiltImage {
                        name: s.name.clone(),
                        digest: manifest.digest.clone(),
                        tags: tags.clone(),
                        record: manifest.record.clone(),
                        layers: result.layers.len(),
                    });
                    exports.push((
                        ExportImage {
                            manifest: manifest.digest,
                            media_type: manifest.media_type,
                            config: manifest.config,
                            layers: result.layers.iter().map(|l| l.digest.clone()).collect(),
                            tags,
                            name: s.name.clone(),
                        },
                        result,
                    ));
                }
                Op::Artifact { artifact } => {
                    let a = &self.ws.artifacts[*artifact];
                    let result = self.result(plan.stage_node(a.from))?;
                    tokio::task::block_in_place(|| copy::export_path(self, &result, &a.path, &a.dest, a.span))?;
                    self.events.event(Event::Artifact { name: a.name.clone(), dest: a.dest.clone() });
                    self.report.artifacts.push((a.name.clone(), a.dest.clone()));
                    artifacts.push((a, result));
                }
                _ => {}
            }
        }
        let images: Vec<ExportImage> = exports.iter().map(|(e, _)| e.clone()).collect();
        for output in &self.options.outputs {
            tokio::task::block_in_place(|| -> Result<(), ExecError> {
                match output {
                    Output::Oci(dest) => crate::image::export::oci_tar(store, &images, dest)?,
                    Output::OciDir(dest) => crate::image::export::oci_dir(store, &images, dest)?,
                    Output::Docker(dest) => crate::image::export::docker_tar(store, &images, dest)?,
                    Output::Local(dest) => {
                        let several = exports.len() + artifacts.len() > 1;
                        for (image, result) in &exports {
                            let to = if several { dest.join(&image.name) } else { dest.clone() };
                            copy::export_path(self, result, "/", &to, self.ws.stages[0].span)?;
                        }
                        for (a, result) in &artifacts {
                            let to = if several { dest.join(&a.name) } else { dest.clone() };
                            copy::export_path(self, result, &a.path, &to, a.span)?;
                        }
                    }
                }
                Ok(())
            })?;
            let (what, dest) = match output {
                Output::Oci(d) => ("oci", d),
                Output::OciDir(d) => ("oci-dir", d),
                Output::Docker(d) => ("docker", d),
                Output::Local(d) => ("local", d),
            };
            self.events.event(Event::Exported { what: what.to_owned(), dest: dest.clone() });
        }
        if self.options.push {
            let pushes: Vec<PushImage> = exports
                .iter()
                .filter(|(e, _)| !e.tags.is_empty())
                .map(|(e, _)| PushImage {
                    manifest: e.manifest.clone(),
                    media_type: e.media_type.clone(),
                    tags: e.tags.clone(),
                })
                .collect();
            if !pushes.is_empty() {
                let pushed = self.engine.registry.push(&pushes, &crate::registry::NoProgress).await?;
                for p in &pushed {
                    self.events.event(Event::Pushed { tag: p.tag.to_string(), digest: p.digest.to_string() });
                }
                self.report.pushed = pushed;
            }
            for (e, _) in exports.iter().filter(|(e, _)| e.tags.is_empty()) {
                self.events.event(Event::Warning {
                    message: format!("image `{}` has no `tag`, so --push has nothing to push it to", e.name),
                });
            }
        }
        Ok(())
    }
}

/// Manifest digests of the base images the store already has, for keys
/// computed without building (`--dry-run`, `bake graph`).
pub fn local_base_digests(store: &Store, plan: &Plan) -> BTreeMap<String, String> {
    plan.graph
        .node_indices()
        .filter_map(|n| match &plan.graph[n].op {
            Op::Pull { image } => {
                let digest = store.image(&image.to_string()).ok().flatten()?.manifest;
                Some((image.to_string(), digest.to_string()))
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

/// A history line for a metadata instruction.
fn describe_instruction(kind: &InstructionKind) -> String {
    match kind {
        InstructionKind::Workdir(w) => format!("workdir {w}"),
        InstructionKind::Env(k, v) => format!("env {k}={v}"),
        InstructionKind::User(u) => format!("user {u}"),
        InstructionKind::Expose(p) => {
            format!("expose {}", p.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
        }
        InstructionKind::Entrypoint(a) => format!("entrypoint {a:?}"),
        InstructionKind::Cmd(a) => format!("cmd {a:?}"),
        InstructionKind::Label(k, v) => format!("label {k}={v}"),
        InstructionKind::Volume(v) => format!("volume {v:?}"),
        InstructionKind::StopSignal(s) => format!("stopsignal {s}"),
        InstructionKind::Healthcheck(_) => "healthcheck".to_owned(),
        InstructionKind::Shell(s) => format!("shell {s:?}"),
        InstructionKind::Copy(_) => "copy".to_owned(),
        InstructionKind::Run(r) => format!("run {}", r.script),
    }
}
