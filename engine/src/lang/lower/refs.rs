//! References from one declaration to another: `from=` values (a stage,
//! `scratch` or an image), the bounded "is this bare name a misspelt stage?"
//! check, and checks of env names and program strings shared by several
//! instructions.

use std::fmt::Write as _;

use super::{Cx, Names, Resolved, TYPO_BUDGET, article};
use crate::lang::error::{LangError, did_you_mean, list_names, quoted, suggest};
use crate::lang::{Span, StageId};
use crate::reference::ImageRef;

impl Cx<'_> {
    /// Resolves a `from=` value: a stage, `scratch` or an image reference.
    pub(super) fn resolve_ref(&mut self, raw: &str, span: Span, names: &Names, usage: &str) -> Option<Resolved> {
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
    pub(super) fn close_stage(&mut self, raw: &str, names: &Names) -> Option<String> {
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
    pub(super) fn resolve_stage(&mut self, raw: &str, span: Span, names: &Names) -> Option<StageId> {
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

    pub(super) fn check_env_name(&mut self, name: &str, at: Span) {
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
    pub(super) fn check_program(&mut self, node: &str, program: &str, args: &[String], at: Span) {
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
}
