//! Lowering KDL documents into a resolved [`Workspace`].
//!
//! Parsing (pass 1, [`super::parse`]) gives one KDL document per file. Lowering
//! then runs over all of them at once, collecting every error rather than
//! stopping at the first:
//!
//! - pass 2, [`args`]: the `arg` nodes and their values; [`interpolate`]
//!   expands `${NAME}` in every string after that;
//! - pass 3, [`names`]: the declared names, so references resolve in any order;
//! - pass 4, [`stages`] and [`steps`]: each declaration into its typed form,
//!   references resolved by [`refs`];
//! - pass 5, [`checks`]: cycles, depth and the other whole-graph checks, made
//!   only when pass 4 lowered everything.
//!
//! Passes 2 to 5 run once per target platform, each with that platform's
//! predefined args (`TARGETARCH`, ...); [`platforms`] then keeps one
//! instance of each stage that does not depend on the target and one per
//! platform of each that does.
//!
//! [`Cx`] carries the state of one load; each pass adds its methods to it in its
//! own file. Scalar value parsing lives in [`values`].

mod args;
mod checks;
mod dockerfile;
mod interpolate;
mod names;
mod platforms;
mod refs;
mod stages;
mod steps;
mod values;

pub use dockerfile::DockerfileOptions;
pub(crate) use values::normalize_absolute;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use kdl::{KdlNode, KdlValue};
use miette::LabeledSpan;

use super::boundary::Boundary;
use super::error::{Errors, LangError, LoadError, Note};
use super::interp::{Piece, pieces};
use super::limits::Limits;
use super::{Artifact, FileId, LoadOptions, SourceFile, Span, Stage, StageId, Target, Workspace};
use crate::platform::Platform;
use crate::reference::ImageRef;

pub(super) fn load(path: &Path, options: &LoadOptions) -> Result<Workspace, LoadError> {
    load_inner(path, None, options)
}

pub(super) fn load_str(name: &str, dir: &Path, text: &str, options: &LoadOptions) -> Result<Workspace, LoadError> {
    load_inner(&dir.join(name), Some((name.to_owned(), text.to_owned())), options)
}

/// Loads a Dockerfile as a workspace of its stages (`text`: given instead
/// of read, for tests).
pub(super) fn load_dockerfile(
    path: &Path,
    text: Option<String>,
    options: &LoadOptions,
) -> Result<Workspace, LoadError> {
    let fail = |errors: Vec<LangError>| LoadError { root: path.to_path_buf(), errors };
    let text = match text {
        Some(t) => t,
        None => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(source) => return Err(fail(vec![LangError::Read { path: path.to_path_buf(), source }])),
        },
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let file = SourceFile { path: path.to_path_buf(), name, dir: dir.clone(), text: std::sync::Arc::new(text) };
    let df = crate::dockerfile::parse(&file)
        .map_err(|e| fail(e.errors.into_iter().map(|e| LangError::Dockerfile(Box::new(e))).collect()))?;
    // The context: given (a context argument), else the workspace (-C),
    // else the Dockerfile's folder.
    let context =
        options.dockerfile.context.clone().or_else(|| options.workspace.clone()).unwrap_or_else(|| dir.clone());
    let boundary = Boundary::new(&context, &options.allow_paths);
    let context = match boundary.check(&context) {
        super::boundary::Resolved::Inside(c) | super::boundary::Resolved::Outside(c) => c,
    };
    let files = vec![file];
    let mut cx = Cx {
        files: &files,
        errors: Errors::default(),
        args: HashMap::new(),
        used: BTreeMap::new(),
        failed: HashSet::new(),
        boundary: &boundary,
        limits: options.limits,
        expanded: 0,
        args_too_deep: false,
        typos: HashMap::new(),
        compared: 0,
        arg_names: None,
        dockerfiles: HashMap::new(),
    };
    // Until Dockerfiles are built per platform, only this machine's.
    let build = options.build_platform.clone().unwrap_or_else(Platform::host);
    if let Some(other) = options.platforms.iter().find(|p| **p != build) {
        cx.invalid(
            Span { file: 0, span: (0, 0).into() },
            format!("a Dockerfile is built for {build}, the machine bake runs on, not for --platform {other} yet"),
            "building this Dockerfile",
            Some("leave --platform out, or write the build in build.kdl, which builds for several platforms"),
        );
    }
    if !context.is_dir() {
        cx.invalid(
            Span { file: 0, span: (0, 0).into() },
            format!("the build context {} is not a folder", context.display()),
            "building this Dockerfile",
            Some("give the context folder as the argument, or with -C DIR"),
        );
    }
    let stages = cx
        .lower_dockerfile(
            &df,
            0,
            &dockerfile::Input {
                context: &context,
                build_args: &options.set,
                options: &options.dockerfile,
                prefix: None,
                first_id: 0,
                image: true,
            },
        )
        .unwrap_or_default();
    if cx.errors.is_empty() {
        cx.check_cycles(&stages, &[]);
    }
    let Cx { errors, .. } = cx;
    if errors.is_empty() {
        Ok(Workspace {
            files,
            args: Vec::new(),
            stages,
            artifacts: Vec::new(),
            targets: Vec::new(),
            cache_from: Vec::new(),
            cache_to: Vec::new(),
            boundary,
            platforms: vec![build.clone()],
            build_platform: build,
        })
    } else {
        Err(fail(errors.into_reported()))
    }
}

fn load_inner(root: &Path, root_text: Option<(String, String)>, options: &LoadOptions) -> Result<Workspace, LoadError> {
    let mut files = Vec::new();
    let mut errors = Errors::default();
    let workspace = options.workspace.clone().unwrap_or_else(|| match root.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let boundary = Boundary::new(&workspace, &options.allow_paths);
    let docs = super::parse::parse_workspace(root, root_text, &boundary, &options.limits, &mut files, &mut errors);
    let dockerfiles = dockerfile::read_nodes(&docs, &boundary, &mut files, &mut errors);
    let failed = |errors: Errors| LoadError { root: root.to_path_buf(), errors: errors.into_reported() };

    // The files are lowered once per target platform, each time with the
    // predefined args of that platform; `platforms.rs` then keeps one
    // instance of each stage that does not depend on the target and one per
    // platform of each that does.
    let build = options.build_platform.clone().unwrap_or_else(Platform::host);
    let first_target = options.platforms.first().cloned().unwrap_or_else(|| build.clone());
    let first =
        lower_pass(&files, &dockerfiles, &docs, &boundary, options, &first_target, &build, errors).map_err(failed)?;
    let targets = platforms::targets(options, &first, &build);
    if targets.all.len() > platforms::MAX_PLATFORMS {
        let mut errors = Errors::default();
        errors.push(LangError::Limit {
            what: "too many target platforms".to_owned(),
            limit: platforms::MAX_PLATFORMS,
            unit: "platforms",
            src: None,
            at: None,
            label: String::new(),
            help: format!(
                "the files and --platform name {} platforms; each one lowers the files again",
                targets.all.len()
            ),
        });
        return Err(failed(errors));
    }
    let mut passes = Vec::with_capacity(targets.all.len());
    let mut first = Some(first);
    for target in &targets.all {
        let pass = match first.take_if(|f| f.target == *target) {
            Some(pass) => pass,
            None => lower_pass(&files, &dockerfiles, &docs, &boundary, options, target, &build, Errors::default())
                .map_err(failed)?,
        };
        passes.push(pass);
    }
    let mut errors = Errors::default();
    let merged = platforms::instantiate(passes, &targets, &build, &files, &mut errors);
    match merged {
        Some(m) if errors.is_empty() => Ok(Workspace {
            files,
            args: m.args,
            stages: m.stages,
            artifacts: m.artifacts,
            targets: m.targets,
            cache_from: m.cache_from,
            cache_to: m.cache_to,
            boundary,
            platforms: targets.default,
            build_platform: build,
        }),
        _ => Err(failed(errors)),
    }
}

/// The Dockerfiles of `dockerfile` nodes, parsed once for every pass.
type DockerfileAsts = HashMap<(FileId, usize), (FileId, crate::dockerfile::Dockerfile)>;

/// One lowering of every file for one target platform.
struct Pass {
    target: Platform,
    args: Vec<super::Arg>,
    stages: Vec<Stage>,
    artifacts: Vec<Artifact>,
    targets: Vec<Target>,
    cache_from: Spanned,
    cache_to: Spanned,
    /// The workspace's `platforms` node.
    platforms: Option<(Vec<Platform>, Span)>,
}

#[allow(clippy::too_many_arguments)]
fn lower_pass(
    files: &[SourceFile],
    dockerfiles: &DockerfileAsts,
    docs: &[(FileId, kdl::KdlDocument)],
    boundary: &Boundary,
    options: &LoadOptions,
    target: &Platform,
    build: &Platform,
    errors: Errors,
) -> Result<Pass, Errors> {
    let mut cx = Cx {
        files,
        errors,
        args: HashMap::new(),
        used: BTreeMap::new(),
        failed: HashSet::new(),
        boundary,
        limits: options.limits,
        expanded: 0,
        args_too_deep: false,
        typos: HashMap::new(),
        compared: 0,
        arg_names: None,
        dockerfiles: dockerfiles.clone(),
    };

    let args = cx.collect_args(docs, options, &super::predefined_args(target, build));
    let decls = cx.collect_names(docs);
    let names = Names::new(&decls);
    let mut stages = Vec::new();
    let mut artifacts = Vec::new();
    let mut targets = Vec::new();
    for decl in &decls {
        match decl.kind {
            DeclKind::Stage | DeclKind::Image => stages.push(cx.lower_stage(decl, &names)),
            // A Dockerfile's stages are lowered together, at its first one.
            DeclKind::DockerStage if decl.part == 0 => stages.extend(cx.lower_dockerfile_node(decl)),
            DeclKind::DockerStage => {}
            DeclKind::Artifact => artifacts.push(cx.lower_artifact(decl, &names)),
            DeclKind::Target => targets.push(cx.lower_target(decl, &names)),
        }
    }
    let (cache_from, cache_to) = cx.lower_caches(docs);
    let platforms = cx.lower_workspace_platforms(docs);
    let stages: Vec<Stage> = stages.into_iter().flatten().collect();
    let artifacts: Vec<Artifact> = artifacts.into_iter().flatten().collect();
    let targets: Vec<Target> = targets.into_iter().flatten().collect();
    // Ids in `names` count every declaration of a kind; if one failed to lower,
    // they no longer line up, and the errors already explain why.
    let complete = stages.len() == names.stages.len()
        && artifacts.len() == names.artifacts.len()
        && targets.len() == names.targets.len();
    if complete {
        let before = cx.errors.len();
        cx.check_cycles(&stages, &targets);
        // Depth is measured on an acyclic graph; the exec-form rules walk
        // `from` chains, which must be acyclic and no deeper than the limit.
        if cx.errors.len() == before {
            cx.check_depth(&stages);
        }
        if cx.errors.len() == before {
            cx.check_carried_env(&stages);
        }
        if cx.errors.len() == before {
            cx.check_exec_forms(&stages);
        }
    }
    let Cx { errors, .. } = cx;
    if errors.is_empty() {
        Ok(Pass { target: target.clone(), args, stages, artifacts, targets, cache_from, cache_to, platforms })
    } else {
        Err(errors)
    }
}

/// What a top-level named node declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeclKind {
    Stage,
    Image,
    Artifact,
    Target,
    /// A stage of a `dockerfile` node's Dockerfile.
    DockerStage,
}

impl DeclKind {
    fn noun(self) -> &'static str {
        match self {
            Self::Stage | Self::DockerStage => "stage",
            Self::Image => "image",
            Self::Artifact => "artifact",
            Self::Target => "target",
        }
    }
}

/// A named top-level node, before lowering.
struct Decl<'d> {
    kind: DeclKind,
    name: String,
    span: Span,
    node: &'d KdlNode,
    /// Index among declarations of the same family (stages+images share one).
    index: usize,
    /// For a Dockerfile's stage: its index in the Dockerfile.
    part: usize,
}

/// Name lookup tables, built before lowering so references resolve in any order.
struct Names {
    stages: HashMap<String, StageId>,
    artifacts: HashMap<String, usize>,
    targets: HashMap<String, usize>,
    kinds: HashMap<String, DeclKind>,
}

impl Names {
    fn new(decls: &[Decl<'_>]) -> Self {
        let mut names =
            Self { stages: HashMap::new(), artifacts: HashMap::new(), targets: HashMap::new(), kinds: HashMap::new() };
        for d in decls {
            let table = match d.kind {
                DeclKind::Stage | DeclKind::Image | DeclKind::DockerStage => &mut names.stages,
                DeclKind::Artifact => &mut names.artifacts,
                DeclKind::Target => &mut names.targets,
            };
            table.insert(d.name.clone(), d.index);
            names.kinds.insert(d.name.clone(), d.kind);
        }
        names
    }

    /// Every stage name, sorted, for help texts: only errors need it, so it
    /// is computed on each call (once per error, never per reference).
    fn stage_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.stages.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// An arg whose default is being resolved: the args it uses, and how many
/// of them are known to be settled.
struct Frame {
    name: String,
    raw: String,
    at: Span,
    refs: Vec<String>,
    next: usize,
}

impl Frame {
    fn new(name: String, raw: String, at: Span) -> Self {
        // A malformed default has no references: interpolating it reports why.
        let refs = pieces(&raw)
            .map(|pieces| {
                pieces
                    .into_iter()
                    .filter_map(|p| match p {
                        Piece::Arg { name, .. } => Some(name.to_owned()),
                        Piece::Text(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { name, raw, at, refs, next: 0 }
    }
}

/// The state of an arg while values are resolved.
#[derive(Debug, Clone)]
enum ArgState {
    Pending {
        default: Option<(String, Span)>,
    },
    Resolving,
    Value(String),
    /// Declared without a default and not `--set`.
    NoValue,
    /// Its default is in a cycle or has an error, already reported.
    Broken,
}

struct Cx<'f> {
    files: &'f [SourceFile],
    errors: Errors,
    args: HashMap<String, (ArgState, Span)>,
    /// Args used by the strings lowered since the last `take_used`.
    used: BTreeMap<String, String>,
    /// Values whose interpolation failed (already reported): checks of what
    /// they hold would only repeat the same mistake.
    failed: HashSet<(FileId, usize)>,
    /// The host paths build files may name.
    boundary: &'f Boundary,
    limits: Limits,
    /// Bytes interpolation has added so far, against
    /// [`Limits::max_expanded_total`].
    expanded: usize,
    /// An arg chain deeper than [`MAX_ARG_DEPTH`] was reported.
    args_too_deep: bool,
    /// [`Cx::close_stage`]'s answers, and how many names it compared.
    typos: HashMap<String, Option<String>>,
    compared: usize,
    /// [`Cx::sorted_arg_names`], once computed.
    arg_names: Option<std::sync::Arc<Vec<String>>>,
    /// The Dockerfiles of `dockerfile` nodes, parsed, by the node's place.
    dockerfiles: DockerfileAsts,
}

/// Longest message or label of an invalid-value diagnostic, in bytes.
const MAX_MESSAGE: usize = 400;

/// `text` whole up to [`MAX_MESSAGE`] bytes, else its start and end.
fn capped(text: String) -> String {
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let mut head = MAX_MESSAGE / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - MAX_MESSAGE / 2;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} … {}", &text[..head], &text[tail..])
}

/// Most name comparisons "did you mean" and the "is this bare `from=` a
/// misspelt stage?" check make in one load (about 0.02 s): without a bound,
/// 10,000 stages with 10,000 different bare bases cost 10^8 edit distances.
const TYPO_BUDGET: usize = 200_000;

impl<'f> Cx<'f> {
    fn file(&self, id: FileId) -> &'f SourceFile {
        &self.files[id]
    }

    /// A stage's context as the user would name it: relative to the file
    /// that declares the stage when it is inside its folder.
    fn context_name(&self, id: FileId, context: &Path) -> String {
        let file = self.file(id);
        match context.strip_prefix(&file.dir) {
            Ok(rel) if rel.as_os_str().is_empty() => format!("the folder of {}", file.name),
            Ok(rel) => format!("the context folder `{}` (from the folder of {})", rel.display(), file.name),
            Err(_) => format!("the context folder {}", context.display()),
        }
    }

    /// A value that is not valid. The message and label may quote what the
    /// user wrote, after interpolation, so both are capped
    /// ([`MAX_MESSAGE`]): a 25 KB value prints as its start and end.
    fn invalid(&mut self, at: Span, message: String, label: &str, help: Option<&str>) {
        if self.suppressed(at) {
            return;
        }
        self.errors.push(LangError::InvalidValue {
            message: capped(message),
            src: self.file(at.file).src(),
            at: at.span,
            label: capped(label.to_owned()),
            help: help.map(|h| capped(h.to_owned())),
        });
    }

    fn note(&self, at: Span, message: String, label: &str) -> Note {
        Note { message, src: self.file(at.file).src(), at: at.span, label: label.to_owned() }
    }

    fn duplicate(&mut self, kind: &'static str, name: &str, first: Span, second: Span) {
        let same_file = first.file == second.file;
        let elsewhere = if same_file {
            Vec::new()
        } else {
            vec![self.note(
                first,
                format!("`{name}` is first defined in {}", self.file(first.file).name),
                "first defined here",
            )]
        };
        self.errors.push(LangError::DuplicateName {
            kind,
            name: name.to_owned(),
            src: self.file(second.file).src(),
            at: second.span,
            first: same_file.then_some(first.span),
            elsewhere,
        });
    }

    /// A cycle `members[0] -> members[1] -> ... -> back`, each with the span of
    /// the reference that leads on to the next.
    fn cycle_error(&mut self, kind: &'static str, members: &[(String, Span)], back_to: &str) {
        let Some(first) = members.first() else { return };
        let mut names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        names.push(back_to);
        let cycle = names.join(" -> ");
        let home = first.1.file;
        let mut labels = Vec::new();
        let mut elsewhere = Vec::new();
        for (i, (name, span)) in members.iter().enumerate() {
            let next = names[i + 1];
            let text = format!("{name} depends on {next}");
            if span.file == home {
                labels.push(LabeledSpan::new_with_span(Some(text), span.span));
            } else {
                elsewhere.push(self.note(*span, format!("part of the cycle, in {}", self.file(span.file).name), &text));
            }
        }
        self.errors.push(LangError::Cycle { kind, cycle, src: self.file(home).src(), at: labels, elsewhere });
    }
}

/// A resolved `from=` value.
enum Resolved {
    Scratch,
    Stage(StageId),
    Image(ImageRef),
}

fn article(noun: &str) -> &'static str {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

/// A scalar value as a string (`8080`, `true`); strings as they are.
fn scalar(value: &KdlValue) -> String {
    match value {
        KdlValue::String(s) => s.clone(),
        KdlValue::Integer(i) => i.to_string(),
        KdlValue::Bool(b) => b.to_string(),
        KdlValue::Float(f) => f.to_string(),
        KdlValue::Null => String::new(),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= 128
}

/// Strings with where they were written.
type Spanned = Vec<(String, Span)>;
