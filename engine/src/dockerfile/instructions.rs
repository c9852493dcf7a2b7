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
    /// is taken literally.
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
