//! `bake run`: an image from the local store (pulled when missing) run as
//! `docker run --rm --network host` runs it.
//!
//! - **The image** is a name the store knows (`bake images`: image and
//!   stage names, tags), else a reference: looked up in the store under
//!   its normalised form (`busybox` is `docker.io/library/busybox:latest`),
//!   else pulled and recorded, as a base image is ([`Engine::local_image`]).
//! - **The process** is the config's entrypoint followed by its cmd; the
//!   caller's arguments replace the cmd; `--entrypoint` replaces the
//!   entrypoint and drops the cmd (an empty one clears it), as in Docker.
//!   Environment, working folder and user come from the config, each
//!   overridden by the options.
//! - **The filesystem** is the image's snapshots as overlay lowers with a
//!   throwaway upper folder (or a throwaway copy), removed at the end;
//!   volumes are host paths bound in. The network is the host's; hostname
//!   is the host's too (as with `--network host`), `/etc/hosts` and
//!   `/etc/resolv.conf` are made as for `run` steps.
//!
//! The sandbox does the running ([`crate::sandbox::run_container`]); this
//! module turns an image and options into a [`ContainerSpec`].

use miette::Diagnostic;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::exec::{Engine, Events, ExecError, FsResult};
use crate::image::ImageConfig;
use crate::oci::Digest;
use crate::reference::ImageRef;
use crate::registry::RegistryError;
use crate::sandbox::{ContainerIo, ContainerSpec, Control, Mount, SandboxError};

/// Errors of `bake run`.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ContainerError {
    #[error("no image `{name}` in the local store, and it cannot be pulled: {reason}")]
    #[diagnostic(code(bake::container::unknown_image))]
    UnknownImage {
        name: String,
        reason: String,
        #[help]
        help: String,
    },

    #[error("`{name}` is not in the local store, and pulling it failed")]
    #[diagnostic(code(bake::container::pull))]
    Pull {
        name: String,
        #[source]
        #[diagnostic_source]
        source: ExecError,
        #[help]
        help: String,
    },

    #[error("image `{name}` has no entrypoint and no cmd")]
    #[diagnostic(
        code(bake::container::no_command),
        help("give the command after the image: bake run {name} -- COMMAND...")
    )]
    NoCommand { name: String },

    #[error(
        "image `{name}` has {layers} layers, but a container can sit on at most {max} (overlayfs stacks 500 folders, and the sandbox needs one)"
    )]
    #[diagnostic(code(bake::container::too_many_layers), help("squash the image into fewer layers"))]
    TooManyLayers { name: String, layers: usize, max: usize },

    #[error("the working folder `{workdir}` is not an absolute path")]
    #[diagnostic(code(bake::container::workdir))]
    Workdir { workdir: String },

    #[error("cannot mount `{source_path}` at `{target}`: {reason}")]
    #[diagnostic(
        code(bake::container::volume),
        help("volumes are HOST:CONTAINER[:ro], both absolute; the host path must exist")
    )]
    Volume { source_path: String, target: String, reason: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Exec(#[from] ExecError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Sandbox(#[from] SandboxError),
}

impl ContainerError {
    /// Whether the user asked for something that cannot be (an unknown
    /// image, a bad option) rather than something failing.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::UnknownImage { .. } | Self::NoCommand { .. } | Self::Workdir { .. } | Self::Volume { .. })
    }

    /// Whose the error is.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::UnknownImage { .. }
            | Self::NoCommand { .. }
            | Self::TooManyLayers { .. }
            | Self::Workdir { .. }
            | Self::Volume { .. } => crate::Tier::Input,
            Self::Pull { source, .. } => source.tier(),
            Self::Exec(e) => e.tier(),
            Self::Sandbox(e) => e.tier(),
        }
    }
}

/// What `bake run` changes in the image's config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replace the config's cmd when not empty.
    pub args: Vec<String>,
    /// Replaces the entrypoint and drops the cmd; `""` clears it.
    pub entrypoint: Option<String>,
    /// Added to the config's environment, replacing variables of the same name.
    pub env: Vec<(String, String)>,
    /// Absolute.
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Host paths bound into the container.
    pub volumes: Vec<Mount>,
    /// `--platform`: the platform a reference is pulled for (`None`: this
    /// machine's).
    pub platform: Option<crate::platform::Platform>,
}

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct Container {
    /// The name it was found or pulled under.
    pub image: String,
    pub digest: Digest,
    pub spec: ContainerSpec,
    /// The image's `stopsignal` (`SIGTERM` when it sets none).
    pub stop_signal: String,
}

impl Container {
    /// Runs it to its end (see [`crate::sandbox::run_container`]); returns
    /// the process's exit code, 128 + signal when a signal killed it.
    pub async fn run(&self, io: ContainerIo, control: &mut UnboundedReceiver<Control>) -> Result<i32, ContainerError> {
        Ok(crate::sandbox::run_container(&self.spec, io, control).await?)
    }
}

impl Engine {
    /// Finds (or pulls) `image` and works out the container `options` ask for.
    pub async fn container(
        &self,
        image: &str,
        options: &RunOptions,
        events: &dyn Events,
    ) -> Result<Container, ContainerError> {
        let platform = options.platform.clone().unwrap_or_else(crate::platform::Platform::host);
        let (name, digest, result) = self.runnable(image, &platform, events).await?;
        let config = ImageConfig::from_json(&self.store.read_blob(&result.config).map_err(ExecError::from)?)
            .map_err(|_| ExecError::Image(crate::image::ImageError::BadManifest { digest: digest.to_string() }))?;
        let args = command(&config, options).ok_or_else(|| ContainerError::NoCommand { name: image.to_owned() })?;
        let mut env = config.env();
        for (k, v) in &options.env {
            match env.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1.clone_from(v),
                None => env.push((k.clone(), v.clone())),
            }
        }
        let cwd = match &options.workdir {
            Some(w) if !w.starts_with('/') => return Err(ContainerError::Workdir { workdir: w.clone() }),
            Some(w) => w.clone(),
            None => config.workdir(),
        };
        for m in &options.volumes {
            let bad = |reason: &str| ContainerError::Volume {
                source_path: m.source.display().to_string(),
                target: m.target.clone(),
                reason: reason.to_owned(),
            };
            if !m.source.is_absolute() || !m.target.starts_with('/') {
                return Err(bad("both paths must be absolute"));
            }
            if let Err(e) = std::fs::metadata(&m.source) {
                return Err(bad(&e.to_string()));
            }
        }
        if result.layers.len() > crate::exec::MAX_RUN_LAYERS
            && matches!(crate::sandbox::probe_in(&self.home.tmp_dir()), crate::sandbox::Backend::Overlay)
        {
            let (layers, max) = (result.layers.len(), crate::exec::MAX_RUN_LAYERS);
            return Err(ContainerError::TooManyLayers { name, layers, max });
        }
        let snapshots = self.snapshots.clone();
        let layers = result.layers.clone();
        let lowers = tokio::task::spawn_blocking(move || snapshots.unpacked_all(&layers))
            .await
            .map_err(|_| ExecError::Panicked { node: "unpacking the image's layers".to_owned() })?
            .map_err(ExecError::from)?;
        for message in self.snapshots.take_notes() {
            events.event(crate::exec::Event::Warning { message });
        }
        let hostname =
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "bake".to_owned());
        let spec = ContainerSpec {
            lowers,
            scratch: self.home.tmp_dir(),
            args,
            env,
            cwd,
            user: options.user.clone().or_else(|| config.user()),
            hostname,
            mounts: options.volumes.clone(),
        };
        let stop_signal = config.stop_signal().unwrap_or_else(|| "SIGTERM".to_owned());
        Ok(Container { image: name, digest, spec, stop_signal })
    }

    /// The image a `bake run` argument names: by its name in the store, else
    /// as a reference, from the store or pulled.
    async fn runnable(
        &self,
        image: &str,
        platform: &crate::platform::Platform,
        events: &dyn Events,
    ) -> Result<(String, Digest, FsResult), ContainerError> {
        let store = &self.store;
        // An image built for several platforms: its platform's own record,
        // else the platform's entry of the index its name holds.
        for name in [format!("{image} [{platform}]"), image.to_owned()] {
            let Some(record) = store.image(&name).map_err(ExecError::from)? else { continue };
            let manifest = if record.media_type == crate::oci::media::OCI_INDEX {
                let entries = crate::image::index_platforms(store, &record.manifest);
                let Some(best) = platform.best(entries.iter().map(|(_, p)| p)) else { continue };
                entries[best].0.clone()
            } else {
                record.manifest
            };
            if let Ok(result) = crate::exec::fs_result(store, &manifest)
                && result.layers.iter().all(|l| store.has_blob(&l.digest))
            {
                return Ok((name, manifest, result));
            }
        }
        let help = self.local_names_help(image);
        let reference = ImageRef::parse(image).map_err(|e| ContainerError::UnknownImage {
            name: image.to_owned(),
            reason: e.to_string(),
            help: help.clone(),
        })?;
        match self.local_image(&reference, platform, false, events).await {
            Ok((digest, result)) => Ok((crate::graph::base_name(&reference, platform), digest, result)),
            Err(ExecError::Registry(
                e @ (RegistryError::NotFound { .. }
                | RegistryError::Unauthorized { .. }
                | RegistryError::Denied { .. }
                | RegistryError::NoPlatform { .. }
                | RegistryError::WrongPlatform { .. }),
            )) => Err(ContainerError::UnknownImage { name: image.to_owned(), reason: e.to_string(), help }),
            Err(e) => Err(ContainerError::Pull { name: image.to_owned(), source: e, help }),
        }
    }

    /// "did you mean", or the local names, for an image that is not local.
    fn local_names_help(&self, image: &str) -> String {
        let names: Vec<String> =
            self.store.images().map(|all| all.into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
        let close = names
            .iter()
            .map(|n| (strsim::levenshtein(n, image), n))
            .filter(|(d, n)| *d <= (n.len() / 3).max(2))
            .min_by_key(|(d, _)| *d);
        match close {
            Some((_, n)) => format!("did you mean `{n}`? (`bake images` lists the local images)"),
            None if names.is_empty() => "the local store holds no image yet: build one with `bake build`".to_owned(),
            None => "`bake images` lists the local images".to_owned(),
        }
    }
}

/// The entrypoint and cmd as Docker combines them; `None` when empty.
fn command(config: &ImageConfig, options: &RunOptions) -> Option<Vec<String>> {
    let (mut args, cmd) = match &options.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (config.entrypoint().unwrap_or_default(), config.cmd().unwrap_or_default()),
    };
    if options.args.is_empty() {
        args.extend(cmd);
    } else {
        args.extend(options.args.iter().cloned());
    }
    (!args.is_empty()).then_some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let mut c = serde_json::json!({ "config": {} });
        if let Some(e) = entrypoint {
            c["config"]["Entrypoint"] = serde_json::json!(e);
        }
        if let Some(cmd) = cmd {
            c["config"]["Cmd"] = serde_json::json!(cmd);
        }
        ImageConfig::from_json(&serde_json::to_vec(&c).expect("json")).expect("config")
    }

    fn run(config: &ImageConfig, entrypoint: Option<&str>, args: &[&str]) -> Option<Vec<String>> {
        let options = RunOptions {
            entrypoint: entrypoint.map(str::to_owned),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            ..RunOptions::default()
        };
        command(config, &options)
    }

    #[test]
    fn entrypoint_and_cmd_combine_as_in_docker() {
        let both = config(Some(&["/app", "-v"]), Some(&["serve"]));
        assert_eq!(run(&both, None, &[]).expect("cmd"), ["/app", "-v", "serve"]);
        assert_eq!(run(&both, None, &["check"]).expect("cmd"), ["/app", "-v", "check"]);
        // --entrypoint drops the image's cmd.
        assert_eq!(run(&both, Some("sh"), &[]).expect("cmd"), ["sh"]);
        assert_eq!(run(&both, Some("sh"), &["-c", "x"]).expect("cmd"), ["sh", "-c", "x"]);
        assert_eq!(run(&both, Some(""), &["ls"]).expect("cmd"), ["ls"]);
        assert_eq!(run(&both, Some(""), &[]), None);
        let cmd_only = config(None, Some(&["sh"]));
        assert_eq!(run(&cmd_only, None, &["ls", "/"]).expect("cmd"), ["ls", "/"]);
        assert_eq!(run(&config(None, None), None, &[]), None);
    }
}
