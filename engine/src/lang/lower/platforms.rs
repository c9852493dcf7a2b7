//! Platforms: the `platforms` nodes and `platform=` values, and the
//! instances of stages that one build makes for its target platforms.
//!
//! The files are lowered once per target platform ([`super::lower_pass`]),
//! each time with that platform's `TARGET*` args. [`instantiate`] then keeps
//! one instance of every stage that does not depend on the target platform
//! (it is the same in every lowering) and one per platform of every stage
//! that does: one that uses a `TARGET*` arg, whose base image is resolved
//! for the target (a `from=` image without `platform=`), that copies from an
//! image, that builds on or copies from a stage that depends on it, and
//! every `image` (its config names its platform). References between stages
//! are re-pointed at the instance of the same platform.

use std::collections::VecDeque;

use kdl::KdlDocument;

use super::{Cx, Pass, Spanned};
use crate::lang::error::{Errors, LangError};
use crate::lang::schema::{self, Checked};
use crate::lang::{
    Arg, Artifact, Base, CopySource, FileId, InstructionKind, LoadOptions, Member, SourceFile, Span, Stage, StageId,
    Target, is_target_arg,
};
use crate::platform::Platform;

impl Cx<'_> {
    /// A platform written at `at`, reported when it is not one.
    pub(super) fn platform(&mut self, raw: &str, at: Span) -> Option<Platform> {
        if self.suppressed(at) {
            return None;
        }
        match raw.parse::<Platform>() {
            Ok(p) => Some(p),
            Err(e) => {
                self.invalid(
                    at,
                    format!("`{raw}` is not a platform"),
                    e.reason,
                    Some("a platform is OS/ARCH[/VARIANT], for example \"linux/amd64\", \"linux/arm64\" or \"linux/arm/v7\""),
                );
                None
            }
        }
    }

    /// The arguments of a `platforms` node, each once.
    pub(super) fn lower_platforms(&mut self, checked: &Checked<'_>, file: FileId) -> Vec<Platform> {
        let mut out = Vec::new();
        for entry in &checked.args {
            let raw = self.string(file, entry);
            if let Some(p) = self.platform(&raw, Span { file, span: entry.span() })
                && !out.contains(&p)
            {
                out.push(p);
            }
        }
        out
    }

    /// The workspace's default target platforms: its one top-level
    /// `platforms` node, in whichever file.
    pub(super) fn lower_workspace_platforms(
        &mut self,
        docs: &[(FileId, KdlDocument)],
    ) -> Option<(Vec<Platform>, Span)> {
        let spec = schema::TOP.iter().find(|s| s.name == "platforms")?;
        let mut found: Option<(Vec<Platform>, Span)> = None;
        for (file_id, doc) in docs {
            let file = self.file(*file_id);
            for node in doc.nodes().iter().filter(|n| n.name().value() == "platforms") {
                let Some(checked) = schema::check(spec, node, file, &mut self.errors) else { continue };
                let at = Span { file: *file_id, span: node.name().span() };
                if let Some((_, first)) = &found {
                    self.duplicate("node", "platforms", *first, at);
                    continue;
                }
                let list = self.lower_platforms(&checked, *file_id);
                found = Some((list, at));
            }
        }
        found
    }
}

/// Target platforms one build may have: each lowers the files once more.
pub(super) const MAX_PLATFORMS: usize = 16;

/// The target platforms of a build.
pub(super) struct Targets {
    /// `--platform`, else the workspace's `platforms`, else the build
    /// platform: what stages and images without a `platforms` of their own
    /// are built for.
    pub default: Vec<Platform>,
    /// Every platform some image or stage is built for: `default` first.
    pub all: Vec<Platform>,
    /// Each image's platforms, by stage id (`None` for a stage).
    pub images: Vec<Option<Vec<Platform>>>,
}

/// The target platforms that the command line and the first lowering name.
pub(super) fn targets(options: &LoadOptions, first: &Pass, build: &Platform) -> Targets {
    let cli = !options.platforms.is_empty();
    let default = if cli {
        options.platforms.clone()
    } else if let Some((list, _)) = &first.platforms {
        list.clone()
    } else {
        vec![build.clone()]
    };
    let mut all = default.clone();
    let images: Vec<Option<Vec<Platform>>> = first
        .stages
        .iter()
        .map(|s| {
            let image = s.image.as_ref()?;
            Some(match &image.platforms {
                Some((list, _)) if !cli => list.clone(),
                _ => default.clone(),
            })
        })
        .collect();
    for p in images.iter().flatten().flatten() {
        if !all.contains(p) {
            all.push(p.clone());
        }
    }
    Targets { default, all, images }
}

/// The workspace's parts after instantiation.
pub(super) struct Merged {
    pub args: Vec<Arg>,
    pub stages: Vec<Stage>,
    pub artifacts: Vec<Artifact>,
    pub targets: Vec<Target>,
    pub cache_from: Spanned,
    pub cache_to: Spanned,
}

/// The stages a stage reads: its base stage and the stages it copies from.
fn parents(stage: &Stage) -> impl Iterator<Item = StageId> + '_ {
    let base = match stage.from {
        Base::Stage(p) => Some(p),
        _ => None,
    };
    base.into_iter().chain(stage.instructions.iter().filter_map(|ins| match &ins.kind {
        InstructionKind::Copy(c) => match c.from {
            CopySource::Stage(p) => Some(p),
            _ => None,
        },
        _ => None,
    }))
}

/// Every stage after the stages it reads (lowering rejected cycles; a
/// stage in one would be left out, and is never reached).
fn order(stages: &[Stage]) -> Vec<StageId> {
    let mut waiting = vec![0usize; stages.len()];
    let mut readers: Vec<Vec<StageId>> = vec![Vec::new(); stages.len()];
    for (s, stage) in stages.iter().enumerate() {
        for p in parents(stage) {
            if p < stages.len() {
                waiting[s] += 1;
                readers[p].push(s);
            }
        }
    }
    let mut ready: VecDeque<StageId> = (0..stages.len()).filter(|&s| waiting[s] == 0).collect();
    let mut out = Vec::with_capacity(stages.len());
    while let Some(s) = ready.pop_front() {
        out.push(s);
        for &r in &readers[s] {
            waiting[r] -= 1;
            if waiting[r] == 0 {
                ready.push_back(r);
            }
        }
    }
    out
}

/// Which stages of one lowering depend on its target platform.
fn dependent(stages: &[Stage]) -> Vec<bool> {
    let mut dep = vec![false; stages.len()];
    for s in order(stages) {
        let stage = &stages[s];
        let own = stage.image.is_some()
            || stage.args_used.keys().any(|a| is_target_arg(a))
            || (matches!(stage.from, Base::Image(_)) && stage.pin.is_none())
            || stage
                .instructions
                .iter()
                .any(|i| matches!(&i.kind, InstructionKind::Copy(c) if matches!(c.from, CopySource::Image(_))));
        dep[s] = own || parents(stage).any(|p| dep.get(p).copied().unwrap_or(false));
    }
    dep
}

/// One workspace from the lowerings of every target platform (`passes`,
/// in the order of `targets.all`): see the module docs.
pub(super) fn instantiate(
    mut passes: Vec<Pass>,
    targets: &Targets,
    build: &Platform,
    files: &[SourceFile],
    errors: &mut Errors,
) -> Option<Merged> {
    let first = passes.first()?;
    let count = first.stages.len();
    // Names are declared before args of the platform could change them; a
    // name made from a `TARGET*` arg would make the lowerings disagree.
    for pass in &passes[1..] {
        let differs =
            pass.stages.len() != count || pass.stages.iter().zip(&first.stages).any(|(a, b)| a.name != b.name);
        if differs {
            let at = pass.stages.iter().zip(&first.stages).find(|(a, b)| a.name != b.name).map(|(a, _)| a.span);
            let at = at.or(first.stages.first().map(|s| s.span))?;
            errors.push(LangError::InvalidValue {
                message: format!(
                    "stage names differ between the target platforms {} and {}",
                    first.target, pass.target
                ),
                src: files[at.file].src(),
                at: at.span,
                label: "this name depends on the target platform".to_owned(),
                help: Some(
                    "a stage's name cannot use TARGETPLATFORM, TARGETOS, TARGETARCH or TARGETVARIANT".to_owned(),
                ),
            });
            return None;
        }
    }
    let deps: Vec<Vec<bool>> = passes.iter().map(|p| dependent(&p.stages)).collect();
    let several = targets.all.len() > 1;

    // New ids: a shared stage once (from the first lowering), a dependent
    // one once per platform.
    let mut ids = vec![vec![0; count]; passes.len()];
    let mut taken: Vec<Vec<Option<Stage>>> =
        passes.iter_mut().map(|p| std::mem::take(&mut p.stages).into_iter().map(Some).collect()).collect();
    let mut stages: Vec<Stage> = Vec::new();
    for s in 0..count {
        if deps.iter().any(|d| d[s]) {
            for (i, pass) in passes.iter().enumerate() {
                let Some(mut stage) = taken[i][s].take() else { continue };
                stage.target = Some(pass.target.clone());
                if several {
                    stage.instance = format!("{}[{}]", stage.name, pass.target);
                }
                if let (Some(image), Some(Some(list))) = (stage.image.as_mut(), targets.images.get(s)) {
                    image.build_for.clone_from(list);
                }
                ids[i][s] = stages.len();
                stages.push(stage);
            }
        } else {
            let Some(stage) = taken[0][s].take() else { continue };
            for row in &mut ids {
                row[s] = stages.len();
            }
            stages.push(stage);
        }
    }
    // Re-point references at the instance of the same platform: an
    // instance made from lowering `i` reads lowering `i`'s stages.
    let mut lowering = vec![0usize; stages.len()];
    for (i, row) in ids.iter().enumerate() {
        for &id in row {
            if stages[id].target.is_some() {
                lowering[id] = i;
            }
        }
    }
    for (id, stage) in stages.iter_mut().enumerate() {
        let row = &ids[lowering[id]];
        if let Base::Stage(p) = &mut stage.from {
            *p = row[*p];
        }
        for ins in &mut stage.instructions {
            if let InstructionKind::Copy(c) = &mut ins.kind
                && let CopySource::Stage(p) = &mut c.from
            {
                *p = row[*p];
            }
        }
    }
    // Each instance's platform: its pin, else a pinned base stage's, else
    // its target, else (a stage built once for all) its base stage's, else
    // the build platform. A pin carries down `from=` chains; a target
    // platform does not carry into a stage shared by all targets.
    let mut pinned = vec![false; stages.len()];
    for s in order(&stages) {
        let (platform, pin) = match (&stages[s].pin, &stages[s].from, &stages[s].target) {
            (Some((pin, _)), _, _) => (pin.clone(), true),
            (None, Base::Stage(p), _) if pinned[*p] => (stages[*p].platform.clone(), true),
            (None, _, Some(target)) => (target.clone(), false),
            (None, Base::Stage(p), None) => (stages[*p].platform.clone(), false),
            (None, _, None) => (build.clone(), false),
        };
        stages[s].platform = platform;
        pinned[s] = pin;
    }

    let mut first = passes.swap_remove(0);
    let row = &ids[0];
    for a in &mut first.artifacts {
        a.from = row[a.from];
    }
    for t in &mut first.targets {
        for (m, _) in &mut t.members {
            if let Member::Stage(s) = m {
                *s = row[*s];
            }
        }
    }
    Some(Merged {
        args: first.args,
        stages,
        artifacts: first.artifacts,
        targets: first.targets,
        cache_from: first.cache_from,
        cache_to: first.cache_to,
    })
}
