//! Diagnostics for everything a user can get wrong in `build.kdl`.
//!
//! Every variant that comes from something the user wrote carries the source
//! of its file and a span into it. When a mistake involves two files (a name
//! defined twice, a cycle across includes), the other site is a [`Note`] in
//! `related`, with its own source, so each label points into the right file.

use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

/// Most diagnostics one load reports; the rest are counted in a last
/// "and N more" entry. Rendering a diagnostic costs time proportional to its
/// file, so 100,000 mistakes would print for minutes; the first 50 are what a
/// user fixes first anyway.
pub const MAX_REPORTED: usize = 50;

/// Longest source line a diagnostic shows whole, in bytes. A longer one (a
/// generated file, 1,000 properties on one line) is shown as a window of
/// [`WINDOW`] bytes either side of the label, so one diagnostic stays a few
/// lines long.
pub const MAX_SHOWN_LINE: usize = 240;
/// Bytes shown either side of a label inside a line longer than [`MAX_SHOWN_LINE`].
pub(crate) const WINDOW: usize = 80;
/// Longest user-written text (a name, a path) quoted in a message; the middle
/// of a longer one is elided.
pub const MAX_QUOTED: usize = 120;

/// The source of one `build.kdl`, named as diagnostics show it. Lines longer
/// than [`MAX_SHOWN_LINE`] are shown as a window around the label.
#[derive(Clone)]
pub struct Src {
    name: String,
    text: Arc<String>,
}

impl Src {
    pub fn new(name: impl Into<String>, text: Arc<String>) -> Self {
        Self { name: name.into(), text }
    }

    /// The name diagnostics show.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for Src {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Src").field("name", &self.name).field("len", &self.text.len()).finish_non_exhaustive()
    }
}

impl SourceCode for Src {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let text = self.text.as_str();
        let inner = text.read_span(span, context_lines_before, context_lines_after)?;
        let long = inner.data().split(|&b| b == b'\n').any(|line| line.len() > MAX_SHOWN_LINE);
        let (start, end) = (span.offset().min(text.len()), (span.offset() + span.len()).min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        if !long || end > line_end {
            let (data, at, line, column, lines) =
                (inner.data(), *inner.span(), inner.line(), inner.column(), inner.line_count());
            return Ok(Box::new(MietteSpanContents::new_named(self.name.clone(), data, at, line, column, lines)));
        }
        // One long line: a window around the label, cut on character boundaries.
        let mut from = start.saturating_sub(WINDOW).max(line_start);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let mut to = (start + span.len().min(MAX_SHOWN_LINE) + WINDOW).min(line_end);
        while !text.is_char_boundary(to) {
            to += 1;
        }
        let line = text.as_bytes()[..from].iter().filter(|&&b| b == b'\n').count();
        let column = text[line_start..from].chars().count();
        let window = SourceSpan::from(from..to);
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            &text.as_bytes()[from..to],
            window,
            line,
            column,
            1,
        )))
    }
}

/// `text` as quoted in a message: whole up to [`MAX_QUOTED`] bytes, else its
/// start and end around an ellipsis.
pub fn quoted(text: &str) -> String {
    if text.len() <= MAX_QUOTED {
        return text.to_owned();
    }
    let mut head = MAX_QUOTED / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - MAX_QUOTED / 2;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{} ({} bytes)", &text[..head], &text[tail..], text.len())
}

/// The errors of one load: the first [`MAX_REPORTED`] kept, the rest counted.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    kept: Vec<LangError>,
    dropped: usize,
}

impl Errors {
    pub(crate) fn push(&mut self, error: LangError) {
        if self.kept.len() < MAX_REPORTED {
            self.kept.push(error);
        } else {
            self.dropped += 1;
        }
    }

    /// [`Errors::push`] for an error that is costly to build (a "did you
    /// mean" compares names): built only when it will be reported.
    pub(crate) fn push_with(&mut self, make: impl FnOnce() -> LangError) {
        if self.kept.len() < MAX_REPORTED {
            self.kept.push(make());
        } else {
            self.dropped += 1;
        }
    }

    pub(crate) fn extend(&mut self, errors: impl IntoIterator<Item = LangError>) {
        for e in errors {
            self.push(e);
        }
    }

    /// Whether the next error would only be counted, not reported.
    pub(crate) fn full(&self) -> bool {
        self.kept.len() >= MAX_REPORTED
    }

    /// Every error found so far, kept or not.
    pub(crate) fn len(&self) -> usize {
        self.kept.len() + self.dropped
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept errors, with a last entry counting the others.
    pub(crate) fn into_reported(self) -> Vec<LangError> {
        let mut out = self.kept;
        if self.dropped > 0 {
            out.push(LangError::More { count: self.dropped, shown: MAX_REPORTED });
        }
        out
    }
}

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
    /// A Dockerfile that does not parse (one error of the parser's list).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dockerfile(Box<crate::dockerfile::DockerfileError>),

    #[error("{what} `{written}` is outside the workspace")]
    #[diagnostic(
        code(bake::lang::outside_workspace),
        help(
            "a build file may only name paths inside its workspace (the folder of the root build.kdl, or -C DIR); to let builds use a folder outside it, pass `--allow-path DIR`, set BAKE_ALLOW_PATHS, or add `allow-path \"DIR\"` to bake's config file"
        )
    )]
    OutsideWorkspace {
        what: &'static str,
        written: String,
        resolved: PathBuf,
        workspace: PathBuf,
        #[source_code]
        src: Src,
        #[label("leads to {}", resolved.display())]
        at: SourceSpan,
    },

    #[error("{what}: more than {limit} {unit}")]
    #[diagnostic(code(bake::lang::limit))]
    Limit {
        what: String,
        limit: usize,
        unit: &'static str,
        #[source_code]
        src: Option<Src>,
        #[label("{label}")]
        at: Option<SourceSpan>,
        label: String,
        #[help]
        help: String,
    },

    #[error("… and {count} more errors (only the first {shown} are shown)")]
    #[diagnostic(code(bake::lang::more_errors), help("fix the errors above and run bake again to see the rest"))]
    More { count: usize, shown: usize },

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

    #[error("`--set {name}=…` cannot change a predefined arg")]
    #[diagnostic(
        code(bake::lang::predefined_set),
        help("`{name}` comes from the platform: choose the target platforms with `--platform` or a `platforms` node")
    )]
    PredefinedSet { name: String },

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

/// Every error found while loading a workspace, in file order (the first
/// [`MAX_REPORTED`], then a [`LangError::More`] counting the rest).
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{} in {}", plural(self.count(), "error"), root.display())]
#[diagnostic(code(bake::lang::load))]
pub struct LoadError {
    pub root: PathBuf,
    #[related]
    pub errors: Vec<LangError>,
}

impl LoadError {
    /// How many errors were found, reported or only counted.
    pub fn count(&self) -> usize {
        self.errors
            .iter()
            .map(|e| match e {
                LangError::More { count, .. } => *count,
                _ => 1,
            })
            .sum()
    }
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

/// Most names a help text lists; a workspace with 10,000 stages would
/// otherwise print all of them in every "unknown name" diagnostic.
pub const MAX_LISTED: usize = 20;

/// Names joined with commas: the first [`MAX_LISTED`], then how many more.
pub fn list_names(names: &[&str]) -> String {
    if names.len() <= MAX_LISTED {
        return names.join(", ");
    }
    format!("{}, … and {} more", names[..MAX_LISTED].join(", "), names.len() - MAX_LISTED)
}

/// A help text: "did you mean" when something is close, then the valid choices.
pub(crate) fn suggest(name: &str, what: &str, valid: &[&str]) -> String {
    let list = if valid.is_empty() { format!("there are no {what}") } else { format!("{what}: {}", list_names(valid)) };
    match did_you_mean(name, valid.iter().copied()) {
        Some(close) => format!("did you mean `{close}`? {list}"),
        None => list,
    }
}

impl LangError {
    /// Whose the error is: the build file's, unless it cannot be read.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::Read { .. } => crate::Tier::Environment,
            _ => crate::Tier::Input,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(error: &LangError) -> String {
        let mut out = String::new();
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor()).with_width(80);
        handler.render_report(&mut out, error).expect("render");
        out
    }

    #[test]
    fn long_lines_show_a_window_and_long_names_are_elided() {
        let line = format!("stage \"a\" from=\"b\" {} target=\"x\" {}\n", "p=\"v\" ".repeat(2000), "q ".repeat(2000));
        let at = line.find("target").expect("target");
        let src = Src::new("build.kdl", Arc::new(line.clone()));
        let out = render(&LangError::UnknownProperty {
            node: "stage".to_owned(),
            name: quoted(&"n".repeat(10_000)),
            src,
            at: (at, 10).into(),
            help: String::new(),
        });
        // The line is 14 KB; the diagnostic shows a window of it.
        assert!(out.len() < 4_000 && out.lines().all(|l| l.len() < 600), "{} bytes:\n{out}", out.len());
        assert!(out.contains("target=\"x\""), "{out}");
        assert!(out.contains("build.kdl:1:"), "{out}");
        assert!(out.contains("…") && out.contains("(10000"), "{out}");
        // A short file is shown as it is, with its neighbouring lines.
        let short = "a\nstage \"x\" bad=1\nb\n";
        let out = render(&LangError::UnknownProperty {
            node: "stage".to_owned(),
            name: "bad".to_owned(),
            src: Src::new("build.kdl", Arc::new(short.to_owned())),
            at: (12, 5).into(),
            help: String::new(),
        });
        assert!(out.contains(" 1 │ a") && out.contains(" 3 │ b"), "{out}");
    }

    #[test]
    fn errors_past_the_cap_are_counted() {
        let mut errors = Errors::default();
        for i in 0..MAX_REPORTED + 7 {
            errors.push_with(|| LangError::UnknownSet { name: format!("a{i}"), help: String::new() });
        }
        assert_eq!(errors.len(), MAX_REPORTED + 7);
        let reported = errors.into_reported();
        assert_eq!(reported.len(), MAX_REPORTED + 1);
        assert!(matches!(reported.last(), Some(LangError::More { count: 7, .. })));
        let load = LoadError { root: PathBuf::from("build.kdl"), errors: reported };
        assert_eq!(load.to_string(), format!("{} errors in build.kdl", MAX_REPORTED + 7));
    }
}
