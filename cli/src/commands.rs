//! Each subcommand: turn arguments into an engine request, call the engine,
//! render the result.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use bake_engine::Tier;
use bake_engine::config::Config;
use bake_engine::context::ContextError;
use bake_engine::dockerfile;
use bake_engine::exec::{BuildOptions, Engine, Event, ExecError};
use bake_engine::graph::{Format, KeyOptions, Plan, PlanError, describe};
use bake_engine::home::Home;
use bake_engine::lang::{self, LoadError, LoadOptions, Workspace};
use bake_engine::oci::Compression;
use bake_engine::snapshot::Snapshots;
use bake_engine::store::{PruneOptions, Store};
use miette::{Diagnostic, Report};

use crate::args::{
    BuildArgs, CacheCommand, Cli, Command, CompressionArg, ExplainArgs, ExplainFormat, GraphArgs, GraphFormat,
    ImportArgs, LoadArgs, PruneArgs, RunArgs,
};

/// Exit code: the build failed (a step the user wrote failed).
pub(crate) const EXIT_BUILD: u8 = 1;
/// Exit code: a usage, build file or configuration error.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: the environment failed the build (registry, disk, kernel,
/// permissions), so retrying elsewhere or later may succeed.
pub(crate) const EXIT_ENVIRONMENT: u8 = 3;
/// Exit code: a bug in bake (`EX_SOFTWARE` of sysexits.h).
pub(crate) const EXIT_BUG: u8 = 70;

/// Where to report a bug (no public tracker address is set yet).
pub(crate) const REPORT_BUGS: &str = "bake's issue tracker";

/// Why a command failed, which decides the exit code.
pub(crate) enum Failure {
    /// The workspace did not load: every error, each with its span.
    Load(LoadError),
    /// A usage or configuration error (exit 2).
    Usage(Report),
    /// The build failed (exit 1).
    Build(Report),
    /// Several build errors, each rendered on its own, then a summary (exit 1).
    BuildMany(Vec<Report>, String),
    /// The machine or the network failed the command ([`EXIT_ENVIRONMENT`]).
    Environment(Report),
    /// A bug in bake: printed with a request to report it ([`EXIT_BUG`]).
    Bug(Report),
    /// `bake run`: an error with its own exit code (126, 127).
    Run(Report, u8),
    /// `bake run`: the container's exit code, nothing to print.
    Exit(u8),
}

impl Failure {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Build(_) | Self::BuildMany(..) => EXIT_BUILD,
            Self::Load(_) | Self::Usage(_) => EXIT_USAGE,
            Self::Environment(_) => EXIT_ENVIRONMENT,
            Self::Bug(_) => EXIT_BUG,
            Self::Run(_, code) | Self::Exit(code) => *code,
        }
    }

    /// `report` as the failure its tier says, or else as `input` says.
    pub(crate) fn by_tier(tier: Tier, report: Report, input: impl FnOnce(Report) -> Self) -> Self {
        match tier {
            Tier::Bug => Self::Bug(report),
            Tier::Environment => Self::Environment(report),
            Tier::Input => input(report),
        }
    }
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        match e {
            // A build file's ignore file reaching out of the workspace is the
            // build file's mistake, as an `include` out of it is.
            PlanError::UnknownTarget { .. }
            | PlanError::Context(ContextError::IgnoreOutside { .. } | ContextError::IgnoreTooLarge { .. }) => {
                Self::Usage(Report::new(e))
            }
            PlanError::Many { errors } => {
                let summary = format!("bake: {} while planning", count(errors.len(), "error"));
                Self::BuildMany(errors.into_iter().map(Report::new).collect(), summary)
            }
            _ => Self::by_tier(e.tier(), Report::new(e), Self::Build),
        }
    }
}

/// A CLI-level error without a span.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum CliError {
    #[error("cannot change to {}", dir.display())]
    #[diagnostic(code(bake::cli::directory))]
    Directory {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no {} in {}", file.display(), dir.display())]
    #[diagnostic(
        code(bake::cli::no_build_file),
        help("run bake in a folder with a build.kdl, or name one with -f FILE or -C DIR")
    )]
    NoBuildFile { file: PathBuf, dir: PathBuf },
    #[error("cannot write output")]
    #[diagnostic(code(bake::cli::output))]
    Output(#[source] std::io::Error),
    #[error("--target and -t apply to a Dockerfile, and {} is a build.kdl", file.display())]
    #[diagnostic(
        code(bake::cli::dockerfile_only),
        help("name the stage to build as an argument (`bake build NAME`) and its tags with `tag` in the image node")
    )]
    DockerfileOnly { file: PathBuf },
    #[error("cannot read {}", file.display())]
    #[diagnostic(code(bake::cli::read))]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", file.display())]
    #[diagnostic(code(bake::cli::write))]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} of the Dockerfile's checks failed, and `# check=error=true` makes them errors", count(*findings, "rule"))]
    #[diagnostic(
        code(bake::cli::check_failed),
        help("fix the warnings above, or skip a rule with `# check=skip=RULE`")
    )]
    ChecksFailed { findings: usize },
    #[error("no home folder for bake's store: set BAKE_HOME or HOME")]
    #[diagnostic(code(bake::cli::no_home))]
    NoHome,
    #[error("cannot start the async runtime")]
    #[diagnostic(code(bake::cli::runtime))]
    Runtime(#[source] std::io::Error),
    #[error("cannot pass bake's stdin, stdout and stderr to the container")]
    #[diagnostic(code(bake::cli::stdio))]
    Stdio(#[source] std::io::Error),
}

pub(crate) fn run(mut cli: Cli, entered: &bake_engine::sandbox::Entered) -> Result<(), Failure> {
    if let Some(dir) = &cli.directory {
        std::env::set_current_dir(dir)
            .map_err(|source| Failure::Usage(Report::new(CliError::Directory { dir: dir.clone(), source })))?;
        // With -C, the workspace is that folder (not only the build file's).
        if let (Some(load), Ok(cwd)) = (cli.command.load_args_mut(), std::env::current_dir()) {
            load.workspace = Some(cwd);
        }
    }
    // `bake build -f Dockerfile DIR`: as with `docker build`, the one
    // positional argument that is a folder is the build context.
    if lang::is_dockerfile(&cli.file)
        && let Some((targets, load)) = cli.command.targets_mut()
        && let [only] = targets.as_slice()
        && Path::new(only).is_dir()
    {
        load.context = Some(std::path::absolute(only).unwrap_or_else(|_| PathBuf::from(only)));
        targets.clear();
    }
    match cli.command {
        Command::Check(load) => check(&cli.file, &load),
        Command::Import(args) => import(&args),
        Command::Graph(args) => graph(&cli.file, &args),
        Command::Build(args) => build(&cli.file, &args),
        Command::Explain(args) => explain(&cli.file, &args),
        Command::Run(args) => run_image(&args),
        Command::Watch(args) => crate::watch::watch(&cli.file, &args),
        Command::Images => images(),
        Command::Cache(CacheCommand::Du) => cache_du(),
        Command::Cache(CacheCommand::Prune(args)) => cache_prune(&args),
        Command::Doctor => crate::doctor::doctor(entered),
    }
}

pub(crate) fn load(file: &Path, args: &LoadArgs) -> Result<Workspace, Failure> {
    if !file.exists() {
        let dir = std::env::current_dir().unwrap_or_default();
        return Err(Failure::Usage(Report::new(CliError::NoBuildFile { file: file.to_path_buf(), dir })));
    }
    let config =
        Config::load(bake_engine::home::config_path().as_deref()).map_err(|e| Failure::Usage(Report::new(e)))?;
    let mut allow_paths = args.allow_path.clone();
    allow_paths.extend(config.allow_paths.iter().cloned());
    let dockerfile =
        lang::DockerfileOptions { target: args.target.clone(), tags: args.tag.clone(), context: args.context.clone() };
    if !lang::is_dockerfile(file) && (dockerfile.target.is_some() || !dockerfile.tags.is_empty()) {
        return Err(Failure::Usage(Report::new(CliError::DockerfileOnly { file: file.to_path_buf() })));
    }
    let options = LoadOptions {
        set: args.set.clone(),
        workspace: args.workspace.clone(),
        allow_paths,
        limits: config.limits,
        dockerfile,
        platforms: args.platform.clone(),
        build_platform: None,
    };
    lang::load(file, &options).map_err(Failure::Load)
}

/// Keys as a build would compute them, with the base image digests the store
/// already knows (no network).
fn key_options(plan: &Plan, include_pruned: bool) -> KeyOptions {
    let home = Home::from_env();
    let base_digests = home
        .as_ref()
        .filter(|h| h.store_dir().is_dir())
        .and_then(|h| Store::open(&h.store_dir()).ok())
        .map(|store| bake_engine::exec::local_base_digests(&store, plan))
        .unwrap_or_default();
    KeyOptions { index_dir: home.map(|h| h.index_dir()), include_pruned, base_digests, ..KeyOptions::default() }
}

fn print(text: &str) -> Result<(), Failure> {
    crate::out(text).map_err(|e| Failure::Usage(Report::new(CliError::Output(e))))
}

/// A BuildKit check rule that fired, rendered as a warning at its line,
/// with the rule's name as its code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct CheckWarning {
    message: String,
    rule: &'static str,
    src: lang::Src,
    at: miette::SourceSpan,
}

impl Diagnostic for CheckWarning {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.rule))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(miette::Severity::Warning)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(rule_help(self.rule)))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(miette::LabeledSpan::new_with_span(Some(self.rule.to_owned()), self.at))))
    }
}

/// Reads and parses a Dockerfile.
fn parse_dockerfile(file: &Path) -> Result<dockerfile::Dockerfile, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|source| Failure::Usage(Report::new(CliError::Read { file: file.to_path_buf(), source })))?;
    let name = file.display().to_string();
    dockerfile::parse_str(&name, std::sync::Arc::new(text)).map_err(|e| Failure::Usage(Report::new(e)))
}

/// BuildKit's check rules on a Dockerfile: each finding printed as a
/// warning; an error (exit 1) when `# check=error=true` and any fired.
fn check_dockerfile(file: &Path) -> Result<(), Failure> {
    let df = parse_dockerfile(file)?;
    // UndefinedVar needs the base's environment: known (empty) for scratch
    // only, as a check reads no image.
    let findings = dockerfile::lint::check_with(&df, &|stage| {
        stage.from().image.text.eq_ignore_ascii_case("scratch").then(Vec::new)
    });
    let mut err = std::io::stderr().lock();
    for f in &findings {
        let warning = CheckWarning { message: f.message.clone(), rule: f.rule, src: df.src.clone(), at: f.span };
        let _ = writeln!(err, "{:?}", Report::new(warning));
    }
    drop(err);
    if !findings.is_empty() && df.directives.check.as_ref().is_some_and(|c| c.error) {
        return Err(Failure::Build(Report::new(CliError::ChecksFailed { findings: findings.len() })));
    }
    Ok(())
}

/// What to do about a rule's finding (BuildKit's rule descriptions, in
/// short and without links).
fn rule_help(rule: &str) -> &'static str {
    match rule {
        "StageNameCasing" => "write stage names in lower case",
        "FromAsCasing" => "write `AS` in the same case as `FROM`",
        "ConsistentInstructionCasing" => "write all instructions in the same case (upper case is usual)",
        "DuplicateStageName" => "give every stage its own name",
        "ReservedStageName" => "`scratch` and `context` are reserved; choose another stage name",
        "JSONArgsRecommended" => {
            "write CMD and ENTRYPOINT as a JSON array, so the program gets signals directly rather than through a shell"
        }
        "MaintainerDeprecated" => "use `LABEL org.opencontainers.image.authors=...` instead of MAINTAINER",
        "UndefinedArgInFrom" => "declare the ARG before the first FROM, or give it a default",
        "UndefinedVar" => "set the variable with ARG or ENV before this line, or check its spelling",
        "WorkdirRelativePath" => "use an absolute WORKDIR, so the result does not depend on the base image's",
        "MultipleInstructionsDisallowed" => "only the last of these instructions in a stage takes effect; keep one",
        "LegacyKeyValueFormat" => "write `KEY=VALUE` rather than `KEY VALUE`",
        "NoEmptyContinuation" => "remove the empty line inside the continued instruction",
        "ExposeProtoCasing" => "write the protocol in lower case (`/tcp`, `/udp`)",
        _ => "see the rule's description in the book's Dockerfile page",
    }
}

/// `bake import`: the Dockerfile written as a build.kdl.
fn import(args: &ImportArgs) -> Result<(), Failure> {
    let df = parse_dockerfile(&args.dockerfile)?;
    let name = args.dockerfile.file_name().map(|n| n.to_string_lossy().into_owned());
    // BuildKit reads `NAME.dockerignore` beside the Dockerfile in place of
    // the context's `.dockerignore`; a build.kdl does not.
    let own_ignore =
        name.as_ref().map(|n| format!("{n}.dockerignore")).filter(|i| args.dockerfile.with_file_name(i).is_file());
    let options = dockerfile::import::ImportOptions {
        origin: name.unwrap_or_else(|| "a Dockerfile".to_owned()),
        tags: args.tag.clone(),
        own_ignore,
    };
    let imported = dockerfile::import::import(&df, &options);
    match &args.output {
        None => print(&imported.text),
        Some(path) => std::fs::write(path, &imported.text)
            .map_err(|source| Failure::Usage(Report::new(CliError::Write { file: path.clone(), source }))),
    }
}

fn check(file: &Path, args: &LoadArgs) -> Result<(), Failure> {
    if lang::is_dockerfile(file) && file.exists() {
        check_dockerfile(file)?;
    }
    let ws = load(file, args)?;
    // Planning every target also checks that target selection resolves.
    Plan::build(&ws, &[])?;
    let images = ws.stages.iter().filter(|s| s.image.is_some()).count();
    let root = &ws.files[0].name;
    print(&format!(
        "{root}: ok ({}, {} of which {}, {}, {}, {})\n",
        count(ws.files.len(), "file"),
        count(ws.stages.len(), "stage"),
        count(images, "image"),
        count(ws.artifacts.len(), "artifact"),
        count(ws.targets.len(), "target"),
        count(ws.args.len(), "arg"),
    ))
}

fn graph(file: &Path, args: &GraphArgs) -> Result<(), Failure> {
    let ws = load(file, &args.load)?;
    let mut plan = Plan::build(&ws, &args.targets)?;
    let format = match args.format {
        GraphFormat::Dot => Format::Dot,
        GraphFormat::Mermaid => Format::Mermaid,
        GraphFormat::Json => Format::Json,
    };
    if format == Format::Json {
        plan.compute_keys(&ws, &key_options(&plan, true))?;
    }
    print(&plan.render(&ws, format))
}

fn build_options(args: &BuildArgs) -> BuildOptions {
    BuildOptions {
        no_cache: args.no_cache,
        push: args.push,
        outputs: args.output.clone(),
        epoch: args.source_date_epoch,
        pull: args.pull,
        jobs: args.jobs,
        secrets: args.secret.clone(),
        cancel: tokio_util::sync::CancellationToken::new(),
        compression: compression(args.compression),
        keep_going: args.keep_going,
        cache_from: args.cache_from.clone(),
        cache_to: args.cache_to.clone(),
        allow_insecure: args.allow.iter().any(|a| a == "security.insecure"),
        attest: bake_engine::attest::Attest { provenance: args.provenance, sbom: args.sbom },
        sign: args.sign.clone(),
    }
}

fn compression(arg: CompressionArg) -> Compression {
    match arg {
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Zstd => Compression::Zstd,
        CompressionArg::None => Compression::None,
    }
}

fn build(file: &Path, args: &BuildArgs) -> Result<(), Failure> {
    let ws = load(file, &args.load)?;
    if args.dry_run {
        return dry_run(&ws, args);
    }
    let engine = engine()?;
    let options = build_options(args);
    let started = std::time::Instant::now();
    let progress = crate::render::Progress::new(args.progress);
    if args.explain {
        let list = engine.explain(&ws, &args.targets, &options).map_err(exec_failure)?;
        progress.explanations(&list);
    }
    let render = |e: Event| progress.event(e);
    let runtime = runtime()?;
    let stopped = runtime.block_on(async { stop_on_signals(options.cancel.clone()) });
    let report = runtime.block_on(engine.build(&ws, &args.targets, &options, &render));
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            progress.finish();
            return Err(match stopped.get() {
                Some(code) => Failure::Run(Report::new(e), code),
                None => exec_failure(e),
            });
        }
    };
    progress.summary(&report, started.elapsed());
    Ok(())
}

/// How long bake waits, after Ctrl-C or SIGTERM, for the build to stop on
/// its own (killing running steps and undoing their mounts takes a few
/// milliseconds) before it exits anyway: the promise is that bake is gone
/// within a second of the signal, whatever it was doing.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(700);

/// The exit code a stop signal gave, once one came.
#[derive(Clone, Default)]
pub(crate) struct Stopped(std::sync::Arc<std::sync::OnceLock<u8>>);

impl Stopped {
    pub(crate) fn get(&self) -> Option<u8> {
        self.0.get().copied()
    }
}

/// From now on, the first SIGINT or SIGTERM cancels the build (running steps
/// are killed and their mounts undone, transfers dropped, finished results
/// stay in the store); bake then exits with 128 + the signal's number as
/// soon as the build has stopped, or after [`STOP_GRACE`] at the latest. A
/// second signal exits at once. Must be called inside the runtime.
pub(crate) fn stop_on_signals(cancel: tokio_util::sync::CancellationToken) -> Stopped {
    use tokio::signal::unix::{SignalKind, signal};
    let stopped = Stopped::default();
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return stopped;
    };
    let flag = stopped.clone();
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = int.recv() => nix::libc::SIGINT,
            _ = term.recv() => nix::libc::SIGTERM,
        };
        let code = u8::try_from(128 + signal).unwrap_or(130);
        let _ = flag.0.set(code);
        cancel.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            () = tokio::time::sleep(STOP_GRACE) => {}
        }
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"bake: interrupted\n");
        std::process::exit(i32::from(code));
    });
    stopped
}

fn explain(file: &Path, args: &ExplainArgs) -> Result<(), Failure> {
    let ws = load(file, &args.load)?;
    let engine = engine()?;
    let options = BuildOptions {
        compression: compression(args.compression),
        epoch: args.source_date_epoch,
        no_cache: args.no_cache,
        ..BuildOptions::default()
    };
    let list = engine.explain(&ws, &args.targets, &options).map_err(exec_failure)?;
    match args.format {
        ExplainFormat::Text => print(&crate::render::explain_text(&list)),
        ExplainFormat::Json => {
            print(&format!("{}\n", serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".to_owned())))
        }
    }
}

fn dry_run(ws: &Workspace, args: &BuildArgs) -> Result<(), Failure> {
    let mut plan = Plan::build(ws, &args.targets)?;
    plan.compute_keys(ws, &key_options(&plan, true))?;
    let order = plan.topo_order();
    let needed = order.iter().filter(|n| plan.graph[**n].needed).count();
    let mut out = format!("plan for {}: {needed} of {} nodes needed\n", plan.requested.join(", "), order.len());
    for n in order {
        let node = &plan.graph[n];
        let key = node.key.map_or_else(|| "-".repeat(12), |k| k.short());
        let state = if node.needed { "needed" } else { "pruned" };
        let at = node.span.map(|s| format!("  ({})", ws.location(s))).unwrap_or_default();
        let _ = writeln!(out, "  {state}  {key}  {:<8} {}{at}", node.op.kind(), describe(node, ws));
    }
    print(&out)
}

pub(crate) fn home() -> Result<Home, Failure> {
    Home::from_env().ok_or_else(|| Failure::Usage(Report::new(CliError::NoHome)))
}

pub(crate) fn engine() -> Result<Engine, Failure> {
    let config =
        Config::load(bake_engine::home::config_path().as_deref()).map_err(|e| Failure::Usage(Report::new(e)))?;
    Engine::open(home()?, &config).map_err(exec_failure)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(Report::new(CliError::Runtime(e))))
}

/// Build errors: what the user wrote is a usage error only when it is a
/// planning mistake about names; everything else failed the build.
pub(crate) fn exec_failure(e: ExecError) -> Failure {
    match e {
        ExecError::Plan(p) => Failure::from(p),
        // What the command line allows, not a failed build.
        e @ ExecError::InsecureNotAllowed { .. } => Failure::Usage(Report::new(e)),
        other => Failure::by_tier(other.tier(), Report::new(other), Failure::Build),
    }
}

/// `bake run`: the container's exit code becomes bake's.
fn run_image(args: &RunArgs) -> Result<(), Failure> {
    use bake_engine::container::RunOptions;
    let engine = engine()?;
    // NAME alone passes bake's own value, and nothing when it has none (as Docker).
    let env = args
        .env
        .iter()
        .filter_map(|e| match e.split_once('=') {
            Some((k, v)) => Some((k.to_owned(), v.to_owned())),
            None => std::env::var(e).ok().map(|v| (e.clone(), v)),
        })
        .collect();
    let options = RunOptions {
        args: args.args().to_vec(),
        entrypoint: args.entrypoint.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        volumes: args.volumes.clone(),
        platform: args.platform.clone(),
    };
    let runtime = runtime()?;
    let render = |e: Event| crate::render::plain(&e);
    let container = runtime.block_on(engine.container(args.image(), &options, &render)).map_err(run_failure)?;
    let io = crate::terminal::container_io(args.interactive, args.tty)
        .map_err(|e| Failure::Usage(Report::new(CliError::Stdio(e))))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Raw mode only when the terminal's keys go to the container.
    let raw = (args.tty && args.interactive).then(crate::terminal::RawMode::enter).flatten();
    let code = runtime.block_on(async {
        crate::terminal::forward_signals(&tx, args.tty);
        // Polled on this (the main) thread, which outlives the container:
        // the sandbox helper's parent-death signal follows the thread that
        // started it.
        container.run(io, &mut rx).await
    });
    drop(raw);
    match code.map_err(run_failure)? {
        0 => Ok(()),
        code => Err(Failure::Exit(u8::try_from(code).unwrap_or(1))),
    }
}

/// `bake run` errors: a command that cannot run exits 126 or 127 as in a
/// shell (and Docker); an unknown image or bad option is a usage error.
pub(crate) fn run_failure(e: bake_engine::container::ContainerError) -> Failure {
    use bake_engine::container::ContainerError;
    use bake_engine::sandbox::SandboxError;
    match e {
        ContainerError::Sandbox(SandboxError::NotFound { .. }) => Failure::Run(Report::new(e), 127),
        ContainerError::Sandbox(SandboxError::Exec { .. }) => Failure::Run(Report::new(e), 126),
        e if e.is_usage() => Failure::Usage(Report::new(e)),
        e => Failure::by_tier(e.tier(), Report::new(e), Failure::Build),
    }
}

/// A store error: the disk's, mostly.
fn store_failure(e: bake_engine::store::StoreError) -> Failure {
    Failure::by_tier(e.tier(), Report::new(e), Failure::Build)
}

fn store() -> Result<Store, Failure> {
    let home = home()?;
    home.prepare().map_err(|e| Failure::by_tier(e.tier(), Report::new(e), Failure::Build))?;
    Store::open(&home.store_dir()).map_err(store_failure)
}

fn images() -> Result<(), Failure> {
    let store = store()?;
    let images = store.images().map_err(store_failure)?;
    let mut out = format!("{:<50} {:<19} {:>10} {:>12}  {}\n", "NAME", "DIGEST", "SIZE", "UNCOMPRESSED", "CREATED");
    for (name, image) in images {
        let digest = image.manifest.to_string();
        let short = digest.get(..19).unwrap_or(&digest);
        let uncompressed = if image.uncompressed_size == 0 { "-".to_owned() } else { human(image.uncompressed_size) };
        // An image built for several platforms lists them after the rest.
        let platforms = if image.media_type == bake_engine::oci::media::OCI_INDEX {
            let listed: Vec<String> = bake_engine::image::index_platforms(&store, &image.manifest)
                .iter()
                .map(|(_, p)| p.to_string())
                .collect();
            format!("  [{}]", listed.join(", "))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{name:<50} {short:<19} {:>10} {uncompressed:>12}  {}{platforms}",
            human(image.size),
            image.created
        );
    }
    print(&out)
}

fn cache_du() -> Result<(), Failure> {
    let store = store()?;
    let u = store.usage().map_err(store_failure)?;
    print(&format!(
        "{} holding {}: {}, {}\n  {} kept only by cache entries (cache prune --all frees it)\n  {} kept by nothing (cache prune frees it once it is 10 minutes old)\n",
        count(u.blobs, "blob"),
        human(u.blob_bytes),
        count(u.images, "image"),
        count_as(u.cache_entries, "cache entry", "cache entries"),
        human(u.cache_only_bytes),
        human(u.unreferenced_bytes),
    ))
}

fn cache_prune(args: &PruneArgs) -> Result<(), Failure> {
    let home = home()?;
    let store = store()?;
    let max_size = match args.max_size {
        Some(size) => Some(size),
        None => {
            let config = Config::load(bake_engine::home::config_path().as_deref())
                .map_err(|e| Failure::Usage(Report::new(e)))?;
            config.store_max_size
        }
    };
    let options = PruneOptions { max_size, all_cache: args.all, ..PruneOptions::default() };
    let r = store.prune(&options).map_err(store_failure)?;
    let snapshots = Snapshots::new(home.snapshots_dir(), store)
        .prune()
        .map_err(|e| Failure::by_tier(e.tier(), Report::new(e), Failure::Build))?;
    let scratch = home.prune_scratch().map_err(|e| Failure::by_tier(e.tier(), Report::new(e), Failure::Build))?;
    print(&format!(
        "removed {} and {}, freed {} in the store, {} of unpacked layers and {} of scratch left by killed builds\n",
        count(r.blobs_removed, "blob"),
        count_as(r.cache_entries_removed, "cache entry", "cache entries"),
        human(r.bytes_freed),
        human(snapshots),
        human(scratch)
    ))
}

/// Bytes for people: `12.3 MB`.
pub(crate) fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

pub(crate) fn count(n: usize, word: &str) -> String {
    count_as(n, word, &format!("{word}s"))
}

pub(crate) fn count_as(n: usize, one: &str, many: &str) -> String {
    if n == 1 { format!("{n} {one}") } else { format!("{n} {many}") }
}

#[cfg(test)]
mod tests {
    use bake_engine::exec::ExecError;
    use bake_engine::graph::PlanError;
    use bake_engine::registry::RegistryError;

    use super::{EXIT_BUG, EXIT_BUILD, EXIT_ENVIRONMENT, EXIT_USAGE, exec_failure};

    #[test]
    fn exit_codes_follow_the_tier_of_the_error() {
        let bug = ExecError::Panicked { node: "app/1".to_owned() };
        assert_eq!(exec_failure(bug).exit_code(), EXIT_BUG);
        assert_eq!(exec_failure(ExecError::NoResult { node: "app/1".to_owned() }).exit_code(), EXIT_BUG);
        let down = RegistryError::Unreachable { registry: "r".to_owned(), reason: "refused".to_owned(), cause: None };
        assert!(matches!(exec_failure(ExecError::Registry(down)), super::Failure::Environment(_)));
        assert_eq!(exec_failure(ExecError::CacheKeepsFailing).exit_code(), EXIT_ENVIRONMENT);
        let unknown = PlanError::UnknownTarget { name: "x".to_owned(), help: String::new() };
        assert_eq!(exec_failure(ExecError::Plan(unknown)).exit_code(), EXIT_USAGE);
        let failed = ExecError::Failed { errors: vec![ExecError::Interrupted, ExecError::Stuck] };
        assert_eq!(exec_failure(failed).exit_code(), EXIT_BUG, "the worst tier of several");
        assert_eq!(exec_failure(ExecError::Interrupted).exit_code(), EXIT_BUILD);
    }
}
