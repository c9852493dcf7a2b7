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
mod explain;
mod remote;
mod run;
mod schedule;
mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use miette::{Diagnostic, SourceSpan};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::graph::{Key, KeyOptions, Op, Plan, PlanError};
use crate::home::Home;
use crate::image::{ImageConfig, ImageError, export::ExportImage};
use crate::lang::{InstructionKind, Span, StageId, Workspace};
use crate::layer::{LayerError, LayerInfo};
use crate::oci::{Compression, Digest};
use crate::reference::ImageRef;
use crate::registry::{PushImage, Pushed, Registry, RegistryError};
use crate::snapshot::{SnapshotError, Snapshots};
use crate::store::{CacheEntry, ImageRecord, Store, StoreError};

pub use crate::reference::CacheRef;
pub use explain::{Explanation, Reason};
pub(crate) use run::{MAX_RUN_LAYERS, RUN_SCRATCH};
pub use secrets::{MASK, MAX_SECRET_SIZE, MIN_MASKED_LEN};

/// Errors while building.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ExecError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Home(#[from] crate::home::HomeError),

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

    /// A `security "insecure"` step in a build that did not allow it.
    #[error("this step asks for `security \"insecure\"`, which the build does not allow")]
    #[diagnostic(
        code(bake::exec::insecure_not_allowed),
        help(
            "an insecure step runs with every capability, no seccomp filter and /proc/sys writable: it can take over the machine. Allow it for this build with `bake build --allow security.insecure`, only for a build file you trust"
        )
    )]
    InsecureNotAllowed {
        #[source_code]
        src: crate::lang::Src,
        #[label("needs --allow security.insecure")]
        at: SourceSpan,
        /// The build's other insecure steps, reported at once.
        #[related]
        others: Vec<ExecError>,
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

    #[error("secret `{id}` is {kind}: {}", path.display())]
    #[diagnostic(
        code(bake::exec::secret_not_file),
        help("a file secret must be a regular file (a symlink to one is fine); pass the file itself, not its folder")
    )]
    SecretNotFile { id: String, path: PathBuf, kind: &'static str },

    #[error("secret `{id}` is {size} bytes, more than bake accepts ({max} bytes): {}", path.display(), max = secrets::MAX_SECRET_SIZE)]
    #[diagnostic(
        code(bake::exec::secret_too_large),
        help("secrets are keys and tokens; pass a large file with `copy` or a `cache` folder instead")
    )]
    SecretTooLarge { id: String, path: PathBuf, size: u64 },

    #[error("cannot read secret `{id}` from {}", path.display())]
    #[diagnostic(code(bake::exec::secret_unreadable), help("check that the file exists and is readable"))]
    SecretUnreadable {
        id: String,
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

    /// A registry cache entry's layers could not be fetched: the scheduler
    /// builds the node here instead (never reported when it can).
    #[error("the registry cache entry for {node} could not be fetched: {message}")]
    #[diagnostic(code(bake::exec::cache_fetch))]
    CacheFetch {
        node: String,
        #[doc(hidden)]
        index: usize,
        message: String,
    },

    /// Several steps failed (`--keep-going`).
    #[error("{} failed", crate::lang::plural(errors.len(), "step"))]
    #[diagnostic(code(bake::exec::failed))]
    Failed {
        #[related]
        errors: Vec<ExecError>,
    },
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
    Local {
        dest: PathBuf,
        /// `keep-setuid=true`: keep setuid and setgid bits (see
        /// `copy::HostOptions`).
        keep_setuid: bool,
    },
}

impl std::str::FromStr for Output {
    type Err = String;

    /// `type=oci,dest=FILE.tar`, `type=oci-dir,dest=DIR`,
    /// `type=docker,dest=FILE.tar`, `type=local,dest=DIR[,keep-setuid=true]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut kind = None;
        let mut dest = None;
        let mut keep_setuid = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v),
                Some(("dest", v)) if !v.is_empty() => dest = Some(PathBuf::from(v)),
                Some(("keep-setuid", "true")) => keep_setuid = Some(true),
                Some(("keep-setuid", "false")) => keep_setuid = Some(false),
                Some(("keep-setuid", v)) => return Err(format!("`keep-setuid={v}`: expected true or false")),
                _ => return Err(format!("`{part}` is not `type=...`, `dest=...` or `keep-setuid=...`")),
            }
        }
        let dest = dest.ok_or("missing `dest=`")?;
        if keep_setuid.is_some() && kind != Some("local") {
            return Err("`keep-setuid=` applies to `type=local` only".to_owned());
        }
        match kind {
            Some("oci") => Ok(Self::Oci(dest)),
            Some("oci-dir") => Ok(Self::OciDir(dest)),
            Some("docker") => Ok(Self::Docker(dest)),
            Some("local") => Ok(Self::Local { dest, keep_setuid: keep_setuid.unwrap_or(false) }),
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
    /// After a failure, finish the steps that do not depend on it (and export
    /// what they complete) instead of stopping the others.
    pub keep_going: bool,
    /// Registry caches to look results up in, in order.
    pub cache_from: Vec<CacheRef>,
    /// Registry caches to push every result of the build to.
    pub cache_to: Vec<CacheRef>,
    /// `--allow security.insecure`: `run` steps may ask for
    /// `security "insecure"`.
    pub allow_insecure: bool,
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
///
/// Events arrive in order on the thread that caused them, at the moment they
/// happen (renderers may timestamp them on receipt). They serialize as one
/// JSON object with an `event` field naming the variant (`--progress json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// What will happen: `run` counts the steps that will run (or may, when
    /// an early cutoff spares them), `cached` those whose result is reused.
    Planned {
        steps: usize,
        run: usize,
        cached: usize,
    },
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
    /// A step's result came from the cache: `remote` names the registry
    /// cache it came from; `cutoff` says a parent rebuilt to an identical
    /// result, so this step was spared.
    Cached {
        node: String,
        description: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        cutoff: bool,
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
    /// A step failed (or was stopped because another one failed).
    Failed {
        node: String,
        millis: u64,
        message: String,
    },
    /// Bytes moved for a blob so far, of `total`; sent at most once per MiB
    /// and when the blob is complete (`done == total`).
    Transfer {
        what: String,
        digest: String,
        direction: Direction,
        done: u64,
        total: u64,
    },
    /// A blob transfer has moved no byte for `seconds` (repeated every few
    /// seconds while it stalls): the registry or the network is slow or
    /// stuck. It ends when bytes move again (a `transfer` event) or when the
    /// idle timeout fails the transfer (which may then be retried).
    Stalled {
        what: String,
        digest: String,
        direction: Direction,
        done: u64,
        total: u64,
        seconds: u64,
    },
    /// An image was written to the store.
    Image {
        name: String,
        digest: String,
        size: u64,
        layers: usize,
        executed: usize,
        cached: usize,
        /// Since the build started.
        millis: u64,
    },
    /// A tag was pushed.
    Pushed {
        tag: String,
        digest: String,
    },
    /// Build results were pushed to a registry cache.
    CacheExported {
        reference: String,
        entries: usize,
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

/// Which way a blob moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Pull,
    Push,
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
    /// Steps of this image (its stage and the stages it reads) that ran.
    pub executed: usize,
    /// Its steps whose result was reused.
    pub cached: usize,
    /// When it was ready, since the build started.
    pub millis: u64,
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
        home.prepare()?;
        let store = Store::open(&home.store_dir())?;
        let snapshots = Snapshots::new(home.snapshots_dir(), store.clone())
            .with_limits(crate::snapshot::UnpackLimits::from_config(config));
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
        if !options.allow_insecure {
            refuse_insecure(ws, &plan)?;
        }
        let secrets = secrets::load(&options.secrets)?;
        let masked = secrets::MaskedEvents {
            inner: events,
            masker: secrets::Masker::new(secrets.iter().map(|s| s.value.as_slice()))?,
        };
        let events: &dyn Events = &masked;
        for secret in secrets.iter().filter(|s| !s.value.is_empty() && s.value.len() < MIN_MASKED_LEN) {
            events.event(Event::Warning {
                message: format!(
                    "secret `{}` is shorter than {MIN_MASKED_LEN} bytes: bake does not mask it in the output",
                    secret.id
                ),
            });
        }
        let mut build = Build::new(self, ws, options, events);
        build.secrets = &secrets;
        build.masker = &masked.masker;
        let base_digests = build.cancellable(build.bases(&plan)).await?;
        let key_options = KeyOptions {
            index_dir: Some(self.home.index_dir()),
            base_digests,
            include_pruned: false,
            compression: options.compression,
            epoch: options.epoch,
        };
        tokio::task::block_in_place(|| plan.compute_keys(ws, &key_options))?;
        let cache = remote::RemoteCache::new(&build, ws);
        let hits = build.cancellable(build.lookups(&plan, &cache)).await?;
        let failures = tokio::task::block_in_place(|| build.nodes(&plan, hits, &cache))?;
        let mut report = BuildReport::default();
        build.cancellable(build.exports(&plan, &mut report)).await?;
        build
            .cancellable(async {
                cache.export(&build, &plan).await;
                Ok(())
            })
            .await?;
        report.executed = build.count(|s| s == StepOutcome::Ran);
        report.cached = build.count(|s| s != StepOutcome::Ran);
        if failures.is_empty() {
            tokio::task::block_in_place(|| explain::remember(&build, &plan));
        } else {
            let mut failures = failures;
            return Err(if failures.len() == 1 { failures.remove(0) } else { ExecError::Failed { errors: failures } });
        }
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
        Ok(report)
    }
}

/// Fails when a step the build needs asks for `security "insecure"`: every
/// such step is named, before anything runs.
fn refuse_insecure(ws: &Workspace, plan: &Plan) -> Result<(), ExecError> {
    let mut refused = plan.needed().filter_map(|n| match &plan.graph[n].op {
        Op::Run { run, .. } => match run.security {
            crate::lang::Security::Insecure { at } => {
                Some(ExecError::InsecureNotAllowed { src: ws.file(at.file).src(), at: at.span, others: Vec::new() })
            }
            crate::lang::Security::Sandbox => None,
        },
        _ => None,
    });
    match refused.next() {
        None => Ok(()),
        Some(ExecError::InsecureNotAllowed { src, at, .. }) => {
            Err(ExecError::InsecureNotAllowed { src, at, others: refused.collect() })
        }
        Some(other) => Err(other),
    }
}

/// How a step's result was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepOutcome {
    Ran,
    Cached,
}

struct Build<'a> {
    engine: &'a Engine,
    ws: &'a Workspace,
    options: &'a BuildOptions,
    events: &'a dyn Events,
    /// RFC 3339 of the epoch.
    created: String,
    started: Instant,
    /// Finished nodes' results. A result may name layers that are not local
    /// yet (a remote cache hit, a base image resolved but not pulled): see
    /// `origins` and [`Build::materialize`].
    results: RwLock<HashMap<NodeIndex, Arc<FsResult>>>,
    /// Where to fetch the layers of a result that is not all local: a base
    /// image, or a registry cache entry, pinned by digest.
    origins: Mutex<HashMap<NodeIndex, Origin>>,
    /// The identity each finished node passes on to the nodes after it (see
    /// `schedule.rs`: early cutoff).
    out_keys: Mutex<HashMap<NodeIndex, Key>>,
    /// Keys that differ from the plan's because of an early cutoff.
    effective: Mutex<HashMap<NodeIndex, Key>>,
    /// The nodes this build looked at: what ran, and the cached nodes it
    /// stopped at (`explain` remembers their inputs).
    visited: Mutex<std::collections::HashSet<NodeIndex>>,
    /// Registry cache hits whose layers could not be fetched: built here, and
    /// never taken from a registry cache again in this build.
    demoted: Mutex<std::collections::HashSet<NodeIndex>>,
    /// One fetch at a time per node: steps that need the same base image
    /// wait for the first one's pull instead of pulling it again.
    fetching: Mutex<HashMap<NodeIndex, Arc<Mutex<()>>>>,
    /// How each step's result was obtained.
    steps: Mutex<HashMap<NodeIndex, StepOutcome>>,
    /// The build's own cancellation: fired by the caller's token (Ctrl-C) or
    /// by a failing step, to stop the steps running beside it.
    cancel: tokio_util::sync::CancellationToken,
    /// The secrets' values, read when the build started.
    secrets: &'a [secrets::Loaded],
    /// Masks them in what steps print (`events` masks every event too).
    masker: &'a secrets::Masker,
}

/// Where a result's missing layers come from.
#[derive(Debug, Clone)]
struct Origin {
    /// A digest-pinned reference.
    image: ImageRef,
    /// The name to show and record it under (the reference as written).
    name: String,
    /// A registry cache entry (its key then gets a local entry once pulled),
    /// rather than a base image.
    cache_key: Option<Key>,
}

/// Locks a mutex, ignoring poisoning (a panicking step is re-raised anyway).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<'a> Build<'a> {
    fn new(engine: &'a Engine, ws: &'a Workspace, options: &'a BuildOptions, events: &'a dyn Events) -> Self {
        Build {
            engine,
            ws,
            options,
            events,
            created: crate::image::timestamp(options.epoch),
            started: Instant::now(),
            results: RwLock::new(HashMap::new()),
            origins: Mutex::new(HashMap::new()),
            out_keys: Mutex::new(HashMap::new()),
            effective: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            demoted: Mutex::new(std::collections::HashSet::new()),
            visited: Mutex::new(std::collections::HashSet::new()),
            steps: Mutex::new(HashMap::new()),
            cancel: options.cancel.child_token(),
            secrets: &[],
            masker: &secrets::NO_MASKER,
        }
    }

    /// `work`, unless the build is cancelled first: registry calls are
    /// futures that may wait on a silent server, and only dropping them
    /// stops them.
    async fn cancellable<T>(&self, work: impl Future<Output = Result<T, ExecError>>) -> Result<T, ExecError> {
        // Boxed: these are the build's large futures (registry transfers).
        let work = Box::pin(work);
        tokio::select! {
            result = work => result,
            () = self.cancel.cancelled() => Err(ExecError::Interrupted),
        }
    }

    fn count(&self, f: impl Fn(StepOutcome) -> bool) -> usize {
        lock(&self.steps).values().filter(|s| f(**s)).count()
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves every needed base image; returns their manifest digests by
    /// reference, for the keys. Layers are pulled later, and only if a step
    /// that runs needs them ([`Build::materialize`]).
    async fn bases(&self, plan: &Plan) -> Result<BTreeMap<String, String>, ExecError> {
        let mut digests = BTreeMap::new();
        for n in plan.needed() {
            let Op::Pull { image } = &plan.graph[n].op else { continue };
            let (digest, result) = self.base(n, image).await?;
            digests.insert(image.to_string(), digest.to_string());
            self.set_result(n, result);
        }
        Ok(digests)
    }

    /// A base image from the store, or resolved in its registry.
    async fn base(&self, n: NodeIndex, image: &ImageRef) -> Result<(Digest, FsResult), ExecError> {
        if let Some(stored) = self.engine.stored_image(image, self.options.pull)? {
            return Ok(stored);
        }
        let name = image.to_string();
        let resolved = self.engine.registry.resolve(image).await?;
        let result = fs_result(&self.engine.store, &resolved.manifest_digest)?;
        let at = ImageRef { tag: None, digest: Some(resolved.manifest_digest.to_string()), ..image.clone() };
        lock(&self.origins).insert(n, Origin { image: at, name, cache_key: None });
        Ok((resolved.manifest_digest, result))
    }

    fn set_result(&self, n: NodeIndex, result: FsResult) {
        self.results.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(n, Arc::new(result));
    }

    fn has_result(&self, n: NodeIndex) -> bool {
        self.results.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&n)
    }

    /// Makes every layer of node `n`'s result local, pulling what is missing
    /// from its origin, or from the origins of the nodes it is built on. A
    /// base image pulled here is recorded in the store under its name; a
    /// registry cache entry under its key.
    fn materialize(&self, plan: &Plan, n: NodeIndex) -> Result<(), ExecError> {
        // Demoted meanwhile by another step's failed fetch: the node is being
        // built again; the caller waits for it.
        let Ok(result) = self.result(n) else {
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
        let gate = lock(&self.fetching).entry(n).or_default().clone();
        let _one_at_a_time = lock(&gate);
        if missing().is_none() {
            return Ok(());
        }
        let Some(origin) = lock(&self.origins).get(&n).cloned() else {
            // The layers come from below: the base image, an earlier cache hit.
            if let Some(below) = plan.graph[n].chain {
                self.materialize(plan, below)?;
            }
            return match missing() {
                None => Ok(()),
                Some(layer) => Err(ExecError::Task(format!("layer {layer} is not in the store"))),
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
            Some(key) => record(store, &key, &result, None)?,
            None => {
                self.engine.record_pulled(&origin.name, &pulled, &result)?;
                self.events
                    .event(Event::Pulled { image: origin.name.clone(), digest: pulled.manifest_digest.to_string() });
            }
        }
        lock(&self.origins).remove(&n);
        Ok(())
    }

    fn execute(&self, plan: &Plan, n: NodeIndex) -> Result<FsResult, ExecError> {
        let node = &plan.graph[n];
        let parent = node.chain.map(|p| self.result(p)).transpose()?;
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
        self.results
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&n)
            .cloned()
            .ok_or_else(|| ExecError::Task(format!("node {} has no result", n.index())))
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

    /// Gives node `n`'s result compressed layers for export. Steps write
    /// their layers uncompressed (most never leave the store: a builder's
    /// layers are only read by the steps after them); the layers of an
    /// exported stage are compressed here once, with the build's
    /// compression, and the stage's result is recorded again with them, so
    /// the next export, the registry cache and other machines get them as
    /// they are. The same tar always compresses to the same bytes.
    fn compress_result(&self, plan: &Plan, n: NodeIndex) -> Result<(), ExecError> {
        let result = self.result(n)?;
        if !self.needs_compression(&result) {
            return Ok(());
        }
        let store = &self.engine.store;
        let layers = self.compress_layers(&result.layers)?;
        let compressed = FsResult { layers, config: result.config.clone() };
        let out = lock(&self.out_keys).get(&n).copied();
        if let Some(key) = plan.graph[n].key {
            record(store, &key, &compressed, out)?;
        }
        if let Some(key) = lock(&self.effective).get(&n).copied() {
            record(store, &key, &compressed, out)?;
        }
        self.set_result(n, compressed);
        Ok(())
    }

    /// Whether `result` has layers a step wrote uncompressed that an export
    /// must compress.
    fn needs_compression(&self, result: &FsResult) -> bool {
        self.options.compression != Compression::None
            && result.layers.iter().any(|l| l.media_type == crate::oci::media::OCI_LAYER)
    }

    /// `layers` with every uncompressed one compressed with the build's
    /// compression (once per diffID: the result is a cache entry).
    fn compress_layers(&self, layers: &[LayerInfo]) -> Result<Vec<LayerInfo>, ExecError> {
        let target = self.options.compression;
        let store = &self.engine.store;
        let mut out = Vec::with_capacity(layers.len());
        for l in layers {
            if target == Compression::None || l.media_type != crate::oci::media::OCI_LAYER {
                out.push(l.clone());
                continue;
            }
            let mut h = blake3::Hasher::new();
            h.update(format!("bake-compress-v1\0{}\0{target:?}", l.diff_id).as_bytes());
            let key = Key(*h.finalize().as_bytes()).to_hex();
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

    /// Steps among `n` and its ancestors that ran and that were reused.
    fn step_counts(&self, plan: &Plan, n: NodeIndex) -> (usize, usize) {
        let steps = lock(&self.steps);
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![n];
        let (mut ran, mut cached) = (0, 0);
        while let Some(m) = stack.pop() {
            if !seen.insert(m) {
                continue;
            }
            if matches!(plan.graph[m].op, Op::Copy { .. } | Op::Run { .. }) {
                match steps.get(&m) {
                    Some(StepOutcome::Ran) => ran += 1,
                    Some(StepOutcome::Cached) => cached += 1,
                    None => {}
                }
            }
            stack.extend(plan.graph.neighbors_directed(m, petgraph::Direction::Incoming));
        }
        (ran, cached)
    }

    async fn exports(&self, plan: &Plan, report: &mut BuildReport) -> Result<(), ExecError> {
        let store = &self.engine.store;
        let mut exports = Vec::new();
        let mut artifacts = Vec::new();
        for n in plan.needed() {
            let requested_stage = matches!(&plan.graph[n].op, Op::Stage { stage, .. } if plan.roots.contains(&n) && self.ws.stages[*stage].image.is_none());
            match &plan.graph[n].op {
                Op::Image { stage } | Op::Stage { stage, .. }
                    if requested_stage || matches!(plan.graph[n].op, Op::Image { .. }) =>
                {
                    let stage_node = plan.stage_node(*stage);
                    // Under --keep-going, a stage whose steps failed has no result.
                    if !self.has_result(stage_node) {
                        continue;
                    }
                    // Its layers are local unless pushing alone (the scheduler's
                    // `prefetch_exports`); compressed now if a step wrote them.
                    tokio::task::block_in_place(|| self.compress_result(plan, stage_node))?;
                    // A stage built on its own is kept (and exported) as an
                    // image named after it, with no tags.
                    let s = &self.ws.stages[*stage];
                    let result = self.result(stage_node)?;
                    let local = result.layers.iter().all(|l| store.contains_blob(&l.digest));
                    let mut config = ImageConfig::from_json(&store.read_blob(&result.config)?)
                        .map_err(|e| ExecError::Task(format!("stage config is not JSON: {e}")))?;
                    config.set_created(&self.created);
                    let out = s.image.clone().unwrap_or_default();
                    let manifest =
                        crate::image::write_manifest(store, &config, &result.layers, &out.annotations, &self.created)?;
                    let tags: Vec<ImageRef> = out.tags.iter().map(|(t, _)| t.clone()).collect();
                    // An image whose layers stay in the registry is not
                    // recorded locally: the store only names complete images.
                    if local {
                        store.set_image(&s.name, &manifest.record)?;
                        for t in &tags {
                            store.set_image(&t.to_string(), &manifest.record)?;
                        }
                    }
                    let (executed, cached) = self.step_counts(plan, stage_node);
                    let millis = self.millis_since_start();
                    self.events.event(Event::Image {
                        name: s.name.clone(),
                        digest: manifest.digest.to_string(),
                        size: manifest.record.size,
                        layers: result.layers.len(),
                        executed,
                        cached,
                        millis,
                    });
                    report.images.push(BuiltImage {
                        name: s.name.clone(),
                        digest: manifest.digest.clone(),
                        tags: tags.clone(),
                        record: manifest.record.clone(),
                        layers: result.layers.len(),
                        executed,
                        cached,
                        millis,
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
                        stage_node,
                    ));
                }
                Op::Artifact { artifact } => {
                    let a = &self.ws.artifacts[*artifact];
                    let stage_node = plan.stage_node(a.from);
                    if !self.has_result(stage_node) {
                        continue;
                    }
                    let result = self.result(stage_node)?;
                    let host = copy::HostOptions { keep_setuid: a.keep_setuid, what: format!("artifact `{}`", a.name) };
                    tokio::task::block_in_place(|| copy::export_path(self, &result, &a.path, &a.dest, a.span, &host))?;
                    self.events.event(Event::Artifact { name: a.name.clone(), dest: a.dest.clone() });
                    report.artifacts.push((a.name.clone(), a.dest.clone()));
                    artifacts.push((a, result));
                }
                _ => {}
            }
        }
        let images: Vec<ExportImage> = exports.iter().map(|(e, _, _)| e.clone()).collect();
        for output in &self.options.outputs {
            tokio::task::block_in_place(|| -> Result<(), ExecError> {
                match output {
                    Output::Oci(dest) => crate::image::export::oci_tar(store, &images, dest)?,
                    Output::OciDir(dest) => crate::image::export::oci_dir(store, &images, dest)?,
                    Output::Docker(dest) => crate::image::export::docker_tar(store, &images, dest)?,
                    Output::Local { dest, keep_setuid } => {
                        let several = exports.len() + artifacts.len() > 1;
                        let host = |name: &str| copy::HostOptions {
                            keep_setuid: *keep_setuid,
                            what: format!("`type=local` output of `{name}`"),
                        };
                        for (image, result, _) in &exports {
                            let to = if several { dest.join(&image.name) } else { dest.clone() };
                            copy::export_path(self, result, "/", &to, self.ws.stages[0].span, &host(&image.name))?;
                        }
                        for (a, result) in &artifacts {
                            let to = if several { dest.join(&a.name) } else { dest.clone() };
                            copy::export_path(self, result, &a.path, &to, a.span, &host(&a.name))?;
                        }
                    }
                }
                Ok(())
            })?;
            let (what, dest) = match output {
                Output::Oci(d) => ("oci", d),
                Output::OciDir(d) => ("oci-dir", d),
                Output::Docker(d) => ("docker", d),
                Output::Local { dest: d, .. } => ("local", d),
            };
            self.events.event(Event::Exported { what: what.to_owned(), dest: dest.clone() });
        }
        if self.options.push {
            let pushes: Vec<PushImage> = exports
                .iter()
                .filter(|(e, _, _)| !e.tags.is_empty())
                .map(|(e, _, _)| PushImage {
                    manifest: e.manifest.clone(),
                    media_type: e.media_type.clone(),
                    tags: e.tags.clone(),
                })
                .collect();
            if !pushes.is_empty() {
                let progress = TransferEvents::new(self.events, "push".to_owned());
                let pushed = match self.engine.registry.push(&pushes, &progress).await {
                    // A layer from a registry cache on another registry
                    // cannot be mounted: fetch it, then push again.
                    Err(RegistryError::MissingBlob { .. }) => {
                        for (_, _, n) in &exports {
                            tokio::task::block_in_place(|| self.materialize(plan, *n))?;
                        }
                        self.engine.registry.push(&pushes, &progress).await?
                    }
                    other => other?,
                };
                for p in &pushed {
                    self.events.event(Event::Pushed { tag: p.tag.to_string(), digest: p.digest.to_string() });
                }
                report.pushed = pushed;
            }
            for (e, _, _) in exports.iter().filter(|(e, _, _)| e.tags.is_empty()) {
                self.events.event(Event::Warning {
                    message: format!("image `{}` has no `tag`, so --push has nothing to push it to", e.name),
                });
            }
        }
        Ok(())
    }
}

/// Registry transfer progress, as build events: cumulative, throttled.
struct TransferEvents<'a> {
    events: &'a dyn Events,
    what: String,
    /// Per blob: direction, size, bytes so far, bytes at the last event.
    blobs: Mutex<HashMap<Digest, (Direction, u64, u64, u64)>>,
}

impl<'a> TransferEvents<'a> {
    fn new(events: &'a dyn Events, what: String) -> Self {
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
                let d = match direction {
                    crate::registry::Direction::Pull => Direction::Pull,
                    crate::registry::Direction::Push => Direction::Push,
                };
                blobs.insert(digest.clone(), (d, size, 0, 0));
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

/// Records `result` under `key`, with the blobs it keeps alive and the
/// identity it passes on to the nodes after it (see `schedule.rs`), so a
/// later hit passes on the same one.
fn record(store: &Store, key: &Key, result: &FsResult, out: Option<Key>) -> Result<(), ExecError> {
    let mut blobs: Vec<Digest> = result.layers.iter().map(|l| l.digest.clone()).collect();
    blobs.push(result.config.clone());
    let mut value = serde_json::to_value(result).unwrap_or_default();
    if let (Some(out), Some(map)) = (out, value.as_object_mut()) {
        map.insert("out".to_owned(), out.to_hex().into());
    }
    store.put_cache(&key.to_hex(), &CacheEntry { value, blobs })?;
    Ok(())
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
