//! Dockerfiles: BuildKit's Dockerfile grammar read into a typed tree.
//!
//! bake reads a Dockerfile the way BuildKit's Dockerfile frontend (1.x)
//! does, in the same three steps, so that a file Docker accepts means the
//! same thing here:
//!
//! 1. **Lines** (`parse.rs`): parser directives at the top (`syntax`,
//!    `escape`, `check`), comments, line continuations with the escape
//!    character, heredocs (`<<EOF`, `<<-EOF`, quoted delimiters, several per
//!    instruction, in `RUN`, `COPY` and `ADD` only), each instruction's
//!    `--flags`, and the JSON (exec) form decided as BuildKit decides it: a
//!    line that does not parse as a JSON array of strings is shell form.
//! 2. **Instructions** (`instructions.rs`): each logical line becomes a typed
//!    [`Instruction`] with every flag checked, and the file becomes the ARGs
//!    before the first `FROM` and a list of [`Stage`]s. Words stay as written
//!    ([`Word`]): variables are expanded later, because their values depend
//!    on the stage, the build args and the platform.
//! 3. **Expansion** (`shell.rs`, `args.rs`): BuildKit's word expansion
//!    (quotes, escapes, `$V`, `${V:-x}` and the other modifiers), applied by a
//!    [`Scope`] that knows the ARGs and ENVs in force. Which instructions are
//!    expanded at all is [`Kind::expands`], in one place.
//!
//! Every node keeps a byte span into the file, so diagnostics and lints point
//! at the user's line, and the file is bounded (`limits`) so hostile input
//! ends in an error fast. Lowering the tree into bake's graph is not done
//! here: this module only reads.

mod args;
pub mod dump;
mod error;
pub mod import;
mod instructions;
mod limits;
pub mod lint;
mod parse;
mod shell;

use std::sync::Arc;

use miette::SourceSpan;

pub use args::{PREDEFINED_ARGS, PROXY_ARGS, Platform, Scope, is_predefined};
pub use error::{DockerfileError, DockerfileErrors, ErrorKind};
pub use instructions::{
    Add, ArgDecl, CheckDirective, CheckSkip, CommandLine, Copy, Directive, Directives, From, Healthcheck,
    HealthcheckCmd, Heredoc, INSTRUCTIONS, Instruction, KeyValue, Kind, Mount, MountFlag, MountType, Network, Run,
    Security, Sharing, Source, Word,
};
pub use limits::{
    MAX_EXPANDED, MAX_EXPANDED_TOTAL, MAX_EXPANSION_DEPTH, MAX_FILE_SIZE, MAX_HEREDOCS, MAX_INSTRUCTIONS, MAX_LINE,
};
pub use shell::{Expanded, ShellError, Words, expand_word, expand_words};

use crate::lang::{SourceFile, Src};

/// The default escape character; `# escape=`` ` makes it a backtick.
pub const DEFAULT_ESCAPE: char = '\\';

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The file as diagnostics show it.
    pub src: Src,
    /// The file's text, which every span points into.
    pub text: Arc<String>,
    /// The parser directives found at the top.
    pub directives: Directives,
    /// The escape character in force (`\` unless `# escape=` said otherwise).
    pub escape: char,
    /// `ARG` instructions before the first `FROM` (each of kind [`Kind::Arg`]):
    /// visible in `FROM` lines, and in a stage only when redeclared there.
    pub global_args: Vec<Instruction>,
    /// The stages, in file order.
    pub stages: Vec<Stage>,
    /// Things Docker accepts but warns about (empty continuation lines).
    pub warnings: Vec<Warning>,
}

/// One `FROM` and the instructions up to the next one.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Position among the stages, from 0 (what `COPY --from=0` names).
    pub index: usize,
    /// The `FROM` instruction itself (of kind [`Kind::From`]).
    pub from_instruction: Instruction,
    /// The instructions after `FROM`, in order.
    pub instructions: Vec<Instruction>,
}

impl Stage {
    /// The `FROM` line's details.
    pub fn from(&self) -> &From {
        match &self.from_instruction.kind {
            Kind::From(from) => from,
            // The parser only builds stages from `FROM` instructions.
            _ => unreachable!("a stage starts with FROM"),
        }
    }

    /// The stage's name (`AS name`, lowercased as BuildKit does), if it has one.
    pub fn name(&self) -> Option<&str> {
        self.from().name.as_ref().map(|w| w.text.as_str())
    }
}

/// Something Docker accepts but warns about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    pub span: SourceSpan,
    /// 1-based line.
    pub line: usize,
}

/// Parses a Dockerfile loaded as a [`SourceFile`] (its name and text).
pub fn parse(file: &SourceFile) -> Result<Dockerfile, DockerfileErrors> {
    parse_str(&file.name, Arc::clone(&file.text))
}

/// Parses Dockerfile text; `name` is what diagnostics call the file.
pub fn parse_str(name: &str, text: Arc<String>) -> Result<Dockerfile, DockerfileErrors> {
    parse::parse(&Src::new(name, Arc::clone(&text)), text)
}

impl Dockerfile {
    /// The file's text.
    pub fn src_text(&self) -> Arc<String> {
        Arc::clone(&self.text)
    }
}

/// 1-based line of a byte offset in `text` (a scan of the text: for many
/// offsets, use a [`Lines`] index).
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Where each line of a text starts, to find the line of many offsets.
#[derive(Debug, Clone)]
pub struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { starts }
    }

    /// 1-based line of a byte offset.
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}
