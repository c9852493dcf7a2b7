//! The scheduler: which nodes run, in what order, how many at once.
//!
//! # What runs
//!
//! Every filesystem node the requested targets need has a key. Before
//! anything runs, each key is looked up in the local store, then (for the
//! nodes still missing) in the registry caches, all at once. The nodes that
//! must run are then found by walking back from the requested targets and
//! stopping at every node that has a result: a cached final stage needs
//! nothing below it, so neither its builder stage nor its base image layers
//! are touched. A `test` stage no target names is never looked at.
//!
//! # Order
//!
//! A node starts as soon as all its inputs are done (not in waves), up to
//! `--jobs` at a time, each on its own thread: steps block on processes and
//! compression, so they are threads, not tasks; the async parts (registry
//! lookups and pulls) are driven from those threads through the runtime's
//! handle. The scheduler's loop owns every decision; workers only report.
//!
//! # Early cutoff
//!
//! A `copy from=STAGE` passes on to the nodes after it an identity derived
//! from its *result* (its config digest, which covers every layer's diffID),
//! not its key. When a builder stage rebuilds (a comment changed in the
//! source) but the copied binary comes out identical, the copy's result and
//! so its identity are the same as last time: the nodes after it are keyed
//! again with that identity, find their earlier results, and do not run.
//! Results are recorded under both keys, so the next unchanged build finds
//! them by the plain key.
//!
//! # Failure
//!
//! A failing step cancels the steps running beside it and nothing new
//! starts; with `--keep-going` only the nodes that depend on it are dropped.
//! A registry cache entry whose layers cannot be fetched is a warning: the
//! node is built locally instead, with whatever it needs below it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use super::remote::RemoteCache;
use super::{Build, Event, ExecError, FsResult, Origin, StepOutcome, lock, record};
use crate::graph::{Key, Op, Plan};
use crate::lang::CopySource;

/// A result found in a cache before the build.
pub(super) struct Hit {
    pub result: FsResult,
    /// The identity recorded with it, passed on to the nodes after it.
    pub out: Option<Key>,
    /// Set when it came from a registry cache: where its layers are.
    pub origin: Option<Origin>,
}

/// Sends a worker's outcome when dropped: a step that panics reports a
/// failure instead of leaving the scheduler waiting for it.
struct Report {
    tx: std::sync::mpsc::Sender<(NodeIndex, Result<Outcome, ExecError>)>,
    n: NodeIndex,
    outcome: Option<Result<Outcome, ExecError>>,
}

impl Drop for Report {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| Err(ExecError::Task("a build step panicked".to_owned())));
        let _ = self.tx.send((self.n, outcome));
    }
}

/// What a worker reports.
enum Outcome {
    /// The node has a result, and the identity it passes on.
    Done(FsResult, Key),
    /// Input `.0` came from a registry cache whose layers could not be
    /// fetched (`.1` says why): it must be built here.
    Demote(NodeIndex, String),
}

fn is_step(op: &Op) -> bool {
    matches!(op, Op::Copy { .. } | Op::Run { .. })
}

fn is_fs(op: &Op) -> bool {
    matches!(op, Op::Copy { .. } | Op::Run { .. } | Op::Stage { .. })
}

/// The local store's result under `key`.
pub(super) fn local_result(build: &Build<'_>, key: &Key) -> Result<Option<(FsResult, Option<Key>)>, ExecError> {
    let Some(entry) = build.engine.store.cache(&key.to_hex())? else { return Ok(None) };
    let out = entry.value.get("out").and_then(|v| v.as_str()).and_then(Key::from_hex);
    Ok(serde_json::from_value::<FsResult>(entry.value).ok().map(|r| (r, out)))
}

/// The identity node `n` passes on: its key, or for a `copy from=STAGE`, a
/// digest of its result (early cutoff).
fn out_key(plan: &Plan, n: NodeIndex, key: Key, result: &FsResult) -> Key {
    match &plan.graph[n].op {
        Op::Copy { copy, .. } if matches!(copy.from, CopySource::Stage(_)) => {
            let mut h = blake3::Hasher::new();
            h.update(b"bake-cutoff-v1\0");
            h.update(result.config.to_string().as_bytes());
            Key(*h.finalize().as_bytes())
        }
        _ => key,
    }
}

impl Build<'_> {
    /// Looks every needed node's key up: the local store, then the registry
    /// caches for what the local store lacks and the build would need.
    pub(super) async fn lookups(
        &self,
        plan: &Plan,
        cache: &RemoteCache<'_>,
    ) -> Result<HashMap<NodeIndex, Hit>, ExecError> {
        let mut hits = HashMap::new();
        if self.options.no_cache {
            return Ok(hits);
        }
        // From the requested targets down, stopping at every hit: an
        // unchanged build looks up its final stages and nothing below them.
        tokio::task::block_in_place(|| -> Result<(), ExecError> {
            let mut seen = HashSet::new();
            let mut stack = plan.roots.clone();
            while let Some(n) = stack.pop() {
                if !seen.insert(n) {
                    continue;
                }
                let node = &plan.graph[n];
                if is_fs(&node.op)
                    && let Some(key) = node.key
                    && let Some((result, out)) = local_result(self, &key)?
                {
                    hits.insert(n, Hit { result, out, origin: None });
                    continue;
                }
                stack.extend(plan.graph.neighbors_directed(n, Direction::Incoming));
            }
            Ok(())
        })?;
        if cache.is_empty() {
            return Ok(hits);
        }
        let wanted: Vec<(NodeIndex, Key)> = self
            .required(plan, &hits)
            .into_iter()
            .filter(|n| is_fs(&plan.graph[*n].op) && !hits.contains_key(n))
            .filter_map(|n| plan.graph[n].key.map(|k| (n, k)))
            .collect();
        for (n, (origin, result)) in cache.lookup_many(&wanted).await {
            hits.insert(n, Hit { result, out: None, origin: Some(origin) });
        }
        Ok(hits)
    }

    /// The nodes the requested targets need, walking back from them and
    /// stopping at every node that has a result or a hit.
    pub(super) fn required(&self, plan: &Plan, hits: &HashMap<NodeIndex, Hit>) -> HashSet<NodeIndex> {
        let mut required = HashSet::new();
        let mut stack = plan.roots.clone();
        while let Some(n) = stack.pop() {
            if !required.insert(n) {
                continue;
            }
            let op = &plan.graph[n].op;
            if matches!(op, Op::Pull { .. }) || (is_fs(op) && (hits.contains_key(&n) || self.has_result(n))) {
                continue;
            }
            stack.extend(plan.graph.neighbors_directed(n, Direction::Incoming));
        }
        required
    }

    /// Runs what must run. Returns the failures when `--keep-going` let the
    /// build go on after them; without it the first failure is the error.
    pub(super) fn nodes(
        &self,
        plan: &Plan,
        hits: HashMap<NodeIndex, Hit>,
        cache: &RemoteCache<'_>,
    ) -> Result<Vec<ExecError>, ExecError> {
        let required = self.required(plan, &hits);
        lock(&self.visited).extend(required.iter().copied());
        let order = plan.topo_order();
        let position: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for &n in &order {
            let node = &plan.graph[n];
            if matches!(node.op, Op::Pull { .. })
                && let Some(key) = node.key
            {
                lock(&self.out_keys).insert(n, key);
            }
        }
        let mut remote_hits = HashMap::new();
        for (n, hit) in hits {
            if !required.contains(&n) {
                continue;
            }
            let key = plan.graph[n].key.unwrap_or(Key([0; 32]));
            let out = hit.out.unwrap_or_else(|| out_key(plan, n, key, &hit.result));
            lock(&self.out_keys).insert(n, out);
            if let Some(origin) = hit.origin {
                remote_hits.insert(n, origin.image.to_string());
                lock(&self.origins).insert(n, origin);
            }
            self.set_result(n, hit.result);
        }
        let mut pending: BTreeSet<(usize, NodeIndex)> = required
            .iter()
            .filter(|n| is_fs(&plan.graph[**n].op) && !self.has_result(**n))
            .map(|n| (position[n], *n))
            .collect();

        // Every needed step that will not run is reused: say so up front.
        let mut steps = 0;
        for &n in &order {
            let node = &plan.graph[n];
            if !node.needed || !is_step(&node.op) {
                continue;
            }
            steps += 1;
            if pending.contains(&(position[&n], n)) {
                continue;
            }
            lock(&self.steps).insert(n, StepOutcome::Cached);
            let description = crate::graph::describe(node, self.ws);
            self.events.event(Event::Cached {
                node: node.id.clone(),
                description,
                remote: remote_hits.get(&n).cloned(),
                cutoff: false,
            });
        }
        let run = pending.iter().filter(|(_, n)| is_step(&plan.graph[*n].op)).count();
        self.events.event(Event::Planned { steps, run, cached: steps - run });

        // Say once, up front, when `run` steps will use the copy fallback.
        if pending.iter().any(|(_, n)| matches!(plan.graph[*n].op, Op::Run { .. })) {
            let tmp = self.engine.home.tmp_dir();
            let _ = std::fs::create_dir_all(&tmp);
            if let crate::sandbox::Backend::Copy { reason } = crate::sandbox::probe_in(&tmp) {
                self.events.event(Event::Warning {
                    message: format!(
                        "overlayfs cannot be used here ({reason}): `run` steps use the slower copy fallback"
                    ),
                });
            }
        }

        let jobs = match self.options.jobs {
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            n => n,
        };
        let handle = tokio::runtime::Handle::current();
        let mut failures: Vec<ExecError> = Vec::new();
        let mut running: HashSet<NodeIndex> = HashSet::new();
        // Failed steps and what depends on them: never scheduled again.
        let mut dropped: HashSet<NodeIndex> = HashSet::new();
        let (tx, rx) = std::sync::mpsc::channel::<(NodeIndex, Result<Outcome, ExecError>)>();
        // Rounds: run what is pending; then make the exported stages' layers
        // local, which may demote a registry cache hit and start a round again.
        for round in 0.. {
            if round > plan.graph.node_count() {
                failures.push(ExecError::Task("registry cache entries keep failing: giving up".to_owned()));
                break;
            }
            std::thread::scope(|scope| {
                loop {
                    let stopping = self.cancel.is_cancelled();
                    if !stopping {
                        let ready: Vec<(usize, NodeIndex)> = pending
                            .iter()
                            .filter(|(_, n)| {
                                plan.graph.neighbors_directed(*n, Direction::Incoming).all(|p| self.has_result(p))
                            })
                            .take(jobs.saturating_sub(running.len()))
                            .copied()
                            .collect();
                        for entry in ready {
                            pending.remove(&entry);
                            let n = entry.1;
                            running.insert(n);
                            let (tx, handle) = (tx.clone(), handle.clone());
                            scope.spawn(move || {
                                // Reports even if the step panics, so the loop never waits forever.
                                let mut report = Report { tx, n, outcome: None };
                                let _runtime = handle.enter();
                                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    self.step(plan, n, cache)
                                }))
                                .unwrap_or_else(|_| {
                                    Err(ExecError::Task(format!("step {} panicked", plan.graph[n].id)))
                                });
                                if outcome.is_err() && !self.options.keep_going {
                                    // Stop the steps running beside it.
                                    self.cancel.cancel();
                                }
                                report.outcome = Some(outcome);
                            });
                        }
                    }
                    if running.is_empty() {
                        if !pending.is_empty() && !stopping {
                            failures.push(ExecError::Task(
                                "no step is ready to run: the graph has an unresolved input".to_owned(),
                            ));
                        }
                        break;
                    }
                    let Ok((n, outcome)) = rx.recv() else { break };
                    running.remove(&n);
                    match outcome {
                        Ok(Outcome::Done(result, out)) => {
                            lock(&self.out_keys).insert(n, out);
                            self.set_result(n, result);
                        }
                        Ok(Outcome::Demote(p, why)) => {
                            pending.insert((position[&n], n));
                            self.demote(plan, p, &why, &running, &dropped, &mut pending, &position);
                        }
                        Err(e) => {
                            // What depends on a failed node can never run.
                            let mut stack = vec![n];
                            dropped.insert(n);
                            while let Some(m) = stack.pop() {
                                for d in plan.graph.neighbors_directed(m, Direction::Outgoing) {
                                    pending.remove(&(position[&d], d));
                                    if dropped.insert(d) {
                                        stack.push(d);
                                    }
                                }
                            }
                            failures.push(e);
                        }
                    }
                }
            });
            if !failures.is_empty() || self.cancel.is_cancelled() {
                break;
            }
            match tokio::task::block_in_place(|| self.prefetch_exports(plan)) {
                Ok(()) => break,
                Err(ExecError::CacheFetch { index, message, .. }) => {
                    let p = NodeIndex::new(index);
                    self.demote(plan, p, &message, &running, &dropped, &mut pending, &position);
                }
                Err(e) => {
                    failures.push(e);
                    break;
                }
            }
        }
        if self.options.cancel.is_cancelled() {
            return Err(ExecError::Interrupted);
        }
        // The step that failed is the news, not the ones it stopped.
        let (stopped, mut real): (Vec<ExecError>, Vec<ExecError>) =
            failures.into_iter().partition(|e| matches!(e, ExecError::Interrupted));
        if real.is_empty()
            && let Some(e) = stopped.into_iter().next()
        {
            real.push(e);
        }
        if !self.options.keep_going && !real.is_empty() {
            return Err(real.remove(0));
        }
        Ok(real)
    }

    /// A registry cache hit whose layers cannot be fetched: it, and every
    /// result built on it without its files, are built here instead.
    #[allow(clippy::too_many_arguments)]
    fn demote(
        &self,
        plan: &Plan,
        p: NodeIndex,
        why: &str,
        running: &HashSet<NodeIndex>,
        dropped: &HashSet<NodeIndex>,
        pending: &mut BTreeSet<(usize, NodeIndex)>,
        position: &HashMap<NodeIndex, usize>,
    ) {
        if lock(&self.demoted).insert(p) {
            self.events.event(Event::Warning {
                message: format!(
                    "the registry cache entry for {} could not be fetched ({why}); building it here",
                    plan.graph[p].id
                ),
            });
        }
        let mut stack = vec![p];
        let mut seen = HashSet::new();
        while let Some(m) = stack.pop() {
            if !seen.insert(m) || running.contains(&m) {
                continue;
            }
            self.results.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&m);
            lock(&self.origins).remove(&m);
            lock(&self.out_keys).remove(&m);
            stack.extend(plan.graph.neighbors_directed(m, Direction::Outgoing).filter(|d| is_fs(&plan.graph[*d].op)));
        }
        for m in self.required(plan, &HashMap::new()) {
            lock(&self.visited).insert(m);
            if is_fs(&plan.graph[m].op) && !self.has_result(m) && !running.contains(&m) && !dropped.contains(&m) {
                pending.insert((position[&m], m));
            }
        }
    }

    /// Makes local the layers of every stage an export will read: images
    /// kept in the store or written out, artifacts. Pushing alone needs none
    /// (the registry mounts them), unless they must be compressed first.
    fn prefetch_exports(&self, plan: &Plan) -> Result<(), ExecError> {
        let push_only = self.options.push && self.options.outputs.is_empty();
        for &root in &plan.roots {
            let stage = match &plan.graph[root].op {
                Op::Image { stage } | Op::Stage { stage, .. } => *stage,
                Op::Artifact { artifact } => self.ws.artifacts[*artifact].from,
                _ => continue,
            };
            let n = plan.stage_node(stage);
            let Ok(result) = self.result(n) else { continue };
            let artifact = matches!(plan.graph[root].op, Op::Artifact { .. });
            if push_only && !self.needs_compression(&result) && !artifact {
                continue;
            }
            self.materialize(plan, n)?;
        }
        Ok(())
    }

    /// One node, on a worker thread: a cutoff hit, or executed and recorded.
    fn step(&self, plan: &Plan, n: NodeIndex, cache: &RemoteCache<'_>) -> Result<Outcome, ExecError> {
        let node = &plan.graph[n];
        let key = node.key.ok_or_else(|| ExecError::Task(format!("{} has no key", node.id)))?;
        let inputs: Vec<NodeIndex> = plan.graph.neighbors_directed(n, Direction::Incoming).collect();
        let step = is_step(&node.op);
        let description = || crate::graph::describe(node, self.ws);

        // Keyed again when an input passes on another identity than its key.
        let effective = {
            let outs = lock(&self.out_keys);
            let changed = inputs.iter().any(|p| outs.get(p).is_some_and(|o| Some(*o) != plan.graph[*p].key));
            if changed {
                plan.key_with(self.ws, n, &|p| outs.get(&p).copied().or(plan.graph[p].key)).unwrap_or(key)
            } else {
                key
            }
        };
        if effective != key {
            lock(&self.effective).insert(n, effective);
        }
        if effective != key && !self.options.no_cache {
            let found = match local_result(self, &effective)? {
                Some((result, out)) => Some((result, out, None)),
                // A node demoted once is built here: its cache entry lost its layers.
                None if lock(&self.demoted).contains(&n) => None,
                None => cache.lookup_one(n, &effective).map(|(origin, result)| (result, None, Some(origin))),
            };
            if let Some((result, out, origin)) = found {
                let remote = origin.as_ref().map(|o| o.image.to_string());
                let out = out.unwrap_or_else(|| out_key(plan, n, effective, &result));
                match origin {
                    Some(origin) => {
                        lock(&self.origins).insert(n, origin);
                    }
                    None => record(&self.engine.store, &key, &result, Some(out))?,
                }
                if step {
                    lock(&self.steps).insert(n, StepOutcome::Cached);
                    self.events.event(Event::Cached {
                        node: node.id.clone(),
                        description: description(),
                        remote,
                        cutoff: true,
                    });
                }
                return Ok(Outcome::Done(result, out));
            }
        }

        // Running it needs the files of what it starts from and copies from.
        if step {
            for &p in &inputs {
                match self.materialize(plan, p) {
                    Ok(()) => {}
                    // The node whose layers could not be fetched, wherever
                    // below this input it is.
                    Err(ExecError::CacheFetch { index, message, .. }) => {
                        return Ok(Outcome::Demote(NodeIndex::new(index), message));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.events.event(Event::Started { node: node.id.clone(), description: description() });
        }
        let started = Instant::now();
        let millis = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let result = match self.execute(plan, n) {
            Ok(result) => result,
            Err(e) => {
                if step {
                    let message = match &e {
                        ExecError::Interrupted => "stopped".to_owned(),
                        other => other.to_string(),
                    };
                    self.events.event(Event::Failed { node: node.id.clone(), millis: millis(), message });
                }
                return Err(e);
            }
        };
        let store = &self.engine.store;
        let out = out_key(plan, n, effective, &result);
        record(store, &key, &result, Some(out))?;
        if effective != key {
            record(store, &effective, &result, Some(out))?;
        }
        if step {
            lock(&self.steps).insert(n, StepOutcome::Ran);
            self.events.event(Event::Finished { node: node.id.clone(), millis: millis() });
        }
        Ok(Outcome::Done(result, out))
    }
}
