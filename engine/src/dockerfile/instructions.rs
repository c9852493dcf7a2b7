//! The typed instructions of a Dockerfile, and how a logical line becomes
//! one.
//!
//! Words are kept as written ([`Word`]: text and span, quotes and `$` left
//! in) because expansion needs the stage's ARGs and ENVs; flags are checked
//! here, against the set each instruction takes in BuildKit, with the same
//! rules: `--name=value` for values, `--name` or `--name=true|false` for
//! switches, repeatable only where BuildKit repeats them (`--mount`,
//! `--exclude`).

use std::time::Duration;

use miette::SourceSpan;

/// A word as written in the file: unexpanded, quotes and escapes kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub span: SourceSpan,
}

impl Word {
    pub fn new(text: impl Into<String>, span: SourceSpan) -> Self {
        Self { text: text.into(), span }
    }
}

/// The parser directives (`# syntax=`, `# escape=`, `# check=`) at the top
/// of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `# syntax=IMAGE`: recorded; bake has its own frontend and ignores it.
    pub syntax: Option<Directive>,
    /// `# escape=\` or `` # escape=` ``.
    pub escape: Option<Directive>,
    /// `# check=skip=A,B;error=true`.
    pub check: Option<CheckDirective>,
}

/// One directive's value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub value: String,
    pub span: SourceSpan,
}

/// `# check=skip=RULE,...;error=true`, as BuildKit reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDirective {
    pub skip: CheckSkip,
    /// `error=true`: lint findings fail the build.
    pub error: bool,
    pub span: SourceSpan,
}

/// Which lint rules `# check=skip=` turns off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CheckSkip {
    #[default]
    None,
    /// `skip=all`.
    All,
    /// The rules named, as written.
    Rules(Vec<String>),
}

/// One instruction: a logical line (continuations joined), its heredoc
/// bodies, and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// From the keyword to the end of the last line, heredoc bodies included.
    pub span: SourceSpan,
    /// The keyword as written (case kept, for the casing lints).
    pub keyword: Word,
    /// 1-based first and last line.
    pub line: usize,
    pub end_line: usize,
    /// The comment lines just above it, without `#`.
    pub comments: Vec<String>,
    pub kind: Kind,
}

impl Instruction {
    /// The instruction's name in upper case (`RUN`).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

/// What an instruction does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    From(From),
    /// `ARG NAME[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `ENV K=V ...` or the legacy `ENV K V`.
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Maintainer(Word),
    Workdir(Word),
    User(Word),
    /// The port words as written (expanded and split later).
    Expose(Vec<Word>),
    /// The paths, from a JSON array or whitespace-separated words.
    Volume {
        paths: Vec<Word>,
        json: bool,
    },
    StopSignal(Word),
    /// `SHELL ["exe", "arg"...]` (JSON only).
    Shell(Vec<String>),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Run(Run),
    Copy(Copy),
    Add(Add),
    Healthcheck(Healthcheck),
    /// `ONBUILD INSTRUCTION`: kept to run when the image is used as a base.
    Onbuild(Box<Instruction>),
}

/// Instructions whose words the frontend expands, as BuildKit lists them
/// (`replaceEnvAllowed` plus ARG and the flags it expands). RUN, CMD and
/// ENTRYPOINT are not: their shell does it when they run. MAINTAINER,
/// SHELL and HEALTHCHECK are kept verbatim.
const EXPANDED: [&str; 12] =
    ["ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"];

impl Kind {
    /// The instruction's name in upper case.
    pub fn name(&self) -> &'static str {
        match self {
            Self::From(_) => "FROM",
            Self::Arg(_) => "ARG",
            Self::Env(_) => "ENV",
            Self::Label(_) => "LABEL",
            Self::Maintainer(_) => "MAINTAINER",
            Self::Workdir(_) => "WORKDIR",
            Self::User(_) => "USER",
            Self::Expose(_) => "EXPOSE",
            Self::Volume { .. } => "VOLUME",
            Self::StopSignal(_) => "STOPSIGNAL",
            Self::Shell(_) => "SHELL",
            Self::Cmd(_) => "CMD",
            Self::Entrypoint(_) => "ENTRYPOINT",
            Self::Run(_) => "RUN",
            Self::Copy(_) => "COPY",
            Self::Add(_) => "ADD",
            Self::Healthcheck(_) => "HEALTHCHECK",
            Self::Onbuild(_) => "ONBUILD",
        }
    }

    /// Whether the frontend expands variables in this instruction's words
    /// (the one list: BuildKit's). RUN's `--mount` values are expanded too,
    /// as BuildKit does; its command is not.
    pub fn expands(&self) -> bool {
        EXPANDED.contains(&self.name()) || matches!(self, Self::Run(_))
    }
}

/// `FROM [--platform=P] IMAGE [AS NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The base: an image reference, a stage name or `scratch` (unexpanded).
    pub image: Word,
    pub platform: Option<Word>,
    /// The stage name, lowercased as BuildKit does; its span is the name as written.
    pub name: Option<Word>,
    /// The `AS` keyword as written (for the FromAsCasing lint).
    pub as_keyword: Option<Word>,
}

/// One `NAME[=default]` of an `ARG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: Word,
    /// The default as written, if `=` was given (possibly empty).
    pub default: Option<Word>,
}

/// One `KEY=VALUE` (or legacy `KEY VALUE`) of `ENV` or `LABEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Word,
    pub value: Word,
    /// Written as `KEY VALUE`, without `=` (the LegacyKeyValueFormat lint).
    pub legacy: bool,
}

/// The command of `RUN`, `CMD`, `ENTRYPOINT` or `HEALTHCHECK CMD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// A JSON array: run as given, no shell.
    Exec { args: Vec<String>, span: SourceSpan },
    /// Anything else: the text after the flags, given to the SHELL
    /// (`/bin/sh -c` by default). Continuations are joined without a space,
    /// as BuildKit joins them. An empty text is `CMD` with no arguments.
    Shell(Word),
}

impl CommandLine {
    /// Whether this is the exec (JSON) form.
    pub fn is_exec(&self) -> bool {
        matches!(self, Self::Exec { .. })
    }
}

/// A heredoc: `<<EOF` on the instruction line, its body on the lines after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter, quotes removed (`EOF`).
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 when none.
    pub fd: u32,
    /// False when the delimiter was quoted (`<<"EOF"`, `<<'EOF'`): the body
    /// is taken literally. Otherwise a `COPY`/`ADD` body is expanded with
    /// [`Scope::expand_heredoc`](super::Scope::expand_heredoc); a `RUN`
    /// body is left to the shell that runs it.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and the delimiter line.
    pub chomp: bool,
    /// The body as written, each line with its newline, tabs not yet stripped.
    pub content: String,
    /// The `<<EOF` marker on the instruction line.
    pub span: SourceSpan,
    /// The body and the closing delimiter line.
    pub body_span: SourceSpan,
}

impl Heredoc {
    /// The body with `<<-`'s leading tabs stripped.
    pub fn text(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        let mut out = String::with_capacity(self.content.len());
        for line in self.content.split_inclusive('\n') {
            out.push_str(line.trim_start_matches('\t'));
        }
        out
    }
}

/// `RUN [--mount=...]... [--network=...] [--security=...] COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub mounts: Vec<MountFlag>,
    pub network: Option<(Network, SourceSpan)>,
    pub security: Option<(Security, SourceSpan)>,
    pub command: CommandLine,
    pub heredocs: Vec<Heredoc>,
}

impl Run {
    /// The script a shell-form RUN gives its SHELL, heredocs included: a
    /// RUN that is only `<<EOF` runs the heredoc's body as the script;
    /// otherwise the shell reads the heredocs itself, so their bodies and
    /// closing words follow the command line. `None` for the exec form.
    pub fn shell_script(&self) -> Option<String> {
        let CommandLine::Shell(w) = &self.command else {
            return None;
        };
        let text = w.text.trim();
        let bare = self.heredocs.len() == 1
            && text.trim_start_matches(|c: char| c.is_ascii_digit()).starts_with("<<")
            && !text.contains(char::is_whitespace);
        if bare {
            return Some(self.heredocs[0].text());
        }
        let mut script = w.text.clone();
        for h in &self.heredocs {
            script.push('\n');
            script.push_str(&h.text());
            script.push_str(&h.name);
        }
        Some(script)
    }
}

/// `--network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Default,
    None,
    Host,
}

/// `--security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Sandbox,
    Insecure,
}

/// One `--mount=` as written: its comma-separated fields, and the mount
/// they make when no value needs expanding. BuildKit expands each value
/// (not the keys) with the stage's variables before reading it, so a mount
/// with a `$` is read by [`MountFlag::resolve`] once a scope is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFlag {
    /// `type=cache,target=/x` (after `--mount=`).
    pub raw: Word,
    /// The fields: key (lowercased) and value, if the field had `=`.
    pub fields: Vec<(String, Option<String>)>,
    /// The mount, read now when no value holds a `$`.
    pub mount: Option<Mount>,
}

/// A `RUN --mount`, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountType,
    /// `from=`: a stage name or index, or an image.
    pub from: Option<String>,
    /// `source=` / `src=`.
    pub source: Option<String>,
    /// `target=` / `dst=` / `destination=`.
    pub target: Option<String>,
    /// Read-only: given by `ro`/`readonly`/`rw`/`readwrite`, else the
    /// type's default (bind, secret, ssh: read-only; cache, tmpfs: writable).
    pub readonly: bool,
    /// `id=`: the cache id, or the secret's or ssh agent's id.
    pub id: Option<String>,
    /// `sharing=` (cache only).
    pub sharing: Option<Sharing>,
    /// `required` (secret and ssh only).
    pub required: bool,
    /// `env=` (secret: expose it as this variable).
    pub env: Option<String>,
    /// `size=` (tmpfs only), in bytes.
    pub size: Option<i64>,
    /// `mode=` (octal), `uid=`, `gid=` (cache, secret, ssh).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// `type=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A source of `COPY` or `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(Word),
    /// `<<EOF`: a file made from the heredoc's body, named after it.
    Heredoc(Heredoc),
}

/// `COPY [flags] SRC... DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// `--from=`: a stage name, a stage index or an image.
    pub from: Option<Word>,
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<Word>,
    pub sources: Vec<Source>,
    pub dest: Word,
    /// Written as a JSON array.
    pub json: bool,
}

/// `ADD [flags] SRC... DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub link: bool,
    /// `--keep-git-dir`, when given.
    pub keep_git_dir: Option<bool>,
    pub checksum: Option<Word>,
    /// `--unpack`, when given.
    pub unpack: Option<bool>,
    pub excludes: Vec<Word>,
    pub sources: Vec<Source>,
    pub dest: Word,
    pub json: bool,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [flags] CMD ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    None,
    Cmd(HealthcheckCmd),
}

/// `HEALTHCHECK CMD` and its flags (durations of 0 or absent: Docker's
/// defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckCmd {
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
    /// Exec form becomes `["CMD", ...]` in the image, shell form
    /// `["CMD-SHELL", text]`.
    pub command: CommandLine,
}

// ---------------------------------------------------------------------------
// Building instructions from logical lines.

use super::error::{DockerfileError, ErrorKind};
use super::parse::{Ctx, Logical, RawFlag, builder_flags as flags_of, heredoc_of};
use crate::lang::did_you_mean;

/// Every instruction BuildKit knows, as written in upper case.
pub const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The whitespace BuildKit splits on (`[\t\v\f\r ]`).
fn split_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

/// A JSON array of strings (`Ok(Some)`), not a JSON array (`Ok(None)`: shell
/// form), or a JSON array holding something else (`Err`), as BuildKit's
/// `parseJSON` decides.
pub(super) fn parse_json(text: &str) -> Result<Option<Vec<String>>, ()> {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(text) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| if let serde_json::Value::String(s) = v { Ok(s) } else { Err(()) })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The arguments of one instruction: the joined line, and where they are.
struct Args<'a> {
    ctx: &'a Ctx<'a>,
    line: &'a Logical,
    /// The instruction's name, upper case.
    name: &'static str,
    keyword: Word,
    start: usize,
    end: usize,
    flags: Vec<RawFlag>,
    heredocs: Vec<Heredoc>,
}

impl Args<'_> {
    fn text(&self) -> &str {
        &self.line.text[self.start..self.end]
    }

    fn span(&self) -> SourceSpan {
        if self.start < self.end { self.line.span(self.start, self.end) } else { self.keyword.span }
    }

    fn whole(&self) -> Word {
        self.line.word(self.text(), self.start, self.end)
    }

    fn error(&self, kind: ErrorKind, message: impl Into<String>) -> DockerfileError {
        self.ctx.error(kind, self.span(), message)
    }

    fn at_least_one(&self) -> DockerfileError {
        self.error(ErrorKind::Arguments, format!("{} requires at least one argument", self.name))
    }

    fn exactly_one(&self) -> DockerfileError {
        self.error(ErrorKind::Arguments, format!("{} requires exactly one argument", self.name))
    }

    /// Words split at whitespace, nothing else (BuildKit's
    /// `parseStringsWhitespaceDelimited`).
    fn split_words(&self) -> Vec<Word> {
        let mut out = Vec::new();
        let text = self.text();
        let mut start = None;
        for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
            match (start, split_space(c)) {
                (None, false) => start = Some(i),
                (Some(s), true) => {
                    out.push(self.line.word(&text[s..i], self.start + s, self.start + i));
                    start = None;
                }
                _ => {}
            }
        }
        out
    }

    /// Words split at unquoted whitespace, quotes and escapes kept (BuildKit's
    /// `parseWords`).
    fn shell_words(&self) -> Vec<Word> {
        let escape = self.ctx.escape;
        let text = self.text();
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut out = Vec::new();
        let mut word = String::new();
        let mut word_start = 0;
        let mut in_word = false;
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        let mut i = 0;
        let at = |i: usize| chars.get(i).map_or(text.len(), |&(a, _)| a);
        while i < chars.len() {
            let c = chars[i].1;
            if !in_word {
                if c.is_whitespace() {
                    i += 1;
                    continue;
                }
                in_word = true;
                word_start = at(i);
            }
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
                if c == escape && q != '\'' {
                    if i + 1 == chars.len() {
                        quote = None;
                        i += 1;
                        continue;
                    }
                    word.push(c);
                    i += 1;
                    word.push(chars[i].1);
                    i += 1;
                    continue;
                }
                word.push(c);
                i += 1;
                continue;
            }
            if c.is_whitespace() {
                if blank_ok || !word.is_empty() {
                    out.push(self.line.word(std::mem::take(&mut word), self.start + word_start, self.start + at(i)));
                }
                in_word = false;
                blank_ok = false;
                i += 1;
                continue;
            }
            if c == '\'' || c == '"' {
                quote = Some(c);
                blank_ok = true;
            }
            if c == escape {
                if i + 1 == chars.len() {
                    i += 1;
                    continue;
                }
                word.push(c);
                i += 1;
                word.push(chars[i].1);
                i += 1;
                continue;
            }
            word.push(c);
            i += 1;
        }
        if in_word && (blank_ok || !word.is_empty()) {
            out.push(self.line.word(word, self.start + word_start, self.end));
        }
        out
    }

    /// `KEY=VALUE ...` or the legacy `KEY VALUE` (BuildKit's `parseNameVal`).
    fn key_values(&self) -> Result<Vec<KeyValue>, DockerfileError> {
        let words = self.shell_words();
        let Some(first) = words.first() else {
            return Err(self.at_least_one());
        };
        if !first.text.contains('=') {
            let text = self.text();
            let Some(split) = text.find(split_space) else {
                return Err(self.error(ErrorKind::Arguments, format!("{} must have two arguments", self.name)));
            };
            let value_at = text[split..].find(|c| !split_space(c)).map_or(text.len(), |i| split + i);
            let key = self.line.word(&text[..split], self.start, self.start + split);
            let value = self.line.word(&text[value_at..], self.start + value_at, self.end);
            return Ok(vec![KeyValue { key, value, legacy: true }]);
        }
        let mut out = Vec::new();
        for word in words {
            let Some((key, value)) = word.text.split_once('=') else {
                return Err(self.ctx.error(
                    ErrorKind::Arguments,
                    word.span,
                    format!("Syntax error - can't find = in {:?}. Must be of the form: name=value", word.text),
                ));
            };
            if key.is_empty() {
                return Err(self.ctx.error(
                    ErrorKind::Arguments,
                    word.span,
                    format!("{} names can not be blank", self.name),
                ));
            }
            let offset = word.span.offset();
            let key_span = SourceSpan::from(offset..offset + key.len());
            let value_span = SourceSpan::from(offset + key.len() + 1..offset + word.span.len());
            out.push(KeyValue { key: Word::new(key, key_span), value: Word::new(value, value_span), legacy: false });
        }
        Ok(out)
    }

    /// `[...]` or shell form (BuildKit's `parseMaybeJSON`).
    fn command(&self) -> Result<CommandLine, DockerfileError> {
        match parse_json(self.text()) {
            Ok(Some(args)) => Ok(CommandLine::Exec { args, span: self.span() }),
            Ok(None) => Ok(CommandLine::Shell(self.whole())),
            Err(()) => Err(self.not_strings()),
        }
    }

    /// A JSON array of strings, or whitespace-separated words (BuildKit's
    /// `parseMaybeJSONToList`).
    fn list(&self) -> Result<(Vec<Word>, bool), DockerfileError> {
        match parse_json(self.text()) {
            Ok(Some(args)) => Ok((args.into_iter().map(|a| Word::new(a, self.span())).collect(), true)),
            Ok(None) => Ok((self.split_words(), false)),
            Err(()) => Err(self.not_strings()),
        }
    }

    fn not_strings(&self) -> DockerfileError {
        self.error(ErrorKind::Json, "when using JSON array syntax, arrays must be comprised of strings only")
    }

    /// Checks the flags against what this instruction takes.
    fn flags(&mut self, spec: &[(&'static str, FlagType)]) -> Result<Flags, DockerfileError> {
        let mut out = Flags::default();
        for flag in std::mem::take(&mut self.flags) {
            let Some(&(name, kind)) = spec.iter().find(|(n, _)| *n == flag.name) else {
                let names: Vec<&str> = spec.iter().map(|(n, _)| *n).collect();
                let help = match did_you_mean(&flag.name, names.iter().copied()) {
                    Some(close) => Some(format!("did you mean `--{close}`?")),
                    None if names.is_empty() => Some(format!("{} takes no flags", self.name)),
                    None => Some(format!(
                        "{} takes {}",
                        self.name,
                        names.iter().map(|n| format!("--{n}")).collect::<Vec<_>>().join(", ")
                    )),
                };
                return Err(self.ctx.error_labelled(
                    ErrorKind::UnknownFlag,
                    flag.span,
                    format!("unknown flag: --{}", flag.name),
                    format!("{} has no flag --{}", self.name, flag.name),
                    help,
                ));
            };
            if kind != FlagType::Strings && out.values.iter().any(|(n, _, _)| *n == name) {
                return Err(self.ctx.error(ErrorKind::Flag, flag.span, format!("duplicate flag specified: --{name}")));
            }
            let value = match (kind, flag.value) {
                (FlagType::Bool, None) => "true".to_owned(),
                (FlagType::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => "true".to_owned(),
                    "false" => "false".to_owned(),
                    "" => {
                        return Err(self.ctx.error(
                            ErrorKind::Flag,
                            flag.span,
                            format!("missing a value on flag: --{name}"),
                        ));
                    }
                    _ => {
                        return Err(self.ctx.error(
                            ErrorKind::Flag,
                            flag.span,
                            format!("expecting boolean value for flag --{name}, not: {v}"),
                        ));
                    }
                },
                (_, None) => {
                    return Err(self.ctx.error(
                        ErrorKind::Flag,
                        flag.span,
                        format!("missing a value on flag: --{name}"),
                    ));
                }
                (_, Some(v)) => v,
            };
            out.values.push((name, value, flag.span));
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagType {
    Bool,
    String,
    Strings,
}

/// The flags an instruction was given, checked.
#[derive(Default)]
struct Flags {
    values: Vec<(&'static str, String, SourceSpan)>,
}

impl Flags {
    fn word(&self, name: &str) -> Option<Word> {
        self.values.iter().find(|(n, _, _)| *n == name).map(|(_, v, s)| Word::new(v.clone(), *s))
    }

    fn words(&self, name: &str) -> Vec<Word> {
        self.values.iter().filter(|(n, _, _)| *n == name).map(|(_, v, s)| Word::new(v.clone(), *s)).collect()
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.values.iter().find(|(n, _, _)| *n == name).map(|(_, v, _)| v == "true")
    }
}

/// `^[a-z][a-z0-9-_.]*$`, BuildKit's rule for stage names (lowercased first).
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Builds the instruction that starts at `start` in `line` (after any
/// leading whitespace): its keyword as written and what it means.
pub(super) fn build(
    ctx: &Ctx<'_>,
    line: &Logical,
    start: usize,
    heredocs: Vec<Heredoc>,
) -> Result<(Word, Kind), DockerfileError> {
    let text = &line.text;
    let trimmed_end = text.trim_end_matches(char::is_whitespace).len().max(start);
    let cmd_start = text[start..].find(|c: char| !c.is_whitespace()).map_or(trimmed_end, |i| start + i);
    let cmd_end = text[cmd_start..trimmed_end].find(split_space).map_or(trimmed_end, |i| cmd_start + i);
    let keyword = line.word(&text[cmd_start..cmd_end], cmd_start, cmd_end);
    let rest_start = text[cmd_end..trimmed_end].find(|c| !split_space(c)).map_or(trimmed_end, |i| cmd_end + i);
    let (flags, args_start) =
        if rest_start < trimmed_end { flags_of(line, rest_start, ctx.escape) } else { (Vec::new(), trimmed_end) };
    let args_start = args_start.min(trimmed_end);
    let args_start =
        text[args_start..trimmed_end].find(|c: char| !c.is_whitespace()).map_or(trimmed_end, |i| args_start + i);
    let upper = keyword.text.to_ascii_uppercase();
    let Some(&name) = INSTRUCTIONS.iter().find(|n| **n == upper) else {
        let help = did_you_mean(&upper, INSTRUCTIONS.iter().copied()).map(|c| format!("did you mean `{c}`?"));
        let shown = if keyword.text.is_empty() { "(empty)".to_owned() } else { crate::lang::quoted(&keyword.text) };
        return Err(ctx.error_labelled(
            ErrorKind::UnknownInstruction,
            keyword.span,
            format!("unknown instruction: {shown}"),
            "not a Dockerfile instruction",
            help.or_else(|| Some(format!("instructions: {}", INSTRUCTIONS.join(", ")))),
        ));
    };
    let mut args =
        Args { ctx, line, name, keyword: keyword.clone(), start: args_start, end: trimmed_end, flags, heredocs };
    let kind = match name {
        "FROM" => from(&mut args)?,
        "ARG" => {
            args.flags(&[])?;
            let mut decls = Vec::new();
            for word in args.shell_words() {
                let decl = match word.text.split_once('=') {
                    Some(("", _)) => {
                        return Err(ctx.error(ErrorKind::Arguments, word.span, "ARG names can not be blank"));
                    }
                    Some((k, v)) => {
                        let o = word.span.offset();
                        ArgDecl {
                            name: Word::new(k, SourceSpan::from(o..o + k.len())),
                            default: Some(Word::new(v, SourceSpan::from(o + k.len() + 1..o + word.span.len()))),
                        }
                    }
                    None => ArgDecl { name: word, default: None },
                };
                decls.push(decl);
            }
            if decls.is_empty() {
                return Err(args.at_least_one());
            }
            Kind::Arg(decls)
        }
        "ENV" => {
            args.flags(&[])?;
            Kind::Env(args.key_values()?)
        }
        "LABEL" => {
            args.flags(&[])?;
            Kind::Label(args.key_values()?)
        }
        "MAINTAINER" | "WORKDIR" | "USER" | "STOPSIGNAL" => {
            args.flags(&[])?;
            if args.text().is_empty() {
                return Err(args.exactly_one());
            }
            let word = args.whole();
            match name {
                "MAINTAINER" => Kind::Maintainer(word),
                "WORKDIR" => Kind::Workdir(word),
                "USER" => Kind::User(word),
                _ => Kind::StopSignal(word),
            }
        }
        "EXPOSE" => {
            args.flags(&[])?;
            let ports = args.split_words();
            if ports.is_empty() {
                return Err(args.at_least_one());
            }
            Kind::Expose(ports)
        }
        "VOLUME" => {
            args.flags(&[])?;
            let (paths, json) = args.list()?;
            if paths.is_empty() {
                return Err(args.at_least_one());
            }
            let mut out = Vec::new();
            for p in paths {
                let trimmed = p.text.trim();
                if trimmed.is_empty() {
                    return Err(ctx.error(ErrorKind::Arguments, p.span, "VOLUME specified can not be an empty string"));
                }
                out.push(Word::new(trimmed, p.span));
            }
            Kind::Volume { paths: out, json }
        }
        "SHELL" => {
            args.flags(&[])?;
            match args.command()? {
                CommandLine::Exec { args: a, .. } if !a.is_empty() => Kind::Shell(a),
                CommandLine::Exec { .. } => return Err(args.at_least_one()),
                CommandLine::Shell(w) if w.text.is_empty() => return Err(args.at_least_one()),
                CommandLine::Shell(_) => {
                    return Err(ctx.error_labelled(
                        ErrorKind::Json,
                        args.span(),
                        "SHELL requires the arguments to be in JSON form",
                        "not a JSON array of strings",
                        Some(format!(
                            "write it as SHELL [\"{}\"]",
                            args.split_words().iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join("\", \"")
                        )),
                    ));
                }
            }
        }
        "CMD" | "ENTRYPOINT" => {
            args.flags(&[])?;
            let command = args.command()?;
            if name == "CMD" { Kind::Cmd(command) } else { Kind::Entrypoint(command) }
        }
        "RUN" => run(&mut args)?,
        "COPY" | "ADD" => copy_or_add(&mut args)?,
        "HEALTHCHECK" => healthcheck(&mut args)?,
        _ => onbuild(&mut args)?,
    };
    Ok((keyword, kind))
}

fn from(args: &mut Args<'_>) -> Result<Kind, DockerfileError> {
    let words = args.split_words();
    let (name, as_keyword) = match words.as_slice() {
        [_] => (None, None),
        [_, as_kw, name] if as_kw.text.eq_ignore_ascii_case("as") => {
            let lower = name.text.to_ascii_lowercase();
            if !valid_stage_name(&lower) {
                return Err(args.ctx.error_labelled(
                    ErrorKind::StageName,
                    name.span,
                    format!(
                        "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                        name.text
                    ),
                    "not a valid stage name",
                    Some("a stage name starts with a letter and holds letters, digits, `-`, `_` and `.`".to_owned()),
                ));
            }
            (Some(Word::new(lower, name.span)), Some(as_kw.clone()))
        }
        _ => return Err(args.error(ErrorKind::Arguments, "FROM requires either one or three arguments")),
    };
    let flags = args.flags(&[("platform", FlagType::String)])?;
    let image = words
        .into_iter()
        .next()
        .ok_or_else(|| args.error(ErrorKind::Arguments, "FROM requires either one or three arguments"))?;
    Ok(Kind::From(From { image, platform: flags.word("platform"), name, as_keyword }))
}

fn run(args: &mut Args<'_>) -> Result<Kind, DockerfileError> {
    let flags =
        args.flags(&[("mount", FlagType::Strings), ("network", FlagType::String), ("security", FlagType::String)])?;
    let mut mounts = Vec::new();
    for word in flags.words("mount") {
        mounts.push(mount_flag(args.ctx, word)?);
    }
    let network = match flags.word("network") {
        None => None,
        Some(w) => Some((
            match w.text.as_str() {
                "default" => Network::Default,
                "none" => Network::None,
                "host" => Network::Host,
                other => {
                    return Err(args.ctx.error_labelled(
                        ErrorKind::Flag,
                        w.span,
                        format!("invalid network mode {other:?}"),
                        "not default, none or host",
                        did_you_mean(other, ["default", "none", "host"]).map(|c| format!("did you mean `{c}`?")),
                    ));
                }
            },
            w.span,
        )),
    };
    let security = match flags.word("security") {
        None => None,
        Some(w) => Some((
            match w.text.as_str() {
                "sandbox" => Security::Sandbox,
                "insecure" => Security::Insecure,
                other => {
                    return Err(args.ctx.error_labelled(
                        ErrorKind::Flag,
                        w.span,
                        format!("security {other:?} is not valid"),
                        "not sandbox or insecure",
                        None,
                    ));
                }
            },
            w.span,
        )),
    };
    let command = args.command()?;
    Ok(Kind::Run(Run { mounts, network, security, command, heredocs: std::mem::take(&mut args.heredocs) }))
}

fn copy_or_add(args: &mut Args<'_>) -> Result<Kind, DockerfileError> {
    let is_copy = args.name == "COPY";
    let (words, json) = args.list()?;
    if words.len() < 2 {
        return Err(args.error(
            ErrorKind::Arguments,
            format!(
                "{} requires at least two arguments, but only one was provided. Destination could not be determined",
                args.name
            ),
        ));
    }
    let flags = if is_copy {
        args.flags(&[
            ("chown", FlagType::String),
            ("from", FlagType::String),
            ("chmod", FlagType::String),
            ("link", FlagType::Bool),
            ("exclude", FlagType::Strings),
            ("parents", FlagType::Bool),
        ])?
    } else {
        args.flags(&[
            ("chown", FlagType::String),
            ("chmod", FlagType::String),
            ("link", FlagType::Bool),
            ("keep-git-dir", FlagType::Bool),
            ("checksum", FlagType::String),
            ("unpack", FlagType::Bool),
            ("exclude", FlagType::Strings),
        ])?
    };
    let mut words = words;
    let dest = words.pop().ok_or_else(|| args.at_least_one())?;
    // BuildKit reads markers in the JSON form too (no body follows them there).
    if heredoc_of(&dest.text).is_some() {
        return Err(args.ctx.error(
            ErrorKind::Heredoc,
            dest.span,
            format!("{} cannot accept a heredoc as a destination", args.name),
        ));
    }
    let mut sources = Vec::new();
    for word in words {
        let doc = heredoc_of(&word.text);
        match doc {
            Some((_, chomp, name, expand)) => {
                let found = args.heredocs.iter().rev().find(|h| h.name == name).cloned();
                let mut doc = found.unwrap_or(Heredoc {
                    name: name.clone(),
                    fd: 0,
                    expand,
                    chomp,
                    content: String::new(),
                    span: word.span,
                    body_span: word.span,
                });
                doc.chomp = chomp;
                doc.expand = expand;
                sources.push(Source::Heredoc(doc));
            }
            None => sources.push(Source::Path(word)),
        }
    }
    Ok(if is_copy {
        Kind::Copy(Copy {
            from: flags.word("from"),
            chown: flags.word("chown"),
            chmod: flags.word("chmod"),
            link: flags.bool("link").unwrap_or(false),
            parents: flags.bool("parents").unwrap_or(false),
            excludes: flags.words("exclude"),
            sources,
            dest,
            json,
        })
    } else {
        Kind::Add(Add {
            chown: flags.word("chown"),
            chmod: flags.word("chmod"),
            link: flags.bool("link").unwrap_or(false),
            keep_git_dir: flags.bool("keep-git-dir"),
            checksum: flags.word("checksum"),
            unpack: flags.bool("unpack"),
            excludes: flags.words("exclude"),
            sources,
            dest,
            json,
        })
    })
}

fn healthcheck(args: &mut Args<'_>) -> Result<Kind, DockerfileError> {
    let text = args.text();
    let typ_len = text.find(char::is_whitespace).unwrap_or(text.len());
    if typ_len == 0 {
        return Err(args.at_least_one());
    }
    let typ = text[..typ_len].to_ascii_uppercase();
    let rest_at = text[typ_len..].find(|c: char| !c.is_whitespace()).map_or(text.len(), |i| typ_len + i);
    let type_span = args.line.span(args.start, args.start + typ_len);
    if typ == "NONE" {
        if rest_at < text.len() {
            return Err(args.error(ErrorKind::Arguments, "HEALTHCHECK NONE takes no arguments"));
        }
        // BuildKit reads no flags for NONE: they are ignored.
        return Ok(Kind::Healthcheck(Healthcheck::None));
    }
    let flags = args.flags(&[
        ("interval", FlagType::String),
        ("timeout", FlagType::String),
        ("start-period", FlagType::String),
        ("start-interval", FlagType::String),
        ("retries", FlagType::String),
    ])?;
    if typ != "CMD" {
        return Err(args.ctx.error_labelled(
            ErrorKind::Arguments,
            type_span,
            format!("Unknown type {typ:?} in HEALTHCHECK (try CMD)"),
            "not CMD or NONE",
            None,
        ));
    }
    args.start += rest_at;
    let command = args.command()?;
    let empty = match &command {
        CommandLine::Exec { args, .. } => args.is_empty(),
        CommandLine::Shell(w) => w.text.is_empty(),
    };
    if empty {
        return Err(args.error(ErrorKind::Arguments, "Missing command after HEALTHCHECK CMD"));
    }
    let duration = |name: &str| -> Result<Option<Duration>, DockerfileError> {
        let Some(w) = flags.word(name) else { return Ok(None) };
        if w.text.is_empty() {
            return Ok(None);
        }
        let d = go_duration(&w.text)
            .map_err(|e| args.ctx.error(ErrorKind::Flag, w.span, format!("time: {e} {:?}", w.text)))?;
        match d {
            Some(d) if d.is_zero() => Ok(None),
            Some(d) if d >= Duration::from_millis(1) => Ok(Some(d)),
            _ => Err(args.ctx.error(ErrorKind::Flag, w.span, format!("Interval {name:?} cannot be less than 1ms"))),
        }
    };
    let retries = match flags.word("retries") {
        Some(w) if !w.text.is_empty() => {
            let n: i64 =
                w.text.parse().ok().filter(|n| i32::try_from(*n).is_ok()).ok_or_else(|| {
                    args.ctx.error(ErrorKind::Flag, w.span, format!("invalid --retries {:?}", w.text))
                })?;
            let n = u32::try_from(n)
                .map_err(|_| args.ctx.error(ErrorKind::Flag, w.span, format!("--retries cannot be negative ({n})")))?;
            Some(n)
        }
        _ => None,
    };
    Ok(Kind::Healthcheck(Healthcheck::Cmd(HealthcheckCmd {
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
        command,
    })))
}

fn onbuild(args: &mut Args<'_>) -> Result<Kind, DockerfileError> {
    args.flags(&[])?;
    if args.text().is_empty() {
        return Err(args.at_least_one());
    }
    let trigger = args.text().split(split_space).next().unwrap_or_default().to_ascii_uppercase();
    let trigger_span = args.line.span(args.start, args.start + trigger.len());
    match trigger.as_str() {
        "ONBUILD" => {
            return Err(args.ctx.error(
                ErrorKind::Onbuild,
                trigger_span,
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            ));
        }
        "MAINTAINER" | "FROM" => {
            return Err(args.ctx.error(
                ErrorKind::Onbuild,
                trigger_span,
                format!("{trigger} isn't allowed as an ONBUILD trigger"),
            ));
        }
        _ => {}
    }
    let (keyword, kind) = build(args.ctx, args.line, args.start, std::mem::take(&mut args.heredocs))?;
    let span = args.span();
    let line = args.ctx.lines.line(span.offset());
    Ok(Kind::Onbuild(Box::new(Instruction { span, keyword, line, end_line: line, comments: Vec::new(), kind })))
}

/// Go's `time.ParseDuration`: `300ms`, `1.5h`, `2h45m`; `None` for a
/// negative duration.
pub(super) fn go_duration(text: &str) -> Result<Option<Duration>, String> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Some(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err("invalid duration".into());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." {
            return Err("invalid duration".into());
        }
        let value: f64 = number.parse().map_err(|_| "invalid duration".to_owned())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err("missing unit in duration".into()),
            _ => return Err("unknown unit in duration".into()),
        };
        rest = &rest[unit_len..];
        total += value * nanos;
        if total > 9.2e18 {
            return Err("invalid duration".into());
        }
    }
    if negative && total > 0.0 {
        return Ok(None);
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Some(Duration::from_nanos(total as u64)))
}

// ---------------------------------------------------------------------------
// RUN --mount.

/// Every key a mount takes.
const MOUNT_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// Splits a `--mount` value into CSV fields (double quotes, `""` inside).
fn csv_fields(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("extraneous or missing \" in quoted-field".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(_) => return Err("extraneous or missing \" in quoted-field".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("bare \" in non-quoted-field".into()),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

fn mount_flag(ctx: &Ctx<'_>, raw: Word) -> Result<MountFlag, DockerfileError> {
    let fields = csv_fields(&raw.text)
        .map_err(|e| ctx.error(ErrorKind::Mount, raw.span, format!("failed to parse csv mounts: {e}")))?;
    let mut out = Vec::new();
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_owned())),
            None => (field.to_ascii_lowercase(), None),
        };
        if !MOUNT_KEYS.contains(&key.as_str()) {
            let message = if value.is_none() && !key.is_empty() {
                format!("invalid field '{field}' must be a key=value pair")
            } else {
                format!("unexpected key '{key}' in '{field}'")
            };
            return Err(ctx.error_labelled(
                ErrorKind::Mount,
                raw.span,
                message,
                "in this mount",
                did_you_mean(&key, MOUNT_KEYS).map(|c| format!("did you mean `{c}`?")),
            ));
        }
        if key == "from"
            && let Some(v) = &value
            && v.find('$').is_some_and(|i| i != v.len() - 1)
        {
            return Err(ctx.error(
                ErrorKind::Mount,
                raw.span,
                "'from' doesn't support variable expansion, define alias stage instead",
            ));
        }
        out.push((key, value));
    }
    let mount = if raw.text.contains('$') {
        None
    } else {
        Some(Mount::read(&out, &|v| Ok(v.to_owned())).map_err(|e| ctx.error(ErrorKind::Mount, raw.span, e))?)
    };
    Ok(MountFlag { raw, fields: out, mount })
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// docker's `units.RAMInBytes`: `64m`, `1g`, `512k`, `100` (bytes), `1.5GiB`.
fn ram_in_bytes(v: &str) -> Option<i64> {
    let num_len = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let number: f64 = v[..num_len].parse().ok()?;
    let unit = v[num_len..].trim().to_ascii_lowercase();
    let unit = unit.strip_suffix("ib").or_else(|| unit.strip_suffix('b')).unwrap_or(&unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return None,
    };
    #[allow(clippy::cast_possible_truncation)]
    let bytes = (number * mult) as i64;
    Some(bytes)
}

impl Mount {
    /// Reads a mount from its fields, each value passed through `expand`
    /// first (BuildKit's `parseMount`).
    pub fn read(
        fields: &[(String, Option<String>)],
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Self, String> {
        let mut m = Mount {
            kind: MountType::Bind,
            from: None,
            source: None,
            target: None,
            readonly: false,
            id: None,
            sharing: None,
            required: false,
            env: None,
            size: None,
            mode: None,
            uid: None,
            gid: None,
        };
        let mut ro_auto = true;
        let secret_or_ssh = |m: &Mount| matches!(m.kind, MountType::Secret | MountType::Ssh);
        let kind_name = |m: &Mount| format!("{:?}", m.kind).to_ascii_lowercase();
        for (key, value) in fields {
            let Some(value) = value else {
                match key.as_str() {
                    "readonly" | "ro" => {
                        m.readonly = true;
                        ro_auto = false;
                    }
                    "readwrite" | "rw" => {
                        m.readonly = false;
                        ro_auto = false;
                    }
                    "required" if secret_or_ssh(&m) => m.required = true,
                    "required" => return Err(format!("unexpected key '{key}' for mount type '{}'", kind_name(&m))),
                    _ => return Err(format!("invalid field '{key}' must be a key=value pair")),
                }
                continue;
            };
            let value = expand(value)?;
            let bad = || format!("invalid value for {key}: {value}");
            match key.as_str() {
                "type" => {
                    m.kind = match value.to_ascii_lowercase().as_str() {
                        "bind" => MountType::Bind,
                        "cache" => MountType::Cache,
                        "tmpfs" => MountType::Tmpfs,
                        "secret" => MountType::Secret,
                        "ssh" => MountType::Ssh,
                        other => {
                            let close = did_you_mean(other, ["bind", "cache", "tmpfs", "secret", "ssh"]);
                            let hint = close.map(|c| format!(" (did you mean {c}?)")).unwrap_or_default();
                            return Err(format!("unsupported mount type {value:?}{hint}"));
                        }
                    };
                }
                "from" => m.from = Some(value),
                "source" | "src" => m.source = Some(value),
                "target" | "dst" | "destination" => m.target = Some(value),
                "readonly" | "ro" => {
                    m.readonly = go_bool(&value).ok_or_else(bad)?;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = !go_bool(&value).ok_or_else(bad)?;
                    ro_auto = false;
                }
                "required" if secret_or_ssh(&m) => m.required = go_bool(&value).ok_or_else(bad)?,
                "size" if m.kind == MountType::Tmpfs => m.size = Some(ram_in_bytes(&value).ok_or_else(bad)?),
                "required" | "size" => {
                    return Err(format!("unexpected key '{key}' for mount type '{}'", kind_name(&m)));
                }
                "id" => m.id = Some(value),
                "sharing" => {
                    m.sharing = Some(match value.to_ascii_lowercase().as_str() {
                        "shared" => Sharing::Shared,
                        "private" => Sharing::Private,
                        "locked" => Sharing::Locked,
                        _ => return Err(format!("unsupported sharing value {value:?}")),
                    });
                }
                "mode" => {
                    m.mode =
                        Some(u32::from_str_radix(&value, 8).map_err(|_| format!("invalid value {value} for mode"))?);
                }
                "uid" => m.uid = Some(value.parse().map_err(|_| format!("invalid value {value} for uid"))?),
                "gid" => m.gid = Some(value.parse().map_err(|_| format!("invalid value {value} for gid"))?),
                "env" => m.env = Some(value),
                _ => return Err(format!("unexpected key '{key}'")),
            }
        }
        let file_info = matches!(m.kind, MountType::Secret | MountType::Ssh | MountType::Cache);
        if !file_info {
            for (set, what) in [(m.mode.is_some(), "mode"), (m.uid.is_some(), "uid"), (m.gid.is_some(), "gid")] {
                if set {
                    return Err(format!("{what} not allowed for {:?} type mounts", kind_name(&m)));
                }
            }
        }
        if ro_auto {
            m.readonly = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
        }
        if m.kind == MountType::Secret {
            if m.from.is_some() {
                return Err("secret mount should not have a from".into());
            }
            if m.sharing.is_some() {
                return Err("secret mount should not define sharing".into());
            }
            if m.source.is_none() && m.target.is_none() && m.id.is_none() {
                return Err("invalid secret mount. one of source, target required".into());
            }
            if m.source.is_some() && m.id.is_some() {
                return Err("both source and id can't be set".into());
            }
        }
        if m.sharing.is_some() && m.kind != MountType::Cache {
            return Err(format!("invalid cache sharing set for {} mount", kind_name(&m)));
        }
        Ok(m)
    }
}

impl MountFlag {
    /// The mount with each value expanded in `scope`.
    pub fn resolve(&self, scope: &super::Scope) -> Result<Mount, String> {
        if let Some(m) = &self.mount {
            return Ok(m.clone());
        }
        Mount::read(&self.fields, &|v| scope.expand(v).map(|e| e.value).map_err(|e| e.to_string()))
    }
}
