//! The `build.kdl` language: KDL v2 in, a resolved [`Workspace`] out.
//!
//! Loading runs in passes, and every pass reports all the mistakes it finds
//! before the next one starts, so a user sees every error of a workspace at
//! once:
//!
//! 1. **Files** ([`parse`]): the root file and, recursively, every file its
//!    `include` globs match (paths relative to the including file). Each file is
//!    parsed with the `kdl` crate; syntax errors are re-wrapped with the file's
//!    name.
//! 2. **Args** (`lower/args.rs`): every `arg` of every file, `--set`
//!    overrides, defaults that interpolate other args (cycles reported whole).
//! 3. **Names** (`lower/names.rs`): stages, images, artifacts and targets share
//!    one namespace across all files; a duplicate shows both sites.
//! 4. **Lowering** ([`lower`], `lower/stages.rs` and `lower/steps.rs`): each
//!    node is checked against its schema ([`schema`]: argument count and types,
//!    known properties, children) and turned into typed instructions, with
//!    `${NAME}` interpolated in every string ([`interp`],
//!    `lower/interpolate.rs`); `from=` names become stage ids or image
//!    references (`lower/refs.rs`) and target members are resolved.
//! 5. **Checks** (`lower/checks.rs`): cycles found with Tarjan's algorithm,
//!    the depth of `from` chains and the env they carry, and the exec-form
//!    rules for `entrypoint`/`cmd` checked against the stage chain.
//! 6. **Platforms** (`lower/platforms.rs`): passes 2 to 5 run once per
//!    target platform, with its `TARGET*` args; a stage that depends on the
//!    target keeps one instance per platform, the others one in all, each
//!    with the platform it is built for ([`Stage::platform`]).
//!
//! Every host path a file names stays inside the workspace boundary
//! ([`boundary`]), and every pass is bounded ([`limits`]), so hostile input
//! ends in a diagnostic, fast.
//!
//! Every span is a byte span into its own file, kept with a [`FileId`], so the
//! graph and the executor can point back into the user's file later (a failing
//! `run` step is reported against its own line).

mod boundary;
mod error;
mod interp;
mod limits;
mod lower;
mod parse;
pub(crate) mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::SourceSpan;

pub use boundary::{Boundary, Resolved};
pub(crate) use error::plural;
pub use error::{
    LangError, LoadError, MAX_LISTED, MAX_QUOTED, MAX_REPORTED, MAX_SHOWN_LINE, Note, Src, did_you_mean, list_names,
    quoted,
};
pub use limits::{Limits, MAX_ARG_DEPTH, MAX_CARRIED_ENV};
pub use lower::DockerfileOptions;
pub(crate) use lower::normalize_absolute as clean_absolute;
pub use parse::MAX_DEPTH;
pub(crate) use parse::parse_checked;

use crate::platform::Platform;
use crate::reference::ImageRef;

/// The args BuildKit defines for every build, usable in `${...}` without
/// an `arg` node: the target platform's, then the build machine's.
pub const PREDEFINED_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// Whether an arg name is one of the target platform's predefined args.
pub fn is_target_arg(name: &str) -> bool {
    PREDEFINED_ARGS[..4].contains(&name)
}

/// The values of [`PREDEFINED_ARGS`] for a target and a build platform.
pub fn predefined_args(target: &Platform, build: &Platform) -> [(&'static str, String); 8] {
    [
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant.clone()),
        ("BUILDPLATFORM", build.to_string()),
        ("BUILDOS", build.os.clone()),
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", build.variant.clone()),
    ]
}

/// Index of a file in [`Workspace::files`].
pub type FileId = usize;
/// Index of a stage in [`Workspace::stages`].
pub type StageId = usize;
/// Index of an artifact in [`Workspace::artifacts`].
pub type ArtifactId = usize;
/// Index of a target in [`Workspace::targets`].
pub type TargetId = usize;

/// A place in one of the workspace's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub file: FileId,
    pub span: SourceSpan,
}

/// One loaded `build.kdl`.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The file's path as given or found (absolute once canonicalised).
    pub path: PathBuf,
    /// The name diagnostics show: relative to the root file's folder.
    pub name: String,
    /// The folder relative paths in this file resolve from.
    pub dir: PathBuf,
    pub text: Arc<String>,
}

impl SourceFile {
    /// This file as a miette source.
    pub fn src(&self) -> Src {
        Src::new(self.name.clone(), Arc::clone(&self.text))
    }

    /// 1-based line of a byte offset, for short references like `build.kdl:12`.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }
}

/// Options that change how a workspace loads.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--set NAME=VALUE` overrides, in command-line order.
    pub set: Vec<(String, String)>,
    /// The workspace root (`-C`); `None`: the root file's folder.
    pub workspace: Option<PathBuf>,
    /// Folders outside the workspace that build files may name too
    /// (`--allow-path`, `BAKE_ALLOW_PATHS`, `allow-path` in the config).
    pub allow_paths: Vec<PathBuf>,
    pub limits: Limits,
    /// When the root file is a Dockerfile: the target stage, tags and
    /// context.
    pub dockerfile: DockerfileOptions,
    /// `--platform`: the target platforms, over every `platforms` node of
    /// the files. Empty: the files decide, else the build platform.
    pub platforms: Vec<Platform>,
    /// The platform the build runs on (`BUILDPLATFORM`); `None`: this
    /// machine's ([`Platform::host`]).
    pub build_platform: Option<Platform>,
}

/// A fully loaded and resolved workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub files: Vec<SourceFile>,
    pub args: Vec<Arg>,
    pub stages: Vec<Stage>,
    pub artifacts: Vec<Artifact>,
    pub targets: Vec<Target>,
    /// `cache-from` registry caches, as written (after interpolation).
    pub cache_from: Vec<(String, Span)>,
    /// `cache-to` registry caches.
    pub cache_to: Vec<(String, Span)>,
    /// The host paths this workspace's files may name: contexts and their
    /// ignore files are read only inside it.
    pub boundary: Boundary,
    /// The target platforms of this build: `--platform`, else the
    /// workspace's `platforms` node, else the build platform. Images with a
    /// `platforms` node of their own are built for those.
    pub platforms: Vec<Platform>,
    /// The platform the build runs on.
    pub build_platform: Platform,
}

/// `arg NAME default=...`.
#[derive(Debug, Clone)]
pub struct Arg {
    pub name: String,
    pub span: Span,
    /// The default, interpolated.
    pub default: Option<String>,
    /// The value in force: `--set`, else the default.
    pub value: Option<String>,
}

/// Where a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// An empty filesystem.
    Scratch,
    /// Another stage of the workspace.
    Stage(StageId),
    /// An external image.
    Image(ImageRef),
}

/// `stage NAME from=BASE { ... }` or `image NAME from=BASE { ... }`.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    /// The stage's name in its declaration.
    pub span: Span,
    pub from: Base,
    pub from_span: Span,
    /// The build context folder: the file's folder, or `context=` from it.
    pub context: PathBuf,
    /// The ignore file read instead of the context's `.dockerignore`: a
    /// Dockerfile's `NAME.dockerignore` beside it, when there is one.
    pub ignore_file: Option<PathBuf>,
    pub instructions: Vec<Instruction>,
    /// Set for `image` nodes: what export adds.
    pub image: Option<ImageOutput>,
    /// Args whose values this stage's strings used, with those values.
    pub args_used: BTreeMap<String, String>,
    /// `platform=`: the platform the base is resolved for and the steps run
    /// as, whatever the target (`platform="${BUILDPLATFORM}"`).
    pub pin: Option<(Platform, Span)>,
    /// The platform of this stage's filesystem: its `platform=`, else its
    /// base stage's, else the target platform it was made for, else the
    /// build platform. Its base image is resolved for it, its `run` steps
    /// run as it, and an image's config names it.
    pub platform: Platform,
    /// The target platform this instance of the stage was made for: set for
    /// a stage that depends on the target (it uses a `TARGET*` arg, its base
    /// image is resolved for the target, it builds on or copies from such a
    /// stage, or it is an image); `None` for a stage built once for all.
    pub target: Option<Platform>,
    /// The name of this instance in node ids and listings: the stage's name,
    /// with `[PLATFORM]` after it when a build has several target platforms.
    pub instance: String,
}

/// Export settings of an `image`.
#[derive(Debug, Clone, Default)]
pub struct ImageOutput {
    pub tags: Vec<(ImageRef, Span)>,
    pub annotations: Vec<(String, String)>,
    /// The image's own `platforms` node, as written.
    pub platforms: Option<(Vec<Platform>, Span)>,
    /// The platforms it is built for: `--platform`, else its `platforms`,
    /// else the workspace's. Its instances for other platforms exist only
    /// for stages built on it.
    pub build_for: Vec<Platform>,
}

/// One instruction of a stage body, in order.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// The whole node (used for "this `run` failed" labels).
    pub span: Span,
    pub kind: InstructionKind,
    /// Args this instruction's strings used, with their values.
    pub args_used: BTreeMap<String, String>,
}

/// What an instruction does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    Workdir(String),
    Copy(Copy),
    Run(Run),
    Env(String, String),
    User(String),
    Expose(Vec<Port>),
    Entrypoint(Vec<String>),
    Cmd(Vec<String>),
    Label(String, String),
    Volume(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
    /// A Dockerfile `ONBUILD` trigger, as written after the keyword: kept in
    /// the image config's `OnBuild` list, run by a later build that uses the
    /// image as its base.
    OnBuild(String),
    /// A Dockerfile `MAINTAINER`: the image config's `author`, as Docker
    /// sets it.
    Author(String),
}

/// Where a `copy` reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// The stage's build context.
    Context,
    /// Another stage's filesystem.
    Stage(StageId),
    /// An external image's filesystem.
    Image(ImageRef),
}

/// `copy SRC... to=DEST [from=] [chown=] [chmod=] [exclude=]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// Sources: context-relative (normalised, no leading `/`) for the context,
    /// absolute paths for stages and images.
    pub sources: Vec<String>,
    /// Where each source is written, index for index.
    pub source_spans: Vec<Span>,
    pub dest: String,
    pub from: CopySource,
    pub chown: Option<String>,
    /// Permission bits, from an octal string or integer.
    pub chmod: Option<u32>,
    pub exclude: Vec<String>,
    /// Copied entries keep the owners they have in the source stage or
    /// image when no `chown` is given, as a Dockerfile's `COPY --from`
    /// does; otherwise (`build.kdl`) they are owned by 0:0.
    pub keep_owners: bool,
    /// `optional=#true`: a source that matches nothing copies nothing
    /// instead of failing the build.
    pub optional: bool,
    /// A Dockerfile's `WORKDIR`: no sources; the destination folder and its
    /// missing parents are made (0755, owned by `chown`: the `USER` in
    /// force), as BuildKit makes the working folder.
    pub mkdir: bool,
    /// A Dockerfile's `ADD`: a context file that is a tar archive (plain
    /// or gzip) is unpacked into the destination folder instead of copied,
    /// keeping the archive's owners unless `chown` is given.
    pub extract: bool,
}

/// `run "script" { cache ...; secret ...; network ...; security ...; env ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The shell script (run through the stage's shell), or, in exec form,
    /// the arguments as one line for messages and history.
    pub script: String,
    /// Exec form: the program and its arguments, run as given with no shell
    /// (a Dockerfile's `RUN ["a", "b"]`).
    pub exec: Option<Vec<String>>,
    pub caches: Vec<CacheMount>,
    pub secrets: Vec<SecretMount>,
    pub network: Network,
    pub security: Security,
    pub env: Vec<(String, String)>,
    /// Context files bound into the step (a Dockerfile's
    /// `--mount=type=bind`, `bind` in `build.kdl`).
    pub binds: Vec<BindMount>,
    /// Empty scratch folders mounted for the step only (`tmpfs`).
    pub tmpfs: Vec<String>,
}

/// Files of the build context, a stage or an image, seen by one step at
/// `target`, never part of its layer: read-only, or writable with the
/// writes thrown away. From the context, the step sees what the ignore
/// rules keep, as a `copy` would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Context-relative and normalised (`.` for the whole context), or
    /// absolute in the stage or image.
    pub source: String,
    pub from: CopySource,
    /// Absolute in the step, or relative to its working folder.
    pub target: String,
    pub readonly: bool,
}

/// A folder that persists between builds and is never part of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    pub path: String,
    /// Steps with the same id share the folder; defaults to the path.
    pub id: String,
    pub sharing: Sharing,
}

/// How concurrent steps share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A secret mounted read-only for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub id: String,
    /// Where it is mounted; `/run/secrets/ID` by default.
    pub target: String,
    /// Whether a build without this secret fails (the default) or skips it.
    pub required: bool,
    /// `env=NAME`: the secret is this environment variable of the step
    /// instead of a file (and a file too when a `target` is also given).
    pub env: Option<String>,
}

/// The network a `run` step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A network namespace of its own with outbound access through a
    /// userspace NAT (slirp4netns), as `docker build` gives each RUN: the
    /// host's loopback and traffic are out of reach.
    #[default]
    Private,
    /// The host's network, as asked with `network "host"`.
    Host,
    /// Loopback only.
    None,
}

/// How tightly a `run` step is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// Docker's defaults: its capabilities, seccomp profile, masked and
    /// read-only paths, and `no_new_privs`.
    #[default]
    Sandbox,
    /// `security "insecure"`: every capability, no seccomp filter, `/proc`
    /// and `/sys` writable (BuildKit's `RUN --security=insecure`). A build
    /// runs such a step only with `--allow security.insecure`.
    Insecure {
        /// The `security` node, for the error when it is not allowed.
        at: Span,
    },
}

/// `expose 8080` or `expose "53/udp"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub port: u16,
    pub protocol: String,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// `healthcheck ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: HealthTest,
    pub interval_ns: Option<u64>,
    pub timeout_ns: Option<u64>,
    pub start_period_ns: Option<u64>,
    pub start_interval_ns: Option<u64>,
    pub retries: Option<u32>,
}

/// What a healthcheck runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// Disable any healthcheck inherited from the base image.
    None,
    /// Exec form: each argument a string.
    Exec(Vec<String>),
    /// Run through the image's shell.
    Shell(String),
}

/// `artifact NAME from=STAGE path=... dest=...`.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub name: String,
    pub span: Span,
    pub from: StageId,
    /// Absolute path in the stage's filesystem.
    pub path: String,
    /// Host path, resolved from the declaring file's folder.
    pub dest: PathBuf,
    /// `keep-setuid=#true`: write setuid and setgid bits on the host as the
    /// stage has them, instead of clearing them.
    pub keep_setuid: bool,
}

/// What a target member names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    Stage(StageId),
    Artifact(ArtifactId),
    Target(TargetId),
}

/// `target NAME MEMBERS...`.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub span: Span,
    pub members: Vec<(Member, Span)>,
}

impl Workspace {
    /// The file that holds a span.
    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id]
    }

    /// `file.kdl:LINE` for a span, for plain-text listings.
    pub fn location(&self, span: Span) -> String {
        let file = self.file(span.file);
        format!("{}:{}", file.name, file.line_of(span.span.offset()))
    }

    /// Looks a member up by name, as target members and `bake build NAME` do.
    pub fn member(&self, name: &str) -> Option<Member> {
        if let Some(i) = self.stages.iter().position(|s| s.name == name) {
            return Some(Member::Stage(i));
        }
        if let Some(i) = self.artifacts.iter().position(|a| a.name == name) {
            return Some(Member::Artifact(i));
        }
        self.targets.iter().position(|t| t.name == name).map(Member::Target)
    }

    /// Every name that `bake build NAME` accepts.
    pub fn member_names(&self) -> Vec<&str> {
        self.stages
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.artifacts.iter().map(|a| a.name.as_str()))
            .chain(self.targets.iter().map(|t| t.name.as_str()))
            .collect()
    }
}

/// Loads the workspace rooted at `path` (a `build.kdl`).
///
/// Returns every error found, each pointing into its own file.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Workspace, LoadError> {
    if is_dockerfile(path) {
        return lower::load_dockerfile(path, None, options);
    }
    lower::load(path, options)
}

/// Loads Dockerfile text as a workspace of its stages, as if it were the
/// file `path` (tests, the fuzzer).
pub fn load_dockerfile_str(path: &Path, text: &str, options: &LoadOptions) -> Result<Workspace, LoadError> {
    lower::load_dockerfile(path, Some(text.to_owned()), options)
}

/// Whether a build file is a Dockerfile, by its name as Docker tools name
/// them: `Dockerfile`, `Containerfile`, `NAME.Dockerfile`, `Dockerfile.NAME`
/// (any case). Anything else is read as `build.kdl`.
pub fn is_dockerfile(path: &Path) -> bool {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()) else {
        return false;
    };
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("kdl")) {
        return false;
    }
    ["dockerfile", "containerfile"]
        .iter()
        .any(|base| name == *base || name.starts_with(&format!("{base}.")) || name.ends_with(&format!(".{base}")))
}

/// Loads a workspace from text, as if it were the file `name` in `dir`
/// (used by tests, the fuzzer and the book's snippet checks). `include`
/// resolves from `dir`.
pub fn load_str(name: &str, dir: &Path, text: &str, options: &LoadOptions) -> Result<Workspace, LoadError> {
    lower::load_str(name, dir, text, options)
}
