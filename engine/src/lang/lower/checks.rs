//! Pass 5: checks over the whole lowered workspace, made only when every
//! declaration lowered: cycles among stages and targets (each printed whole),
//! the depth of `from=` chains, the env carried along them, and exec-form
//! programs that must exist in the base.

use std::collections::HashMap;

use petgraph::graph::DiGraph;

use super::Cx;
use crate::lang::error::LangError;
use crate::lang::limits::MAX_CARRIED_ENV;
use crate::lang::{Base, Copy, CopySource, InstructionKind, Member, Span, Stage, StageId, Target};

impl Cx<'_> {
    pub(super) fn check_cycles(&mut self, stages: &[Stage], targets: &[Target]) {
        let mut edges = Vec::new();
        for (i, s) in stages.iter().enumerate() {
            if let Base::Stage(p) = s.from {
                edges.push((i, p, s.from_span));
            }
            for ins in &s.instructions {
                if let InstructionKind::Copy(Copy { from: CopySource::Stage(p), .. }) = &ins.kind {
                    edges.push((i, *p, ins.span));
                }
                if let InstructionKind::Run(run) = &ins.kind {
                    for b in &run.binds {
                        if let CopySource::Stage(p) = b.from {
                            edges.push((i, p, ins.span));
                        }
                    }
                }
            }
        }
        let stage_names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        for cycle in find_cycles(stages.len(), &edges) {
            let members: Vec<(String, Span)> =
                cycle.iter().map(|(n, span)| (stage_names[*n].to_owned(), *span)).collect();
            let back = members[0].0.clone();
            self.cycle_error("stage", &members, &back);
        }
        let mut edges = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            for (m, span) in &t.members {
                if let Member::Target(p) = m {
                    edges.push((i, *p, *span));
                }
            }
        }
        for cycle in find_cycles(targets.len(), &edges) {
            let members: Vec<(String, Span)> =
                cycle.iter().map(|(n, span)| (targets[*n].name.clone(), *span)).collect();
            let back = members[0].0.clone();
            self.cycle_error("target", &members, &back);
        }
    }

    /// Stages built on each other (`from=`, `copy from=`) no deeper than
    /// [`Limits::max_graph_depth`]: a deeper chain is refused before anything
    /// is planned or built. Linear: depths are computed once, in dependency
    /// order, without recursion.
    pub(super) fn check_depth(&mut self, stages: &[Stage]) {
        let deps = |s: &Stage| -> Vec<(StageId, Span)> {
            let mut out: Vec<(StageId, Span)> = Vec::new();
            if let Base::Stage(p) = s.from {
                out.push((p, s.from_span));
            }
            for ins in &s.instructions {
                if let InstructionKind::Copy(Copy { from: CopySource::Stage(p), .. }) = &ins.kind {
                    out.push((*p, ins.span));
                }
            }
            out
        };
        let mut depth: Vec<usize> = vec![0; stages.len()];
        for start in 0..stages.len() {
            // Iterative post-order: a stage's depth once all its bases have one.
            let mut stack = vec![start];
            while let Some(&s) = stack.last() {
                if depth[s] > 0 {
                    stack.pop();
                    continue;
                }
                let pending: Vec<StageId> =
                    deps(&stages[s]).into_iter().map(|(p, _)| p).filter(|&p| depth[p] == 0).collect();
                if pending.is_empty() {
                    let deepest = deps(&stages[s]).into_iter().map(|(p, at)| (depth[p], at)).max_by_key(|(d, _)| *d);
                    depth[s] = deepest.map_or(1, |(d, _)| d.saturating_add(1));
                    stack.pop();
                    if depth[s] > self.limits.max_graph_depth {
                        let at = deepest.map_or(stages[s].span, |(_, at)| at);
                        self.errors.push(LangError::Limit {
                            what: format!("stage `{}` is built on too long a chain of stages", stages[s].name),
                            limit: self.limits.max_graph_depth,
                            unit: "stages in a chain (`from=` and `copy from=`)",
                            src: Some(self.file(at.file).src()),
                            at: Some(at.span),
                            label: format!("stage {} of this chain", depth[s]),
                            help: "split the chain, or raise `limits max-graph-depth=` in bake's config file"
                                .to_owned(),
                        });
                        return;
                    }
                } else {
                    stack.extend(pending);
                }
            }
        }
    }

    /// Every step is keyed with the environment it runs in, so a stage with
    /// 3,000 `env` lines and 3,000 steps asks for 9 million key inputs (over
    /// a gigabyte). Bounds the sum, over all steps, of the env entries each
    /// one carries, by [`MAX_CARRIED_ENV`]. Linear: each stage's count is
    /// computed once from its base's, without recursion.
    pub(super) fn check_carried_env(&mut self, stages: &[Stage]) {
        // Env entries a stage ends with (an upper bound: a name set twice counts twice).
        let mut env: Vec<Option<usize>> = vec![None; stages.len()];
        let mut total = 0usize;
        for start in 0..stages.len() {
            let mut stack = vec![start];
            while let Some(&s) = stack.last() {
                if env[s].is_some() {
                    stack.pop();
                    continue;
                }
                let inherited = match stages[s].from {
                    Base::Stage(p) => match env[p] {
                        Some(n) => n,
                        None => {
                            stack.push(p);
                            continue;
                        }
                    },
                    _ => 0,
                };
                stack.pop();
                let mut carried = inherited;
                for ins in &stages[s].instructions {
                    match &ins.kind {
                        InstructionKind::Env(..) => carried += 1,
                        InstructionKind::Copy(_) | InstructionKind::Run(_) => {
                            total = total.saturating_add(carried);
                            if total > MAX_CARRIED_ENV {
                                self.errors.push(LangError::Limit {
                                    what: "the steps of this workspace carry too many environment variables".to_owned(),
                                    limit: MAX_CARRIED_ENV,
                                    unit: "variables summed over every step",
                                    src: Some(self.file(ins.span.file).src()),
                                    at: Some(ins.span.span),
                                    label: format!("this step runs with {carried} variables set by the build"),
                                    help:
                                        "set the variables in a `run`'s own `env` children, or in fewer, later places"
                                            .to_owned(),
                                });
                                return;
                            }
                        }
                        _ => {}
                    }
                }
                env[s] = Some(carried);
            }
        }
    }

    /// Rules that need the whole `from` chain: on a chain that starts at
    /// `scratch` there is no shell and no `PATH` unless the build adds them.
    pub(super) fn check_exec_forms(&mut self, stages: &[Stage]) {
        for (id, stage) in stages.iter().enumerate() {
            let mut chain = vec![id];
            let mut cur = id;
            while let Base::Stage(p) = stages[cur].from {
                chain.push(p);
                cur = p;
            }
            if stages[cur].from != Base::Scratch {
                continue;
            }
            chain.reverse();
            let (mut has_files, mut has_path, mut entrypoint) = (false, false, false);
            for &sid in &chain {
                for ins in &stages[sid].instructions {
                    let here = sid == id;
                    match &ins.kind {
                        InstructionKind::Copy(_) => has_files = true,
                        InstructionKind::Env(k, _) if k == "PATH" => has_path = true,
                        InstructionKind::Run(_) if here && !has_files => {
                            self.errors.push(LangError::ExecForm {
                                message: format!("`run` in stage `{}` has no shell: it starts from scratch and nothing was copied in yet", stage.name),
                                src: self.file(ins.span.file).src(),
                                at: ins.span.span,
                                label: "there is no /bin/sh here".to_owned(),
                                help: "start the stage from an image with a shell (e.g. `busybox`), or copy one in first".to_owned(),
                            });
                        }
                        InstructionKind::Entrypoint(args) | InstructionKind::Cmd(args) => {
                            let is_entry = matches!(ins.kind, InstructionKind::Entrypoint(_));
                            if is_entry {
                                entrypoint = !args.is_empty();
                            }
                            let program_applies = is_entry || !entrypoint;
                            if here
                                && !is_entry
                                && program_applies
                                && let Some(program) = args.first()
                            {
                                self.check_program("cmd", program, args, ins.span);
                            }
                            if here && program_applies && !has_path && args.first().is_some_and(|p| !p.contains('/')) {
                                let program = &args[0];
                                self.errors.push(LangError::ExecForm {
                                    message: format!("`{program}` cannot be found: stage `{}` starts from scratch, which has no PATH", stage.name),
                                    src: self.file(ins.span.file).src(),
                                    at: ins.span.span,
                                    label: "not a path".to_owned(),
                                    help: format!("use the path of the program, e.g. \"/{program}\", or set `env \"PATH\" \"...\"`"),
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Finds every cycle (one per strongly connected component), each as nodes
/// with the span of the edge that leads to the next one.
fn find_cycles(n: usize, edges: &[(usize, usize, Span)]) -> Vec<Vec<(usize, Span)>> {
    let mut graph: DiGraph<(), Span> = DiGraph::with_capacity(n, edges.len());
    let nodes: Vec<_> = (0..n).map(|_| graph.add_node(())).collect();
    for (a, b, span) in edges {
        graph.add_edge(nodes[*a], nodes[*b], *span);
    }
    let self_loops: HashMap<usize, Span> = edges.iter().filter(|(a, b, _)| a == b).map(|(a, _, s)| (*a, *s)).collect();
    let mut cycles = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let members: std::collections::HashSet<usize> = scc.iter().map(|i| i.index()).collect();
        let Some(&start) = members.iter().min() else {
            continue;
        };
        if members.len() == 1 {
            if let Some(span) = self_loops.get(&start) {
                cycles.push(vec![(start, *span)]);
            }
            continue;
        }
        // Shortest way from `start` back to itself inside the component (BFS).
        let mut prev: HashMap<usize, (usize, Span)> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'bfs: while let Some(cur) = queue.pop_front() {
            let mut outgoing: Vec<&(usize, usize, Span)> =
                edges.iter().filter(|(a, b, _)| *a == cur && members.contains(b)).collect();
            outgoing.sort_by_key(|(_, b, _)| *b);
            for (_, next, span) in outgoing {
                if *next == start {
                    prev.insert(start, (cur, *span));
                    break 'bfs;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(*next) {
                    e.insert((cur, *span));
                    queue.push_back(*next);
                }
            }
        }
        let mut path = Vec::new();
        let mut cur = start;
        for _ in 0..=members.len() {
            let Some(&(p, span)) = prev.get(&cur) else {
                break;
            };
            path.push((p, span));
            cur = p;
            if cur == start {
                break;
            }
        }
        path.reverse();
        if !path.is_empty() {
            cycles.push(path);
        }
    }
    cycles.sort_by_key(|c| c.first().map(|(n, _)| *n));
    cycles
}
