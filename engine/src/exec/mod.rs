//! The executor: runs a [`Plan`] and produces images.
//!
//! # How a build runs
//!
//! 1. **Bases.** Every external image the needed nodes use is made local
//!    first: taken from the store when it is there, pulled otherwise. Its
//!    manifest digest then enters the keys, so a base image that moved under
//!    its tag rebuilds everything on top of it.
//! 2. **Keys.** [`Plan::compute_keys`] hashes the contexts (a no-op build
//!    only stats files) and keys every node.
//! 3. **Nodes**, in dependency order. A filesystem node (`copy`, `run`,
//!    `stage`) whose key has a result in the store is not executed: its
//!    result is the layers and config recorded under that key. Otherwise it
//!    runs and its result is recorded, last, under its key. Failures are
//!    never cached.
//! 4. **Exports**: images are written to the store under their tags and
//!    names, then to `--output` destinations, then pushed.
//!
//! A node's result ([`FsResult`]) is the full list of layers of the
//! filesystem it leaves behind, plus a config document in the store that
//! already holds those layers' diffIDs and history. An `image` node only
//! writes a manifest around its stage's result.
//!
//! # Copies
//!
//! A `copy` becomes exactly one layer. Its entries follow Docker's `COPY`
//! rules: a folder source copies its contents, a file source lands at the
//! destination or inside it when the destination is a folder (ends with `/`,
//! names several sources, or already is one); entries are owned by 0:0 unless
//! `chown=` says otherwise (names resolved in the stage's own `/etc/passwd`
//! and `/etc/group`); `chmod=` sets every copied entry's mode. Parent
//! folders that the stage already has keep their metadata; new ones are
//! 0755 root. Context files are hashed again while they are written and
//! compared with the digest their key was computed from, so a file edited in
//! the middle of a build fails the build instead of caching the wrong content.

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

use std::collections::HashMap;

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
        let failures = tokio::task::block_in_place(|| {
            let registry = resolve::RegistryCache { cache: &cache };
            let resolvers: [&dyn resolve::Resolver; 2] = [&local, &registry];
            let executor = execute::Fallback { build: &build, plan: &plan };
            let scheduler = schedule::Scheduler {
                plan: &plan,
                ws,
                resolvers: &resolvers,
                executor: &executor,
                events,
                jobs: options.parallelism(),
                keep_going: options.keep_going,
                no_cache: options.no_cache,
                interrupt: &options.cancel,
                cancel: &build.cancel,
            };
            scheduler.run(&mut state, hits)
        })?;
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
        if let Some(max_size) = self.max_size {
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
        Ok(report)
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
    /// filesystem. Used for base images and by `bake run`.
    pub async fn local_image(
        &self,
        image: &ImageRef,
        pull: bool,
        events: &dyn Events,
    ) -> Result<(Digest, FsResult), ExecError> {
        if let Some(stored) = fetch::stored_image(&self.store, image, pull)? {
            return Ok(stored);
        }
        let name = image.to_string();
        events.event(Event::Pulling { image: name.clone() });
        let pulled = self.registry.pull(image, &crate::registry::NoProgress).await?;
        let result = fetch::fs_result(&self.store, &pulled.manifest_digest)?;
        fetch::record_pulled(&self.store, &name, &pulled, &result)?;
        events.event(Event::Pulled { image: name, digest: pulled.manifest_digest.to_string() });
        Ok((pulled.manifest_digest, result))
    }
}

/// Fails when a step the build needs asks for `security "insecure"`: every
/// such step is named, before anything runs.
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
