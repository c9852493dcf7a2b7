//! Pass 4, the steps that carry most options: `copy` (sources, `from=`,
//! ownership, modes), `run` (exec form, mounts, network, security, secrets) and
//! `healthcheck` (test and durations).

use std::path::Path;

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::values::{normalize_absolute, normalize_relative, parse_duration};
use super::{Cx, Names, Resolved};
use crate::lang::error::LangError;
use crate::lang::schema::{self, Checked};
use crate::lang::{
    CacheMount, Copy, CopySource, FileId, HealthTest, Healthcheck, Network, Run, SecretMount, Security, Sharing, Span,
};

impl Cx<'_> {
    pub(super) fn lower_copy(&mut self, c: &Checked<'_>, file: FileId, context: &Path, names: &Names) -> Option<Copy> {
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
        let chown = c.prop("chown").map(|e| self.lower_chown(e, file));
        let chmod = c.prop("chmod").and_then(|e| self.lower_chmod(e, file));
        let exclude = c.props("exclude").iter().map(|e| self.string(file, e)).collect();
        let optional = c.prop("optional").and_then(|e| e.value().as_bool()).unwrap_or(false);
        Some(Copy {
            sources,
            source_spans,
            dest,
            from,
            chown,
            chmod,
            exclude,
            keep_owners: false,
            optional,
            mkdir: false,
            extract: false,
        })
    }

    /// `chown=`: `user` or `user:group`, names or ids (checked, kept as written).
    fn lower_chown(&mut self, e: &KdlEntry, file: FileId) -> String {
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
    }

    /// `chmod=`: octal, as in `chmod 755`. An integer written in decimal
    /// digits is read as octal; `0o755` is octal already.
    fn lower_chmod(&mut self, e: &KdlEntry, file: FileId) -> Option<u32> {
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

    pub(super) fn lower_run(&mut self, c: &Checked<'_>, node: &KdlNode, file: FileId, names: &Names) -> Run {
        // Exec form: the arguments are the program and its arguments, run
        // with no shell, as a Dockerfile's `RUN ["a", "b"]`.
        let exec = if c.prop("exec").and_then(|e| e.value().as_bool()).unwrap_or(false) {
            let args: Vec<String> = c.args.iter().map(|e| self.string(file, e)).collect();
            self.check_program("run", &args[0], &args, Span { file, span: c.args[0].span() });
            Some(args)
        } else {
            if let Some(extra) = c.args.get(1) {
                self.invalid(
                    Span { file, span: extra.span() },
                    "a `run` script is one string".to_owned(),
                    "a second argument",
                    Some("join the script into one string, or add `exec=#true` to run a program with these arguments and no shell"),
                );
            }
            None
        };
        let script = match &exec {
            Some(args) => args.join(" "),
            None => self.string(file, c.args[0]),
        };
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
            exec,
            caches: Vec::new(),
            secrets: Vec::new(),
            network: Network::default(),
            security: Security::default(),
            env: Vec::new(),
            binds: Vec::new(),
            tmpfs: Vec::new(),
        };
        let mut network_seen: Option<SourceSpan> = None;
        let mut security_seen: Option<SourceSpan> = None;
        for child in node.iter_children() {
            let children = ["cache", "secret", "network", "security", "env", "bind", "tmpfs"];
            let Some(spec) = schema::lookup(schema::RUN, &children, child, "run", f, &mut self.errors) else {
                continue;
            };
            let Some(cc) = schema::check(spec, child, f, &mut self.errors) else {
                continue;
            };
            let at = Span { file, span: cc.args[0].span() };
            match spec.name {
                "cache" => run.caches.push(self.lower_cache(&cc, file, at)),
                "bind" => {
                    let raw = self.string(file, cc.args[0]);
                    let target = cc.prop("target").map(|e| self.string(file, e)).unwrap_or_default();
                    let readonly = !cc.prop("rw").and_then(|e| e.value().as_bool()).unwrap_or(false);
                    let from = match cc.prop("from") {
                        None => Some(CopySource::Context),
                        Some(e) => {
                            let name = self.string(file, e);
                            match self.resolve_ref(&name, Span { file, span: e.span() }, names, "copy") {
                                Some(Resolved::Stage(id)) => Some(CopySource::Stage(id)),
                                Some(Resolved::Image(r)) => Some(CopySource::Image(r)),
                                Some(Resolved::Scratch) => {
                                    self.invalid(at, "cannot bind from `scratch`".to_owned(), "scratch is empty", None);
                                    None
                                }
                                None => None,
                            }
                        }
                    };
                    let source = match from {
                        Some(CopySource::Context) => normalize_relative(&raw),
                        Some(_) => Some(normalize_absolute(&raw)),
                        None => continue,
                    };
                    match source {
                        Some(source) if !target.is_empty() => {
                            let from = from.unwrap_or(CopySource::Context);
                            run.binds.push(crate::lang::BindMount { source, from, target, readonly });
                        }
                        Some(_) => self.invalid(at, "`target=` cannot be empty".to_owned(), "empty target", None),
                        None => self.invalid(
                            at,
                            format!("bind source `{raw}` leaves the build context"),
                            "leaves the context",
                            Some("a bind reads from the stage's build context"),
                        ),
                    }
                }
                "tmpfs" => {
                    let path = self.string(file, cc.args[0]);
                    if !path.starts_with('/') {
                        self.invalid(at, format!("tmpfs path `{path}` is not absolute"), "must start with /", None);
                    }
                    run.tmpfs.push(path);
                }
                "secret" => run.secrets.push(self.lower_secret(&cc, file, at)),
                "network" => {
                    self.once("network", &mut network_seen, child, file);
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
                    self.once("security", &mut security_seen, child, file);
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

    /// Reports `node` when another `name` node came before it in the same
    /// block (`seen` holds the first one's span).
    fn once(&mut self, name: &str, seen: &mut Option<SourceSpan>, node: &KdlNode, file: FileId) {
        if let Some(first) = *seen {
            self.errors.push(LangError::DuplicateProperty {
                name: name.to_owned(),
                src: self.file(file).src(),
                first,
                second: node.span(),
            });
        }
        *seen = Some(node.span());
    }

    /// `cache PATH [id=] [sharing=]` in a `run` block.
    fn lower_cache(&mut self, cc: &Checked<'_>, file: FileId, at: Span) -> CacheMount {
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
        CacheMount { path, id, sharing }
    }

    /// `secret ID [target=] [required=]` in a `run` block.
    fn lower_secret(&mut self, cc: &Checked<'_>, file: FileId, at: Span) -> SecretMount {
        let id = self.string(file, cc.args[0]);
        if id.is_empty() || !id.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')) {
            self.invalid(at, format!("`{id}` is not a secret id"), "use letters, digits, `.`, `_` and `-`", None);
        }
        let env = cc.prop("env").map(|e| self.string(file, e));
        if let (Some(name), Some(e)) = (&env, cc.prop("env")) {
            self.check_env_name(name, Span { file, span: e.span() });
        }
        // As BuildKit: with `env=`, a file only when a target is given too.
        let target = match cc.prop("target") {
            Some(e) => self.string(file, e),
            None if env.is_some() => String::new(),
            None => format!("/run/secrets/{id}"),
        };
        if !target.is_empty() && !target.starts_with('/') {
            self.invalid(at, format!("secret target `{target}` is not absolute"), "must start with /", None);
        }
        let required = cc.prop("required").and_then(|e| e.value().as_bool()).unwrap_or(true);
        SecretMount { id, target, required, env }
    }

    pub(super) fn lower_healthcheck(&mut self, c: &Checked<'_>, node: &KdlNode, file: FileId) -> Option<Healthcheck> {
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
}
