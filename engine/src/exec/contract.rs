//! The build's public contract: what a caller gives ([`BuildOptions`],
//! [`Output`], [`Secret`]), what it hears while the build runs ([`Event`]
//! through [`Events`]), what it gets back ([`BuildReport`], [`BuiltImage`],
//! [`FsResult`]) and how a build fails ([`ExecError`], each with its
//! [`Tier`]). Nothing here does any work.

use std::path::PathBuf;

use miette::{Diagnostic, SourceSpan};
use serde::{Deserialize, Serialize};

use super::secrets;
use crate::Tier;
use crate::graph::PlanError;
use crate::image::ImageError;
use crate::lang::{Span, Workspace};
use crate::layer::{LayerError, LayerInfo};
use crate::oci::{Compression, Digest};
use crate::reference::{CacheRef, ImageRef};
use crate::registry::{Pushed, RegistryError};
use crate::snapshot::SnapshotError;
use crate::store::{ImageRecord, StoreError};

pub use crate::registry::Direction;

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
    Attest(#[from] crate::attest::AttestError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Sign(#[from] crate::attest::sign::SignError),

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

    #[error(transparent)]
    #[diagnostic(transparent)]
    Emulation(#[from] crate::platform::EmulationError),

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

    /// A base image without the platform a stage is built for, pointed at
    /// the `from=` that names it.
    /// (The registry's `no_platform` or `wrong_platform`, with a span.)
    #[error("{message}")]
    #[diagnostic(code(bake::exec::base_platform))]
    BasePlatform {
        message: String,
        #[help]
        help: Option<String>,
        #[source_code]
        src: crate::lang::Src,
        #[label("resolved for {platform}")]
        at: SourceSpan,
        platform: String,
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

    /// A step's thread panicked: a bug in bake.
    #[error("a build step panicked: {node}")]
    #[diagnostic(code(bake::exec::panicked))]
    Panicked { node: String },

    /// The scheduler asked for a result it never recorded: a bug in bake.
    #[error("node {node} has no result")]
    #[diagnostic(code(bake::exec::no_result))]
    NoResult { node: String },

    /// A filesystem node reached the scheduler without a key: a bug in bake.
    #[error("{node} has no key")]
    #[diagnostic(code(bake::exec::no_key))]
    NoKey { node: String },

    /// Steps wait and none runs: a bug in bake (the graph has an input
    /// nothing produces).
    #[error("no step is ready to run: the graph has an unresolved input")]
    #[diagnostic(code(bake::exec::stuck))]
    Stuck,

    /// A `copy from=IMAGE` without its pull in the graph: a bug in bake.
    #[error("no pull of {image} before its copy")]
    #[diagnostic(code(bake::exec::no_pull))]
    NoPull { image: String },

    /// A context `copy` without the files it reads: a bug in bake.
    #[error("context copy without a selection")]
    #[diagnostic(code(bake::exec::no_selection))]
    NoSelection,

    /// The secrets could not be prepared for masking: a bug in bake (their
    /// size is capped below what the matcher accepts).
    #[error("cannot prepare secret masking: {message}")]
    #[diagnostic(code(bake::exec::masking))]
    Masking { message: String },

    /// Registry cache entries failed to fetch again and again.
    #[error("registry cache entries keep failing: giving up")]
    #[diagnostic(
        code(bake::exec::cache_keeps_failing),
        help("build without the registry cache (`--cache-from` names none) or check the registry")
    )]
    CacheKeepsFailing,

    /// A config document in the store is not a readable image config.
    #[error("config {digest} in the store is not JSON: {message}")]
    #[diagnostic(code(bake::exec::bad_config), help("the store is damaged; `bake cache prune --all` empties it"))]
    BadConfig { digest: String, message: String },

    /// A blob a result names is not in the store.
    #[error("{what} {digest} is not in the store")]
    #[diagnostic(
        code(bake::exec::missing_blob),
        help("the store lost a blob; build again (or `bake cache prune --all`)")
    )]
    MissingBlob { what: &'static str, digest: String },

    /// The terminal could not be set up for a container.
    #[error("cannot set up the container's input and output")]
    #[diagnostic(code(bake::exec::stdio))]
    Stdio(#[source] std::io::Error),

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

impl ExecError {
    /// Whose the failure is: what the user wrote, the machine or network
    /// the build ran on, or bake itself.
    pub fn tier(&self) -> Tier {
        match self {
            Self::Plan(e) => e.tier(),
            Self::Home(e) => e.tier(),
            Self::Store(e) => e.tier(),
            Self::Attest(e) => e.tier(),
            Self::Sign(e) => e.tier(),
            Self::Registry(e) => e.tier(),
            Self::Snapshot(e) => e.tier(),
            Self::Layer(e) => e.tier(),
            Self::Image(e) => e.tier(),
            Self::Sandbox(e) => e.tier(),
            Self::Emulation(e) => e.tier(),
            Self::Step { .. }
            | Self::BasePlatform { .. }
            | Self::InsecureNotAllowed { .. }
            | Self::SecretNotFile { .. }
            | Self::SecretTooLarge { .. }
            | Self::SecretUnreadable { .. }
            | Self::Interrupted => Tier::Input,
            // The build's own failure is the worst of its steps'.
            Self::Failed { errors } => errors.iter().map(Self::tier).max().unwrap_or(Tier::Input),
            Self::ContextChanged { .. }
            | Self::Io { .. }
            | Self::CacheFetch { .. }
            | Self::CacheKeepsFailing
            | Self::BadConfig { .. }
            | Self::MissingBlob { .. }
            | Self::Stdio(_) => Tier::Environment,
            Self::Panicked { .. }
            | Self::NoResult { .. }
            | Self::NoKey { .. }
            | Self::Stuck
            | Self::NoPull { .. }
            | Self::NoSelection
            | Self::Masking { .. } => Tier::Bug,
        }
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
    /// Steps that may run at once; 0 means one per core (read it through
    /// [`BuildOptions::parallelism`]).
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
    /// What `push` attaches to every image it pushes (`crate::attest`).
    pub attest: crate::attest::Attest,
    /// `--sign key=PATH`: the private key `push` signs every pushed
    /// manifest and index with (`crate::attest::sign`).
    pub sign: Option<PathBuf>,
}

impl BuildOptions {
    /// How many steps may run at once: `jobs`, or one per core when it is 0
    /// (two when the core count is unknown). The one place `jobs` is read.
    pub fn parallelism(&self) -> usize {
        match self.jobs {
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            n => n,
        }
    }
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
    /// An image built for several platforms was written to the store as
    /// an index of their manifests.
    Index {
        name: String,
        digest: String,
        platforms: Vec<String>,
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
