//! Each subcommand: turn arguments into an engine request, call the engine,
//! render the result.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bake_engine::graph::{Format, KeyOptions, Plan, PlanError, describe};
use bake_engine::home::Home;
use bake_engine::lang::{self, LoadError, LoadOptions, Workspace};
use miette::{Diagnostic, Report};

use crate::args::{BuildArgs, Cli, Command, GraphArgs, GraphFormat, LoadArgs};

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
}

impl Failure {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Build(_) | Self::BuildMany(..) => 1,
            Self::Load(_) | Self::Usage(_) => 2,
        }
    }
}

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::UnknownTarget { .. } => Self::Usage(Report::new(e)),
            PlanError::Many { errors } => {
                let summary = format!("bake: {} while planning", count(errors.len(), "error"));
                Self::BuildMany(errors.into_iter().map(Report::new).collect(), summary)
            }
            _ => Self::Build(Report::new(e)),
        }
    }
}

/// A CLI-level error without a span.
#[derive(Debug, thiserror::Error, Diagnostic)]
enum CliError {
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
    #[error("building images is not available yet: this version of bake plans builds but does not run them")]
    #[diagnostic(
        code(bake::cli::not_yet),
        help("pass --dry-run to see the plan: every node, its key, needed or pruned")
    )]
    BuildNotAvailable,
}

pub(crate) fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(dir) = &cli.directory {
        std::env::set_current_dir(dir)
            .map_err(|source| Failure::Usage(Report::new(CliError::Directory { dir: dir.clone(), source })))?;
    }
    match cli.command {
        Command::Check(load) => check(&cli.file, &load),
        Command::Graph(args) => graph(&cli.file, &args),
        Command::Build(args) => build(&cli.file, &args),
    }
}

fn load(file: &Path, args: &LoadArgs) -> Result<Workspace, Failure> {
    if !file.exists() {
        let dir = std::env::current_dir().unwrap_or_default();
        return Err(Failure::Usage(Report::new(CliError::NoBuildFile { file: file.to_path_buf(), dir })));
    }
    let options = LoadOptions { set: args.set.clone() };
    lang::load(file, &options).map_err(Failure::Load)
}

fn key_options(include_pruned: bool) -> KeyOptions {
    KeyOptions { index_dir: Home::from_env().map(|h| h.index_dir()), include_pruned, ..KeyOptions::default() }
}

fn print(text: &str) -> Result<(), Failure> {
    crate::out(text).map_err(|e| Failure::Usage(Report::new(CliError::Output(e))))
}

fn check(file: &Path, args: &LoadArgs) -> Result<(), Failure> {
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
        plan.compute_keys(&ws, &key_options(true))?;
    }
    print(&plan.render(&ws, format))
}

fn build(file: &Path, args: &BuildArgs) -> Result<(), Failure> {
    let ws = load(file, &args.load)?;
    let mut plan = Plan::build(&ws, &args.targets)?;
    if !args.dry_run {
        return Err(Failure::Usage(Report::new(CliError::BuildNotAvailable)));
    }
    plan.compute_keys(&ws, &key_options(true))?;
    let order = plan.topo_order();
    let needed = order.iter().filter(|n| plan.graph[**n].needed).count();
    let mut out = format!("plan for {}: {needed} of {} nodes needed\n", plan.requested.join(", "), order.len());
    for n in order {
        let node = &plan.graph[n];
        let key = node.key.map_or_else(|| "-".repeat(12), |k| k.short());
        let state = if node.needed { "needed" } else { "pruned" };
        let at = node.span.map(|s| format!("  ({})", ws.location(s))).unwrap_or_default();
        let _ = writeln!(out, "  {state}  {key}  {:<8} {}{at}", node.op.kind(), describe(node, &ws));
    }
    print(&out)
}

fn count(n: usize, word: &str) -> String {
    if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") }
}
