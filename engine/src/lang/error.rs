//! Diagnostics for everything a user can get wrong in `build.kdl`.
//!
//! Every variant that comes from something the user wrote carries the source
//! of its file and a span into it. When a mistake involves two files (a name
//! defined twice, a cycle across includes), the other site is a [`Note`] in
//! `related`, with its own source, so each label points into the right file.

use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// The source of one `build.kdl`, named as diagnostics show it.
pub type Src = NamedSource<Arc<String>>;

/// A pointer to a second place, possibly in another file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(severity(Advice))]
pub struct Note {
    pub message: String,
    #[source_code]
    pub src: Src,
    #[label("{label}")]
    pub at: SourceSpan,
    pub label: String,
}

/// A mistake in a `build.kdl` (or in the values given for it).
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum LangError {
    #[error("cannot read {}", path.display())]
    #[diagnostic(code(bake::lang::read), help("check that the file exists and is readable"))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{message}")]
    #[diagnostic(code(bake::lang::syntax))]
    Syntax {
        message: String,
        #[source_code]
        src: Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("`{name}` is not a {context} node")]
    #[diagnostic(code(bake::lang::unknown_node))]
    UnknownNode {
        name: String,
        context: &'static str,
        #[source_code]
        src: Src,
        #[label("unknown node")]
        at: SourceSpan,
        #[help]
        help: String,
    },

    #[error("`{node}` has no property `{name}`")]
    #[diagnostic(code(bake::lang::unknown_property))]
    UnknownProperty {
        node: String,
        name: String,
        #[source_code]
        src: Src,
        #[label("unknown property")]
        at: SourceSpan,
        #[help]
        help: String,
    },

    #[error("`{node}` takes {expected}, found {found}")]
    #[diagnostic(code(bake::lang::arguments))]
    ArgumentCount {
        node: String,
        expected: String,
        found: usize,
        #[source_code]
        src: Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("{what} must be {expected}, found {found}")]
    #[diagnostic(code(bake::lang::wrong_type))]
    WrongType {
        what: String,
        expected: &'static str,
        found: &'static str,
        #[source_code]
        src: Src,
        #[label("expected {expected}")]
        at: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{node}` needs the property `{name}`")]
    #[diagnostic(code(bake::lang::missing_property))]
    MissingProperty {
        node: String,
        name: &'static str,
        #[source_code]
        src: Src,
        #[label("`{name}=` is missing")]
        at: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{name}` is given twice")]
    #[diagnostic(code(bake::lang::duplicate_property))]
    DuplicateProperty {
        name: String,
        #[source_code]
        src: Src,
        #[label("first here")]
        first: SourceSpan,
        #[label("again here")]
        second: SourceSpan,
    },

    #[error("`{node}` takes no children block")]
    #[diagnostic(code(bake::lang::unexpected_children))]
    UnexpectedChildren {
        node: String,
        #[source_code]
        src: Src,
        #[label("remove this block")]
        at: SourceSpan,
    },

    #[error("{message}")]
    #[diagnostic(code(bake::lang::invalid_value))]
    InvalidValue {
        message: String,
        #[source_code]
        src: Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("unknown {kind} `{name}`")]
    #[diagnostic(code(bake::lang::unknown_name))]
    UnknownName {
        kind: &'static str,
        name: String,
        #[source_code]
        src: Src,
        #[label("no {kind} with this name")]
        at: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown arg `{name}`")]
    #[diagnostic(code(bake::lang::unknown_arg))]
    UnknownArg {
        name: String,
        #[source_code]
        src: Src,
        #[label("not declared with `arg`")]
        at: SourceSpan,
        #[help]
        help: String,
    },

    #[error("arg `{name}` has no value")]
    #[diagnostic(
        code(bake::lang::arg_without_value),
        help("give it a default (`arg \"{name}\" default=\"...\"`) or pass `--set {name}=VALUE`")
    )]
    ArgWithoutValue {
        name: String,
        #[source_code]
        src: Src,
        #[label("used here")]
        at: SourceSpan,
        #[related]
        declared: Vec<Note>,
    },

    #[error("`--set {name}=…` names no arg")]
    #[diagnostic(code(bake::lang::unknown_set))]
    UnknownSet {
        name: String,
        #[help]
        help: String,
    },

    #[error("{kind} `{name}` is defined twice")]
    #[diagnostic(
        code(bake::lang::duplicate_name),
        help(
            "names of args, stages, images, artifacts and targets are unique across the workspace, included files too"
        )
    )]
    DuplicateName {
        kind: &'static str,
        name: String,
        #[source_code]
        src: Src,
        #[label("defined again here")]
        at: SourceSpan,
        #[label("first defined here")]
        first: Option<SourceSpan>,
        #[related]
        elsewhere: Vec<Note>,
    },

    #[error("{kind} cycle: {cycle}")]
    #[diagnostic(
        code(bake::lang::cycle),
        help("nothing can depend on itself, directly or through others: break the cycle")
    )]
    Cycle {
        kind: &'static str,
        cycle: String,
        #[source_code]
        src: Src,
        #[label(collection, "")]
        at: Vec<miette::LabeledSpan>,
        #[related]
        elsewhere: Vec<Note>,
    },

    #[error("include `{pattern}` {problem}")]
    #[diagnostic(code(bake::lang::include))]
    Include {
        pattern: String,
        problem: String,
        #[source_code]
        src: Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("copy source `{source_path}` leaves the build context")]
    #[diagnostic(
        code(bake::lang::context_escape),
        help("copy sources are relative to {context}; to read files above it, set `context=` on the stage")
    )]
    ContextEscape {
        source_path: String,
        context: String,
        #[source_code]
        src: Src,
        #[label("this path goes above the context")]
        at: SourceSpan,
    },

    #[error("{message}")]
    #[diagnostic(code(bake::lang::exec_form))]
    ExecForm {
        message: String,
        #[source_code]
        src: Src,
        #[label("{label}")]
        at: SourceSpan,
        label: String,
        #[help]
        help: String,
    },
}

/// Every error found while loading a workspace, in file order.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{} in {}", plural(errors.len(), "error"), root.display())]
#[diagnostic(code(bake::lang::load))]
pub struct LoadError {
    pub root: PathBuf,
    #[related]
    pub errors: Vec<LangError>,
}

/// `1 error`, `2 errors`.
pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") }
}

/// The closest candidate to `name`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= limit && *c != name)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A help text: "did you mean" when something is close, then the valid choices.
pub(crate) fn suggest(name: &str, what: &str, valid: &[&str]) -> String {
    let list = if valid.is_empty() { format!("there are no {what}") } else { format!("{what}: {}", valid.join(", ")) };
    match did_you_mean(name, valid.iter().copied()) {
        Some(close) => format!("did you mean `{close}`? {list}"),
        None => list,
    }
}
