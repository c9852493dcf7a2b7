//! Resolvers: places a node's result may already be, tried in order before
//! the node runs.
//!
//! 1. [`LocalStore`]: the result recorded under the node's key in the
//!    local store (by an earlier build, or pulled from a registry cache).
//! 2. [`RegistryCache`]: the `cache-from` registry caches (see
//!    `remote.rs`), whose hits bring their layers only when a step that runs
//!    here reads them.
//! 3. *(To come, issue 16.)* A remote executor (REAPI) is one more
//!    [`Resolver`] after these: it answers with a result it computed
//!    elsewhere, whose layers are fetched like a registry cache hit's.
//!
//! What none of them has is run by the fallback executor
//! (`execute::Fallback`: `run.rs`, `copy.rs`).
//!
//! Resolvers are asked twice per build. Before anything runs,
//! [`lookups`] asks the local store one node at a time, walking down from
//! the requested targets and stopping at each hit (an unchanged build looks
//! up its final stages and nothing below them), then asks the registry
//! caches at once for every node still needed. While the build runs, a node
//! an early cutoff keyed again asks each resolver in turn
//! ([`Resolver::resolve`]).

use std::collections::{HashMap, HashSet};

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use super::fetch::Origin;
use super::remote::RemoteCache;
use super::schedule::{View, is_fs, required};
use super::{ExecError, FsResult};
use crate::graph::{Key, Plan};
use crate::store::Store;

/// A result found before a node runs.
#[derive(Debug)]
pub(super) struct Hit {
    pub result: FsResult,
    /// The identity recorded with it, passed on to the nodes after it.
    pub out: Option<Key>,
    /// Set when it came from a registry cache: where its layers are.
    pub origin: Option<Origin>,
}

/// One place results may be found.
pub(super) trait Resolver: Sync {
    /// The result for node `n` under `key`, if this place has one. Called
    /// on a worker thread (inside the runtime); `view` is what the
    /// scheduler knows of the finished nodes.
    fn resolve(&self, n: NodeIndex, key: &Key, view: &View) -> Result<Option<Hit>, ExecError>;
}

/// The local store's results.
pub(super) struct LocalStore<'s> {
    pub store: &'s Store,
}

impl LocalStore<'_> {
    /// The result recorded under `key`, and the identity recorded with it.
    pub(super) fn get(&self, key: &Key) -> Result<Option<(FsResult, Option<Key>)>, ExecError> {
        let Some(entry) = self.store.cache(&key.to_hex())? else { return Ok(None) };
        let out = entry.value.get("out").and_then(|v| v.as_str()).and_then(Key::from_hex);
        Ok(serde_json::from_value::<FsResult>(entry.value).ok().map(|r| (r, out)))
    }
}

impl Resolver for LocalStore<'_> {
    fn resolve(&self, _: NodeIndex, key: &Key, _: &View) -> Result<Option<Hit>, ExecError> {
        Ok(self.get(key)?.map(|(result, out)| Hit { result, out, origin: None }))
    }
}

/// The registry caches' results.
pub(super) struct RegistryCache<'c> {
    pub cache: &'c RemoteCache<'c>,
}

impl Resolver for RegistryCache<'_> {
    fn resolve(&self, n: NodeIndex, key: &Key, view: &View) -> Result<Option<Hit>, ExecError> {
        // A node demoted once is built here: its cache entry lost its layers.
        if view.demoted.contains(&n) {
            return Ok(None);
        }
        Ok(self.cache.lookup_one(n, key).map(|(origin, result)| Hit { result, out: None, origin: Some(origin) }))
    }
}

/// Looks every needed node's key up before the build: the local store,
/// then the registry caches for what the local store lacks and the build
/// would need.
pub(super) async fn lookups(
    plan: &Plan,
    local: &LocalStore<'_>,
    cache: &RemoteCache<'_>,
    view: &View,
) -> Result<HashMap<NodeIndex, Hit>, ExecError> {
    let mut hits = tokio::task::block_in_place(|| local_walk(plan, local))?;
    if cache.is_empty() {
        return Ok(hits);
    }
    let wanted: Vec<(NodeIndex, Key)> = required(plan, &hits, view)
        .into_iter()
        .filter(|n| is_fs(&plan.graph[*n].op) && !hits.contains_key(n))
        .filter_map(|n| plan.graph[n].key.map(|k| (n, k)))
        .collect();
    for (n, (origin, result)) in cache.lookup_many(&wanted).await {
        hits.insert(n, Hit { result, out: None, origin: Some(origin) });
    }
    Ok(hits)
}

/// From the requested targets down, stopping at every local hit: an
/// unchanged build looks up its final stages and nothing below them.
pub(super) fn local_walk(plan: &Plan, local: &LocalStore<'_>) -> Result<HashMap<NodeIndex, Hit>, ExecError> {
    let mut hits = HashMap::new();
    let mut seen = HashSet::new();
    let mut stack = plan.roots.clone();
    while let Some(n) = stack.pop() {
        if !seen.insert(n) {
            continue;
        }
        let node = &plan.graph[n];
        if is_fs(&node.op)
            && let Some(key) = node.key
            && let Some((result, out)) = local.get(&key)?
        {
            hits.insert(n, Hit { result, out, origin: None });
            continue;
        }
        stack.extend(plan.graph.neighbors_directed(n, Direction::Incoming));
    }
    Ok(hits)
}
