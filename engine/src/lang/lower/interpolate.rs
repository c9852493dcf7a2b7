//! Interpolation of `${NAME}` references in string values, with the
//! workspace-wide expansion budget ([`Limits::max_expanded_total`]), "did you
//! mean" for unknown args, and the checks that keep interpolated paths inside
//! the workspace boundary.

use std::fmt::Write as _;
use std::path::PathBuf;

use kdl::KdlEntry;
use miette::SourceSpan;

use super::{ArgState, Cx, TYPO_BUDGET, scalar};
use crate::lang::PREDEFINED_ARGS;
use crate::lang::error::{LangError, did_you_mean, list_names, quoted, suggest};
use crate::lang::interp::{Piece, pieces};
use crate::lang::{FileId, Span};

impl Cx<'_> {
    /// Interpolates a string value written at `span`.
    pub(super) fn interpolate(&mut self, raw: &str, span: Span) -> String {
        self.interpolate_with(raw, span).unwrap_or_else(|| {
            self.failed.insert((span.file, span.span.offset()));
            raw.to_owned()
        })
    }

    /// Whether the value at `at` failed to interpolate (so it was reported).
    pub(super) fn suppressed(&self, at: Span) -> bool {
        self.failed.contains(&(at.file, at.span.offset()))
    }

    pub(super) fn interpolate_with(&mut self, raw: &str, span: Span) -> Option<String> {
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
                            // The predefined args are suggested, not listed.
                            let known: Vec<&str> =
                                names.iter().map(String::as_str).filter(|n| !PREDEFINED_ARGS.contains(n)).collect();
                            let declared = did_you_mean(name, known.iter().copied()).filter(|_| close);
                            let predefined = did_you_mean(name, PREDEFINED_ARGS.iter().copied()).filter(|_| close);
                            let mut help = match (declared, predefined) {
                                (None, Some(p)) => {
                                    format!("did you mean `{p}`? It is predefined: {}", PREDEFINED_ARGS.join(", "))
                                }
                                _ if close => suggest(name, "args", &known),
                                _ => format!("args: {}", list_names(&known)),
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
    pub(super) fn sorted_arg_names(&mut self) -> std::sync::Arc<Vec<String>> {
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
    pub(super) fn expand(&mut self, len: usize, value: &str, name: &str, span: Span, written: &str) -> bool {
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
    pub(super) fn outside(&mut self, what: &'static str, written: &str, resolved: PathBuf, at: Span) {
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
    pub(super) fn locate(&self, span: Span, needle: &str) -> SourceSpan {
        let text = &self.file(span.file).text;
        let start = span.span.offset();
        let end = (start + span.span.len()).min(text.len());
        text.get(start..end)
            .and_then(|s| s.find(needle))
            .map_or(span.span, |i| SourceSpan::from(start + i..start + i + needle.len()))
    }

    /// Interpolates the string value of an entry.
    pub(super) fn string(&mut self, file: FileId, entry: &KdlEntry) -> String {
        let raw = scalar(entry.value());
        self.interpolate(&raw, Span { file, span: entry.span() })
    }
}
