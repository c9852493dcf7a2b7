//! The scheduler: which nodes run, in what order, how many at once, and
//! the one owner of what the build knows about each node.
//!
//! # What runs
//!
//! Every filesystem node the requested targets need has a key. Before
//! anything runs, each key is looked up in the local store, then (for the
//! nodes still missing) in the registry caches, all at once
//! ([`super::resolve::lookups`]). The nodes that must run are then found by
//! walking back from the requested targets and stopping at every node that
//! has a result: a cached final stage needs nothing below it, so neither its
//! builder stage nor its base image layers are touched. A `test` stage no
//! target names is never looked at.
//!
//! # Order
//!
//! A node starts as soon as all its inputs are done (not in waves), up to
//! `--jobs` at a time, each on its own thread: steps block on processes and
//! compression, so they are threads, not tasks; the async parts (registry
//! lookups and pulls) are driven from those threads through the runtime's
//! handle.
//!
//! # Who owns what
//!
//! The loop in [`Scheduler::run`] owns every node's state ([`State`]):
//! results, where their layers are, the identity each passes on, the keys
//! an early cutoff changed, how each step's result was obtained. A worker
//! gets a read-only snapshot of the finished nodes ([`View`], shared, copied
//! on write only while workers hold it), tries the [`Resolver`]s in order
//! for the node, else has the [`Executor`] run it, and *returns* an
//! [`Outcome`]; only the loop records it. So the scheduler can be driven by
//! fakes in the tests below, without a store, a registry or root.
//!
//! # Early cutoff
//!
//! A `copy from=STAGE` passes on to the nodes after it an identity derived
//! from its *result* (its config digest, which covers every layer's diffID),
//! not its key ([`Key::cutoff`]). When a builder stage rebuilds (a comment
//! changed in the source) but the copied binary comes out identical, the
//! copy's result and so its identity are the same as last time: the nodes
//! after it are keyed again with that identity, find their earlier results,
//! and do not run. Results are recorded under both keys, so the next
//! unchanged build finds them by the plain key.
//!
//! # Failure
//!
//! A failing step cancels the steps running beside it and nothing new
//! starts; with `--keep-going` only the nodes that depend on it are dropped.
//! A step that panics is a failure like another (a [`Tier::Bug`](crate::Tier)
//! one), never a hang. A registry cache entry whose layers cannot be fetched
//! is a warning: the node is built locally instead ("demoted"), with
//! whatever it needs below it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use petgraph::Direction;
use petgraph::graph::NodeIndex;
use tokio_util::sync::CancellationToken;

use super::fetch::Origin;
use super::resolve::{Hit, Resolver};
use super::{Event, Events, ExecError, FsResult};
use crate::graph::{Key, Op, Plan};
use crate::lang::{CopySource, Workspace};

/// How a step's result was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepOutcome {
    Ran,
    Cached,
}

/// What workers may read of the finished nodes: a snapshot the loop hands
/// them, never changed under them.
#[derive(Debug, Clone, Default)]
pub(super) struct View {
    /// Finished nodes' results. A result may name layers that are not local
    /// yet (a registry cache hit, a base image resolved but not pulled): see
    /// `origins` and [`Executor::materialize`].
    pub results: HashMap<NodeIndex, Arc<FsResult>>,
    /// Where to fetch the layers of a result that is not all local: a base
    /// image, or a registry cache entry, pinned by digest.
    pub origins: HashMap<NodeIndex, Origin>,
    /// The identity each finished node passes on to the nodes after it
    /// (early cutoff).
    pub out_keys: HashMap<NodeIndex, Key>,
    /// Registry cache hits whose layers could not be fetched: built here, and
    /// never taken from a registry cache again in this build.
    pub demoted: HashSet<NodeIndex>,
}

impl View {
    /// A finished node's result.
    pub(super) fn result(&self, plan: &Plan, n: NodeIndex) -> Result<Arc<FsResult>, ExecError> {
        self.results.get(&n).cloned().ok_or_else(|| ExecError::NoResult { node: plan.graph[n].id.clone() })
    }

    pub(super) fn has_result(&self, n: NodeIndex) -> bool {
        self.results.contains_key(&n)
    }
}

/// Everything a build knows about its nodes; owned by the scheduler loop
/// while it runs, then read by the exports.
#[derive(Debug, Default)]
pub(super) struct State {
    /// What workers may read (copied on write while they hold it).
    pub view: Arc<View>,
    /// Keys that differ from the plan's because of an early cutoff.
    pub effective: HashMap<NodeIndex, Key>,
    /// How each step's result was obtained.
    pub steps: HashMap<NodeIndex, StepOutcome>,
    /// The nodes this build looked at: what ran, and the cached nodes it
    /// stopped at (`explain` remembers their inputs).
    pub visited: HashSet<NodeIndex>,
}

impl State {
    /// The view, to change (copied first if a worker still reads it).
    pub(super) fn view_mut(&mut self) -> &mut View {
        Arc::make_mut(&mut self.view)
    }

    /// Steps whose result came about as `f` says.
    pub(super) fn count(&self, f: impl Fn(StepOutcome) -> bool) -> usize {
        self.steps.values().filter(|s| f(**s)).count()
    }
}

/// The fallback: runs a node no resolver had a result for, and makes
/// results' layers local. The real one is `execute::Fallback` (sandboxed
/// `run`, `copy`, registry pulls); tests use a fake.
pub(super) trait Executor: Sync {
    /// Makes every layer of node `n`'s result local (from its origin, or the
    /// origins of the nodes it is built on). A registry cache entry that
    /// cannot be fetched is [`ExecError::CacheFetch`]: the scheduler demotes
    /// it.
    fn materialize(&self, view: &View, n: NodeIndex) -> Result<(), ExecError>;

    /// Runs node `n` (its inputs are finished and local).
    fn execute(&self, view: &View, n: NodeIndex) -> Result<FsResult, ExecError>;

    /// Records `result` under `key`, with the identity `out` it passes on.
    fn record(&self, key: &Key, result: &FsResult, out: Option<Key>) -> Result<(), ExecError>;

    /// Makes local the layers the exports will read, once every node ran.
    fn prefetch_exports(&self, view: &View) -> Result<(), ExecError>;

    /// Told once, before anything runs, which nodes will (after the
    /// `planned` event): to warn about how they will run.
    fn starting(&self, _pending: &[NodeIndex]) {}
}

/// What a worker returns to the loop (one per node run: its size does not
/// matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Outcome {
    /// The node has a result.
    Done {
        result: FsResult,
        /// The identity it passes on.
        out: Key,
        /// Set when it came from a registry cache: where its layers are.
        origin: Option<Origin>,
        /// For a `copy` or `run` step: whether it ran or was reused.
        step: Option<StepOutcome>,
    },
    /// Input `.0` came from a registry cache whose layers could not be
    /// fetched (`.1` says why): it must be built here.
    Demote(NodeIndex, String),
}

/// Sends a worker's outcome when dropped: a step that panics reports a
/// failure instead of leaving the scheduler waiting for it.
struct Report {
    tx: std::sync::mpsc::Sender<(NodeIndex, Result<Outcome, ExecError>)>,
    n: NodeIndex,
    node: String,
    outcome: Option<Result<Outcome, ExecError>>,
}

impl Drop for Report {
    fn drop(&mut self) {
        let node = std::mem::take(&mut self.node);
        let outcome = self.outcome.take().unwrap_or(Err(ExecError::Panicked { node }));
        let _ = self.tx.send((self.n, outcome));
    }
}

pub(super) fn is_step(op: &Op) -> bool {
    matches!(op, Op::Copy { .. } | Op::Run { .. })
}

pub(super) fn is_fs(op: &Op) -> bool {
    matches!(op, Op::Copy { .. } | Op::Run { .. } | Op::Stage { .. })
}

/// The identity node `n` passes on: its key, or for a `copy from=STAGE`, a
/// digest of its result (early cutoff).
pub(super) fn out_key(plan: &Plan, n: NodeIndex, key: Key, result: &FsResult) -> Key {
    match &plan.graph[n].op {
        Op::Copy { copy, .. } if matches!(copy.from, CopySource::Stage(_)) => Key::cutoff(result.config.as_ref()),
        _ => key,
    }
}

/// The nodes the requested targets need, walking back from them and
/// stopping at every node that has a result or a hit.
pub(super) fn required(plan: &Plan, hits: &HashMap<NodeIndex, Hit>, view: &View) -> HashSet<NodeIndex> {
    let mut required = HashSet::new();
    let mut stack = plan.roots.clone();
    while let Some(n) = stack.pop() {
        if !required.insert(n) {
            continue;
        }
        let op = &plan.graph[n].op;
        if matches!(op, Op::Pull { .. }) || (is_fs(op) && (hits.contains_key(&n) || view.has_result(n))) {
            continue;
        }
        stack.extend(plan.graph.neighbors_directed(n, Direction::Incoming));
    }
    required
}

/// Nodes waiting to run, in build order.
type Pending = BTreeSet<(usize, NodeIndex)>;

/// One build's scheduling: the graph, the stack of resolvers, the fallback
/// executor, and the rules (`--jobs`, `--keep-going`, cancellation).
pub(super) struct Scheduler<'s> {
    pub plan: &'s Plan,
    pub ws: &'s Workspace,
    /// Tried in order for a node keyed again by an early cutoff: the local
    /// store, then the registry caches (a remote executor would come after
    /// them, before the fallback).
    pub resolvers: &'s [&'s dyn Resolver],
    pub executor: &'s dyn Executor,
    pub events: &'s dyn Events,
    /// Steps at once ([`super::BuildOptions::parallelism`]).
    pub jobs: usize,
    pub keep_going: bool,
    pub no_cache: bool,
    /// The caller's token (Ctrl-C): the build is interrupted.
    pub interrupt: &'s CancellationToken,
    /// The build's own, fired by the caller's or by a failing step to stop
    /// the steps running beside it.
    pub cancel: &'s CancellationToken,
}

/// The loop's bookkeeping for one run.
struct Books {
    /// Topological position of each node, for `Pending`.
    position: HashMap<NodeIndex, usize>,
    pending: Pending,
    running: HashSet<NodeIndex>,
    /// Failed steps and what depends on them: never scheduled again.
    dropped: HashSet<NodeIndex>,
    failures: Vec<ExecError>,
}

impl Scheduler<'_> {
    /// Runs what must run, recording every outcome in `state`. Returns the
    /// failures when `--keep-going` let the build go on after them; without
    /// it the first failure is the error.
    pub(super) fn run(&self, state: &mut State, hits: HashMap<NodeIndex, Hit>) -> Result<Vec<ExecError>, ExecError> {
        let mut books = self.seed(state, hits);
        let (tx, rx) = std::sync::mpsc::channel::<(NodeIndex, Result<Outcome, ExecError>)>();
        // Rounds: run what is pending; then make the exported stages' layers
        // local, which may demote a registry cache hit and start a round again.
        for round in 0.. {
            if round > self.plan.graph.node_count() {
                books.failures.push(ExecError::CacheKeepsFailing);
                break;
            }
            std::thread::scope(|scope| self.round(scope, state, &mut books, &tx, &rx));
            if !books.failures.is_empty() || self.cancel.is_cancelled() {
                break;
            }
            match self.executor.prefetch_exports(&state.view) {
                Ok(()) => break,
                Err(ExecError::CacheFetch { index, message, .. }) => {
                    self.demote(state, &mut books, NodeIndex::new(index), &message);
                }
                Err(e) => {
                    books.failures.push(e);
                    break;
                }
            }
        }
        self.finish(books.failures)
    }

    /// Takes the hits and the base images in, says what will run and what
    /// is reused, and returns what is pending.
    fn seed(&self, state: &mut State, hits: HashMap<NodeIndex, Hit>) -> Books {
        let plan = self.plan;
        let required = required(plan, &hits, &state.view);
        state.visited.extend(required.iter().copied());
        let order = plan.topo_order();
        let position: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let view = state.view_mut();
        for &n in &order {
            let node = &plan.graph[n];
            if matches!(node.op, Op::Pull { .. })
                && let Some(key) = node.key
            {
                view.out_keys.insert(n, key);
            }
        }
        let mut remote_hits = HashMap::new();
        for (n, hit) in hits {
            if !required.contains(&n) {
                continue;
            }
            let key = plan.graph[n].key.unwrap_or(Key([0; 32]));
            let out = hit.out.unwrap_or_else(|| out_key(plan, n, key, &hit.result));
            view.out_keys.insert(n, out);
            if let Some(origin) = hit.origin {
                remote_hits.insert(n, origin.image.to_string());
                view.origins.insert(n, origin);
            }
            view.results.insert(n, Arc::new(hit.result));
        }
        let pending: Pending = required
            .iter()
            .filter(|n| is_fs(&plan.graph[**n].op) && !view.has_result(**n))
            .map(|n| (position[n], *n))
            .collect();
        self.announce(state, &order, &position, &pending, &remote_hits);
        self.executor.starting(&pending.iter().map(|(_, n)| *n).collect::<Vec<_>>());
        Books { position, pending, running: HashSet::new(), dropped: HashSet::new(), failures: Vec::new() }
    }

    /// Every needed step that will not run is reused: says so up front, then
    /// how many will run.
    fn announce(
        &self,
        state: &mut State,
        order: &[NodeIndex],
        position: &HashMap<NodeIndex, usize>,
        pending: &Pending,
        remote_hits: &HashMap<NodeIndex, String>,
    ) {
        let mut steps = 0;
        for &n in order {
            let node = &self.plan.graph[n];
            if !node.needed || !is_step(&node.op) {
                continue;
            }
            steps += 1;
            if pending.contains(&(position[&n], n)) {
                continue;
            }
            state.steps.insert(n, StepOutcome::Cached);
            self.events.event(Event::Cached {
                node: node.id.clone(),
                description: crate::graph::describe(node, self.ws),
                remote: remote_hits.get(&n).cloned(),
                cutoff: false,
            });
        }
        let run = pending.iter().filter(|(_, n)| is_step(&self.plan.graph[*n].op)).count();
        self.events.event(Event::Planned { steps, run, cached: steps - run });
    }

    /// Starts what is ready and records what finishes, until nothing runs.
    fn round<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        state: &mut State,
        books: &mut Books,
        tx: &std::sync::mpsc::Sender<(NodeIndex, Result<Outcome, ExecError>)>,
        rx: &std::sync::mpsc::Receiver<(NodeIndex, Result<Outcome, ExecError>)>,
    ) {
        loop {
            let stopping = self.cancel.is_cancelled();
            if !stopping {
                self.start_ready(scope, state, books, tx);
            }
            if books.running.is_empty() {
                if !books.pending.is_empty() && !stopping {
                    books.failures.push(ExecError::Stuck);
                }
                return;
            }
            let Ok((n, outcome)) = rx.recv() else { return };
            books.running.remove(&n);
            self.record(state, books, n, outcome);
        }
    }

    /// Starts every pending node whose inputs are done, up to `--jobs`.
    fn start_ready<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        state: &mut State,
        books: &mut Books,
        tx: &std::sync::mpsc::Sender<(NodeIndex, Result<Outcome, ExecError>)>,
    ) {
        let plan = self.plan;
        let ready: Vec<(usize, NodeIndex)> = books
            .pending
            .iter()
            .filter(|(_, n)| plan.graph.neighbors_directed(*n, Direction::Incoming).all(|p| state.view.has_result(p)))
            .take(self.jobs.saturating_sub(books.running.len()))
            .copied()
            .collect();
        for entry in ready {
            books.pending.remove(&entry);
            let n = entry.1;
            let Some(key) = plan.graph[n].key else {
                if !self.keep_going {
                    self.cancel.cancel();
                }
                self.record(state, books, n, Err(ExecError::NoKey { node: plan.graph[n].id.clone() }));
                continue;
            };
            let effective = self.effective_key(&state.view, n, key);
            if effective != key {
                state.effective.insert(n, effective);
            }
            books.running.insert(n);
            let (view, tx) = (Arc::clone(&state.view), tx.clone());
            let handle = tokio::runtime::Handle::try_current().ok();
            scope.spawn(move || {
                // Reports even if the step panics, so the loop never waits forever.
                let mut report = Report { tx, n, node: plan.graph[n].id.clone(), outcome: None };
                let _runtime = handle.as_ref().map(tokio::runtime::Handle::enter);
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.work(&view, n, key, effective)))
                        .unwrap_or_else(|_| Err(ExecError::Panicked { node: plan.graph[n].id.clone() }));
                if outcome.is_err() && !self.keep_going {
                    // Stop the steps running beside it.
                    self.cancel.cancel();
                }
                report.outcome = Some(outcome);
            });
        }
    }

    /// Node `n`'s key, again, when an input passes on another identity than
    /// its key (early cutoff).
    fn effective_key(&self, view: &View, n: NodeIndex, key: Key) -> Key {
        let plan = self.plan;
        let changed = plan
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .any(|p| view.out_keys.get(&p).is_some_and(|o| Some(*o) != plan.graph[p].key));
        if !changed {
            return key;
        }
        plan.key_with(self.ws, n, &|p| view.out_keys.get(&p).copied().or(plan.graph[p].key)).unwrap_or(key)
    }

    /// Records what a worker returned: the only place node state changes
    /// while nodes run.
    fn record(&self, state: &mut State, books: &mut Books, n: NodeIndex, outcome: Result<Outcome, ExecError>) {
        match outcome {
            Ok(Outcome::Done { result, out, origin, step }) => {
                let view = state.view_mut();
                view.out_keys.insert(n, out);
                if let Some(origin) = origin {
                    view.origins.insert(n, origin);
                }
                view.results.insert(n, Arc::new(result));
                if let Some(step) = step {
                    state.steps.insert(n, step);
                }
            }
            Ok(Outcome::Demote(p, why)) => {
                books.pending.insert((books.position[&n], n));
                self.demote(state, books, p, &why);
            }
            Err(e) => {
                // What depends on a failed node can never run.
                let mut stack = vec![n];
                books.dropped.insert(n);
                while let Some(m) = stack.pop() {
                    for d in self.plan.graph.neighbors_directed(m, Direction::Outgoing) {
                        books.pending.remove(&(books.position[&d], d));
                        if books.dropped.insert(d) {
                            stack.push(d);
                        }
                    }
                }
                books.failures.push(e);
            }
        }
    }

    /// A registry cache hit whose layers cannot be fetched: it, and every
    /// result built on it without its files, are built here instead.
    fn demote(&self, state: &mut State, books: &mut Books, p: NodeIndex, why: &str) {
        let plan = self.plan;
        let view = state.view_mut();
        if view.demoted.insert(p) {
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
            if !seen.insert(m) || books.running.contains(&m) {
                continue;
            }
            view.results.remove(&m);
            view.origins.remove(&m);
            view.out_keys.remove(&m);
            stack.extend(plan.graph.neighbors_directed(m, Direction::Outgoing).filter(|d| is_fs(&plan.graph[*d].op)));
        }
        for m in required(plan, &HashMap::new(), &state.view) {
            state.visited.insert(m);
            if is_fs(&plan.graph[m].op)
                && !state.view.has_result(m)
                && !books.running.contains(&m)
                && !books.dropped.contains(&m)
            {
                books.pending.insert((books.position[&m], m));
            }
        }
    }

    /// The build's error, if any: the step that failed is the news, not the
    /// ones it stopped.
    fn finish(&self, failures: Vec<ExecError>) -> Result<Vec<ExecError>, ExecError> {
        if self.interrupt.is_cancelled() {
            return Err(ExecError::Interrupted);
        }
        let (stopped, mut real): (Vec<ExecError>, Vec<ExecError>) =
            failures.into_iter().partition(|e| matches!(e, ExecError::Interrupted));
        if real.is_empty()
            && let Some(e) = stopped.into_iter().next()
        {
            real.push(e);
        }
        if !self.keep_going && !real.is_empty() {
            return Err(real.remove(0));
        }
        Ok(real)
    }

    /// One node, on a worker thread: a result found under the key an early
    /// cutoff gave it, or executed and recorded.
    fn work(&self, view: &View, n: NodeIndex, key: Key, effective: Key) -> Result<Outcome, ExecError> {
        let plan = self.plan;
        let node = &plan.graph[n];
        let step = is_step(&node.op);
        if effective != key
            && !self.no_cache
            && let Some(outcome) = self.resolve(view, n, key, effective)?
        {
            return Ok(outcome);
        }
        // Running it needs the files of what it starts from and copies from.
        if step {
            for p in plan.graph.neighbors_directed(n, Direction::Incoming) {
                match self.executor.materialize(view, p) {
                    Ok(()) => {}
                    // The node whose layers could not be fetched, wherever
                    // below this input it is.
                    Err(ExecError::CacheFetch { index, message, .. }) => {
                        return Ok(Outcome::Demote(NodeIndex::new(index), message));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.events
                .event(Event::Started { node: node.id.clone(), description: crate::graph::describe(node, self.ws) });
        }
        let started = Instant::now();
        let millis = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let result = match self.executor.execute(view, n) {
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
        let out = out_key(plan, n, effective, &result);
        self.executor.record(&key, &result, Some(out))?;
        if effective != key {
            self.executor.record(&effective, &result, Some(out))?;
        }
        if step {
            self.events.event(Event::Finished { node: node.id.clone(), millis: millis() });
        }
        Ok(Outcome::Done { result, out, origin: None, step: step.then_some(StepOutcome::Ran) })
    }

    /// The resolvers, in order, for node `n` keyed again as `effective`.
    fn resolve(&self, view: &View, n: NodeIndex, key: Key, effective: Key) -> Result<Option<Outcome>, ExecError> {
        let node = &self.plan.graph[n];
        for resolver in self.resolvers {
            let Some(hit) = resolver.resolve(n, &effective, view)? else { continue };
            let remote = hit.origin.as_ref().map(|o| o.image.to_string());
            let out = hit.out.unwrap_or_else(|| out_key(self.plan, n, effective, &hit.result));
            // Found here: recorded under the plain key too, so the next
            // unchanged build finds it without the cutoff.
            if hit.origin.is_none() {
                self.executor.record(&key, &hit.result, Some(out))?;
            }
            let step = is_step(&node.op);
            if step {
                self.events.event(Event::Cached {
                    node: node.id.clone(),
                    description: crate::graph::describe(node, self.ws),
                    remote,
                    cutoff: true,
                });
            }
            return Ok(Some(Outcome::Done {
                result: hit.result,
                out,
                origin: hit.origin,
                step: step.then_some(StepOutcome::Cached),
            }));
        }
        Ok(None)
    }
}
