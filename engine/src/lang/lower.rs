//! Lowering KDL documents into a resolved [`Workspace`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::{LabeledSpan, SourceSpan};
use petgraph::graph::DiGraph;

use super::boundary::{Boundary, Resolved as Place};
use super::error::{Errors, LangError, LoadError, Note, did_you_mean, list_names, quoted, suggest};
use super::interp::{Piece, is_name, pieces};
use super::limits::{Limits, MAX_ARG_DEPTH, MAX_CARRIED_ENV};
use super::schema::{self, Checked, Spec};
use super::{
    Arg, Artifact, Base, CacheMount, Copy, CopySource, FileId, HealthTest, Healthcheck, ImageOutput, Instruction,
    InstructionKind, LoadOptions, Member, Network, Port, Run, SecretMount, Security, Sharing, SourceFile, Span, Stage,
    StageId, Target, Workspace,
};
use crate::reference::ImageRef;

pub(super) fn load(path: &Path, options: &LoadOptions) -> Result<Workspace, LoadError> {
    load_inner(path, None, options)
}

pub(super) fn load_str(name: &str, dir: &Path, text: &str, options: &LoadOptions) -> Result<Workspace, LoadError> {
    load_inner(&dir.join(name), Some((name.to_owned(), text.to_owned())), options)
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
    let mut cx = Cx {
        files: &files,
        errors,
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
    };

    let args = cx.collect_args(&docs, options);
    let decls = cx.collect_names(&docs);
    let names = Names::new(&decls);
    let mut stages = Vec::new();
    let mut artifacts = Vec::new();
    let mut targets = Vec::new();
    for decl in &decls {
        match decl.kind {
            DeclKind::Stage | DeclKind::Image => stages.push(cx.lower_stage(decl, &names)),
            DeclKind::Artifact => artifacts.push(cx.lower_artifact(decl, &names)),
            DeclKind::Target => targets.push(cx.lower_target(decl, &names)),
        }
    }
    let (cache_from, cache_to) = cx.lower_caches(&docs);
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
        Ok(Workspace { files, args, stages, artifacts, targets, cache_from, cache_to, boundary })
    } else {
        Err(LoadError { root: root.to_path_buf(), errors: errors.into_reported() })
    }
}

/// What a top-level named node declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeclKind {
    Stage,
    Image,
    Artifact,
    Target,
}

impl DeclKind {
    fn noun(self) -> &'static str {
        match self {
            Self::Stage => "stage",
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
                DeclKind::Stage | DeclKind::Image => &mut names.stages,
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

    // ---- pass 2: args -------------------------------------------------------

    fn collect_args(&mut self, docs: &[(FileId, KdlDocument)], options: &LoadOptions) -> Vec<Arg> {
        let spec = &schema::TOP[0];
        let mut order: Vec<(String, Span, Option<String>)> = Vec::new();
        let mut sites: HashMap<String, Span> = HashMap::new();
        for (file_id, doc) in docs {
            let file = self.file(*file_id);
            for node in doc.nodes().iter().filter(|n| n.name().value() == "arg") {
                let Some(checked) = schema::check(spec, node, file, &mut self.errors) else {
                    continue;
                };
                let name_entry = checked.args[0];
                let name = name_entry.value().as_string().unwrap_or_default().to_owned();
                let span = Span { file: *file_id, span: name_entry.span() };
                if !is_name(&name) {
                    self.invalid(
                        span,
                        format!("`{name}` is not a valid arg name"),
                        "not a valid name",
                        Some("an arg name is letters, digits and `_`, not starting with a digit"),
                    );
                    continue;
                }
                if let Some(first) = sites.get(&name) {
                    self.duplicate("arg", &name, *first, span);
                    continue;
                }
                sites.insert(name.clone(), span);
                let default = checked.prop("default").map(|e| {
                    let raw = scalar(e.value());
                    (raw, Span { file: *file_id, span: e.span() })
                });
                self.args.insert(name.clone(), (ArgState::Pending { default: default.clone() }, span));
                order.push((name, span, default.map(|d| d.0)));
            }
        }
        for (name, value) in &options.set {
            match self.args.get_mut(name) {
                Some((state, _)) => *state = ArgState::Value(value.clone()),
                None => {
                    let known: Vec<&str> = order.iter().map(|(n, ..)| n.as_str()).collect();
                    self.errors.push(LangError::UnknownSet { name: name.clone(), help: suggest(name, "args", &known) });
                }
            }
        }
        let mut out = Vec::new();
        for (name, span, default) in order {
            let value = match self.resolve_arg(&name) {
                ArgState::Value(v) => Some(v),
                _ => None,
            };
            out.push(Arg { name, span, default, value });
        }
        self.used.clear();
        out
    }

    /// The value of an arg, resolving defaults that use other args. Returns
    /// `Value`, `NoValue` or `Broken`.
    ///
    /// Depth first with an explicit stack, not recursion, so a chain of any
    /// length cannot overflow the stack; a chain deeper than
    /// [`MAX_ARG_DEPTH`] is an error, and a cycle is reported whole.
    fn resolve_arg(&mut self, name: &str) -> ArgState {
        // Args being resolved, outermost first.
        let mut chain: Vec<Frame> = Vec::new();
        let mut next = Some(name.to_owned());
        loop {
            if let Some(n) = next.take() {
                match self.args.get(&n).cloned() {
                    Some((ArgState::Pending { default: None }, span)) => {
                        self.args.insert(n, (ArgState::NoValue, span));
                    }
                    Some((ArgState::Pending { default: Some((raw, at)) }, span)) => {
                        if chain.len() >= MAX_ARG_DEPTH {
                            self.too_deep_args(&chain, &n, at);
                            for member in chain.drain(..).map(|f| f.name).chain([n]) {
                                if let Some(a) = self.args.get_mut(&member) {
                                    a.0 = ArgState::Broken;
                                }
                            }
                            break;
                        }
                        self.args.insert(n.clone(), (ArgState::Resolving, span));
                        chain.push(Frame::new(n, raw, at));
                    }
                    Some((ArgState::Resolving, _)) => {
                        let start = chain.iter().position(|f| f.name == n).unwrap_or(0);
                        let members: Vec<(String, Span)> =
                            chain[start..].iter().map(|f| (f.name.clone(), f.at)).collect();
                        self.cycle_error("arg", &members, &n);
                        for (m, _) in &members {
                            if let Some(a) = self.args.get_mut(m) {
                                a.0 = ArgState::Broken;
                            }
                        }
                    }
                    _ => {}
                }
            }
            let Some(frame) = chain.last_mut() else { break };
            if matches!(self.args.get(&frame.name), Some((ArgState::Broken, _))) {
                chain.pop();
                continue;
            }
            // The next arg this default uses that is not settled yet; each
            // reference is looked at once it is settled, so a frame costs its
            // references, not references × length.
            while frame
                .refs
                .get(frame.next)
                .is_some_and(|r| !matches!(self.args.get(r), Some((ArgState::Pending { .. } | ArgState::Resolving, _))))
            {
                frame.next += 1;
            }
            if let Some(unsettled) = frame.refs.get(frame.next) {
                next = Some(unsettled.clone());
                continue;
            }
            // Everything it uses is settled, so this does not recurse.
            let Some(Frame { name: top, raw, at, .. }) = chain.pop() else { break };
            let value = self.interpolate_with(&raw, at);
            if let Some((state, _)) = self.args.get_mut(&top) {
                *state = match (&*state, value) {
                    (ArgState::Broken, _) | (_, None) => ArgState::Broken,
                    (_, Some(v)) => ArgState::Value(v),
                };
            }
        }
        self.args.get(name).map_or(ArgState::Broken, |a| a.0.clone())
    }

    /// Args that refer to each other deeper than [`MAX_ARG_DEPTH`]. Reported
    /// once: the rest of a very long chain would repeat it every 64 args.
    fn too_deep_args(&mut self, chain: &[Frame], last: &str, at: Span) {
        if std::mem::replace(&mut self.args_too_deep, true) {
            return;
        }
        let first = chain.first().map_or(last, |f| f.name.as_str());
        self.errors.push(LangError::Limit {
            what: format!("args refer to each other too deeply (from `{}` to `{}`)", quoted(first), quoted(last)),
            limit: MAX_ARG_DEPTH,
            unit: "levels",
            src: Some(self.file(at.file).src()),
            at: Some(at.span),
            label: format!("`{}` is {} args down the chain", quoted(last), chain.len() + 1),
            help: "give an arg in this chain a literal default instead of another arg".to_owned(),
        });
    }

    // ---- interpolation ------------------------------------------------------

    /// Interpolates a string value written at `span`.
    fn interpolate(&mut self, raw: &str, span: Span) -> String {
        self.interpolate_with(raw, span).unwrap_or_else(|| {
            self.failed.insert((span.file, span.span.offset()));
            raw.to_owned()
        })
    }

    /// Whether the value at `at` failed to interpolate (so it was reported).
    fn suppressed(&self, at: Span) -> bool {
        self.failed.contains(&(at.file, at.span.offset()))
    }

    fn interpolate_with(&mut self, raw: &str, span: Span) -> Option<String> {
        let pieces = match pieces(raw) {
            Ok(p) => p,
            Err(m) => {
                let at = self.locate(span, &raw[m.start..m.end]);
                self.errors.push(LangError::InvalidValue {
                    message: format!("malformed `${{...}}` in {:?}", quoted(raw)),
                    src: self.file(span.file).src(),
                    at,
                    label: m.message.to_owned(),
                    help: Some("write `${NAME}` for an arg, `$${NAME}` or `$NAME` for a shell variable, `$$` for a literal `$`".to_owned()),
                });
                return None;
            }
        };
        let mut out = String::with_capacity(raw.len());
        let mut ok = true;
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Arg { name, start, end } => {
                    // Where the reference is written: found only for an error,
                    // since searching the source for each of thousands of
                    // references would be quadratic.
                    let written = &raw[start..end];
                    if !self.args.contains_key(name) {
                        let at = self.locate(span, written);
                        // "Did you mean" compares every arg name: within the
                        // same budget as the typo check, and only for errors
                        // that are reported.
                        let close = !self.errors.full() && {
                            self.compared = self.compared.saturating_add(self.args.len());
                            self.compared <= TYPO_BUDGET
                        };
                        let names = self.sorted_arg_names();
                        let src = self.files[span.file].src();
                        self.errors.push_with(|| {
                            let known: Vec<&str> = names.iter().map(String::as_str).collect();
                            let mut help = if close {
                                suggest(name, "args", &known)
                            } else {
                                format!("args: {}", list_names(&known))
                            };
                            let _ = write!(help, ". A shell variable is written $${{{name}}} or ${name}");
                            LangError::UnknownArg { name: quoted(name), src, at, help }
                        });
                        ok = false;
                        continue;
                    }
                    match self.resolve_arg(name) {
                        ArgState::Value(value) => {
                            if !self.expand(out.len(), &value, name, span, written) {
                                return None;
                            }
                            out.push_str(&value);
                            self.used.insert(name.to_owned(), value);
                        }
                        ArgState::NoValue => {
                            let at = self.locate(span, written);
                            let declared = self.args.get(name).map(|a| a.1);
                            let declared = declared
                                .map(|d| self.note(d, format!("arg `{name}` is declared here"), "no default"))
                                .into_iter()
                                .collect();
                            self.errors.push(LangError::ArgWithoutValue {
                                name: name.to_owned(),
                                src: self.file(span.file).src(),
                                at,
                                declared,
                            });
                            ok = false;
                        }
                        _ => ok = false,
                    }
                }
            }
        }
        ok.then_some(out)
    }

    /// Every arg name, sorted, for "did you mean" help; computed once (every
    /// arg is declared before any string is interpolated).
    fn sorted_arg_names(&mut self) -> std::sync::Arc<Vec<String>> {
        let args = &self.args;
        std::sync::Arc::clone(self.arg_names.get_or_insert_with(|| {
            let mut names: Vec<String> = args.keys().cloned().collect();
            names.sort_unstable();
            std::sync::Arc::new(names)
        }))
    }

    /// Whether `value` may be added to a string already `len` bytes long,
    /// within [`Limits::max_expanded`] and [`Limits::max_expanded_total`];
    /// reports why not.
    fn expand(&mut self, len: usize, value: &str, name: &str, span: Span, written: &str) -> bool {
        let total = self.expanded.saturating_add(value.len());
        let (what, limit, help) = if len.saturating_add(value.len()) > self.limits.max_expanded {
            (
                format!("`${{{}}}` makes this string too long", quoted(name)),
                self.limits.max_expanded,
                "args that repeat each other grow exponentially; raise `limits max-expanded=` in bake's config file if this string really is that long",
            )
        } else if total > self.limits.max_expanded_total {
            // Reported once: every later string would go past it too.
            if self.expanded <= self.limits.max_expanded_total {
                self.expanded = total;
                let at = self.locate(span, written);
                self.errors.push(LangError::Limit {
                    what: "args expand to too much text in this workspace".to_owned(),
                    limit: self.limits.max_expanded_total,
                    unit: "bytes",
                    src: Some(self.file(span.file).src()),
                    at: Some(at),
                    label: "the limit is reached here".to_owned(),
                    help: "a large arg used in many strings is copied into each; raise `limits max-expanded-total=` in bake's config file if this is intended".to_owned(),
                });
            }
            return false;
        } else {
            self.expanded = total;
            return true;
        };
        let at = self.locate(span, written);
        self.errors.push(LangError::Limit {
            what,
            limit,
            unit: "bytes",
            src: Some(self.file(span.file).src()),
            at: Some(at),
            label: "expands past the limit here".to_owned(),
            help: help.to_owned(),
        });
        false
    }

    /// A path a build file names that leads outside the workspace.
    fn outside(&mut self, what: &'static str, written: &str, resolved: PathBuf, at: Span) {
        self.errors.push(LangError::OutsideWorkspace {
            what,
            written: quoted(written),
            resolved,
            workspace: self.boundary.root().to_path_buf(),
            src: self.file(at.file).src(),
            at: at.span,
        });
    }

    /// The span of `needle` inside the source text of `span`, or `span` itself.
    fn locate(&self, span: Span, needle: &str) -> SourceSpan {
        let text = &self.file(span.file).text;
        let start = span.span.offset();
        let end = (start + span.span.len()).min(text.len());
        text.get(start..end)
            .and_then(|s| s.find(needle))
            .map_or(span.span, |i| SourceSpan::from(start + i..start + i + needle.len()))
    }

    /// Interpolates the string value of an entry.
    fn string(&mut self, file: FileId, entry: &KdlEntry) -> String {
        let raw = scalar(entry.value());
        self.interpolate(&raw, Span { file, span: entry.span() })
    }

    // ---- errors -------------------------------------------------------------

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

    // ---- pass 3: names ------------------------------------------------------

    fn collect_names<'d>(&mut self, docs: &'d [(FileId, KdlDocument)]) -> Vec<Decl<'d>> {
        let mut decls: Vec<Decl<'d>> = Vec::new();
        let mut sites: HashMap<String, (Span, DeclKind)> = HashMap::new();
        let mut counts = [0usize; 3];
        for (file_id, doc) in docs {
            let file = self.file(*file_id);
            let top: Vec<&str> = schema::TOP.iter().map(|s| s.name).collect();
            for node in doc.nodes() {
                let Some(spec) = schema::lookup(schema::TOP, &top, node, "top-level", file, &mut self.errors) else {
                    continue;
                };
                let kind = match spec.name {
                    "stage" => DeclKind::Stage,
                    "image" => DeclKind::Image,
                    "artifact" => DeclKind::Artifact,
                    "target" => DeclKind::Target,
                    _ => continue,
                };
                let Some(name_entry) = node.entries().iter().find(|e| e.name().is_none()) else {
                    // `check` reports the missing name when the node is lowered.
                    let _ = schema::check(spec, node, file, &mut self.errors);
                    continue;
                };
                let span = Span { file: *file_id, span: name_entry.span() };
                let Some(raw) = name_entry.value().as_string() else {
                    let _ = schema::check(spec, node, file, &mut self.errors);
                    continue;
                };
                let name = self.interpolate(raw, span);
                if name == "scratch" {
                    self.invalid(
                        span,
                        "`scratch` is reserved".to_owned(),
                        "means the empty image",
                        Some("pick another name"),
                    );
                    continue;
                }
                if !valid_name(&name) {
                    self.invalid(
                        span,
                        format!("`{name}` is not a valid {} name", kind.noun()),
                        "not a valid name",
                        Some("names start with a letter or digit and use letters, digits, `.`, `_` and `-`"),
                    );
                    continue;
                }
                if let Some((first, first_kind)) = sites.get(&name) {
                    let what = if *first_kind == kind { kind.noun() } else { "name" };
                    self.duplicate(what, &name, *first, span);
                    continue;
                }
                if decls.len() >= self.limits.max_stages {
                    self.errors.push(LangError::Limit {
                        what: "too many stages, images, artifacts and targets".to_owned(),
                        limit: self.limits.max_stages,
                        unit: "declarations",
                        src: Some(file.src()),
                        at: Some(span.span),
                        label: "this one goes past the limit".to_owned(),
                        help: "raise `limits max-stages=` in bake's config file if the workspace really is this large"
                            .to_owned(),
                    });
                    return decls;
                }
                sites.insert(name.clone(), (span, kind));
                let family = match kind {
                    DeclKind::Stage | DeclKind::Image => 0,
                    DeclKind::Artifact => 1,
                    DeclKind::Target => 2,
                };
                decls.push(Decl { kind, name, span, node, index: counts[family] });
                counts[family] += 1;
            }
        }
        self.used.clear();
        decls
    }

    // ---- pass 4: lowering ---------------------------------------------------

    /// `cache-from` and `cache-to` nodes: registry caches, in file order.
    fn lower_caches(&mut self, docs: &[(FileId, KdlDocument)]) -> (Spanned, Spanned) {
        let (mut from, mut to) = (Vec::new(), Vec::new());
        for (file_id, doc) in docs {
            let file = self.file(*file_id);
            for node in doc.nodes() {
                let name = node.name().value();
                let Some(spec) = schema::TOP.iter().find(|s| s.name == name && name.starts_with("cache-")) else {
                    continue;
                };
                let Some(checked) = schema::check(spec, node, file, &mut self.errors) else { continue };
                for entry in &checked.args {
                    let raw = self.string(*file_id, entry);
                    let at = Span { file: *file_id, span: entry.span() };
                    match raw.parse::<crate::reference::CacheRef>() {
                        Ok(_) if name == "cache-from" => from.push((raw, at)),
                        Ok(_) => to.push((raw, at)),
                        Err(e) => self.invalid(
                            at,
                            format!("`{raw}` is not a registry cache"),
                            &e,
                            Some("a registry cache is a repository, like `registry.example.com/team/cache`"),
                        ),
                    }
                }
            }
        }
        (from, to)
    }

    fn lower_stage(&mut self, decl: &Decl<'_>, names: &Names) -> Option<Stage> {
        let file_id = decl.span.file;
        let file = self.file(file_id);
        let spec = schema::TOP.iter().find(|s| s.name == decl.kind.noun())?;
        let checked = schema::check(spec, decl.node, file, &mut self.errors)?;
        self.used.clear();
        let name = decl.name.clone();

        let from_entry = checked.prop("from")?;
        let from_span = Span { file: file_id, span: from_entry.span() };
        let from_raw = self.string(file_id, from_entry);
        // A base that does not resolve was reported; the body is still
        // lowered for its own errors, but the stage is not (so checks that walk
        // `from` chains do not run on a guess).
        let from = match self.resolve_ref(&from_raw, from_span, names, "base") {
            Some(Resolved::Scratch) => Some(Base::Scratch),
            Some(Resolved::Stage(id)) => Some(Base::Stage(id)),
            Some(Resolved::Image(r)) => Some(Base::Image(r)),
            None => None,
        };

        let context = match checked.prop("context") {
            None => file.dir.clone(),
            Some(entry) => {
                let raw = self.string(file_id, entry);
                let at = Span { file: file_id, span: entry.span() };
                match self.boundary.check(&file.dir.join(&raw)) {
                    _ if self.suppressed(at) => normalize_host(&file.dir.join(&raw)),
                    Place::Outside(resolved) => {
                        self.outside("context", &raw, resolved, at);
                        file.dir.clone()
                    }
                    Place::Inside(dir) => {
                        if !dir.is_dir() {
                            self.invalid(
                                at,
                                format!("context `{}` is not a folder", quoted(&raw)),
                                "no such folder",
                                Some("`context=` is relative to the folder of this build.kdl"),
                            );
                        }
                        dir
                    }
                }
            }
        };

        let allowed: &[&str] = spec.children.unwrap_or(&[]);
        let mut instructions = Vec::new();
        let mut image = (decl.kind == DeclKind::Image).then(ImageOutput::default);
        let stage_args = std::mem::take(&mut self.used);
        for node in decl.node.iter_children() {
            let Some(body_spec) = schema::lookup(schema::BODY, allowed, node, decl.kind.noun(), file, &mut self.errors)
            else {
                continue;
            };
            let Some(checked) = schema::check(body_spec, node, file, &mut self.errors) else {
                continue;
            };
            let span = Span { file: file_id, span: node.span() };
            match (body_spec.name, image.as_mut()) {
                ("tag", Some(out)) => {
                    for entry in &checked.args {
                        let raw = self.string(file_id, entry);
                        let at = Span { file: file_id, span: entry.span() };
                        match ImageRef::parse(&raw) {
                            Ok(r) => out.tags.push((r, at)),
                            Err(e) => self.invalid(
                                at,
                                format!("`{raw}` is not a valid image reference"),
                                &e.to_string(),
                                Some("a tag looks like `registry.example.com/team/app:1.0`"),
                            ),
                        }
                    }
                }
                ("annotation", Some(out)) => {
                    let key = self.string(file_id, checked.args[0]);
                    let value = self.string(file_id, checked.args[1]);
                    out.annotations.push((key, value));
                }
                _ => {
                    let kind = self.lower_instruction(body_spec, &checked, node, file_id, &context, names);
                    let args_used = std::mem::take(&mut self.used);
                    if let Some(kind) = kind {
                        instructions.push(Instruction { span, kind, args_used });
                    }
                }
            }
        }
        let mut args_used = stage_args;
        args_used.extend(std::mem::take(&mut self.used));
        for ins in &instructions {
            args_used.extend(ins.args_used.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Some(Stage { name, span: decl.span, from: from?, from_span, context, instructions, image, args_used })
    }

    fn lower_instruction(
        &mut self,
        spec: &Spec,
        c: &Checked<'_>,
        node: &KdlNode,
        file: FileId,
        context: &Path,
        names: &Names,
    ) -> Option<InstructionKind> {
        let at = |e: &KdlEntry| Span { file, span: e.span() };
        let strings = |cx: &mut Self| -> Vec<String> { c.args.iter().map(|e| cx.string(file, e)).collect() };
        Some(match spec.name {
            "workdir" => InstructionKind::Workdir(self.string(file, c.args[0])),
            "copy" => InstructionKind::Copy(self.lower_copy(c, file, context, names)?),
            "run" => InstructionKind::Run(self.lower_run(c, node, file)),
            "env" => {
                let (name, value) = (self.string(file, c.args[0]), self.string(file, c.args[1]));
                self.check_env_name(&name, at(c.args[0]));
                InstructionKind::Env(name, value)
            }
            "user" => {
                let user = self.string(file, c.args[0]);
                if user.is_empty() || user.contains(char::is_whitespace) {
                    self.invalid(
                        at(c.args[0]),
                        format!("`{user}` is not a user"),
                        "expected a name or uid, with an optional group",
                        Some("for example: user \"65532:65532\" or user \"nobody\""),
                    );
                }
                InstructionKind::User(user)
            }
            "expose" => {
                let mut ports = Vec::new();
                for e in &c.args {
                    let raw = self.string(file, e);
                    match parse_port(&raw) {
                        Some(p) => ports.push(p),
                        None => self.invalid(
                            at(e),
                            format!("`{raw}` is not a port"),
                            "expected a port from 1 to 65535, optionally with /tcp, /udp or /sctp",
                            Some("for example: expose 8080 \"53/udp\""),
                        ),
                    }
                }
                InstructionKind::Expose(ports)
            }
            "entrypoint" | "cmd" | "shell" => {
                let args = strings(self);
                // A `cmd` names a program only when no entrypoint is set, which
                // the chain decides (see `check_exec_forms`).
                if let (Some(program), Some(entry), false) = (args.first(), c.args.first(), spec.name == "cmd") {
                    self.check_program(spec.name, program, &args, at(entry));
                }
                match spec.name {
                    "entrypoint" => InstructionKind::Entrypoint(args),
                    "cmd" => InstructionKind::Cmd(args),
                    _ => InstructionKind::Shell(args),
                }
            }
            "label" => InstructionKind::Label(self.string(file, c.args[0]), self.string(file, c.args[1])),
            "volume" => {
                let paths = strings(self);
                for (p, e) in paths.iter().zip(&c.args) {
                    if !p.starts_with('/') {
                        self.invalid(at(e), format!("volume `{p}` is not an absolute path"), "must start with /", None);
                    }
                }
                InstructionKind::Volume(paths)
            }
            "stopsignal" => {
                let raw = self.string(file, c.args[0]);
                match parse_signal(&raw) {
                    Some(sig) => InstructionKind::StopSignal(sig),
                    None => {
                        self.invalid(
                            at(c.args[0]),
                            format!("`{raw}` is not a signal"),
                            "unknown signal",
                            Some("use a name like \"SIGTERM\" or \"SIGINT\", or a number from 1 to 64"),
                        );
                        return None;
                    }
                }
            }
            "healthcheck" => InstructionKind::Healthcheck(self.lower_healthcheck(c, node, file)?),
            _ => return None,
        })
    }

    fn lower_copy(&mut self, c: &Checked<'_>, file: FileId, context: &Path, names: &Names) -> Option<Copy> {
        let from = match c.prop("from") {
            None => CopySource::Context,
            Some(entry) => {
                let raw = self.string(file, entry);
                let span = Span { file, span: entry.span() };
                match self.resolve_ref(&raw, span, names, "copy")? {
                    Resolved::Scratch => {
                        self.invalid(span, "cannot copy from `scratch`".to_owned(), "scratch is empty", None);
                        return None;
                    }
                    Resolved::Stage(id) => CopySource::Stage(id),
                    Resolved::Image(r) => CopySource::Image(r),
                }
            }
        };
        let mut sources = Vec::new();
        let mut source_spans = Vec::new();
        for entry in &c.args {
            let raw = self.string(file, entry);
            let span = Span { file, span: entry.span() };
            if raw.is_empty() {
                self.invalid(
                    span,
                    "a copy source cannot be empty".to_owned(),
                    "empty",
                    Some("write \".\" for the whole context"),
                );
                continue;
            }
            if from == CopySource::Context {
                match normalize_relative(&raw) {
                    Some(path) => {
                        sources.push(path);
                        source_spans.push(span);
                    }
                    None if self.suppressed(span) => {}
                    None => self.errors.push(LangError::ContextEscape {
                        source_path: raw,
                        context: self.context_name(file, context),
                        src: self.file(file).src(),
                        at: span.span,
                    }),
                }
            } else {
                sources.push(normalize_absolute(&raw));
                source_spans.push(span);
            }
        }
        let to = c.prop("to")?;
        let dest = self.string(file, to);
        if dest.is_empty() {
            self.invalid(
                Span { file, span: to.span() },
                "`to=` cannot be empty".to_owned(),
                "empty",
                Some("write `to=\".\"` for the working directory"),
            );
        }
        let chown = c.prop("chown").map(|e| {
            let v = self.string(file, e);
            let ok = !v.is_empty()
                && !v.contains(char::is_whitespace)
                && v.split(':').count() <= 2
                && v.split(':').all(|p| !p.is_empty());
            if !ok {
                self.invalid(
                    Span { file, span: e.span() },
                    format!("`{v}` is not an owner"),
                    "expected user or user:group",
                    Some("for example: chown=\"65532:65532\""),
                );
            }
            v
        });
        let chmod = match c.prop("chmod") {
            None => None,
            Some(e) => {
                // Modes are octal, as in `chmod 755`: an integer written in
                // decimal digits is read as octal; `0o755` is octal already.
                let mode = match e.value() {
                    KdlValue::Integer(i) => {
                        let repr = e.format().map(|f| f.value_repr.trim().to_owned()).unwrap_or_default();
                        if repr.is_empty() || repr.starts_with("0o") {
                            u32::try_from(*i).ok()
                        } else {
                            u32::from_str_radix(&i.to_string(), 8).ok()
                        }
                    }
                    _ => {
                        let v = self.string(file, e);
                        u32::from_str_radix(&v, 8).ok().filter(|_| !v.is_empty())
                    }
                };
                match mode.filter(|m| *m <= 0o7777) {
                    Some(m) => Some(m),
                    None => {
                        self.invalid(
                            Span { file, span: e.span() },
                            "`chmod=` is not a file mode".to_owned(),
                            "expected octal permissions up to 7777",
                            Some("for example: chmod=\"0755\" or chmod=0o755"),
                        );
                        None
                    }
                }
            }
        };
        let exclude = c.props("exclude").iter().map(|e| self.string(file, e)).collect();
        Some(Copy { sources, source_spans, dest, from, chown, chmod, exclude })
    }

    fn lower_run(&mut self, c: &Checked<'_>, node: &KdlNode, file: FileId) -> Run {
        let script = self.string(file, c.args[0]);
        if script.trim().is_empty() {
            self.invalid(
                Span { file, span: c.args[0].span() },
                "a `run` script cannot be empty".to_owned(),
                "empty",
                None,
            );
        }
        let f = self.file(file);
        let mut run = Run {
            script,
            caches: Vec::new(),
            secrets: Vec::new(),
            network: Network::default(),
            security: Security::default(),
            env: Vec::new(),
        };
        let mut network_seen: Option<SourceSpan> = None;
        let mut security_seen: Option<SourceSpan> = None;
        for child in node.iter_children() {
            let names = ["cache", "secret", "network", "security", "env"];
            let Some(spec) = schema::lookup(schema::RUN, &names, child, "run", f, &mut self.errors) else {
                continue;
            };
            let Some(cc) = schema::check(spec, child, f, &mut self.errors) else {
                continue;
            };
            let at = Span { file, span: cc.args[0].span() };
            match spec.name {
                "cache" => {
                    let path = self.string(file, cc.args[0]);
                    if !path.starts_with('/') {
                        self.invalid(at, format!("cache path `{path}` is not absolute"), "must start with /", None);
                    }
                    let id = cc.prop("id").map_or_else(|| path.clone(), |e| self.string(file, e));
                    let sharing = match cc.prop("sharing").map(|e| (self.string(file, e), e.span())) {
                        None => Sharing::Shared,
                        Some((s, _)) if s == "shared" => Sharing::Shared,
                        Some((s, _)) if s == "private" => Sharing::Private,
                        Some((s, _)) if s == "locked" => Sharing::Locked,
                        Some((s, span)) => {
                            self.invalid(
                                Span { file, span },
                                format!("`{s}` is not a sharing mode"),
                                "expected shared, private or locked",
                                None,
                            );
                            Sharing::Shared
                        }
                    };
                    run.caches.push(CacheMount { path, id, sharing });
                }
                "secret" => {
                    let id = self.string(file, cc.args[0]);
                    if id.is_empty()
                        || !id.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
                    {
                        self.invalid(
                            at,
                            format!("`{id}` is not a secret id"),
                            "use letters, digits, `.`, `_` and `-`",
                            None,
                        );
                    }
                    let target =
                        cc.prop("target").map_or_else(|| format!("/run/secrets/{id}"), |e| self.string(file, e));
                    if !target.starts_with('/') {
                        self.invalid(
                            at,
                            format!("secret target `{target}` is not absolute"),
                            "must start with /",
                            None,
                        );
                    }
                    let required = cc.prop("required").and_then(|e| e.value().as_bool()).unwrap_or(true);
                    run.secrets.push(SecretMount { id, target, required });
                }
                "network" => {
                    if let Some(first) = network_seen {
                        self.errors.push(LangError::DuplicateProperty {
                            name: "network".to_owned(),
                            src: self.file(file).src(),
                            first,
                            second: child.span(),
                        });
                    }
                    network_seen = Some(child.span());
                    run.network = match self.string(file, cc.args[0]).as_str() {
                        "private" => Network::Private,
                        "host" => Network::Host,
                        "none" => Network::None,
                        other => {
                            self.invalid(
                                at,
                                format!("`{other}` is not a network mode"),
                                "expected \"private\", \"host\" or \"none\"",
                                None,
                            );
                            Network::default()
                        }
                    };
                }
                "security" => {
                    if let Some(first) = security_seen {
                        self.errors.push(LangError::DuplicateProperty {
                            name: "security".to_owned(),
                            src: self.file(file).src(),
                            first,
                            second: child.span(),
                        });
                    }
                    security_seen = Some(child.span());
                    run.security = match self.string(file, cc.args[0]).as_str() {
                        "sandbox" => Security::Sandbox,
                        "insecure" => Security::Insecure { at: Span { file, span: child.span() } },
                        other => {
                            self.invalid(
                                at,
                                format!("`{other}` is not a security mode"),
                                "expected \"sandbox\" or \"insecure\"",
                                None,
                            );
                            Security::default()
                        }
                    };
                }
                _ => {
                    let (name, value) = (self.string(file, cc.args[0]), self.string(file, cc.args[1]));
                    self.check_env_name(&name, at);
                    run.env.push((name, value));
                }
            }
        }
        run
    }

    fn lower_healthcheck(&mut self, c: &Checked<'_>, node: &KdlNode, file: FileId) -> Option<Healthcheck> {
        let shell = c.prop("shell");
        let none = c.prop("none").and_then(|e| e.value().as_bool()).unwrap_or(false);
        let forms = usize::from(!c.args.is_empty()) + usize::from(shell.is_some()) + usize::from(none);
        if forms != 1 {
            self.invalid(
                Span { file, span: node.name().span() },
                "a healthcheck needs exactly one of: a command, `shell=`, or `none=#true`".to_owned(),
                if forms == 0 { "nothing to run" } else { "more than one form" },
                Some("for example: healthcheck \"/app\" \"-healthcheck\" interval=\"30s\""),
            );
            return None;
        }
        let test = if none {
            HealthTest::None
        } else if let Some(e) = shell {
            HealthTest::Shell(self.string(file, e))
        } else {
            let args: Vec<String> = c.args.iter().map(|e| self.string(file, e)).collect();
            self.check_program("healthcheck", &args[0], &args, Span { file, span: c.args[0].span() });
            HealthTest::Exec(args)
        };
        let mut duration = |name: &str| -> Option<u64> {
            let e = c.prop(name)?;
            let raw = self.string(file, e);
            let parsed = parse_duration(&raw);
            if parsed.is_none() {
                self.invalid(
                    Span { file, span: e.span() },
                    format!("`{raw}` is not a duration"),
                    "expected a duration like 30s, 1m30s or 500ms",
                    None,
                );
            }
            parsed
        };
        let interval_ns = duration("interval");
        let timeout_ns = duration("timeout");
        let start_period_ns = duration("start-period");
        let start_interval_ns = duration("start-interval");
        let retries = match c.prop("retries") {
            None => None,
            Some(e) => {
                let r = e.value().as_integer().and_then(|i| u32::try_from(i).ok());
                if r.is_none() {
                    self.invalid(
                        Span { file, span: e.span() },
                        "`retries=` must be a whole number".to_owned(),
                        "expected 0 or more",
                        None,
                    );
                }
                r
            }
        };
        Some(Healthcheck { test, interval_ns, timeout_ns, start_period_ns, start_interval_ns, retries })
    }

    fn lower_artifact(&mut self, decl: &Decl<'_>, names: &Names) -> Option<Artifact> {
        let file_id = decl.span.file;
        let file = self.file(file_id);
        let spec = schema::TOP.iter().find(|s| s.name == "artifact")?;
        let c = schema::check(spec, decl.node, file, &mut self.errors)?;
        let from_entry = c.prop("from")?;
        let from_span = Span { file: file_id, span: from_entry.span() };
        let from_raw = self.string(file_id, from_entry);
        let from = self.resolve_stage(&from_raw, from_span, names)?;
        let path = normalize_absolute(&self.string(file_id, c.prop("path")?));
        let dest_entry = c.prop("dest")?;
        let dest_raw = self.string(file_id, dest_entry);
        let dest_at = Span { file: file_id, span: dest_entry.span() };
        if dest_raw.is_empty() {
            self.invalid(dest_at, "`dest=` cannot be empty".to_owned(), "empty", None);
        }
        let dest = match self.boundary.check(&file.dir.join(&dest_raw)) {
            _ if self.suppressed(dest_at) => return None,
            Place::Inside(dest) => dest,
            Place::Outside(resolved) => {
                self.outside("artifact destination", &dest_raw, resolved, dest_at);
                return None;
            }
        };
        let keep_setuid = c.prop("keep-setuid").and_then(|e| e.value().as_bool()).unwrap_or(false);
        Some(Artifact { name: decl.name.clone(), span: decl.span, from, path, dest, keep_setuid })
    }

    fn lower_target(&mut self, decl: &Decl<'_>, names: &Names) -> Option<Target> {
        let file_id = decl.span.file;
        let file = self.file(file_id);
        let spec = schema::TOP.iter().find(|s| s.name == "target")?;
        let c = schema::check(spec, decl.node, file, &mut self.errors)?;
        let mut members = Vec::new();
        for entry in &c.args[1..] {
            let name = self.string(file_id, entry);
            let span = Span { file: file_id, span: entry.span() };
            let member = match names.kinds.get(&name) {
                Some(DeclKind::Stage | DeclKind::Image) => names.stages.get(&name).map(|i| Member::Stage(*i)),
                Some(DeclKind::Artifact) => names.artifacts.get(&name).map(|i| Member::Artifact(*i)),
                Some(DeclKind::Target) => names.targets.get(&name).map(|i| Member::Target(*i)),
                None => None,
            };
            match member {
                Some(m) => members.push((m, span)),
                None if self.suppressed(span) => {}
                None => self.errors.push_with(|| {
                    let mut all: Vec<&str> = names.kinds.keys().map(String::as_str).collect();
                    all.sort_unstable();
                    let help = Some(suggest(&name, "known names", &all));
                    LangError::UnknownName {
                        kind: "stage, image, artifact or target",
                        name: quoted(&name),
                        src: file.src(),
                        at: span.span,
                        help,
                    }
                }),
            }
        }
        Some(Target { name: decl.name.clone(), span: decl.span, members })
    }

    // ---- references -----------------------------------------------------------

    /// Resolves a `from=` value: a stage, `scratch` or an image reference.
    fn resolve_ref(&mut self, raw: &str, span: Span, names: &Names, usage: &str) -> Option<Resolved> {
        if self.suppressed(span) {
            return None;
        }
        if raw == "scratch" {
            return Some(Resolved::Scratch);
        }
        if let Some(id) = names.stages.get(raw) {
            return Some(Resolved::Stage(*id));
        }
        if let Some(kind) = names.kinds.get(raw) {
            self.invalid(
                span,
                format!("`{raw}` is {} {}, not a stage", article(kind.noun()), kind.noun()),
                "not a stage",
                Some("`from=` names a stage, an image reference or `scratch`"),
            );
            return None;
        }
        // A bare name one or two edits from a stage name (same length give or
        // take one: `biuld`, `bulder`) is far likelier a typo than an image.
        if !ImageRef::looks_explicit(raw)
            && let Some(close) = self.close_stage(raw, names)
            && close.len().abs_diff(raw.len()) <= 1
        {
            self.errors.push(LangError::UnknownName {
                kind: "stage",
                name: quoted(raw),
                src: self.file(span.file).src(),
                at: span.span,
                help: Some(format!("did you mean `{close}`? To use the image `{raw}` from a registry instead, give it a tag: `{raw}:latest`")),
            });
            return None;
        }
        match ImageRef::parse(raw) {
            Ok(r) => Some(Resolved::Image(r)),
            Err(e) => {
                let stages = names.stage_names();
                let what = if usage == "copy" { "copy source" } else { "base" };
                self.invalid(
                    span,
                    format!("`{raw}` is neither a stage nor a valid image reference"),
                    &e.to_string(),
                    Some(&format!(
                        "a {what} is a stage name ({}), `scratch`, or an image like `debian:bookworm-slim`",
                        if stages.is_empty() { "none defined".to_owned() } else { list_names(&stages) }
                    )),
                );
                None
            }
        }
    }

    /// The stage name closest to a bare `from=` name, if close enough to be a
    /// typo. Remembered per name, since thousands of stages often share one
    /// base; once [`TYPO_BUDGET`] comparisons are spent, no more are made
    /// (a name is then taken as the image it reads as).
    fn close_stage(&mut self, raw: &str, names: &Names) -> Option<String> {
        if let Some(hit) = self.typos.get(raw) {
            return hit.clone();
        }
        self.compared = self.compared.saturating_add(names.stages.len());
        if self.compared > TYPO_BUDGET {
            return None;
        }
        let close = did_you_mean(raw, names.stages.keys().map(String::as_str)).map(str::to_owned);
        self.typos.insert(raw.to_owned(), close.clone());
        close
    }

    /// Resolves a name that must be a stage (artifacts).
    fn resolve_stage(&mut self, raw: &str, span: Span, names: &Names) -> Option<StageId> {
        if let Some(id) = names.stages.get(raw) {
            return Some(*id);
        }
        if self.suppressed(span) {
            return None;
        }
        let src = self.file(span.file).src();
        self.errors.push_with(|| LangError::UnknownName {
            kind: "stage",
            name: quoted(raw),
            src,
            at: span.span,
            help: Some(suggest(raw, "stages", &names.stage_names())),
        });
        None
    }

    fn check_env_name(&mut self, name: &str, at: Span) {
        if name.is_empty() || name.contains('=') || name.contains(char::is_whitespace) {
            self.invalid(
                at,
                format!("`{name}` is not an environment variable name"),
                "no `=`, spaces, or empty names",
                None,
            );
        }
    }

    /// Exec form: the program is one string; a space in it means shell form
    /// was meant.
    fn check_program(&mut self, node: &str, program: &str, args: &[String], at: Span) {
        if self.suppressed(at) {
            return;
        }
        if program.is_empty() {
            self.errors.push(LangError::ExecForm {
                message: format!("`{node}` names an empty program"),
                src: self.file(at.file).src(),
                at: at.span,
                label: "empty".to_owned(),
                help: format!("write the program's path, e.g. {node} \"/app\""),
            });
            return;
        }
        if !program.contains(char::is_whitespace) {
            return;
        }
        let words: Vec<String> = program.split_whitespace().map(|w| format!("{w:?}")).collect();
        let mut split = words.join(" ");
        for a in &args[1..] {
            let _ = write!(split, " {a:?}");
        }
        self.errors.push(LangError::ExecForm {
            message: format!("`{node}` is exec form: the program `{program}` contains whitespace"),
            src: self.file(at.file).src(),
            at: at.span,
            label: "this is one argument, not a command line".to_owned(),
            help: format!("give each argument its own string: {node} {split}; to run a shell command line, write {node} \"/bin/sh\" \"-c\" {program:?}"),
        });
    }

    // ---- pass 5: resolution checks --------------------------------------------

    fn check_cycles(&mut self, stages: &[Stage], targets: &[Target]) {
        let mut edges = Vec::new();
        for (i, s) in stages.iter().enumerate() {
            if let Base::Stage(p) = s.from {
                edges.push((i, p, s.from_span));
            }
            for ins in &s.instructions {
                if let InstructionKind::Copy(Copy { from: CopySource::Stage(p), .. }) = &ins.kind {
                    edges.push((i, *p, ins.span));
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
    fn check_depth(&mut self, stages: &[Stage]) {
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
    fn check_carried_env(&mut self, stages: &[Stage]) {
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
    fn check_exec_forms(&mut self, stages: &[Stage]) {
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

/// A resolved `from=` value.
enum Resolved {
    Scratch,
    Stage(StageId),
    Image(ImageRef),
}

fn article(noun: &str) -> &'static str {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
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

/// A context path, relative and normalised (`./a/../b/` is `b`, `/x` is `x`,
/// the root is `.`). `None` when it climbs above the root.
pub(crate) fn normalize_relative(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(if parts.is_empty() { ".".to_owned() } else { parts.join("/") })
}

/// A path inside an image filesystem: absolute and normalised; `..` stops at `/`.
pub(crate) fn normalize_absolute(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A host path with `.` and `..` folded lexically (no symlinks resolved).
fn normalize_host(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn parse_port(raw: &str) -> Option<Port> {
    let (port, protocol) = raw.split_once('/').unwrap_or((raw, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    matches!(protocol.as_str(), "tcp" | "udp" | "sctp").then_some(Port { port, protocol })
}

const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM",
    "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO",
    "PWR", "SYS",
];

/// A signal name (`SIGTERM`, `TERM`, `SIGRTMIN+3`) or number, normalised to
/// `SIGTERM` form or the number as written.
fn parse_signal(raw: &str) -> Option<String> {
    if let Ok(n) = raw.parse::<u8>() {
        return (1..=64).contains(&n).then(|| n.to_string());
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = name
        .strip_prefix("RTMIN+")
        .or_else(|| name.strip_prefix("RTMAX-"))
        .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 30));
    (SIGNALS.contains(&name) || rt || name == "RTMIN" || name == "RTMAX").then(|| format!("SIG{name}"))
}

/// Go-style durations: `30s`, `1m30s`, `500ms`, `1h`.
pub(crate) fn parse_duration(raw: &str) -> Option<u64> {
    if raw.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = raw;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale: u64 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(scale)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Strings with where they were written.
type Spanned = Vec<(String, Span)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        assert_eq!(normalize_relative("./a/../b/"), Some("b".to_owned()));
        assert_eq!(normalize_relative("/src"), Some("src".to_owned()));
        assert_eq!(normalize_relative("."), Some(".".to_owned()));
        assert_eq!(normalize_relative("a/../../b"), None);
        assert_eq!(normalize_relative("../x"), None);
        assert_eq!(normalize_absolute("out/../app"), "/app");
        assert_eq!(normalize_absolute("/../../etc"), "/etc");
    }

    #[test]
    fn durations_and_signals() {
        assert_eq!(parse_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_signal("SIGTERM").as_deref(), Some("SIGTERM"));
        assert_eq!(parse_signal("int").as_deref(), Some("SIGINT"));
        assert_eq!(parse_signal("9").as_deref(), Some("9"));
        assert_eq!(parse_signal("SIGRTMIN+3").as_deref(), Some("SIGRTMIN+3"));
        assert_eq!(parse_signal("SIGFOO"), None);
        assert_eq!(parse_port("8080"), Some(Port { port: 8080, protocol: "tcp".into() }));
        assert_eq!(parse_port("53/UDP"), Some(Port { port: 53, protocol: "udp".into() }));
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("80/http"), None);
    }
}
