//! Command-line arguments (clap). Parsed values become engine requests in
//! `commands`; nothing here touches the engine.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Build container images from a declarative build graph (build.kdl).
#[derive(Debug, Parser)]
#[command(name = "bake", version, about, long_about = None, arg_required_else_help = true)]
pub(crate) struct Cli {
    /// The build file to load.
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE", default_value = "build.kdl")]
    pub file: PathBuf,

    /// Change to DIR before doing anything.
    #[arg(short = 'C', long = "directory", global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Parse, resolve and lint the workspace; build nothing.
    Check(LoadArgs),
    /// Print the build graph.
    Graph(GraphArgs),
    /// Build targets: images into the local store, artifacts to the host.
    Build(BuildArgs),
    /// Say why each step a build would run has to run: which input changed
    /// since the last build. Runs nothing.
    Explain(ExplainArgs),
    /// List the images in the local store.
    Images,
    /// Inspect or clean the local store.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// Show how much the store holds: blobs, images, cache entries.
    Du,
    /// Remove what no image or cache entry needs; with --max-size, first
    /// evict least-recently-used cache entries down to that size.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    /// Evict least-recently-used cache entries until the store fits, e.g. 10GiB
    /// (default: `store max-size=` from the config file, if set).
    #[arg(long, value_name = "SIZE", value_parser = bake_engine::config::parse_size)]
    pub max_size: Option<u64>,

    /// Remove every cache entry (images stay).
    #[arg(long)]
    pub all: bool,
}

/// Options every command that loads the workspace takes.
#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// Override an arg: NAME=VALUE (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(crate) struct GraphArgs {
    /// Targets, stages, images or artifacts to select (default: the `default`
    /// target, or every image).
    pub targets: Vec<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// Targets, stages, images or artifacts to build (default: the `default`
    /// target, or every image).
    pub targets: Vec<String>,

    /// Show the plan, every node with its key, needed or pruned; run nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Push every tag of the built images.
    #[arg(long)]
    pub push: bool,

    /// Also write the images elsewhere: type=oci,dest=FILE.tar |
    /// type=oci-dir,dest=DIR | type=docker,dest=FILE.tar | type=local,dest=DIR
    /// (repeatable).
    #[arg(long, short = 'o', value_name = "SPEC", value_parser = parse_output)]
    pub output: Vec<bake_engine::exec::Output>,

    /// Run every step, ignoring recorded results.
    #[arg(long)]
    pub no_cache: bool,

    /// Layer compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,

    /// Timestamp of every file and config in the images (seconds since 1970).
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub source_date_epoch: i64,

    /// Steps that may run at once (default: one per core).
    #[arg(long, short = 'j', value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub jobs: usize,

    /// Ask the registry for every tagged base image, even those in the store.
    #[arg(long)]
    pub pull: bool,

    /// A secret `run` steps may mount: id=ID,src=FILE or id=ID,env=VARIABLE
    /// (repeatable).
    #[arg(long, value_name = "SPEC", value_parser = parse_secret)]
    pub secret: Vec<bake_engine::exec::Secret>,

    /// Look results up in this registry cache before running a step:
    /// REGISTRY/REPOSITORY[:PREFIX] (repeatable; replaces `cache-from` in
    /// build.kdl).
    #[arg(long, value_name = "REF", value_parser = parse_cache)]
    pub cache_from: Vec<bake_engine::exec::CacheRef>,

    /// Push every result of the build to this registry cache (repeatable;
    /// replaces `cache-to` in build.kdl).
    #[arg(long, value_name = "REF", value_parser = parse_cache)]
    pub cache_to: Vec<bake_engine::exec::CacheRef>,

    /// After a failure, finish the steps that do not depend on it.
    #[arg(long)]
    pub keep_going: bool,

    /// Before building, say why each step that will run has to.
    #[arg(long)]
    pub explain: bool,

    /// How to show progress: a live view on a terminal, plain lines for
    /// logs, or JSON lines on stdout.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressArg {
    /// `tty` when stderr is a terminal, else `plain`.
    Auto,
    Tty,
    Plain,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// Targets, stages, images or artifacts (default: the `default` target,
    /// or every image).
    pub targets: Vec<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
    pub format: ExplainFormat,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ExplainFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

fn parse_secret(s: &str) -> Result<bake_engine::exec::Secret, String> {
    s.parse()
}

fn parse_cache(s: &str) -> Result<bake_engine::exec::CacheRef, String> {
    s.parse()
}

fn parse_output(s: &str) -> Result<bake_engine::exec::Output, String> {
    s.parse()
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
