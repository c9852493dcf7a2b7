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

impl Command {
    /// The positional names and load options of a command that takes both.
    pub(crate) fn targets_mut(&mut self) -> Option<(&mut Vec<String>, &mut LoadArgs)> {
        match self {
            Self::Graph(args) => Some((&mut args.targets, &mut args.load)),
            Self::Build(args) => Some((&mut args.targets, &mut args.load)),
            Self::Explain(args) => Some((&mut args.targets, &mut args.load)),
            Self::Watch(args) => Some((&mut args.targets, &mut args.load)),
            Self::Check(_) | Self::Import(_) | Self::Run(_) | Self::Images | Self::Cache(_) | Self::Doctor => None,
        }
    }

    /// The load options of a command that loads the workspace.
    pub(crate) fn load_args_mut(&mut self) -> Option<&mut LoadArgs> {
        match self {
            Self::Check(load) => Some(load),
            Self::Graph(args) => Some(&mut args.load),
            Self::Build(args) => Some(&mut args.load),
            Self::Explain(args) => Some(&mut args.load),
            Self::Watch(args) => Some(&mut args.load),
            Self::Import(_) | Self::Run(_) | Self::Images | Self::Cache(_) | Self::Doctor => None,
        }
    }

    /// Whether the command may run `run` steps or containers (and so warns
    /// about a user namespace that cannot run them well).
    pub(crate) fn runs_steps(&self) -> bool {
        matches!(self, Self::Build(_) | Self::Run(_) | Self::Watch(_))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Parse, resolve and lint the workspace; build nothing. With a
    /// Dockerfile (`-f Dockerfile`), also run BuildKit's check rules on it.
    Check(LoadArgs),
    /// Write a Dockerfile as a build.kdl (to stdout, or to the file -o names).
    Import(ImportArgs),
    /// Print the build graph.
    Graph(GraphArgs),
    /// Build targets: images into the local store, artifacts to the host.
    Build(BuildArgs),
    /// Say why each step a build would run has to run: which input changed
    /// since the last build. Runs nothing.
    Explain(ExplainArgs),
    /// Run an image from the store (pulled when missing) like `docker run`.
    ///
    /// As `docker run --rm --network host` would: entrypoint, cmd, env, workdir
    /// and user from the image's config; nothing is left behind.
    Run(RunArgs),
    /// Rebuild when an input of the targets changes; with --run, restart the
    /// image each time it changes.
    Watch(WatchArgs),
    /// List the images in the local store.
    Images,
    /// Inspect or clean the local store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Check what bake needs from this machine (namespaces, subordinate
    /// ids, overlayfs, slirp4netns, ...) and say how to fix what is missing.
    ///
    /// Exits with 0 when every needed part is present, 3 otherwise.
    Doctor,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The Dockerfile to translate.
    #[arg(value_name = "DOCKERFILE")]
    pub dockerfile: PathBuf,

    /// Write the build.kdl to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// A tag for the image (repeatable), written as a `tag` node.
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    pub tag: Vec<String>,
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
    /// Override an arg: NAME=VALUE (repeatable); for a Dockerfile, a build
    /// arg (`--build-arg` is the same option).
    #[arg(long = "set", visible_alias = "build-arg", value_name = "NAME=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, String)>,

    /// With a Dockerfile (`-f Dockerfile`): the stage to build as the image
    /// (default: the last).
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// With a Dockerfile: a tag for the image (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    pub tag: Vec<String>,

    /// With a Dockerfile: the build context, given as the one positional
    /// argument (set before the command runs).
    #[arg(skip)]
    pub context: Option<PathBuf>,

    /// Let build files name paths under DIR, outside the workspace
    /// (repeatable; the variable takes a `:`-separated list).
    #[arg(long = "allow-path", value_name = "DIR", env = "BAKE_ALLOW_PATHS", value_delimiter = ':')]
    pub allow_path: Vec<PathBuf>,

    /// Build for these target platforms, over the files' `platforms`:
    /// OS/ARCH[/VARIANT], comma-separated or repeated (linux/amd64,linux/arm64).
    #[arg(long = "platform", value_name = "PLATFORM", value_delimiter = ',', value_parser = parse_platform)]
    pub platform: Vec<bake_engine::platform::Platform>,

    /// The workspace root when `-C` was given (set before the command runs).
    #[arg(skip)]
    pub workspace: Option<PathBuf>,
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

    /// With --push, attach SLSA provenance to every pushed image (on unless
    /// `--provenance=false`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value_t = true, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub provenance: bool,

    /// With --push, sign every pushed manifest and index with the PEM ECDSA
    /// P-256 private key at PATH (sigstore format, as skopeo verifies it).
    #[arg(long, value_name = "key=PATH", value_parser = parse_sign)]
    pub sign: Option<PathBuf>,

    /// With --push, attach an SPDX SBOM to every pushed image.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value_t = false, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub sbom: bool,

    /// Also write the images elsewhere: type=oci,dest=FILE.tar |
    /// type=oci-dir,dest=DIR | type=docker,dest=FILE.tar |
    /// type=local,dest=DIR[,keep-setuid=true] (repeatable).
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

    /// Grant an entitlement: `security.insecure` lets `run` steps that ask
    /// for `security "insecure"` run with every capability and no seccomp
    /// filter (repeatable).
    #[arg(long, value_name = "ENTITLEMENT", value_parser = ["security.insecure"])]
    pub allow: Vec<String>,

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

    /// The layer compression the build would use.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,

    /// The SOURCE_DATE_EPOCH the build would use.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub source_date_epoch: i64,

    /// As `build --no-cache`: every step would run.
    #[arg(long)]
    pub no_cache: bool,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Targets, stages, images or artifacts to build (default: the `default`
    /// target, or every image).
    pub targets: Vec<String>,

    /// Run this image from the store after the first build, and restart it
    /// after every build that changes it.
    #[arg(long, value_name = "IMAGE")]
    pub run: Option<String>,

    /// Arguments that replace the image's cmd (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,

    /// Set an environment variable in the container: NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// Seconds between the stop signal and killing the old container.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub stop_timeout: u64,

    /// Milliseconds without a relevant change before a build starts.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub debounce: u64,

    /// Steps that may run at once (default: one per core).
    #[arg(long, short = 'j', value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub jobs: usize,

    /// Grant an entitlement, as `bake build --allow` does: `security.insecure`
    /// lets `run` steps that ask for `security "insecure"` run unconfined.
    #[arg(long, value_name = "ENTITLEMENT", value_parser = ["security.insecure"])]
    pub allow: Vec<String>,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ExplainFormat {
    Text,
    Json,
}

/// `bake run`. Options go before IMAGE; everything after it is the command.
#[derive(Debug, Args)]
#[command(
    override_usage = "bake run [OPTIONS] IMAGE [--] [ARGS]...",
    after_help = "The exit code is the command's (128 + N when signal N ended it); 126 or 127 when the command cannot be run or is not found in the image; 2 when the image or an option is wrong; 1 when bake failed otherwise."
)]
pub(crate) struct RunArgs {
    /// Keep stdin open: the command reads bake's stdin (else /dev/null).
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Give the command a terminal made inside the container (not the default,
    /// as in Docker; use -it for an interactive shell).
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Set an environment variable: NAME=VALUE, or NAME to pass bake's own
    /// (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,

    /// The working folder (absolute) instead of the image's.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// The user instead of the image's: NAME, UID, NAME:GROUP or UID:GID.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Replace the image's entrypoint (and drop its cmd); "" clears it.
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,

    /// Bind a host file or folder: HOST:CONTAINER, or HOST:CONTAINER:ro for
    /// read-only (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]", value_parser = parse_volume)]
    pub volumes: Vec<bake_engine::sandbox::Mount>,

    /// The platform to pull a reference for, and of a local image built for
    /// several (default: this machine's).
    #[arg(long = "platform", value_name = "PLATFORM", value_parser = parse_platform)]
    pub platform: Option<bake_engine::platform::Platform>,

    /// IMAGE: a name from `bake images` (image, stage or tag), or a reference
    /// to pull when the store does not have it. Then the command and its
    /// arguments, instead of the image's cmd (an optional `--` first). Options
    /// after IMAGE belong to the command.
    #[arg(
        value_name = "IMAGE [--] [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

impl RunArgs {
    pub(crate) fn image(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    /// The command after IMAGE, without a leading `--`.
    pub(crate) fn args(&self) -> &[String] {
        let rest = self.command.get(1..).unwrap_or_default();
        match rest.split_first() {
            Some((first, after)) if first == "--" => after,
            _ => rest,
        }
    }
}

fn parse_volume(s: &str) -> Result<bake_engine::sandbox::Mount, String> {
    let (spec, readonly) = match s.rsplit_once(':') {
        Some((rest, "ro")) => (rest, true),
        Some((rest, "rw")) => (rest, false),
        _ => (s, false),
    };
    let Some((host, target)) = spec.split_once(':') else {
        return Err(format!("expected HOST:CONTAINER[:ro], got `{s}`"));
    };
    if host.is_empty() || !target.starts_with('/') {
        return Err(format!("expected HOST:CONTAINER[:ro] with an absolute CONTAINER path, got `{s}`"));
    }
    // A relative host path is taken from the current folder.
    let source = std::path::absolute(host).map_err(|e| format!("`{host}`: {e}"))?;
    Ok(bake_engine::sandbox::Mount { source, target: target.to_owned(), readonly })
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

fn parse_platform(s: &str) -> Result<bake_engine::platform::Platform, String> {
    s.parse().map_err(|e: bake_engine::platform::PlatformError| e.to_string())
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

/// `--sign key=PATH`: the key's path. The password of an encrypted key
/// would come from the environment, never from a flag.
fn parse_sign(s: &str) -> Result<PathBuf, String> {
    match s.split_once('=') {
        Some(("key", path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(format!("`{s}` is not `key=PATH`")),
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
