//! Diagnostics for Dockerfiles: one error type with a kind (its stable
//! code), a message in BuildKit's words where it has them, and a label on
//! the user's text.

use std::fmt;

use miette::{Diagnostic, LabeledSpan, SourceCode, SourceSpan};

use crate::lang::{MAX_REPORTED, Src};

/// What went wrong; each kind is a stable code (`bake::dockerfile::KIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A parser directive that is invalid or given twice.
    Directive,
    /// No instruction of that name.
    UnknownInstruction,
    /// A flag the instruction does not take.
    UnknownFlag,
    /// A flag without its value, given twice, or with a bad value.
    Flag,
    /// Too few or too many arguments, or arguments of the wrong shape.
    Arguments,
    /// A JSON array that holds something other than strings; SHELL not in JSON.
    Json,
    /// A heredoc that does not end, or where none is allowed.
    Heredoc,
    /// A `RUN --mount` that cannot be read.
    Mount,
    /// `ONBUILD ONBUILD`, `ONBUILD FROM`, `ONBUILD MAINTAINER`.
    Onbuild,
    /// A stage name BuildKit refuses.
    StageName,
    /// A file with no instruction.
    Empty,
    /// An instruction before the first `FROM` other than `ARG`.
    BeforeFrom,
    /// Variable expansion failed (`${V:?message}`, bad substitution, quotes).
    Expansion,
    /// The file or one of its parts is larger than bake reads.
    Limit,
}

impl ErrorKind {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Directive => "bake::dockerfile::directive",
            Self::UnknownInstruction => "bake::dockerfile::unknown_instruction",
            Self::UnknownFlag => "bake::dockerfile::unknown_flag",
            Self::Flag => "bake::dockerfile::flag",
            Self::Arguments => "bake::dockerfile::arguments",
            Self::Json => "bake::dockerfile::json",
            Self::Heredoc => "bake::dockerfile::heredoc",
            Self::Mount => "bake::dockerfile::mount",
            Self::Onbuild => "bake::dockerfile::onbuild",
            Self::StageName => "bake::dockerfile::stage_name",
            Self::Empty => "bake::dockerfile::empty",
            Self::BeforeFrom => "bake::dockerfile::before_from",
            Self::Expansion => "bake::dockerfile::expansion",
            Self::Limit => "bake::dockerfile::limit",
        }
    }

    /// The last part of the code (`unknown_flag`), as fixtures write it.
    pub fn short(self) -> &'static str {
        self.code().rsplit("::").next().unwrap_or_default()
    }
}

/// One mistake in a Dockerfile, pointing at the text that made it.
#[derive(Debug, Clone)]
pub struct DockerfileError {
    pub kind: ErrorKind,
    pub message: String,
    pub src: Src,
    pub span: SourceSpan,
    pub label: String,
    pub help: Option<String>,
    /// 1-based line of the span's start.
    pub line: usize,
}

impl DockerfileError {
    /// Whose the error is: always the Dockerfile's.
    pub fn tier(&self) -> crate::Tier {
        crate::Tier::Input
    }
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.src.name(), self.line, self.message)
    }
}

impl std::error::Error for DockerfileError {}

impl Diagnostic for DockerfileError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.src)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(Some(self.label.clone()), self.span))))
    }
}

/// Every error one parse found: the first [`MAX_REPORTED`], then a count.
#[derive(Debug, Clone)]
pub struct DockerfileErrors {
    pub errors: Vec<DockerfileError>,
    /// Errors found past the first [`MAX_REPORTED`].
    pub more: usize,
}

impl DockerfileErrors {
    pub(crate) fn one(error: DockerfileError) -> Self {
        Self { errors: vec![error], more: 0 }
    }

    pub(crate) fn push(&mut self, error: DockerfileError) {
        if self.errors.len() < MAX_REPORTED {
            self.errors.push(error);
        } else {
            self.more += 1;
        }
    }

    pub fn tier(&self) -> crate::Tier {
        crate::Tier::Input
    }
}

impl fmt::Display for DockerfileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len() + self.more;
        match self.errors.first() {
            Some(first) if n == 1 => write!(f, "{first}"),
            Some(first) => write!(f, "{} has {n} errors", first.src.name()),
            None => write!(f, "the Dockerfile has errors"),
        }
    }
}

impl std::error::Error for DockerfileErrors {}

impl Diagnostic for DockerfileErrors {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.errors.as_slice() {
            [one] if self.more == 0 => Some(Box::new(one.kind.code())),
            _ => Some(Box::new("bake::dockerfile::errors")),
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.errors.as_slice() {
            [one] if self.more == 0 => one.help(),
            _ if self.more > 0 => Some(Box::new(format!("… and {} more not shown", self.more))),
            _ => None,
        }
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        match self.errors.as_slice() {
            [one] if self.more == 0 => Some(&one.src),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        match self.errors.as_slice() {
            [one] if self.more == 0 => one.labels(),
            _ => None,
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        match self.errors.as_slice() {
            [_] if self.more == 0 => None,
            many => Some(Box::new(many.iter().map(|e| e as &dyn Diagnostic))),
        }
    }
}
