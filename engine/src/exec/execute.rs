//! The fallback executor: runs the `copy`, `run` and stage nodes that no
//! resolver had a result for (`copy.rs`, `run.rs` do the work), records
//! each result under its key, and holds what every part of a build reads:
//! [`Build`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use petgraph::graph::NodeIndex;

use super::schedule::{Executor, View};
use super::{BuildOptions, Engine, Events, ExecError, FsResult, copy, run, secrets};
use crate::graph::{Key, Op, Plan};
use crate::image::ImageConfig;
use crate::lang::{InstructionKind, StageId, Workspace};
use crate::oci::Digest;
use crate::store::{CacheEntry, Store};

/// What one build's parts read: the engine, the workspace, the options, the
/// events, the secrets. Node state is not here: the scheduler owns it
/// (`schedule::State`).
pub(super) struct Build<'a> {
    pub engine: &'a Engine,
    pub ws: &'a Workspace,
    pub options: &'a BuildOptions,
    pub events: &'a dyn Events,
    /// RFC 3339 of the epoch.
    pub created: String,
    pub started: Instant,
    /// One fetch at a time per node: steps that need the same base image
    /// wait for the first one's pull instead of pulling it again (see
    /// `fetch.rs`).
    pub fetching: Mutex<HashMap<NodeIndex, Arc<Mutex<()>>>>,
    /// The build's own cancellation: fired by the caller's token (Ctrl-C) or
    /// by a failing step, to stop the steps running beside it.
    pub cancel: tokio_util::sync::CancellationToken,
    /// The secrets' values, read when the build started.
    pub secrets: &'a [secrets::Loaded],
    /// Masks them in what steps print (`events` masks every event too).
    pub masker: &'a secrets::Masker,
}

/// Locks a mutex, ignoring poisoning (a panicking step is reported anyway).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<'a> Build<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        ws: &'a Workspace,
        options: &'a BuildOptions,
        events: &'a dyn Events,
    ) -> Self {
        Build {
            engine,
            ws,
            options,
            events,
            created: crate::image::timestamp(options.epoch),
            started: Instant::now(),
            fetching: Mutex::new(HashMap::new()),
            cancel: options.cancel.child_token(),
            secrets: &[],
            masker: &secrets::NO_MASKER,
        }
    }

    /// `work`, unless the build is cancelled first: registry calls are
    /// futures that may wait on a silent server, and only dropping them
    /// stops them.
    pub(super) async fn cancellable<T>(
        &self,
        work: impl Future<Output = Result<T, ExecError>>,
    ) -> Result<T, ExecError> {
        // Boxed: these are the build's large futures (registry transfers).
        let work = Box::pin(work);
        tokio::select! {
            result = work => result,
            () = self.cancel.cancelled() => Err(ExecError::Interrupted),
        }
    }

    pub(super) fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Where each bind of a `run` step reads: the context's selection, or
    /// the result of a stage or a base image.
    fn bind_sources(
        &self,
        view: &View,
        plan: &Plan,
        n: NodeIndex,
        run: &crate::lang::Run,
    ) -> Result<Vec<run::BindSource>, ExecError> {
        let mut out = Vec::with_capacity(run.binds.len());
        for (i, bind) in run.binds.iter().enumerate() {
            out.push(match &bind.from {
                crate::lang::CopySource::Context => run::BindSource::Context(plan.bind_reads.get(&(n, i)).cloned()),
                crate::lang::CopySource::Stage(s) => run::BindSource::Fs(
                    view.result(plan, plan.stage_node(*s))?,
                    format!("stage `{}`", self.ws.stages[*s].name),
                ),
                crate::lang::CopySource::Image(r) => {
                    let pull = plan
                        .graph
                        .neighbors_directed(n, petgraph::Direction::Incoming)
                        .find(|p| matches!(&plan.graph[*p].op, Op::Pull { image, .. } if image == r));
                    let pull = pull.ok_or_else(|| ExecError::NoPull { image: r.to_string() })?;
                    run::BindSource::Fs(view.result(plan, pull)?, format!("image `{r}`"))
                }
            });
        }
        Ok(out)
    }

    /// Runs node `n`: a `copy`, a `run`, or a stage's final config.
    fn execute(&self, view: &View, plan: &Plan, n: NodeIndex) -> Result<FsResult, ExecError> {
        let node = &plan.graph[n];
        let parent = node.chain.map(|p| view.result(plan, p)).transpose()?;
        match &node.op {
            Op::Copy { stage, index, copy, .. } => {
                let mut config = self.state_before(plan, n, *stage, *index, parent.as_deref())?;
                let span = node.span.unwrap_or(self.ws.stages[*stage].span);
                let source = match &copy.from {
                    crate::lang::CopySource::Context => copy::Source::Context(plan.reads.get(&n)),
                    crate::lang::CopySource::Stage(s) => copy::Source::Fs(
                        view.result(plan, plan.stage_node(*s))?,
                        format!("stage `{}`", self.ws.stages[*s].name),
                    ),
                    crate::lang::CopySource::Image(r) => {
                        let pull = plan
                            .graph
                            .neighbors_directed(n, petgraph::Direction::Incoming)
                            .find(|p| matches!(&plan.graph[*p].op, Op::Pull { image, .. } if image == r));
                        let pull = pull.ok_or_else(|| ExecError::NoPull { image: r.to_string() })?;
                        copy::Source::Fs(view.result(plan, pull)?, format!("image `{r}`"))
                    }
                };
                let layers = parent.as_ref().map(|p| p.layers.clone()).unwrap_or_default();
                let layer =
                    copy::Copier { build: self, span, config: &config, parent_layers: &layers }.run(copy, &source)?;
                let by = format!("copy {} -> {}", copy.sources.join(" "), copy.dest);
                config.add_layer(layer.diff_id.as_ref(), &self.created, &by);
                let mut layers = layers;
                layers.push(layer);
                let config = self.engine.store.put_blob(&config.to_bytes())?;
                Ok(FsResult { layers, config })
            }
            Op::Run { stage, index, run, .. } => {
                let mut config = self.state_before(plan, n, *stage, *index, parent.as_deref())?;
                let span = node.span.unwrap_or(self.ws.stages[*stage].span);
                let layers = parent.as_ref().map(|p| p.layers.clone()).unwrap_or_default();
                let binds = self.bind_sources(view, plan, n, run)?;
                let layer =
                    run::Step { build: self, node: &node.id, span, config: &config, parent_layers: &layers, binds }
                        .run(run)?;
                config.add_layer(layer.diff_id.as_ref(), &self.created, &format!("run {}", run.script));
                let mut layers = layers;
                layers.push(layer);
                let config = self.engine.store.put_blob(&config.to_bytes())?;
                Ok(FsResult { layers, config })
            }
            Op::Stage { stage, .. } => {
                let index = self.ws.stages[*stage].instructions.len();
                let config = self.state_before(plan, n, *stage, index, parent.as_deref())?;
                let layers = parent.map(|p| p.layers.clone()).unwrap_or_default();
                let config = self.engine.store.put_blob(&config.to_bytes())?;
                Ok(FsResult { layers, config })
            }
            Op::Pull { .. } | Op::Image { .. } | Op::Artifact { .. } => {
                unreachable!("only filesystem nodes are executed")
            }
        }
    }

    /// The config in force just before instruction `index` of `stage`: the
    /// parent's, with the metadata instructions since the parent applied.
    pub(super) fn state_before(
        &self,
        plan: &Plan,
        n: NodeIndex,
        stage: StageId,
        index: usize,
        parent: Option<&FsResult>,
    ) -> Result<ImageConfig, ExecError> {
        let mut config = match parent {
            Some(p) => ImageConfig::from_json(&self.engine.store.read_blob(&p.config)?)
                .map_err(|e| ExecError::BadConfig { digest: p.config.to_string(), message: e.to_string() })?,
            None => ImageConfig::scratch_for(&self.ws.stages[stage].platform),
        };
        // A stage on scratch or on another stage says its own platform (an
        // image on a stage shared by every platform is each platform's);
        // an image's config already says its own, checked when resolved.
        // Only when it names another OS or architecture: a variant the base
        // image's config names is kept.
        let s = &self.ws.stages[stage];
        let named = config.platform().map(|p| (p.os, p.architecture));
        if !matches!(s.from, crate::lang::Base::Image(_))
            && named != Some((s.platform.os.clone(), s.platform.architecture.clone()))
        {
            config.set_platform(&s.platform);
        }
        let start = plan.graph[n]
            .chain
            .and_then(|p| match &plan.graph[p].op {
                // The same stage, or another platform's instance of it whose
                // first steps this one shares (`graph`'s step sharing).
                Op::Copy { stage: s, index: i, .. } | Op::Run { stage: s, index: i, .. }
                    if self.ws.stages[*s].name == self.ws.stages[stage].name =>
                {
                    Some(i + 1)
                }
                _ => None,
            })
            .unwrap_or(0);
        for ins in &self.ws.stages[stage].instructions[start..index] {
            if !matches!(ins.kind, InstructionKind::Copy(_) | InstructionKind::Run(_)) {
                config.apply(&ins.kind);
                config.history(&self.created, &describe_instruction(&ins.kind), true);
            }
        }
        Ok(config)
    }
}

/// The fallback executor of one build: [`Build`] over its plan.
pub(super) struct Fallback<'f> {
    pub build: &'f Build<'f>,
    pub plan: &'f Plan,
}

impl Executor for Fallback<'_> {
    fn materialize(&self, view: &View, n: NodeIndex) -> Result<(), ExecError> {
        self.build.materialize(view, self.plan, n)
    }

    fn execute(&self, view: &View, n: NodeIndex) -> Result<FsResult, ExecError> {
        self.build.execute(view, self.plan, n)
    }

    fn record(&self, key: &Key, result: &FsResult, out: Option<Key>) -> Result<(), ExecError> {
        record(&self.build.engine.store, key, result, out)
    }

    /// Says once, up front, when `run` steps will use the copy fallback.
    fn starting(&self, pending: &[NodeIndex]) {
        if !pending.iter().any(|n| matches!(self.plan.graph[*n].op, Op::Run { .. })) {
            return;
        }
        let tmp = self.build.engine.home.tmp_dir();
        let _ = std::fs::create_dir_all(&tmp);
        if let crate::sandbox::Backend::Copy { reason } = crate::sandbox::probe_in(&tmp) {
            self.build.events.event(super::Event::Warning {
                message: format!("overlayfs cannot be used here ({reason}): `run` steps use the slower copy fallback"),
            });
        }
    }

    /// Makes local the layers of every stage an export will read: images
    /// kept in the store or written out, artifacts. Pushing alone needs none
    /// (the registry mounts them), unless they must be compressed first.
    fn prefetch_exports(&self, view: &View) -> Result<(), ExecError> {
        let (build, plan) = (self.build, self.plan);
        let push_only = build.options.push && build.options.outputs.is_empty();
        for &root in &plan.roots {
            let stage = match &plan.graph[root].op {
                Op::Image { stage } | Op::Stage { stage, .. } => *stage,
                Op::Artifact { artifact } => build.ws.artifacts[*artifact].from,
                _ => continue,
            };
            let n = plan.stage_node(stage);
            let Some(result) = view.results.get(&n) else { continue };
            let artifact = matches!(plan.graph[root].op, Op::Artifact { .. });
            if push_only && !build.needs_compression(result) && !artifact {
                continue;
            }
            build.materialize(view, plan, n)?;
        }
        Ok(())
    }
}

/// Records `result` under `key`, with the blobs it keeps alive and the
/// identity it passes on to the nodes after it (see `schedule.rs`), so a
/// later hit passes on the same one.
pub(super) fn record(store: &Store, key: &Key, result: &FsResult, out: Option<Key>) -> Result<(), ExecError> {
    let mut blobs: Vec<Digest> = result.layers.iter().map(|l| l.digest.clone()).collect();
    blobs.push(result.config.clone());
    let mut value = serde_json::to_value(result).unwrap_or_default();
    if let (Some(out), Some(map)) = (out, value.as_object_mut()) {
        map.insert("out".to_owned(), out.to_hex().into());
    }
    store.put_cache(&key.to_hex(), &CacheEntry { value, blobs })?;
    Ok(())
}

/// A history line for a metadata instruction.
fn describe_instruction(kind: &InstructionKind) -> String {
    match kind {
        InstructionKind::Workdir(w) => format!("workdir {w}"),
        InstructionKind::Env(k, v) => format!("env {k}={v}"),
        InstructionKind::User(u) => format!("user {u}"),
        InstructionKind::Expose(p) => {
            format!("expose {}", p.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
        }
        InstructionKind::Entrypoint(a) => format!("entrypoint {a:?}"),
        InstructionKind::Cmd(a) => format!("cmd {a:?}"),
        InstructionKind::Label(k, v) => format!("label {k}={v}"),
        InstructionKind::Volume(v) => format!("volume {v:?}"),
        InstructionKind::StopSignal(s) => format!("stopsignal {s}"),
        InstructionKind::Healthcheck(_) => "healthcheck".to_owned(),
        InstructionKind::Shell(s) => format!("shell {s:?}"),
        InstructionKind::OnBuild(t) => format!("onbuild {t}"),
        InstructionKind::Author(a) => format!("maintainer {a}"),
        InstructionKind::Copy(_) => "copy".to_owned(),
        InstructionKind::Run(r) => format!("run {}", r.script),
    }
}
