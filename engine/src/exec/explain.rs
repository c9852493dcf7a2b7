//! Why a node rebuilds: its inputs now against the inputs of the last build.
//!
//! After every successful build, each needed node's key and its readable
//! inputs ([`crate::graph::Inputs`]) are kept in `$BAKE_HOME/explain/`, one
//! small file per workspace and node id ("the last build of `app/2` of this
//! build.kdl"), replaced by rename. A context `copy` also keeps the list of
//! the files it read, with their digests. These files are bounded by the
//! number of nodes of the workspaces built; they are not cache entries and
//! nothing else reads them. `bake explain` computes the keys
//! again, finds the nodes that would run, and compares each one's inputs
//! with the pointer's: a field that differs is a [`Reason`]. Parent fields
//! are cascades; the rest are root causes. Nothing is run and the network
//! is not used: base images are taken at the digest the store has.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::execute::Build;
use super::resolve::{Hit, LocalStore};
use super::schedule::{State, View, required};
use super::{Engine, ExecError, local_base_digests};
use crate::graph::{Inputs, Key, KeyOptions, Op, Plan};
use crate::home::Home;
use crate::lang::Workspace;

/// Why one node will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub node: String,
    pub description: String,
    /// At least one.
    pub reasons: Vec<Reason>,
}

impl Explanation {
    /// Whether a reason is its own (not only a parent's change).
    pub fn is_root_cause(&self) -> bool {
        self.reasons.iter().any(|r| !matches!(r, Reason::ParentChanged { .. }))
    }
}

/// One input that differs from the last build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// No earlier build of this node is known.
    NoEntry,
    /// `--no-cache`.
    Forced,
    /// Context files the `copy` reads changed.
    FilesChanged { changed: Vec<String>, added: Vec<String>, removed: Vec<String> },
    /// An `arg` it uses has another value.
    ArgChanged { name: String, old: Option<String>, new: Option<String> },
    /// The base image's manifest digest moved.
    BaseChanged { image: String, old: String, new: String },
    /// A node it depends on changes.
    ParentChanged { node: String },
    /// What the user wrote for it changed (a script, a path, an option).
    DefinitionChanged { field: String, old: Option<String>, new: Option<String> },
    /// The key differs but the inputs the last build recorded are the same
    /// (a change in bake's key encoding, or a result evicted from the store).
    Evicted,
}

/// The last build's key and inputs for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Last {
    key: String,
    inputs: Inputs,
    /// A context copy's files: `path\tentry` lines, sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<String>,
}

/// The file keeping node `id`'s last build in the workspace `ws`.
fn last_path(home: &Home, ws: &Workspace, id: &str) -> PathBuf {
    let workspace = ws.files.first().map(|f| f.path.to_string_lossy().into_owned()).unwrap_or_default();
    home.root().join("explain").join(format!("{}.json", Key::last_build(&workspace, id).to_hex()))
}

fn read_last(home: &Home, ws: &Workspace, id: &str) -> Option<Last> {
    let bytes = std::fs::read(last_path(home, ws, id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_last(path: &Path, last: &Last) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no folder"))?;
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut file, last)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The file list of a context copy, one line per entry.
fn file_lines(plan: &Plan, n: petgraph::graph::NodeIndex) -> Option<String> {
    let read = plan.reads.get(&n)?;
    let mut out = String::new();
    for e in &read.selection.entries {
        let digest = e.digest.map(|d| Key(d).to_hex()).unwrap_or_default();
        let _ = writeln!(out, "{}\t{:?} {:o} {digest}", e.path, e.kind, e.mode);
    }
    Some(out)
}

/// Keeps the key and inputs of every node the build looked at (those that
/// ran, and the cached ones it stopped at) as "the last build".
pub(super) fn remember(build: &Build<'_>, plan: &Plan, state: &State) {
    let home = &build.engine.home;
    let looked_at = &state.visited;
    for n in plan.needed().filter(|n| looked_at.contains(n)) {
        let node = &plan.graph[n];
        if matches!(node.op, Op::Image { .. } | Op::Artifact { .. }) {
            continue;
        }
        let Some(key) = node.key else { continue };
        if read_last(home, build.ws, &node.id).is_some_and(|l| l.key == key.to_hex()) {
            continue;
        }
        let last = Last { key: key.to_hex(), inputs: node.inputs.clone(), files: file_lines(plan, n) };
        // A record that cannot be written costs `explain` its answer, never the build.
        let _ = write_last(&last_path(home, build.ws, &node.id), &last);
    }
}

/// Why each node that a build of `targets` would run has to run, in build
/// order ([`Engine::explain`]).
pub(super) fn explain(
    engine: &Engine,
    ws: &Workspace,
    targets: &[String],
    options: &super::BuildOptions,
) -> Result<Vec<Explanation>, ExecError> {
    let mut plan = Plan::build(ws, targets)?;
    let key_options = KeyOptions {
        index_dir: Some(engine.home.index_dir()),
        base_digests: local_base_digests(&engine.store, &plan),
        include_pruned: false,
        compression: options.compression,
        epoch: options.epoch,
    };
    plan.compute_keys(ws, &key_options)?;
    let local = LocalStore { store: &engine.store };
    let mut hits = HashMap::new();
    if !options.no_cache {
        for n in plan.needed() {
            let node = &plan.graph[n];
            if matches!(node.op, Op::Copy { .. } | Op::Run { .. } | Op::Stage { .. })
                && let Some(key) = node.key
                && let Some((result, out)) = local.get(&key)?
            {
                hits.insert(n, Hit { result, out, origin: None });
            }
        }
    }
    let required = required(&plan, &hits, &View::default());
    let mut out = Vec::new();
    for n in plan.topo_order() {
        let node = &plan.graph[n];
        if !required.contains(&n) || hits.contains_key(&n) || !matches!(node.op, Op::Copy { .. } | Op::Run { .. }) {
            continue;
        }
        let reasons = if options.no_cache {
            vec![Reason::Forced]
        } else {
            match read_last(&engine.home, ws, &node.id) {
                None => vec![Reason::NoEntry],
                Some(last) => diff(&engine.home, &plan, ws, n, &last),
            }
        };
        out.push(Explanation { node: node.id.clone(), description: crate::graph::describe(node, ws), reasons });
    }
    Ok(out)
}

/// The reasons node `n`'s inputs differ from `last`.
fn diff(home: &Home, plan: &Plan, ws: &Workspace, n: petgraph::graph::NodeIndex, last: &Last) -> Vec<Reason> {
    let node = &plan.graph[n];
    let old: BTreeMap<&str, &str> = last.inputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let new: BTreeMap<&str, &str> = node.inputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let parent_of = |field: &str| -> Option<String> {
        let graph = &plan.graph;
        match field {
            "parent" | "parent?" | "fs" | "fs?" => node.chain.map(|p| graph[p].id.clone()),
            "from.key" | "from.key?" => graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .find(|p| Some(*p) != node.chain)
                .map(|p| graph[p].id.clone()),
            _ => None,
        }
    };
    let mut reasons = Vec::new();
    let mut fields: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    fields.sort_unstable();
    fields.dedup();
    for field in fields {
        let (o, w) = (old.get(field).copied(), new.get(field).copied());
        if o == w {
            continue;
        }
        if let Some(parent) = parent_of(field) {
            // A base image that moved is the root cause, not a cascade.
            let p =
                plan.graph.neighbors_directed(n, petgraph::Direction::Incoming).find(|p| plan.graph[*p].id == parent);
            if let Some(p) = p
                && let Op::Pull { image, platform } = &plan.graph[p].op
                && let Some(prev) = read_last(home, ws, &plan.graph[p].id)
            {
                let digest = |inputs: &Inputs| inputs.iter().find(|(k, _)| k == "digest").map(|(_, v)| v.clone());
                let (before, now) = (digest(&prev.inputs), digest(&plan.graph[p].inputs));
                if before != now {
                    reasons.push(Reason::BaseChanged {
                        image: crate::graph::base_name(image, platform),
                        old: before.unwrap_or_default(),
                        new: now.unwrap_or_default(),
                    });
                    continue;
                }
            }
            reasons.push(Reason::ParentChanged { node: parent });
        } else if field == "context" {
            reasons.push(files_changed(plan, n, last));
        } else if let Some(name) = field.strip_prefix("arg:") {
            reasons.push(Reason::ArgChanged {
                name: name.to_owned(),
                old: o.map(str::to_owned),
                new: w.map(str::to_owned),
            });
        } else if field.rsplit('.').next().is_none_or(|last| last != "len") {
            let field = field.trim_end_matches('?').to_owned();
            reasons.push(Reason::DefinitionChanged { field, old: o.map(str::to_owned), new: w.map(str::to_owned) });
        }
    }
    if reasons.is_empty() {
        reasons.push(Reason::Evicted);
    }
    reasons
}

fn files_changed(plan: &Plan, n: petgraph::graph::NodeIndex, last: &Last) -> Reason {
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines().filter_map(|l| l.split_once('\t')).map(|(p, e)| (p.to_owned(), e.to_owned())).collect()
    };
    let old = parse(last.files.as_deref().unwrap_or_default());
    let new = parse(&file_lines(plan, n).unwrap_or_default());
    let changed = new.iter().filter(|(p, e)| old.get(*p).is_some_and(|o| o != *e)).map(|(p, _)| p.clone()).collect();
    let added = new.keys().filter(|p| !old.contains_key(*p)).cloned().collect();
    let removed = old.keys().filter(|p| !new.contains_key(*p)).cloned().collect();
    Reason::FilesChanged { changed, added, removed }
}
