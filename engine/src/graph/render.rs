//! Text renderings of a plan: Graphviz dot, Mermaid, JSON.

use std::fmt::Write;

use petgraph::visit::EdgeRef;

use super::{Node, Op, Plan};
use crate::lang::{CopySource, Workspace};

/// A rendering of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dot,
    Mermaid,
    Json,
}

/// A one-line description of a node.
pub fn describe(node: &Node, ws: &Workspace) -> String {
    let stage_name = |s: usize| ws.stages[s].instance.as_str();
    match &node.op {
        Op::Pull { image, platform } => format!("pull {}", super::base_name(image, platform)),
        Op::Copy { stage, copy, state, .. } if copy.mkdir => {
            let dir = state.workdir.as_deref().unwrap_or(".");
            format!("{}: workdir {dir} (make the folder)", stage_name(*stage))
        }
        Op::Copy { stage, copy, .. } => {
            let from = match &copy.from {
                CopySource::Context => String::new(),
                CopySource::Stage(s) => format!(" from {}", stage_name(*s)),
                CopySource::Image(r) => format!(" from {r}"),
            };
            format!("{}: copy {}{from} -> {}", step_label(node, ws, *stage), copy.sources.join(" "), copy.dest)
        }
        Op::Run { stage, run, .. } => {
            format!("{}: run {}", step_label(node, ws, *stage), short(&run.script, 60))
        }
        Op::Stage { stage, .. } => format!("stage {}", stage_label(ws, *stage)),
        Op::Image { stage } => {
            let tags = ws.stages[*stage]
                .image
                .as_ref()
                .map(|o| o.tags.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            if tags.is_empty() {
                format!("image {}", stage_label(ws, *stage))
            } else {
                format!("image {} ({tags})", stage_label(ws, *stage))
            }
        }
        Op::Artifact { artifact } => {
            let a = &ws.artifacts[*artifact];
            format!("artifact {} {} -> {}", a.name, a.path, a.dest.display())
        }
    }
}

/// The first line of `s`, cut to `max` characters.
fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let more = s.lines().nth(1).is_some();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else if more {
        format!("{line} …")
    } else {
        line.to_owned()
    }
}

pub(super) fn render(plan: &Plan, ws: &Workspace, format: Format) -> String {
    match format {
        Format::Dot => dot(plan, ws),
        Format::Mermaid => mermaid(plan, ws),
        Format::Json => json(plan, ws),
    }
}

fn dot(plan: &Plan, ws: &Workspace) -> String {
    let mut out = String::from("digraph bake {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
    for n in plan.topo_order() {
        let node = &plan.graph[n];
        let style = if node.needed { "" } else { ", style=dashed, fontcolor=gray" };
        let _ = writeln!(out, "  n{} [label={}{style}];", n.index(), quote(&describe(node, ws)));
    }
    for e in plan.graph.edge_references() {
        let _ = writeln!(out, "  n{} -> n{};", e.source().index(), e.target().index());
    }
    out.push_str("}\n");
    out
}

fn mermaid(plan: &Plan, ws: &Workspace) -> String {
    let mut out = String::from("flowchart LR\n");
    for n in plan.topo_order() {
        let node = &plan.graph[n];
        let label = describe(node, ws).replace('"', "#quot;");
        let _ = writeln!(out, "  n{}[\"{label}\"]", n.index());
        if !node.needed {
            let _ = writeln!(out, "  class n{} pruned", n.index());
        }
    }
    for e in plan.graph.edge_references() {
        let _ = writeln!(out, "  n{} --> n{}", e.source().index(), e.target().index());
    }
    out.push_str("  classDef pruned stroke-dasharray: 4 4,color:#888\n");
    out
}

fn json(plan: &Plan, ws: &Workspace) -> String {
    let nodes: Vec<serde_json::Value> = plan
        .topo_order()
        .into_iter()
        .map(|n| {
            let node = &plan.graph[n];
            let location = node.span.map(|s| ws.location(s));
            let mut v = serde_json::json!({
                "id": node.id,
                "op": node.op.kind(),
                "description": describe(node, ws),
                "needed": node.needed,
                "key": node.key,
                "location": location,
                "inputs": plan.graph.neighbors_directed(n, petgraph::Direction::Incoming).map(|p| plan.graph[p].id.clone()).collect::<Vec<_>>(),
            });
            if let Some(files) = node.context_files {
                v["context_files"] = files.into();
            }
            if let Some(p) = plan.platform_of(ws, n).filter(|_| shows_platforms(ws)) {
                v["platform"] = p.to_string().into();
            }
            v
        })
        .collect();
    let doc = serde_json::json!({
        "requested": plan.requested,
        "roots": plan.roots.iter().map(|r| plan.graph[*r].id.clone()).collect::<Vec<_>>(),
        "nodes": nodes,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// Whether listings name platforms: when some stage is built for another
/// one than linux/amd64, the one every listing assumed before platforms.
pub(super) fn shows_platforms(ws: &Workspace) -> bool {
    ws.platforms.len() > 1 || ws.stages.iter().any(|s| s.platform != crate::platform::Platform::legacy())
}

/// A step's stage as listings show it: the stage's own name for a step its
/// instances share (its id has no platform), else the instance's label.
fn step_label(node: &Node, ws: &Workspace, s: usize) -> String {
    let stage = &ws.stages[s];
    if stage.instance != stage.name && node.id.starts_with(&format!("{}/", stage.name)) {
        if shows_platforms(ws) {
            return format!("{} ({})", stage.name, stage.platform);
        }
        return stage.name.clone();
    }
    stage_label(ws, s)
}

/// A stage instance as listings show it: its instance name, and the
/// platform it runs as when that is not the one its name says.
fn stage_label(ws: &Workspace, s: usize) -> String {
    let stage = &ws.stages[s];
    if shows_platforms(ws) && (stage.instance == stage.name || stage.target.as_ref() != Some(&stage.platform)) {
        format!("{} ({})", stage.instance, stage.platform)
    } else {
        stage.instance.clone()
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
