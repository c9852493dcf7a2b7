//! The executor: runs a [`Plan`] and produces images.
//!
//! # The rooms
//!
//! | File | What lives there |
//! | --- | --- |
//! | `mod.rs` | this map, [`Engine`] and all its methods (`open`, `build`, `explain`, `local_image`; `bake run`'s `container` is in [`crate::container`]), re-exports |
//! | `contract.rs` | what callers see: [`BuildOptions`], [`Output`], [`Secret`], [`Event`] / [`Events`], [`Direction`], results ([`FsResult`], [`BuiltImage`], [`BuildReport`]) and [`ExecError`] with its [`Tier`](crate::Tier) |
//! | `schedule.rs` | the scheduler: the one owner of per-node state (`State`), the loop that starts workers and records their outcomes, `--jobs`, `--keep-going`, cancellation, early cutoff, demotion |
//! | `resolve.rs` | resolvers, tried in order before a node runs: the local store, the registry caches, and the place a remote executor plugs in |
//! | `remote.rs` | the registry cache itself: lookups, and `--cache-to` export |
//! | `execute.rs` | the fallback executor for what no resolver had, and `Build`, what every part of one build reads |
//! | `run.rs`, `copy.rs`, `secrets.rs` | the executor's body: `run` steps in the sandbox, `copy` steps (and writing stage paths to the host), secrets |
//! | `fetch.rs` | base images, and results' layers made local when a step reads them (materialize) |
//! | `export.rs` | images into the store, artifacts, `--output`, `--push`; layer compression; transfer progress as events |
//! | `explain.rs` | why a node rebuilds (`bake explain`) |
//! | `tests.rs` | the scheduler with a fake executor, and the resolvers alone |
//!
//! # How a build runs
//!
//! 1. **Bases.** Every external image the needed nodes use is resolved
//!    first: taken from the store when it is there, otherwise its manifest
//!    is resolved in its registry; its layers are pulled only when a step
//!    that runs reads them (`fetch.rs`). Its manifest digest then enters the
//!    keys, so a base image that moved under its tag rebuilds everything on
//!    top of it.
//! 2. **Keys.** [`Plan::compute_keys`] hashes the contexts (a no-op build
//!    only stats files) and keys every node.
//! 3. **Nodes**, in dependency order (`schedule.rs`). A filesystem node
//!    (`copy`, `run`, `stage`) whose key a resolver has a result for (the
//!    local store, a registry cache) is not executed: its result is the
//!    layers and config recorded under that key. Otherwise the fallback
//!    executor runs it and its result is recorded, last, under its key.
//!    Failures are never cached.
//! 4. **Exports**: images are written to the store under their tags and
//!    names, then to `--output` destinations, then pushed.
//!
//! A node's result ([`FsResult`]) is the full list of layers of the
//! filesystem it leaves behind, plus a config document in the store that
//! already holds those layers' diffIDs and history. An `image` node only
//! writes a manifest around its stage's result.

mod contract;
mod copy;
mod execute;
mod explain;
mod export;
mod fetch;
mod remote;
mod resolve;
mod run;
mod schedule;
mod secrets;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;

use crate::config::Config;
use crate::graph::{KeyOptions, Op, Plan};
use crate::home::Home;
use crate::lang::Workspace;
use crate::oci::Digest;
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::snapshot::Snapshots;
use crate::store::Store;
use execute::Build;
use schedule::{State, StepOutcome};

pub use crate::reference::CacheRef;
pub use contract::{
    BuildOptions, BuildReport, BuiltImage, Direction, Event, Events, ExecError, FsResult, Output, Quiet, Secret,
    SecretSource,
};
pub use explain::{Explanation, Reason};
pub use fetch::{fs_result, local_base_digests};
pub(crate) use run::{MAX_RUN_LAYERS, RUN_SCRATCH};
pub use secrets::{MASK, MAX_SECRET_SIZE, MIN_MASKED_LEN};

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
        let mut state = State::default();
        let base_digests = build.cancellable(build.bases(&plan, state.view_mut())).await?;
        let key_options = KeyOptions {
            index_dir: Some(self.home.index_dir()),
            base_digests,
            include_pruned: false,
            compression: options.compression,
            epoch: options.epoch,
        };
        tokio::task::block_in_place(|| plan.compute_keys(ws, &key_options))?;
        let cache = remote::RemoteCache::new(&build, ws);
        let local = resolve::LocalStore { store: &self.store };
        let hits = if options.no_cache {
            HashMap::new()
        } else {
            build.cancellable(resolve::lookups(&plan, &local, &cache, &state.view)).await?
        };
        check_emulation(ws, &plan, &hits, Path::new(crate::platform::BINFMT_DIR))?;
        let failures = tokio::task::block_in_place(|| run_nodes(&build, &plan, &mut state, hits, &local, &cache))?;
        let mut report = BuildReport::default();
        build.cancellable(build.exports(&plan, &mut state, &mut report)).await?;
        build
            .cancellable(async {
                cache.export(&build, &plan, &state).await;
                Ok(())
            })
            .await?;
        report.executed = state.count(|s| s == StepOutcome::Ran);
        report.cached = state.count(|s| s != StepOutcome::Ran);
        if failures.is_empty() {
            tokio::task::block_in_place(|| explain::remember(&build, &plan, &state));
        } else {
            let mut failures = failures;
            return Err(if failures.len() == 1 { failures.remove(0) } else { ExecError::Failed { errors: failures } });
        }
        self.trim_store(events);
        Ok(report)
    }

    /// After a build that succeeded: the store trimmed to its size cap.
    fn trim_store(&self, events: &dyn Events) {
        let Some(max_size) = self.max_size else { return };
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

    /// Why each node that a build of `targets` would run has to run, in
    /// build order (`explain.rs`).
    pub fn explain(
        &self,
        ws: &Workspace,
        targets: &[String],
        options: &BuildOptions,
    ) -> Result<Vec<Explanation>, ExecError> {
        explain::explain(self, ws, targets, options)
    }

    /// The image `image` names: from the store when it holds it whole (and
    /// `pull` is off, or the reference pins a digest), otherwise pulled and
    /// recorded in the store under its name. Returns its manifest digest and
    /// filesystem. Used for base images and by `bake run`. An image for
    /// another platform than linux/amd64 is recorded under its reference
    /// and platform ([`crate::graph::base_name`]).
    pub async fn local_image(
        &self,
        image: &ImageRef,
        platform: &crate::platform::Platform,
        pull: bool,
        events: &dyn Events,
    ) -> Result<(Digest, FsResult), ExecError> {
        let name = crate::graph::base_name(image, platform);
        if let Some(stored) = fetch::stored_image(&self.store, image, &name, pull)? {
            return Ok(stored);
        }
        events.event(Event::Pulling { image: name.clone() });
        let pulled = self.registry.pull_for(image, platform, &crate::registry::NoProgress).await?;
        let result = fetch::fs_result(&self.store, &pulled.manifest_digest)?;
        fetch::record_pulled(&self.store, &name, &pulled, &result)?;
        events.event(Event::Pulled { image: name, digest: pulled.manifest_digest.to_string() });
        Ok((pulled.manifest_digest, result))
    }
}

/// The scheduler with the real stack: the local store, then the registry
/// caches (a remote executor would come next), then the fallback executor.
fn run_nodes(
    build: &Build<'_>,
    plan: &Plan,
    state: &mut State,
    hits: HashMap<petgraph::graph::NodeIndex, resolve::Hit>,
    local: &resolve::LocalStore<'_>,
    cache: &remote::RemoteCache<'_>,
) -> Result<Vec<ExecError>, ExecError> {
    let registry = resolve::RegistryCache { cache };
    let resolvers: [&dyn resolve::Resolver; 2] = [local, &registry];
    let executor = execute::Fallback { build, plan };
    let options = build.options;
    let scheduler = schedule::Scheduler {
        plan,
        ws: build.ws,
        resolvers: &resolvers,
        executor: &executor,
        events: build.events,
        jobs: options.parallelism(),
        keep_going: options.keep_going,
        no_cache: options.no_cache,
        interrupt: &options.cancel,
        cancel: &build.cancel,
    };
    scheduler.run(state, hits)
}

/// Fails when a step the build needs asks for `security "insecure"`: every
/// such step is named, before anything runs.
/// Before any step runs: every `run` step that must run (no resolver has
/// its result) for a platform this machine does not run natively needs a
/// binfmt_misc emulator, or the build stops with how to get one. Each
/// platform is checked once.
fn check_emulation(
    ws: &Workspace,
    plan: &Plan,
    hits: &HashMap<petgraph::graph::NodeIndex, resolve::Hit>,
    binfmt: &Path,
) -> Result<(), ExecError> {
    let host = crate::platform::Platform::host();
    let mut checked = Vec::new();
    for n in plan.needed() {
        let Op::Run { stage, .. } = &plan.graph[n].op else { continue };
        let platform = &ws.stages[*stage].platform;
        if hits.contains_key(&n) || checked.contains(platform) {
            continue;
        }
        crate::platform::emulation(platform, &host, binfmt)?;
        checked.push(platform.clone());
    }
    Ok(())
}

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
