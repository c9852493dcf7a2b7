//! bake's configuration file: registry mirrors and insecure registries, the
//! store's and unpacking's size caps, network timeouts, folders build files
//! may name outside their workspace, and the front end's limits.
//!
//! The file is KDL v2, like `build.kdl`, at the path [`crate::home::config_path`]
//! names (`BAKE_CONFIG`, else `$XDG_CONFIG_HOME/bake/config.kdl`, else
//! `~/.config/bake/config.kdl`). A missing file is the default configuration:
//! no mirrors, no insecure registries, no size cap.
//!
//! ```kdl
//! // Pull docker.io images through this mirror first; fall back to docker.io itself.
//! registry "docker.io" {
//!     mirror "mirror.example.com"
//! }
//! // Speak plain HTTP to this registry.
//! registry "myreg.internal:5000" insecure=#true
//! store max-size="20GiB" max-layer-size="16GiB" max-image-size="64GiB"
//! // How long a registry may keep bake waiting (these are the defaults).
//! network connect-timeout="15s" first-byte-timeout="30s" idle-timeout="60s"
//! ```
//!
//! - `registry HOST [insecure=#true] { mirror HOST... }`: settings for one
//!   registry, named as image references name it (`docker.io`,
//!   `registry.example.com:5000`). `index.docker.io` and `registry-1.docker.io`
//!   mean `docker.io`. A mirror serves the same repository paths as the
//!   registry it mirrors (`docker.io/library/busybox` is looked up as
//!   `HOST/library/busybox`); mirrors are tried in order, then the registry.
//! - Registries on loopback addresses (`localhost`, `127.0.0.0/8`, `[::1]`) are
//!   always spoken to over plain HTTP, as Docker does, with no setting needed.
//!   Every other registry uses HTTPS unless it is marked `insecure=#true`.
//! - `store max-size=SIZE`: a cap for the local store, as bytes (`1000000`) or
//!   with a unit: `KB`/`MB`/`GB`/`TB` are powers of 1000, `KiB`/`MiB`/`GiB`/`TiB`
//!   powers of 1024.
//! - `store max-layer-size=SIZE max-image-size=SIZE`: how much one layer, and
//!   all the layers of one image together, may unpack to (default 16 GiB and
//!   64 GiB; see `layer::Limits`). The environment variables
//!   `BAKE_MAX_LAYER_SIZE` and `BAKE_MAX_IMAGE_SIZE` override them.
//! - `network connect-timeout= first-byte-timeout= idle-timeout=`: how long
//!   bake waits for a registry (pulls, pushes, cache lookups, tokens), as
//!   `humantime` durations (`"15s"`, `"2m"`) or whole seconds; see
//!   [`Timeouts`]. `BAKE_CONNECT_TIMEOUT`, `BAKE_FIRST_BYTE_TIMEOUT` and
//!   `BAKE_IDLE_TIMEOUT` override the file.
//! - `allow-path "/abs/dir"...`: folders outside the workspace that build
//!   files may name (`include`, `context=`, artifact `dest=`, ignore files),
//!   as `--allow-path` does. This lives in the user's config, never in a
//!   build file, so a build file cannot widen its own reach.
//! - `limits NAME=VALUE...`: raise (or lower) the front end's limits
//!   ([`crate::lang::Limits`]): `max-file-size`, `max-expanded` and
//!   `max-expanded-total` are sizes; `max-files`, `max-nodes`, `max-stages`,
//!   `max-include-walk` and `max-graph-depth` are counts.
//!
//! Every mistake in the file is reported at once, each pointing at what the
//! user wrote, with a "did you mean" for misspelt names. The shape of each
//! node (arguments, properties, children) is a table ([`TOP`]) checked by the
//! same machinery as `build.kdl` ([`crate::lang::schema::shape`]); the
//! values are then read by each setting's own parser. The environment
//! variables that override the file are one table too ([`ENV`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::{Diagnostic, NamedSource, SourceSpan};

use crate::lang::schema::{self, Checked, Kind, Mismatch, Prop, Spec};
use crate::lang::{Limits, did_you_mean};
use crate::reference::{DEFAULT_REGISTRY, ImageRef};
use Kind::{Any, Bool};

/// bake's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Per-registry settings, by normalised registry host (`docker.io`,
    /// `localhost:5000`).
    pub registries: BTreeMap<String, RegistryConfig>,
    /// The store's size cap in bytes, from `store max-size=`.
    pub store_max_size: Option<u64>,
    /// How much one layer may unpack to: `BAKE_MAX_LAYER_SIZE`, else
    /// `store max-layer-size=`, else `layer::Limits::MAX_LAYER_BYTES`.
    pub max_layer_size: Option<u64>,
    /// How much the layers of one image may unpack to together:
    /// `BAKE_MAX_IMAGE_SIZE`, else `store max-image-size=`, else
    /// [`MAX_IMAGE_SIZE`].
    pub max_image_size: Option<u64>,
    /// The file this configuration was read from; `None` for the default
    /// configuration (no file).
    pub path: Option<PathBuf>,
    /// How long a registry may keep bake waiting.
    pub timeouts: Timeouts,
    /// Folders outside a workspace that its build files may name.
    pub allow_paths: Vec<PathBuf>,
    /// The front end's limits.
    pub limits: Limits,
}

/// How long bake waits for a registry before it gives up on a request
/// (which the retry policy may then try again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a connection (TCP and TLS). 15 s: a registry that takes longer
    /// to accept is down or unreachable; Docker waits 30 s, but a build
    /// waits for each of its attempts.
    pub connect: Duration,
    /// From sending a request to the start of the answer; for small
    /// documents (manifests, tokens, HEAD requests) to the whole answer.
    /// 30 s: registries answer in milliseconds, a cold blob behind a CDN in
    /// a few seconds; a registry silent for half a minute is stuck.
    pub first_byte: Duration,
    /// With no byte moving in either direction during a blob transfer. 60 s:
    /// long enough for a congested link or a registry that verifies a large
    /// upload before answering, short enough that a dead connection ends
    /// the build within minutes rather than hours.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(15), first_byte: Duration::from_secs(30), idle: Duration::from_mins(1) }
    }
}

/// The environment variables that override the config file's timeouts.
pub const TIMEOUT_VARS: [&str; 3] = ["BAKE_CONNECT_TIMEOUT", "BAKE_FIRST_BYTE_TIMEOUT", "BAKE_IDLE_TIMEOUT"];

/// Settings for one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Mirrors to pull from first, in order, as `host[:port]`.
    pub mirrors: Vec<String>,
    /// Speak plain HTTP to this registry.
    pub insecure: bool,
}

/// The source of the configuration file, as diagnostics show it.
pub type Src = NamedSource<Arc<String>>;

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ConfigError {
    #[error("cannot read bake's config file {}", path.display())]
    #[diagnostic(code(bake::config::read), help("check that the file is readable, or point BAKE_CONFIG elsewhere"))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{var}=`{value}` is not a valid {what}: {reason}")]
    #[diagnostic(code(bake::config::env))]
    Env {
        var: &'static str,
        /// "timeout" or "size".
        what: &'static str,
        value: String,
        reason: String,
        #[help]
        help: String,
    },

    #[error("{} in bake's config file {name}", crate::lang::plural(errors.len(), "error"))]
    #[diagnostic(code(bake::config::invalid))]
    Invalid {
        name: String,
        #[related]
        errors: Vec<ConfigProblem>,
    },
}

/// One mistake in the configuration file.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ConfigProblem {
    #[error("{message}")]
    #[diagnostic(code(bake::config::syntax))]
    Syntax {
        message: String,
        #[source_code]
        src: Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("`{name}` is not a {context} setting")]
    #[diagnostic(code(bake::config::unknown_node))]
    UnknownNode {
        name: String,
        context: &'static str,
        #[source_code]
        src: Src,
        #[label("unknown setting")]
        at: SourceSpan,
        #[help]
        help: String,
    },

    #[error("`{node}` has no property `{name}`")]
    #[diagnostic(code(bake::config::unknown_property))]
    UnknownProperty {
        node: &'static str,
        name: String,
        #[source_code]
        src: Src,
        #[label("unknown property")]
        at: SourceSpan,
        #[help]
        help: String,
    },

    #[error("{message}")]
    #[diagnostic(code(bake::config::invalid_value))]
    InvalidValue {
        message: String,
        #[source_code]
        src: Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{what} is given twice")]
    #[diagnostic(code(bake::config::duplicate), help("merge the two into one"))]
    Duplicate {
        what: String,
        #[source_code]
        src: Src,
        #[label("first here")]
        first: SourceSpan,
        #[label("again here")]
        second: SourceSpan,
    },
}

/// Overrides `store max-layer-size=`.
pub const MAX_LAYER_SIZE_VAR: &str = "BAKE_MAX_LAYER_SIZE";
/// Overrides `store max-image-size=`.
pub const MAX_IMAGE_SIZE_VAR: &str = "BAKE_MAX_IMAGE_SIZE";
/// 64 GiB: four of the largest layers allowed. The biggest images in common
/// use (CUDA development images, ML stacks) unpack to 20-30 GiB.
pub const MAX_IMAGE_SIZE: u64 = 64 << 30;

/// A setting an environment variable overrides, and where it lives.
enum EnvSetting {
    /// A size in bytes (`32GiB`), as [`parse_size`] reads it.
    Size(fn(&mut Config) -> &mut Option<u64>),
    /// A timeout (`30s`, `2m`, whole seconds), as [`parse_timeout`] reads it.
    Timeout(fn(&mut Timeouts) -> &mut Duration),
}

/// Every environment variable that overrides the config file, in the order
/// they are read (the first invalid one is the error).
const ENV: [(&str, EnvSetting); 5] = [
    (MAX_LAYER_SIZE_VAR, EnvSetting::Size(|c| &mut c.max_layer_size)),
    (MAX_IMAGE_SIZE_VAR, EnvSetting::Size(|c| &mut c.max_image_size)),
    (TIMEOUT_VARS[0], EnvSetting::Timeout(|t| &mut t.connect)),
    (TIMEOUT_VARS[1], EnvSetting::Timeout(|t| &mut t.first_byte)),
    (TIMEOUT_VARS[2], EnvSetting::Timeout(|t| &mut t.idle)),
];

impl Config {
    /// Reads the configuration file at `path`, or at [`crate::home::config_path`]
    /// when `path` is `None`. A file that does not exist is the default
    /// configuration.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = Self::load_file(path)?;
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    fn load_file(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path.map(Path::to_path_buf).or_else(crate::home::config_path) else {
            return Ok(Config::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let mut config = Self::from_str(&path.display().to_string(), &text)?;
        config.path = Some(path);
        Ok(config)
    }

    /// The settings environment variables override ([`ENV`]), over the
    /// file's; an unset or empty variable leaves the setting alone.
    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (name, setting) in ENV {
            let Some(value) = var(name).filter(|v| !v.is_empty()) else { continue };
            let invalid = |what, reason, help| ConfigError::Env { var: name, what, value: value.clone(), reason, help };
            match setting {
                EnvSetting::Size(slot) => {
                    let bytes = parse_size(&value).map_err(|reason| {
                        invalid(
                            "size",
                            reason,
                            format!("write a size such as {name}=32GiB, or unset it for the default"),
                        )
                    })?;
                    *slot(self) = Some(bytes);
                }
                EnvSetting::Timeout(slot) => {
                    *slot(&mut self.timeouts) = parse_timeout(&value).map_err(|reason| {
                        invalid(
                            "timeout",
                            reason,
                            "a duration such as \"30s\" or \"2m\", or whole seconds; unset it for the default".into(),
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Parses a configuration from text; `name` is the file name diagnostics show.
    pub fn from_str(name: &str, text: &str) -> Result<Config, ConfigError> {
        let src: Src = NamedSource::new(name, Arc::new(text.to_owned())).with_language("kdl");
        let mut errors = Vec::new();
        let config = match crate::lang::parse_checked(
            text,
            "bake's config is KDL v2: strings are quoted, properties are `key=value`",
            "the config file needs two levels at most",
        ) {
            Ok(doc) => Parser { src: &src, errors: &mut errors }.document(&doc),
            Err(problems) => {
                errors.extend(problems.into_iter().map(|p| ConfigProblem::Syntax {
                    message: p.message,
                    src: src.clone(),
                    at: p.at,
                    label: p.label,
                    help: p.help,
                }));
                Config::default()
            }
        };
        if errors.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { name: name.to_owned(), errors }) }
    }

    /// The settings for a registry host, if the file has any. Docker Hub's
    /// aliases (`index.docker.io`, `registry-1.docker.io`) find `docker.io`.
    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries.get(normalize_registry(host))
    }

    /// Whether bake speaks plain HTTP to `host`: a loopback address, or a
    /// registry marked `insecure=#true`.
    pub fn plain_http(&self, host: &str) -> bool {
        is_loopback(host) || self.registry(host).is_some_and(|r| r.insecure)
    }

    /// The mirrors configured for a registry, in order (empty when none).
    pub fn mirrors(&self, host: &str) -> &[String] {
        self.registry(host).map_or(&[], |r| r.mirrors.as_slice())
    }
}

/// A timeout: a `humantime` duration (`"30s"`, `"1m 30s"`) or whole
/// seconds, more than zero.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string())?,
    };
    if parsed.is_zero() {
        return Err("a timeout must be longer than zero".to_owned());
    }
    Ok(parsed)
}

/// Docker Hub's host aliases, normalised to `docker.io`.
pub fn normalize_registry(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
        other => other,
    }
}

/// Whether a registry host is a loopback address, which Docker (and bake)
/// speak to over plain HTTP: `localhost`, `127.0.0.0/8` and `[::1]`, with or
/// without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A size for messages, exact: `16 GiB`, `1.5 MiB` is `1572864 bytes`.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Parses a size: bytes (`1000000`), or a number with a unit (`20GiB`, `1.5 GB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    if number.is_empty() {
        return Err("a size starts with a number".to_owned());
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(format!("`{unit}` is not a size unit: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') || (whole.is_empty() && fraction.is_empty()) {
        return Err(format!("`{number}` is not a number"));
    }
    let whole: u64 =
        if whole.is_empty() { 0 } else { whole.parse().map_err(|_| "the size is too large".to_owned())? };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(|| "the size is too large".to_owned())?;
    // Up to 9 decimals, exactly: `1.5GB` is 1_500_000_000 bytes.
    if !fraction.is_empty() {
        if fraction.len() > 9 {
            return Err("use at most 9 decimals".to_owned());
        }
        let digits: u64 = fraction.parse().map_err(|_| format!("`{number}` is not a number"))?;
        let scale = 10u64.pow(u32::try_from(fraction.len()).unwrap_or(9));
        let part = u128::from(digits) * u128::from(multiplier) / u128::from(scale);
        bytes = u64::try_from(part)
            .ok()
            .and_then(|p| bytes.checked_add(p))
            .ok_or_else(|| "the size is too large".to_owned())?;
    }
    Ok(bytes)
}

/// A property of a config node. Given twice, the last one counts (KDL's
/// rule), as it always has in this file.
const fn setting(name: &'static str, kind: Kind) -> Prop {
    Prop { name, kind, required: false, repeat: true }
}

const STORE_PROPS: &[Prop] =
    &[setting("max-size", Any), setting("max-layer-size", Any), setting("max-image-size", Any)];
const NETWORK_PROPS: &[Prop] =
    &[setting("connect-timeout", Any), setting("first-byte-timeout", Any), setting("idle-timeout", Any)];
/// `limits`: the sizes, then the counts.
const LIMIT_PROPS: &[Prop] = &[
    setting("max-file-size", Any),
    setting("max-files", Any),
    setting("max-nodes", Any),
    setting("max-stages", Any),
    setting("max-include-walk", Any),
    setting("max-expanded", Any),
    setting("max-expanded-total", Any),
    setting("max-graph-depth", Any),
];

/// The shape of every top-level node, checked by the same machinery as
/// `build.kdl` ([`crate::lang::schema`]). Values are [`Kind::Any`] where the
/// setting's own parser explains the format (sizes, durations, hosts).
const TOP: &[Spec] = &[
    Spec {
        name: "registry",
        min: 1,
        max: Some(1),
        args: &[Any],
        args_doc: "a registry host",
        props: &[setting("insecure", Bool)],
        children: Some(&["mirror"]),
        example: "registry \"docker.io\" { mirror \"mirror.example.com\" }",
    },
    Spec {
        name: "store",
        min: 0,
        max: Some(0),
        args: &[Any],
        args_doc: "properties only",
        props: STORE_PROPS,
        children: None,
        example: "store max-size=\"20GiB\"",
    },
    Spec {
        name: "network",
        min: 0,
        max: Some(0),
        args: &[Any],
        args_doc: "properties only",
        props: NETWORK_PROPS,
        children: None,
        example: "network connect-timeout=\"15s\" first-byte-timeout=\"30s\" idle-timeout=\"60s\"",
    },
    Spec {
        name: "allow-path",
        min: 1,
        max: None,
        args: &[Any],
        args_doc: "a folder",
        props: &[],
        children: None,
        example: "allow-path \"/srv/shared-contexts\"",
    },
    Spec {
        name: "limits",
        min: 0,
        max: Some(0),
        args: &[Any],
        args_doc: "properties only",
        props: LIMIT_PROPS,
        children: None,
        example: "limits max-graph-depth=512",
    },
];

/// The nodes of a `registry` block.
const REGISTRY_BODY: &[Spec] = &[Spec {
    name: "mirror",
    min: 1,
    max: None,
    args: &[Any],
    args_doc: "a registry host",
    props: &[],
    children: None,
    example: "mirror \"mirror.example.com\"",
}];

/// Walks the document, collecting settings and every mistake.
struct Parser<'a> {
    src: &'a Src,
    errors: &'a mut Vec<ConfigProblem>,
}

impl Parser<'_> {
    fn document(&mut self, doc: &KdlDocument) -> Config {
        let mut config = Config::default();
        // Where each registry and the store were configured, for duplicates.
        let mut registry_sites: BTreeMap<String, SourceSpan> = BTreeMap::new();
        let mut store_site: Option<SourceSpan> = None;
        let mut network_site: Option<SourceSpan> = None;
        for node in doc.nodes() {
            let before = self.errors.len();
            let Some((spec, checked)) = self.check(TOP, "top-level", node) else { continue };
            match spec.name {
                "registry" => {
                    if let Some((host, at, settings)) = self.registry(node, &checked, before) {
                        if let Some(first) = registry_sites.get(&host) {
                            self.duplicate(format!("registry `{host}`"), *first, at);
                        } else {
                            registry_sites.insert(host.clone(), at);
                            if let Some(settings) = settings {
                                config.registries.insert(host, settings);
                            }
                        }
                    }
                }
                "store" => {
                    if let Some(first) = store_site {
                        self.duplicate("`store`".to_owned(), first, node.name().span());
                    }
                    store_site = Some(node.name().span());
                    self.store(spec, &checked, &mut config);
                }
                "network" => {
                    if let Some(first) = network_site {
                        self.duplicate("`network`".to_owned(), first, node.name().span());
                    }
                    network_site = Some(node.name().span());
                    self.network(spec, &checked, &mut config.timeouts);
                }
                "allow-path" => self.allow_paths(spec, &checked, &mut config.allow_paths),
                _ => self.limits(&checked, &mut config.limits),
            }
        }
        config
    }

    /// Finds `node`'s spec among `specs` and matches the node against it,
    /// reporting what does not fit; `None` for a node that is not a setting.
    fn check<'n>(
        &mut self,
        specs: &'static [Spec],
        context: &'static str,
        node: &'n KdlNode,
    ) -> Option<(&'static Spec, Checked<'n>)> {
        let name = node.name().value();
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let valid: Vec<&str> = specs.iter().map(|s| s.name).collect();
            self.unknown_node(node, name, context, &valid);
            return None;
        };
        let checked = schema::shape(spec, node, &mut |mismatch| {
            let problem = self.mismatch(spec, node, mismatch);
            self.errors.push(problem);
        });
        Some((spec, checked))
    }

    /// A shape mistake, in the config file's words.
    fn mismatch(&self, spec: &Spec, node: &KdlNode, mismatch: Mismatch<'_>) -> ConfigProblem {
        let example = Some(format!("for example: {}", spec.example));
        let invalid = |message: String, at: SourceSpan, label: String, help: Option<String>| {
            ConfigProblem::InvalidValue { message, src: self.src.clone(), at, label, help }
        };
        match mismatch {
            Mismatch::WrongType { index, prop, kind, entry } => {
                let what = prop
                    .map_or_else(|| format!("argument {} of `{}`", index + 1, spec.name), |p| format!("`{}=`", p.name));
                invalid(
                    format!("{what} must be {}", kind.describe()),
                    entry.span(),
                    format!("expected {}", kind.describe()),
                    None,
                )
            }
            Mismatch::UnknownProperty { entry, name } => {
                let valid: Vec<&str> = spec.props.iter().map(|p| p.name).collect();
                let help = if valid.is_empty() {
                    format!("`{}` takes no properties", spec.name)
                } else {
                    let list = format!("properties of `{}`: {}", spec.name, valid.join(", "));
                    match did_you_mean(name, valid.iter().copied()) {
                        Some(close) => format!("did you mean `{close}`? {list}"),
                        None => list,
                    }
                };
                ConfigProblem::UnknownProperty {
                    node: spec.name,
                    name: name.to_owned(),
                    src: self.src.clone(),
                    at: entry.span(),
                    help,
                }
            }
            Mismatch::DuplicateProperty { prop, first, second } => ConfigProblem::Duplicate {
                what: format!("`{}=`", prop.name),
                src: self.src.clone(),
                first: first.span(),
                second: second.span(),
            },
            Mismatch::ArgumentCount { extra: None, .. } => invalid(
                format!("`{}` needs {}", spec.name, spec.args_doc),
                node.name().span(),
                format!("needs {}", spec.args_doc),
                example,
            ),
            Mismatch::ArgumentCount { extra: Some(extra), .. } => invalid(
                if spec.max == Some(0) {
                    format!("`{}` takes properties only", spec.name)
                } else {
                    format!("`{}` takes only {}", spec.name, spec.args_doc)
                },
                extra.span(),
                "unexpected from here on".to_owned(),
                example,
            ),
            Mismatch::MissingProperty { prop } => invalid(
                format!("`{}` needs `{}=`", spec.name, prop.name),
                node.name().span(),
                format!("needs `{}=`", prop.name),
                example,
            ),
            Mismatch::UnexpectedChildren { at } => {
                invalid(format!("`{}` takes no children block", spec.name), at, "remove this block".to_owned(), example)
            }
        }
    }

    /// `network connect-timeout= first-byte-timeout= idle-timeout=`.
    fn network(&mut self, spec: &Spec, checked: &Checked<'_>, timeouts: &mut Timeouts) {
        for (name, slot) in [
            ("connect-timeout", &mut timeouts.connect),
            ("first-byte-timeout", &mut timeouts.first_byte),
            ("idle-timeout", &mut timeouts.idle),
        ] {
            for entry in checked.props(name) {
                let parsed = match entry.value() {
                    KdlValue::String(s) => parse_timeout(s),
                    KdlValue::Integer(i) => u64::try_from(*i)
                        .map_err(|_| "a timeout cannot be negative".to_owned())
                        .and_then(|secs| parse_timeout(&secs.to_string())),
                    _ => Err("a timeout is a string like \"30s\" or a number of seconds".to_owned()),
                };
                match parsed {
                    Ok(duration) => *slot = duration,
                    Err(reason) => self.invalid(
                        entry,
                        format!("`{name}=` is not a valid timeout: {reason}"),
                        "not a timeout",
                        Some(format!("for example: {}", spec.example)),
                    ),
                }
            }
        }
    }

    /// `allow-path "/abs/dir"...`: absolute folders, repeatable.
    fn allow_paths(&mut self, spec: &Spec, checked: &Checked<'_>, out: &mut Vec<PathBuf>) {
        for entry in &checked.args {
            match entry.value().as_string() {
                Some(path) if Path::new(path).is_absolute() => out.push(PathBuf::from(path)),
                _ => self.invalid(
                    entry,
                    "`allow-path` takes absolute paths".to_owned(),
                    "not an absolute path",
                    Some(format!("for example: {}", spec.example)),
                ),
            }
        }
    }

    /// `limits NAME=VALUE...`: sizes or counts, each at least 1.
    fn limits(&mut self, checked: &Checked<'_>, limits: &mut Limits) {
        for prop in LIMIT_PROPS {
            let name = prop.name;
            for entry in checked.props(name) {
                let is_size = matches!(name, "max-file-size" | "max-expanded" | "max-expanded-total");
                let parsed = match entry.value() {
                    KdlValue::String(s) if is_size => parse_size(s),
                    KdlValue::Integer(i) => u64::try_from(*i).map_err(|_| "a limit cannot be negative".to_owned()),
                    _ if is_size => Err("a size is a string like \"32MiB\" or a number of bytes".to_owned()),
                    _ => Err("a count is a whole number".to_owned()),
                }
                .and_then(|n| if n == 0 { Err("a limit of 0 would refuse everything".to_owned()) } else { Ok(n) });
                let value = match parsed {
                    Ok(n) => n,
                    Err(reason) => {
                        self.invalid(entry, format!("`{name}=` is not a valid limit: {reason}"), "not a limit", None);
                        continue;
                    }
                };
                let count = usize::try_from(value).unwrap_or(usize::MAX);
                match name {
                    "max-file-size" => limits.max_file_size = value,
                    "max-files" => limits.max_files = count,
                    "max-nodes" => limits.max_nodes = count,
                    "max-stages" => limits.max_stages = count,
                    "max-include-walk" => limits.max_include_walk = count,
                    "max-expanded" => limits.max_expanded = count,
                    "max-expanded-total" => limits.max_expanded_total = count,
                    _ => limits.max_graph_depth = count,
                }
            }
        }
    }

    /// `registry HOST [insecure=BOOL] { mirror HOST... }`: the host, where it
    /// is written, and the settings when the node has no mistake (counting
    /// from `before`, so that those its shape check found count too).
    fn registry(
        &mut self,
        node: &KdlNode,
        checked: &Checked<'_>,
        before: usize,
    ) -> Option<(String, SourceSpan, Option<RegistryConfig>)> {
        let mut settings = RegistryConfig::default();
        let host = checked.args.first().and_then(|entry| self.host(entry, "a registry").map(|h| (h, entry.span())));
        if let Some(KdlValue::Bool(b)) = checked.prop("insecure").map(KdlEntry::value) {
            settings.insecure = *b;
        }
        for child in node.children().map(KdlDocument::nodes).unwrap_or_default() {
            let Some((_, mirror)) = self.check(REGISTRY_BODY, "registry", child) else { continue };
            for entry in &mirror.args {
                if let Some(host) = self.host(entry, "a mirror") {
                    settings.mirrors.push(host);
                }
            }
        }
        let ok = self.errors.len() == before;
        host.map(|(h, at)| (h, at, ok.then_some(settings)))
    }

    /// `store max-size=SIZE max-layer-size=SIZE max-image-size=SIZE`, into
    /// `config`.
    fn store(&mut self, spec: &Spec, checked: &Checked<'_>, config: &mut Config) {
        for (name, slot) in [
            ("max-size", &mut config.store_max_size),
            ("max-layer-size", &mut config.max_layer_size),
            ("max-image-size", &mut config.max_image_size),
        ] {
            for entry in checked.props(name) {
                let parsed = match entry.value() {
                    KdlValue::String(s) => parse_size(s),
                    KdlValue::Integer(i) => u64::try_from(*i).map_err(|_| "a size cannot be negative".to_owned()),
                    _ => Err("a size is a string like \"20GiB\" or a number of bytes".to_owned()),
                };
                match parsed {
                    Ok(bytes) => *slot = Some(bytes),
                    Err(reason) => self.invalid(
                        entry,
                        format!("`{name}=` is not a valid size: {reason}"),
                        "not a size",
                        Some(format!("for example: {}", spec.example)),
                    ),
                }
            }
        }
    }

    /// A registry host argument: `host[:port]`, normalised. An `https://`
    /// prefix (as Docker's `registry-mirrors` lists write them) is accepted.
    fn host(&mut self, entry: &KdlEntry, what: &str) -> Option<String> {
        let Some(text) = entry.value().as_string() else {
            self.invalid(entry, format!("{what} must be a quoted host name"), "expected a string", None);
            return None;
        };
        if text.starts_with("http://") {
            self.invalid(
                entry,
                format!("{what} is named by its host, not a URL"),
                "not a host",
                Some(
                    "write the host (\"host:port\"); to speak plain HTTP to it, add `registry \"host:port\" insecure=#true`"
                        .to_owned(),
                ),
            );
            return None;
        }
        let host = text.strip_prefix("https://").unwrap_or(text);
        let host = host.strip_suffix('/').unwrap_or(host);
        // A host is what an image reference would read as its registry.
        let ok = ImageRef::parse(&format!("{host}/x")).is_ok_and(|r| r.registry == host);
        if !ok {
            let help = if host.contains('/') {
                "a registry is a host with an optional port (\"mirror.example.com:5000\"), without a path"
            } else {
                "a registry host has a `.` or a `:port`, or is `localhost` (\"registry.example.com\", \"localhost:5000\")"
            };
            self.invalid(
                entry,
                format!("`{text}` is not a registry host"),
                "not a registry host",
                Some(help.to_owned()),
            );
            return None;
        }
        Some(normalize_registry(host).to_owned())
    }

    fn invalid(&mut self, entry: &KdlEntry, message: String, label: &str, help: Option<String>) {
        self.errors.push(ConfigProblem::InvalidValue {
            message,
            src: self.src.clone(),
            at: entry.span(),
            label: label.to_owned(),
            help,
        });
    }

    fn unknown_node(&mut self, node: &KdlNode, name: &str, context: &'static str, valid: &[&str]) {
        let list = format!("{context} settings: {}", valid.join(", "));
        let help = match did_you_mean(name, valid.iter().copied()) {
            Some(close) => format!("did you mean `{close}`? {list}"),
            None => list,
        };
        self.errors.push(ConfigProblem::UnknownNode {
            name: name.to_owned(),
            context,
            src: self.src.clone(),
            at: node.name().span(),
            help,
        });
    }

    fn duplicate(&mut self, what: String, first: SourceSpan, second: SourceSpan) {
        self.errors.push(ConfigProblem::Duplicate { what, src: self.src.clone(), first, second });
    }
}

impl ConfigError {
    /// Whose the error is: the config file's, unless it cannot be read.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::Read { .. } => crate::Tier::Environment,
            Self::Env { .. } | Self::Invalid { .. } => crate::Tier::Input,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(err: &ConfigError) -> String {
        let mut out = String::new();
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor()).with_width(80);
        handler.render_report(&mut out, err).expect("render");
        out
    }

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
            registry "docker.io" { mirror "localhost:5000" "https://mirror.example.com/"; }
            registry "myreg.internal:5000" insecure=#true
            store max-size="20GiB"
        "#;
        let config = Config::from_str("config.kdl", text).expect("valid");
        assert_eq!(config.mirrors("docker.io"), ["localhost:5000", "mirror.example.com"]);
        assert_eq!(config.mirrors("index.docker.io"), ["localhost:5000", "mirror.example.com"]);
        assert!(config.plain_http("myreg.internal:5000"));
        assert!(!config.plain_http("myreg.internal:5001"));
        assert!(config.plain_http("localhost:5000"));
        assert!(config.plain_http("127.0.0.1:41234"));
        assert!(config.plain_http("[::1]:5000"));
        assert!(!config.plain_http("docker.io"));
        assert_eq!(config.store_max_size, Some(20 << 30));
        assert_eq!(Config::from_str("c", "").expect("empty"), Config::default());
    }

    #[test]
    fn a_missing_file_is_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::load(Some(&dir.path().join("nope.kdl"))).expect("default");
        assert_eq!(config, Config::default());
        let path = dir.path().join("config.kdl");
        std::fs::write(&path, "store max-size=1000\n").expect("write");
        let config = Config::load(Some(&path)).expect("loads");
        assert_eq!(config.store_max_size, Some(1000));
        assert_eq!(config.path.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn timeouts_from_the_file_and_the_environment() {
        let config = Config::from_str("c", "").expect("empty");
        assert_eq!(config.timeouts, Timeouts::default());
        let mut config =
            Config::from_str("c", r#"network connect-timeout=5 first-byte-timeout="1m 30s" idle-timeout="2m""#)
                .expect("valid");
        assert_eq!(config.timeouts.connect, Duration::from_secs(5));
        assert_eq!(config.timeouts.first_byte, Duration::from_secs(90));
        assert_eq!(config.timeouts.idle, Duration::from_mins(2));
        config.apply_env(|var| (var == "BAKE_IDLE_TIMEOUT").then(|| "3s".to_owned())).expect("valid variable");
        assert_eq!(config.timeouts.idle, Duration::from_secs(3));
        assert_eq!(config.timeouts.connect, Duration::from_secs(5));
        let err = config.apply_env(|var| var.ends_with("_TIMEOUT").then(|| "soon".to_owned())).expect_err("invalid");
        assert!(err.to_string().contains("BAKE_CONNECT_TIMEOUT"), "{err}");
        let err = Config::from_str("c", r#"network idle-timeout="0s" connect=1"#).expect_err("invalid");
        let text = render(&err);
        assert!(text.contains("`idle-timeout=` is not a valid timeout"), "{text}");
        assert!(text.contains("`network` has no property `connect`"), "{text}");
    }

    #[test]
    fn unpack_limits_from_the_file_and_the_environment() {
        let mut config =
            Config::from_str("c", "store max-layer-size=\"1GiB\" max-image-size=\"3GiB\"\n").expect("parses");
        assert_eq!((config.max_layer_size, config.max_image_size), (Some(1 << 30), Some(3 << 30)));
        config.apply_env(|name| (name == MAX_LAYER_SIZE_VAR).then(|| "2GiB".to_owned())).expect("env");
        assert_eq!((config.max_layer_size, config.max_image_size), (Some(2 << 30), Some(3 << 30)));
        let err = config.apply_env(|_| Some("lots".to_owned())).expect_err("not a size");
        assert!(err.to_string().starts_with("BAKE_MAX_LAYER_SIZE=`lots` is not a valid size"), "{err}");
        assert!(Config::from_str("c", "store max-layer-size=\"big\"\n").is_err());
        assert_eq!(format_size(16 << 30), "16 GiB");
        assert_eq!(format_size(3 << 19), "1536 KiB");
        assert_eq!(format_size(1000), "1000 bytes");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("20gib"), Ok(20 << 30));
        assert_eq!(parse_size("7KB"), Ok(7000));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        assert!(parse_size("GB").is_err());
        assert!(parse_size("1.2.3GB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert!(parse_size(".").is_err());
    }

    #[test]
    fn loopback() {
        for host in ["localhost", "localhost:5000", "LOCALHOST:1", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "[::1]"]
        {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["docker.io", "10.0.0.1:5000", "localhost.example.com", "[::2]:5000", "128.0.0.1"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn every_mistake_at_once() {
        let text = r#"registy "docker.io"
registry "docker.io" insecur=#true { mirorr "x.example.com"; }
registry "index.docker.io"
registry "notahost" { mirror "http://plain.example.com" "a.example.com/path" }
registry
store max-size="20 parsecs"
"#;
        let err = Config::from_str("config.kdl", text).expect_err("invalid");
        let ConfigError::Invalid { errors, .. } = &err else { panic!("{err:?}") };
        let out = render(&err);
        assert_eq!(errors.len(), 9, "{out}");
        for needle in [
            "did you mean `registry`?",
            "did you mean `insecure`?",
            "did you mean `mirror`?",
            "registry `docker.io` is given twice",
            "`notahost` is not a registry host",
            "not a URL",
            "without a path",
            "`registry` needs a registry host",
            "`parsecs` is not a size unit",
        ] {
            assert!(out.contains(needle) || format!("{errors:?}").contains(needle), "missing {needle:?} in\n{out}");
        }
        // Labels point into the file.
        assert!(out.contains("config.kdl:1:1"), "{out}");
    }

    #[test]
    fn shapes_are_checked_by_the_schema() {
        // Arguments where only properties go: one error from the first one on.
        let err = Config::from_str("config.kdl", "network 5 6\n").expect_err("invalid");
        let ConfigError::Invalid { errors, .. } = &err else { panic!("{err:?}") };
        assert_eq!(errors.len(), 1, "{}", render(&err));
        assert!(render(&err).contains("`network` takes properties only"), "{}", render(&err));
        // A children block where none goes, with the node's example.
        let out = render(
            &Config::from_str("config.kdl", "registry \"a.io\" { mirror \"m.io\" { }; }\n").expect_err("invalid"),
        );
        assert!(out.contains("`mirror` takes no children block"), "{out}");
        assert!(out.contains("for example: mirror \"mirror.example.com\""), "{out}");
        // The wrong type for a typed property, in the config's own words.
        let out = render(&Config::from_str("config.kdl", "registry \"a.io\" insecure=\"yes\"\n").expect_err("bad"));
        assert!(out.contains("`insecure=` must be #true or #false"), "{out}");
        // A setting given twice: the last one counts, as it always has.
        let config = Config::from_str("config.kdl", "store max-size=1 max-size=\"2KiB\"\n").expect("valid");
        assert_eq!(config.store_max_size, Some(2048));
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = Config::from_str("config.kdl", "registry \"docker.io\" {\n").expect_err("invalid");
        let out = render(&err);
        assert!(out.contains("config.kdl"), "{out}");
        assert!(matches!(&err, ConfigError::Invalid { errors, .. } if !errors.is_empty()));
    }

    #[test]
    fn limits_and_allowed_paths() {
        let config = Config::from_str(
            "config.kdl",
            "limits max-file-size=\"4MiB\" max-graph-depth=512 max-nodes=1000\nallow-path \"/srv/a\" \"/srv/b\"\n",
        )
        .expect("valid");
        assert_eq!(config.limits.max_file_size, 4 << 20);
        assert_eq!(config.limits.max_graph_depth, 512);
        assert_eq!(config.limits.max_nodes, 1000);
        assert_eq!(config.limits.max_stages, Limits::MAX_STAGES);
        assert_eq!(config.allow_paths, [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]);
        let err = Config::from_str(
            "config.kdl",
            "limits max-file=3 max-files=0 max-expanded=\"lots\"\nallow-path \"relative\"\n",
        )
        .expect_err("invalid");
        let out = render(&err);
        for needle in [
            "did you mean `max-files`",
            "a limit of 0 would refuse everything",
            "`max-expanded=` is not a valid limit",
            "`allow-path` takes absolute paths",
        ] {
            assert!(out.contains(needle), "missing {needle:?} in\n{out}");
        }
    }
}
