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
    /// Build targets (today: show the plan with --dry-run).
    Build(BuildArgs),
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

    #[command(flatten)]
    pub load: LoadArgs,
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
