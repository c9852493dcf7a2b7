//! The build graph: a DAG of operations with content-hashed keys.
//!
//! # Nodes
//!
//! A workspace compiles into these operations:
//!
//! - `pull`: an external image, once per reference however many stages use it;
//! - `copy` and `run`: one node per filesystem-changing instruction, chained in
//!   stage order. Metadata instructions (`env`, `workdir`, `user`, `shell`,
//!   `entrypoint`, `label`, ...) make no node: they are folded into the state
//!   that later steps see and into the stage's final config;
//! - `stage`: a stage's result, its last filesystem step plus its config;
//! - `image`: an `image` stage exported (tags, annotations);
//! - `artifact`: files exported from a stage to the host.
//!
//! Edges point from an input to the node that consumes it: base -> first
//! step -> ... -> stage; another stage or an image -> a `copy from=`;
//! stage -> image export / artifact.
//!
//! # Platforms
//!
//! The workspace already holds one instance of a stage per target platform
//! when it depends on the target (`lang`); each is an ordinary stage here,
//! with its platform. A `pull` is one per reference and platform. Instances
//! of one stage share their steps up to the first that differs (the one
//! that uses a `TARGET*` arg, or reads a stage or base of its own
//! platform): those steps are one node, run once. Naming a stage selects
//! all its instances; naming an image, those of the platforms it is built
//! for.
//!
//! # Selection
//!
//! [`Plan::build`] marks as *needed* exactly the ancestors of the requested
//! targets' nodes; everything else is *pruned* (kept in the graph so `bake
//! graph` and `--dry-run` can show it, never run).
//!
//! # Keys
//!
//! [`Plan::compute_keys`] walks the graph in topological order and gives each
//! node a [`Key`]: blake3 over its operation, its parameters as written
//! (after `${ARG}` interpolation), the args it used, its parents' keys and the
//! digests of what it reads: for a context `copy`, the digest of exactly the
//! files it selects ([`crate::context`]); for a `pull`, the reference and its
//! manifest digest when known. Nothing machine-specific (paths, mtimes,
//! inodes, host names) enters a key, so keys agree across machines, and a
//! change reaches exactly the node that reads it and its descendants. A
//! node built for another platform than linux/amd64 has the platform in its
//! key; one for linux/amd64 does not, so builds that name no platform keep
//! the keys they had before platforms.
//!
//! A `copy from=STAGE` is keyed here by the source stage's key. The executor
//! narrows that to the digest of the files it actually copies (early cutoff), so
//! a builder that rebuilds to an identical binary leaves the final image alone.

mod key;
mod render;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, SourceSpan};
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use rayon::prelude::*;

pub use key::{Inputs, Key};
pub use render::{Format, describe};

use crate::context::{Context, ContextError, Selection};
use crate::lang::{
    ArtifactId, Base, Copy, CopySource, HealthTest, InstructionKind, Member, Run, Span, StageId, Workspace,
    did_you_mean, list_names,
};
use crate::platform::Platform;
use crate::reference::ImageRef;

/// The name a base image resolved for `platform` is recorded under in the
/// store, and looked up by in [`KeyOptions::base_digests`]: the reference,
/// with the platform after it unless it is linux/amd64 (the one platform of
/// bake's records before it knew platforms).
pub fn base_name(image: &ImageRef, platform: &Platform) -> String {
    if *platform == Platform::legacy() { image.to_string() } else { format!("{image} [{platform}]") }
}

/// What a node does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Fetch an external image, resolved for a platform.
    Pull { image: ImageRef, platform: Platform },
    /// Copy files into a stage's filesystem.
    Copy { stage: StageId, index: usize, copy: Copy, state: StepState },
    /// Run a command in a stage's filesystem.
    Run { stage: StageId, index: usize, run: Run, state: StepState },
    /// A stage's result: its filesystem and config.
    Stage { stage: StageId, config: Config },
    /// An `image` exported with its tags and annotations.
    Image { stage: StageId },
    /// Files exported from a stage to the host.
    Artifact { artifact: ArtifactId },
}

impl Op {
    /// The stage (instance) a node belongs to, for steps, stages and images.
    pub fn stage(&self) -> Option<StageId> {
        match self {
            Self::Copy { stage, .. } | Self::Run { stage, .. } | Self::Stage { stage, .. } | Self::Image { stage } => {
                Some(*stage)
            }
            Self::Pull { .. } | Self::Artifact { .. } => None,
        }
    }

    /// The operation's short name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pull { .. } => "pull",
            Self::Copy { .. } => "copy",
            Self::Run { .. } => "run",
            Self::Stage { .. } => "stage",
            Self::Image { .. } => "image",
            Self::Artifact { .. } => "artifact",
        }
    }
}

/// What a filesystem step sees of the stage's state when it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepState {
    /// `None` while still the base image's; a relative path when set
    /// relative to an unknown base workdir.
    pub workdir: Option<String>,
    /// Environment set by this build (the base image's comes on top at run time).
    /// Shared between the steps that see the same one: every step holds the
    /// state it runs in, and copying the map into each would cost env × steps.
    pub env: Arc<BTreeMap<String, String>>,
    pub user: Option<String>,
    pub shell: Option<Vec<String>>,
}

/// A stage's final image config, as far as the build sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub state: StepState,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub expose: Vec<String>,
    pub volumes: Vec<String>,
    pub stopsignal: Option<String>,
    pub healthcheck: Option<String>,
    /// Dockerfile `ONBUILD` triggers and `MAINTAINER`.
    pub onbuild: Vec<String>,
    pub author: Option<String>,
}

/// A node of the plan.
#[derive(Debug, Clone)]
pub struct Node {
    /// Stable, readable id (`builder/2`, `stage:builder`, `pull:docker.io/…`).
    pub id: String,
    pub op: Op,
    /// Where the user wrote it.
    pub span: Option<Span>,
    /// The node whose filesystem this one starts from (previous step, base
    /// image or base stage); `None` for `scratch` and for non-filesystem nodes.
    pub chain: Option<NodeIndex>,
    /// Whether a requested target needs it.
    pub needed: bool,
    pub key: Option<Key>,
    /// The inputs of `key`, for `bake explain`.
    pub inputs: Inputs,
    /// For a context `copy`: how many files the selection holds.
    pub context_files: Option<usize>,
}

/// A compiled build graph with its selection.
#[derive(Debug, Clone)]
pub struct Plan {
    pub graph: DiGraph<Node, ()>,
    /// The requested targets as given (or `default` / every image).
    pub requested: Vec<String>,
    /// The nodes the request names directly.
    pub roots: Vec<NodeIndex>,
    stage_nodes: Vec<NodeIndex>,
    /// What each context `copy` reads, once keys are computed.
    pub reads: HashMap<NodeIndex, ContextRead>,
    /// What each context bind of a `run` reads, by node and bind index.
    pub bind_reads: HashMap<(NodeIndex, usize), ContextRead>,
    /// The options the keys were computed with.
    key_options: Option<KeyOptions>,
}

/// What a context `copy` reads: the context's folder and the selection.
#[derive(Debug, Clone)]
pub struct ContextRead {
    pub root: PathBuf,
    pub selection: Arc<Selection>,
}

/// Options for computing keys.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    /// Where context file indexes persist (`None`: in memory only).
    pub index_dir: Option<PathBuf>,
    /// Manifest digests already known for image references (by the
    /// normalised reference), e.g. from the local store.
    pub base_digests: BTreeMap<String, String>,
    /// Compute keys for pruned nodes too (`bake graph`, `--dry-run`).
    pub include_pruned: bool,
    /// How layers and configs are written: part of every key whose output
    /// they shape, so a build with another compression or
    /// `SOURCE_DATE_EPOCH` never reuses results made with the old ones.
    pub compression: crate::oci::Compression,
    pub epoch: i64,
}

/// Errors while planning.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum PlanError {
    #[error("nothing named `{name}` to build")]
    #[diagnostic(code(bake::graph::unknown_target))]
    UnknownTarget {
        name: String,
        #[help]
        help: String,
    },

    #[error("{message}")]
    #[diagnostic(code(bake::graph::copy_source))]
    CopySource {
        message: String,
        #[source_code]
        src: crate::lang::Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Context(#[from] ContextError),

    #[error("{} while planning", crate::lang::plural(errors.len(), "error"))]
    #[diagnostic(code(bake::graph::errors))]
    Many {
        #[related]
        errors: Vec<PlanError>,
    },
}

impl Plan {
    /// Compiles a workspace and selects what `targets` need. An empty list
    /// means the `default` target, or every image when there is none.
    pub fn build(ws: &Workspace, targets: &[String]) -> Result<Self, PlanError> {
        let mut b = Builder {
            ws,
            graph: DiGraph::new(),
            pulls: HashMap::new(),
            steps: HashMap::new(),
            stage_nodes: vec![None; ws.stages.len()],
        };
        // Bases first, so `Builder::stage` never recurses down a long chain.
        for stage in stage_order(ws) {
            b.stage(stage);
        }
        let stage_nodes: Vec<NodeIndex> = b.stage_nodes.iter().map(|n| n.unwrap_or_default()).collect();
        let mut graph = b.graph;
        let mut image_nodes = HashMap::new();
        for (stage, s) in ws.stages.iter().enumerate() {
            if s.image.is_some() {
                let n = graph.add_node(node(format!("image:{}", s.instance), Op::Image { stage }, Some(s.span)));
                graph.add_edge(stage_nodes[stage], n, ());
                image_nodes.insert(stage, n);
            }
        }
        let mut artifact_nodes = Vec::new();
        for (artifact, a) in ws.artifacts.iter().enumerate() {
            let n = graph.add_node(node(format!("artifact:{}", a.name), Op::Artifact { artifact }, Some(a.span)));
            graph.add_edge(stage_nodes[a.from], n, ());
            artifact_nodes.push(n);
        }

        let (requested, members) = select(ws, targets)?;
        let mut roots = Vec::new();
        for m in members {
            let nodes: Vec<NodeIndex> = match m {
                // Every instance of the stage, and of an image those of
                // the platforms it is built for.
                Member::Stage(s) => {
                    instances(ws, s).map(|i| image_nodes.get(&i).copied().unwrap_or(stage_nodes[i])).collect()
                }
                Member::Artifact(a) => vec![artifact_nodes[a]],
                Member::Target(_) => continue,
            };
            for n in nodes {
                if !roots.contains(&n) {
                    roots.push(n);
                }
            }
        }
        // Needed = the roots and all their ancestors.
        let mut stack = roots.clone();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut graph[n].needed, true) {
                continue;
            }
            stack.extend(graph.neighbors_directed(n, Direction::Incoming));
        }
        Ok(Self {
            graph,
            requested,
            roots,
            stage_nodes,
            reads: HashMap::new(),
            bind_reads: HashMap::new(),
            key_options: None,
        })
    }

    /// The platform a node's result is for: a base image's, or its stage
    /// instance's.
    pub fn platform_of<'w>(&'w self, ws: &'w Workspace, n: NodeIndex) -> Option<&'w Platform> {
        match &self.graph[n].op {
            Op::Pull { platform, .. } => Some(platform),
            op => op.stage().map(|s| &ws.stages[s].platform),
        }
    }

    /// Node of a stage's result.
    pub fn stage_node(&self, stage: StageId) -> NodeIndex {
        self.stage_nodes[stage]
    }

    /// Nodes in an order where every node comes after its inputs.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        // The builder only adds edges towards later stages' nodes or along a
        // chain, and resolution rejected cycles, so toposort cannot fail; fall
        // back to insertion order if it ever did.
        petgraph::algo::toposort(&self.graph, None).unwrap_or_else(|_| self.graph.node_indices().collect())
    }

    /// Nodes that `needed` selects, in topological order.
    pub fn needed(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.topo_order().into_iter().filter(|n| self.graph[*n].needed)
    }

    /// Computes every needed node's key (and pruned ones' with
    /// `include_pruned`), hashing build contexts through their file indexes.
    ///
    /// Every context error is reported, each against its `copy` line.
    pub fn compute_keys(&mut self, ws: &Workspace, options: &KeyOptions) -> Result<(), PlanError> {
        let order = self.topo_order();
        let wanted = |n: &Node| n.needed || options.include_pruned;

        // Hash every context the selected copies read, in parallel.
        // By folder and the ignore file read in place of its `.dockerignore`.
        let mut contexts: BTreeMap<ContextId, Option<Arc<Context>>> = BTreeMap::new();
        let mut jobs = Vec::new();
        let mut bind_jobs = Vec::new();
        for &n in &order {
            let node = &self.graph[n];
            if let (true, Op::Copy { stage, copy, .. }) = (wanted(node), &node.op)
                && copy.from == CopySource::Context
            {
                let s = &ws.stages[*stage];
                contexts.entry((s.context.clone(), s.ignore_file.clone())).or_default();
                jobs.push(n);
            }
            if let (true, Op::Run { stage, run, .. }) = (wanted(node), &node.op)
                && run.binds.iter().any(|b| b.from == CopySource::Context)
            {
                let s = &ws.stages[*stage];
                contexts.entry((s.context.clone(), s.ignore_file.clone())).or_default();
                bind_jobs
                    .extend((0..run.binds.len()).filter(|&i| run.binds[i].from == CopySource::Context).map(|i| (n, i)));
            }
        }
        let mut errors = Vec::new();
        // Contexts are walked in parallel: a monorepo has one per service.
        let opened: Vec<(ContextId, Result<Context, ContextError>)> = contexts
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(dir, ignore)| {
                let ctx = Context::open_with_ignore(
                    &dir,
                    options.index_dir.as_deref(),
                    Some(&ws.boundary),
                    ignore.as_deref(),
                );
                ((dir, ignore), ctx)
            })
            .collect();
        for ((dir, ignore), opened) in opened {
            match opened {
                Ok(ctx) => {
                    contexts.insert((dir, ignore), Some(Arc::new(ctx)));
                }
                Err(e) => errors.push(context_error(ws, None, &dir, e)),
            }
        }
        let selections: Vec<(NodeIndex, Result<ContextRead, PlanError>)> = jobs
            .par_iter()
            .filter_map(|&n| {
                let Op::Copy { stage, copy, .. } = &self.graph[n].op else {
                    return None;
                };
                let s = &ws.stages[*stage];
                let dir = &s.context;
                let ctx = contexts.get(&(s.context.clone(), s.ignore_file.clone()))?.as_ref()?;
                let sources: Vec<&str> = copy.sources.iter().map(String::as_str).collect();
                let exclude: Vec<&str> = copy.exclude.iter().map(String::as_str).collect();
                let result = ctx
                    .select_with(&sources, &exclude, copy.optional)
                    .map(|s| ContextRead { root: ctx.root().to_path_buf(), selection: Arc::new(s) })
                    .map_err(|e| context_error(ws, self.graph[n].span.map(|s| (copy, s)), dir, e));
                Some((n, result))
            })
            .collect();
        let binds: Vec<((NodeIndex, usize), Result<ContextRead, PlanError>)> = bind_jobs
            .par_iter()
            .filter_map(|&(n, i)| {
                let Op::Run { stage, run, .. } = &self.graph[n].op else {
                    return None;
                };
                let s = &ws.stages[*stage];
                let ctx = contexts.get(&(s.context.clone(), s.ignore_file.clone()))?.as_ref()?;
                let bind = run.binds.get(i)?;
                let result = ctx
                    .select(&[bind.source.as_str()], &[])
                    .map(|sel| ContextRead { root: ctx.root().to_path_buf(), selection: Arc::new(sel) })
                    .map_err(|e| context_error(ws, None, &s.context, e));
                Some(((n, i), result))
            })
            .collect();
        self.bind_reads.clear();
        for (at, result) in binds {
            match result {
                Ok(read) => {
                    self.bind_reads.insert(at, read);
                }
                Err(e) => errors.push(e),
            }
        }
        self.reads.clear();
        for (n, result) in selections {
            match result {
                Ok(read) => {
                    self.reads.insert(n, read);
                }
                Err(e) => errors.push(e),
            }
        }
        for ctx in contexts.values().flatten() {
            // An index that cannot be saved costs speed next time, never correctness.
            let _ = ctx.save_index();
        }
        if !errors.is_empty() {
            return Err(if errors.len() == 1 { errors.remove(0) } else { PlanError::Many { errors } });
        }

        for &n in &order {
            if !wanted(&self.graph[n]) {
                continue;
            }
            let graph = &self.graph;
            let (key, inputs) = self.node_key(ws, n, options, &|p| graph[p].key);
            let context_files = self.reads.get(&n).map(|r| r.selection.len());
            let node = &mut self.graph[n];
            node.key = Some(key);
            node.inputs = inputs;
            node.context_files = context_files;
        }
        self.key_options = Some(options.clone());
        Ok(())
    }

    /// A node's key with its inputs' keys taken from `key_of`, for the
    /// executor's early cutoff: a `copy from=STAGE` that produced the same
    /// result as last time passes on an identity derived from that result, and
    /// the nodes after it are keyed again with it. `None` before
    /// [`Plan::compute_keys`].
    pub fn key_with(&self, ws: &Workspace, n: NodeIndex, key_of: &dyn Fn(NodeIndex) -> Option<Key>) -> Option<Key> {
        let options = self.key_options.as_ref()?;
        Some(self.node_key(ws, n, options, key_of).0)
    }

    fn node_key(
        &self,
        ws: &Workspace,
        n: NodeIndex,
        options: &KeyOptions,
        key_of: &dyn Fn(NodeIndex) -> Option<Key>,
    ) -> (Key, Inputs) {
        let graph = &self.graph;
        let node = &graph[n];
        let chain_key = node.chain.and_then(key_of);
        let mut k = key::KeyBuilder::new(node.op.kind());
        match &node.op {
            Op::Pull { image, platform } => {
                k.field("ref", image);
                let digest = options.base_digests.get(&base_name(image, platform)).cloned();
                // A pinned index digest names every platform: the digest
                // resolved for this one is the one that counts.
                let digest = digest.or_else(|| image.digest.clone());
                k.field("digest", digest.as_deref().unwrap_or("unresolved"));
                platform_field(&mut k, platform);
            }
            Op::Copy { stage, index, copy, state } => {
                k.opt("parent", chain_key);
                state_fields(&mut k, state);
                k.list("sources", &copy.sources).field("dest", &copy.dest);
                k.opt("chown", copy.chown.as_ref()).opt("chmod", copy.chmod.map(|m| format!("{m:o}")));
                k.list("exclude", &copy.exclude);
                // Only written when set (Dockerfiles), so other keys stay as they were.
                if copy.keep_owners {
                    k.field("keep-owners", true);
                }
                if copy.optional {
                    k.field("optional", true);
                }
                if copy.mkdir {
                    k.field("mkdir", true);
                }
                if copy.extract {
                    k.field("extract", true);
                }
                match &copy.from {
                    CopySource::Context => {
                        let digest = self.reads.get(&n).map_or([0; 32], |r| r.selection.digest);
                        k.field("from", "context").field("context", Key(digest).to_hex());
                    }
                    CopySource::Stage(s) => {
                        k.field("from", format!("stage:{}", ws.stages[*s].name));
                        k.opt("from.key", key_of(self.stage_nodes[*s]));
                    }
                    CopySource::Image(r) => {
                        k.field("from", format!("image:{r}"));
                        let pull = graph
                            .neighbors_directed(n, Direction::Incoming)
                            .find(|p| matches!(&graph[*p].op, Op::Pull { image, .. } if image == r));
                        k.opt("from.key", pull.and_then(key_of));
                    }
                }
                args_fields(&mut k, ws, *stage, *index);
            }
            Op::Run { stage, index, run, state } => {
                k.opt("parent", chain_key);
                state_fields(&mut k, state);
                k.field("script", &run.script);
                // Only written for exec form, so shell-form keys stay as they were.
                if let Some(argv) = &run.exec {
                    k.field("exec", format!("{argv:?}"));
                }
                k.field("network", format!("{:?}", run.network).to_lowercase());
                // Only written for an insecure step, so other keys stay as they were.
                if matches!(run.security, crate::lang::Security::Insecure { .. }) {
                    k.field("security", "insecure");
                }
                k.list("env", run.env.iter().map(|(a, b)| format!("{a}={b}")));
                k.list("cache", run.caches.iter().map(|c| format!("{} id={} sharing={:?}", c.path, c.id, c.sharing)));
                // Only written when there are some, so other keys stay as they were.
                if !run.binds.is_empty() {
                    k.list(
                        "bind",
                        run.binds.iter().enumerate().map(|(i, b)| {
                            let from = match &b.from {
                                CopySource::Context => {
                                    let digest = self.bind_reads.get(&(n, i)).map_or([0; 32], |r| r.selection.digest);
                                    format!("context={}", Key(digest).to_hex())
                                }
                                CopySource::Stage(s) => {
                                    let key = key_of(self.stage_nodes[*s]).map(|k| k.to_hex()).unwrap_or_default();
                                    format!("stage:{}={key}", ws.stages[*s].name)
                                }
                                CopySource::Image(r) => {
                                    let pull = graph
                                        .neighbors_directed(n, Direction::Incoming)
                                        .find(|p| matches!(&graph[*p].op, Op::Pull { image, .. } if image == r));
                                    let key = pull.and_then(key_of).map(|k| k.to_hex()).unwrap_or_default();
                                    format!("image:{r}={key}")
                                }
                            };
                            format!("{} target={} ro={} {from}", b.source, b.target, b.readonly)
                        }),
                    );
                }
                if !run.tmpfs.is_empty() {
                    k.list("tmpfs", &run.tmpfs);
                }
                k.list(
                    "secret",
                    run.secrets.iter().map(|s| {
                        let env = s.env.as_ref().map(|e| format!(" env={e}")).unwrap_or_default();
                        format!("{} target={} required={}{env}", s.id, s.target, s.required)
                    }),
                );
                args_fields(&mut k, ws, *stage, *index);
            }
            Op::Stage { stage, config } => {
                let s = &ws.stages[*stage];
                k.field("name", &s.name);
                k.opt("fs", chain_key);
                config_fields(&mut k, config);
                for (name, value) in &s.args_used {
                    k.field(&format!("arg:{name}"), value);
                }
            }
            Op::Image { stage } => {
                let s = &ws.stages[*stage];
                k.opt("stage", key_of(self.stage_nodes[*stage]));
                if let Some(out) = &s.image {
                    k.list("tags", out.tags.iter().map(|(t, _)| t));
                    k.list("annotations", out.annotations.iter().map(|(a, b)| format!("{a}={b}")));
                }
            }
            Op::Artifact { artifact } => {
                let a = &ws.artifacts[*artifact];
                k.opt("stage", key_of(self.stage_nodes[a.from])).field("path", &a.path);
            }
        }
        if !matches!(node.op, Op::Pull { .. }) {
            k.field("layers", format!("{:?} epoch={}", options.compression, options.epoch).to_lowercase());
        }
        if let Some(stage) = node.op.stage() {
            platform_field(&mut k, &ws.stages[stage].platform);
        }
        k.finish()
    }

    /// Renders the graph.
    pub fn render(&self, ws: &Workspace, format: Format) -> String {
        render::render(self, ws, format)
    }
}

/// A context as the keys read it: its folder, and the ignore file read in
/// place of its `.dockerignore`.
type ContextId = (PathBuf, Option<PathBuf>);

/// The platform a node's result is for, as a key field: only when it is not
/// linux/amd64, so that the keys of builds that name no platform on such a
/// machine are the keys they were before platforms.
fn platform_field(k: &mut key::KeyBuilder, platform: &Platform) {
    if *platform != Platform::legacy() {
        k.field("platform", platform);
    }
}

/// The instances of stage `s`'s declaration that a build of it makes: all
/// of a stage's; an image's for the platforms it is built for.
fn instances(ws: &Workspace, s: StageId) -> impl Iterator<Item = StageId> + '_ {
    let name = &ws.stages[s].name;
    ws.stages.iter().enumerate().filter(move |(_, i)| i.name == *name).filter_map(|(id, i)| {
        let wanted = match (&i.image, &i.target) {
            (Some(out), Some(target)) => out.build_for.is_empty() || out.build_for.contains(target),
            _ => true,
        };
        wanted.then_some(id)
    })
}

fn node(id: String, op: Op, span: Option<Span>) -> Node {
    Node { id, op, span, chain: None, needed: false, key: None, inputs: Vec::new(), context_files: None }
}

fn state_fields(k: &mut key::KeyBuilder, state: &StepState) {
    k.opt("workdir", state.workdir.as_ref());
    k.list("state.env", state.env.iter().map(|(a, b)| format!("{a}={b}")));
    k.opt("user", state.user.as_ref());
    k.opt("shell", state.shell.as_ref().map(|s| format!("{s:?}")));
}

fn config_fields(k: &mut key::KeyBuilder, c: &Config) {
    state_fields(k, &c.state);
    k.opt("entrypoint", c.entrypoint.as_ref().map(|v| format!("{v:?}")));
    k.opt("cmd", c.cmd.as_ref().map(|v| format!("{v:?}")));
    k.list("labels", c.labels.iter().map(|(a, b)| format!("{a}={b}")));
    k.list("expose", &c.expose);
    k.list("volumes", &c.volumes);
    k.opt("stopsignal", c.stopsignal.as_ref());
    k.opt("healthcheck", c.healthcheck.as_ref());
    // Only written when set (Dockerfiles), so other keys stay as they were.
    if !c.onbuild.is_empty() {
        k.list("onbuild", &c.onbuild);
    }
    if let Some(author) = &c.author {
        k.field("author", author);
    }
}

/// The args an instruction's strings used, as explain-able key fields.
fn args_fields(k: &mut key::KeyBuilder, ws: &Workspace, stage: StageId, index: usize) {
    if let Some(ins) = ws.stages[stage].instructions.get(index) {
        for (name, value) in &ins.args_used {
            k.field(&format!("arg:{name}"), value);
        }
    }
}

fn context_error(ws: &Workspace, copy: Option<(&Copy, Span)>, dir: &Path, e: ContextError) -> PlanError {
    let Some((copy, span)) = copy else {
        return PlanError::Context(e);
    };
    // Point at the source the error is about, when it names one.
    let source = match &e {
        ContextError::NoMatch { source_path, .. } | ContextError::Escape { source_path } => Some(source_path.as_str()),
        ContextError::Pattern { pattern, .. } => Some(pattern.as_str()),
        _ => None,
    };
    let at = source
        .and_then(|s| copy.sources.iter().position(|c| c == s))
        .and_then(|i| copy.source_spans.get(i).copied())
        .unwrap_or(span);
    let label = match &e {
        ContextError::NoMatch { .. } => "not in the build context".to_owned(),
        ContextError::Pattern { .. } => "bad pattern".to_owned(),
        _ => format!("reads from the context {}", dir.display()),
    };
    PlanError::CopySource {
        message: e.to_string(),
        src: ws.file(at.file).src(),
        at: at.span,
        label,
        help: e.help().map(|h| h.to_string()),
    }
}

/// Resolves the requested names to members (targets expanded).
fn select(ws: &Workspace, targets: &[String]) -> Result<(Vec<String>, Vec<Member>), PlanError> {
    let requested: Vec<String> = if !targets.is_empty() {
        targets.to_vec()
    } else if ws.targets.iter().any(|t| t.name == "default") {
        vec!["default".to_owned()]
    } else {
        let images: Vec<String> = ws.stages.iter().filter(|s| s.image.is_some()).map(|s| s.name.clone()).collect();
        if images.is_empty() { ws.stages.iter().map(|s| s.name.clone()).collect() } else { images }
    };
    let mut members = Vec::new();
    let mut stack: Vec<Member> = Vec::new();
    for name in &requested {
        let Some(m) = ws.member(name) else {
            let names = ws.member_names();
            let help = match did_you_mean(name, names.iter().copied()) {
                Some(close) => format!("did you mean `{close}`? Names: {}", list_names(&names)),
                None if names.is_empty() => "the workspace defines nothing to build".to_owned(),
                None => format!("names: {}", list_names(&names)),
            };
            return Err(PlanError::UnknownTarget { name: name.clone(), help });
        };
        stack.push(m);
    }
    let mut seen = std::collections::HashSet::new();
    stack.reverse();
    while let Some(m) = stack.pop() {
        if !seen.insert(m) {
            continue;
        }
        match m {
            Member::Target(t) => stack.extend(ws.targets[t].members.iter().rev().map(|(m, _)| *m)),
            other => members.push(other),
        }
    }
    Ok((requested, members))
}

/// Every stage after the stages it reads (`from=`, `copy from=`), found
/// without recursion: `lang` bounds the depth, but a raised limit must not
/// cost the stack.
fn stage_order(ws: &Workspace) -> Vec<StageId> {
    let deps = |s: StageId| {
        let stage = &ws.stages[s];
        let from = match stage.from {
            Base::Stage(p) => Some(p),
            _ => None,
        };
        from.into_iter().chain(stage.instructions.iter().flat_map(|ins| {
            match &ins.kind {
                InstructionKind::Copy(Copy { from: CopySource::Stage(p), .. }) => vec![*p],
                InstructionKind::Run(run) => run
                    .binds
                    .iter()
                    .filter_map(|b| match b.from {
                        CopySource::Stage(p) => Some(p),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            }
        }))
    };
    let mut placed = vec![false; ws.stages.len()];
    let mut entered = vec![false; ws.stages.len()];
    let mut order = Vec::with_capacity(ws.stages.len());
    for start in 0..ws.stages.len() {
        // (stage, whether its bases were pushed already)
        let mut stack = vec![(start, false)];
        while let Some((s, expanded)) = stack.pop() {
            if placed[s] {
                continue;
            }
            if expanded {
                placed[s] = true;
                order.push(s);
            } else if !std::mem::replace(&mut entered[s], true) {
                stack.push((s, true));
                // Resolution rejected cycles; `entered` also ends any loop.
                stack.extend(deps(s).filter(|&p| !placed[p] && p != s).map(|p| (p, false)));
            }
        }
    }
    order
}

/// Adds nodes for stages, resolving bases first.
struct Builder<'w> {
    ws: &'w Workspace,
    graph: DiGraph<Node, ()>,
    pulls: HashMap<(ImageRef, Platform), NodeIndex>,
    /// Steps of stage instances, by what makes them the same step.
    steps: HashMap<String, NodeIndex>,
    stage_nodes: Vec<Option<NodeIndex>>,
}

impl Builder<'_> {
    fn pull(&mut self, image: &ImageRef, platform: &Platform) -> NodeIndex {
        let at = (image.clone(), platform.clone());
        if let Some(n) = self.pulls.get(&at) {
            return *n;
        }
        let id = format!("pull:{}", base_name(image, platform));
        let n = self.graph.add_node(node(id, Op::Pull { image: image.clone(), platform: platform.clone() }, None));
        self.pulls.insert(at, n);
        n
    }

    /// Adds a stage's nodes (and, first, the stages it reads), returning its
    /// result node and final config.
    fn stage(&mut self, id: StageId) -> NodeIndex {
        if let Some(n) = self.stage_nodes[id] {
            return n;
        }
        let ws = self.ws;
        let s = &ws.stages[id];
        let (mut prev, mut config) = match &s.from {
            Base::Scratch => (None, Config::default()),
            Base::Image(r) => (Some(self.pull(r, &s.platform)), Config::default()),
            Base::Stage(p) => {
                let n = self.stage(*p);
                let Op::Stage { config, .. } = &self.graph[n].op else { unreachable!("stage node") };
                (Some(n), config.clone())
            }
        };
        for (index, ins) in s.instructions.iter().enumerate() {
            let state = config.state.clone();
            let op = match &ins.kind {
                InstructionKind::Copy(copy) => Op::Copy { stage: id, index, copy: copy.clone(), state },
                InstructionKind::Run(run) => Op::Run { stage: id, index, run: run.clone(), state },
                other => {
                    apply(&mut config, other);
                    continue;
                }
            };
            let base = s.target.as_ref().unwrap_or(&s.platform).clone();
            let extra: Vec<NodeIndex> = match &op {
                Op::Copy { copy: Copy { from: CopySource::Stage(src), .. }, .. } => vec![self.stage(*src)],
                Op::Copy { copy: Copy { from: CopySource::Image(r), .. }, .. } => vec![self.pull(r, &base)],
                Op::Run { run, .. } => run
                    .binds
                    .iter()
                    .filter_map(|b| match &b.from {
                        CopySource::Stage(src) => Some(self.stage(*src)),
                        CopySource::Image(r) => Some(self.pull(r, &base)),
                        CopySource::Context => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            // Instances of one stage for several targets share their steps
            // up to the first that differs (one that uses a `TARGET*` arg,
            // or reads another platform's stage or base): those are the
            // same step, run once.
            let shared = s.target.is_some().then(|| {
                let what = match &op {
                    Op::Copy { copy, state, .. } => format!("{copy:?} {state:?}"),
                    Op::Run { run, state, .. } => format!("{run:?} {state:?}"),
                    _ => String::new(),
                };
                format!(
                    "{} {prev:?} {extra:?} {index} {what} {:?} {} {}",
                    s.name,
                    ins.args_used,
                    s.platform,
                    s.context.display()
                )
            });
            if let Some(n) = shared.as_ref().and_then(|sig| self.steps.get(sig)) {
                let n = *n;
                // Named after the stage, not one of its instances.
                self.graph[n].id = format!("{}/{index}", s.name);
                prev = Some(n);
                continue;
            }
            let mut step = node(format!("{}/{index}", s.instance), op, Some(ins.span));
            step.chain = prev;
            let n = self.graph.add_node(step);
            if let Some(sig) = shared {
                self.steps.insert(sig, n);
            }
            if let Some(p) = prev {
                self.graph.add_edge(p, n, ());
            }
            for e in extra {
                if !self.graph.contains_edge(e, n) {
                    self.graph.add_edge(e, n, ());
                }
            }
            prev = Some(n);
        }
        let mut result = node(format!("stage:{}", s.instance), Op::Stage { stage: id, config }, Some(s.span));
        result.chain = prev;
        let n = self.graph.add_node(result);
        if let Some(p) = prev {
            self.graph.add_edge(p, n, ());
        }
        self.stage_nodes[id] = Some(n);
        n
    }
}

/// Folds a metadata instruction into the config.
fn apply(config: &mut Config, kind: &InstructionKind) {
    match kind {
        InstructionKind::Workdir(w) => {
            config.state.workdir = Some(match &config.state.workdir {
                _ if w.starts_with('/') => w.clone(),
                Some(prev) => format!("{}/{w}", prev.trim_end_matches('/')),
                None => w.clone(),
            });
        }
        InstructionKind::Env(k, v) => {
            Arc::make_mut(&mut config.state.env).insert(k.clone(), v.clone());
        }
        InstructionKind::User(u) => config.state.user = Some(u.clone()),
        InstructionKind::Shell(s) => config.state.shell = Some(s.clone()),
        InstructionKind::Expose(ports) => {
            for p in ports {
                let p = p.to_string();
                if !config.expose.contains(&p) {
                    config.expose.push(p);
                }
            }
            config.expose.sort();
        }
        InstructionKind::Entrypoint(a) => {
            config.entrypoint = Some(a.clone());
            // As in Docker, a new entrypoint resets an inherited cmd.
            config.cmd = None;
        }
        InstructionKind::Cmd(a) => config.cmd = Some(a.clone()),
        InstructionKind::Label(k, v) => {
            config.labels.insert(k.clone(), v.clone());
        }
        InstructionKind::Volume(v) => {
            for p in v {
                if !config.volumes.contains(p) {
                    config.volumes.push(p.clone());
                }
            }
            config.volumes.sort();
        }
        InstructionKind::StopSignal(s) => config.stopsignal = Some(s.clone()),
        InstructionKind::Healthcheck(h) => {
            let test = match &h.test {
                HealthTest::None => "NONE".to_owned(),
                HealthTest::Exec(a) => format!("CMD {a:?}"),
                HealthTest::Shell(s) => format!("CMD-SHELL {s:?}"),
            };
            config.healthcheck = Some(format!(
                "{test} interval={:?} timeout={:?} start-period={:?} start-interval={:?} retries={:?}",
                h.interval_ns, h.timeout_ns, h.start_period_ns, h.start_interval_ns, h.retries
            ));
        }
        InstructionKind::OnBuild(t) => config.onbuild.push(t.clone()),
        InstructionKind::Author(a) => config.author = Some(a.clone()),
        InstructionKind::Copy(_) | InstructionKind::Run(_) => {}
    }
}

impl PlanError {
    /// Whose the error is.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::UnknownTarget { .. } | Self::CopySource { .. } => crate::Tier::Input,
            Self::Context(e) => e.tier(),
            Self::Many { errors } => errors.iter().map(Self::tier).max().unwrap_or(crate::Tier::Input),
        }
    }
}
