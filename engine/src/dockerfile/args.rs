//! ARGs, ENVs and the variables a word is expanded with, as BuildKit scopes
//! them.
//!
//! - **Global scope** (the ARGs before the first `FROM`): starts with the
//!   predefined platform args ([`PREDEFINED_ARGS`]); each global ARG takes
//!   its `--build-arg` value, else its default expanded with the args before
//!   it. Only `FROM` lines (image, `--platform`) see this scope.
//! - **Stage scope**: starts from the base image's environment (the caller
//!   supplies it). `ARG NAME` brings a variable in: its `--build-arg` value,
//!   else its default expanded in the stage, else the global ARG of that
//!   name (this is how a global ARG or `TARGETARCH` reaches a stage). `ENV`
//!   sets a variable. Both become variables of the stage's steps, the later
//!   one winning, as BuildKit adds both to the step's environment.
//! - **Proxy args** ([`PROXY_ARGS`]) may be given as build args without an
//!   `ARG`: they reach `RUN` steps' environment (not the image, not the cache
//!   key), and are not visible to expansion unless declared.
//!
//! These are pure functions over values: the lowering decides what a
//! stage's base environment is and calls them in instruction order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::instructions::{ArgDecl, Word};
use super::limits::{MAX_EXPANDED, MAX_EXPANDED_TOTAL};
use super::shell::{Expanded, Lexer, ShellError};

/// The args BuildKit defines without an `ARG` in the global scope (a stage
/// must still declare them, without a default, to see them).
pub const PREDEFINED_ARGS: [&str; 11] = [
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDOSVERSION",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETOSVERSION",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
];

/// Build args accepted without an `ARG` (in either case, as BuildKit
/// compares them).
pub const PROXY_ARGS: [&str; 5] = ["HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"];

/// Whether `name` is predefined ([`PREDEFINED_ARGS`]) or a proxy arg.
pub fn is_predefined(name: &str) -> bool {
    PREDEFINED_ARGS.contains(&name) || PROXY_ARGS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// An OS/architecture/variant triple (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`, bake's default.
    pub fn linux_amd64() -> Self {
        Self { os: "linux".into(), arch: "amd64".into(), variant: None }
    }

    /// Reads `os/arch[/variant]`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let os = parts.next().filter(|s| !s.is_empty())?.to_ascii_lowercase();
        let arch = parts.next().filter(|s| !s.is_empty())?.to_ascii_lowercase();
        let variant = parts.next().map(str::to_ascii_lowercase);
        if parts.next().is_some() || variant.as_deref() == Some("") {
            return None;
        }
        Some(Self { os, arch, variant })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The variables a word is expanded with, at one point of a Dockerfile.
#[derive(Debug, Clone)]
pub struct Scope {
    escape: char,
    /// `--build-arg` values.
    build_args: BTreeMap<String, String>,
    /// The global scope's values (predefined args and global ARGs).
    global: BTreeMap<String, String>,
    /// The variables in force: global scope (for FROM), or the stage's
    /// environment, ARGs and ENVs.
    vars: BTreeMap<String, String>,
    /// Names declared with ARG in this scope.
    declared: BTreeSet<String>,
    /// Bytes expanded so far by this scope and every scope made from it.
    spent: Arc<AtomicUsize>,
}

impl Scope {
    /// The global scope: the predefined args for these platforms and target
    /// stage, overridden by build args of the same name.
    pub fn new(
        escape: char,
        build_args: BTreeMap<String, String>,
        target: &Platform,
        build: &Platform,
        target_stage: Option<&str>,
    ) -> Self {
        let mut global = BTreeMap::new();
        let values = [
            ("BUILDPLATFORM", build.to_string()),
            ("BUILDOS", build.os.clone()),
            ("BUILDOSVERSION", String::new()),
            ("BUILDARCH", build.arch.clone()),
            ("BUILDVARIANT", build.variant.clone().unwrap_or_default()),
            ("TARGETPLATFORM", target.to_string()),
            ("TARGETOS", target.os.clone()),
            ("TARGETOSVERSION", String::new()),
            ("TARGETARCH", target.arch.clone()),
            ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
            ("TARGETSTAGE", target_stage.unwrap_or("default").to_owned()),
        ];
        for (k, v) in values {
            let v = build_args.get(k).cloned().unwrap_or(v);
            global.insert(k.to_owned(), v);
        }
        let spent = Arc::new(AtomicUsize::new(0));
        Self { escape, build_args, vars: global.clone(), global, declared: BTreeSet::new(), spent }
    }

    /// Declares the global ARGs before the first `FROM`, in order. Returns
    /// the variables each default used, by the ARG's position.
    pub fn declare_global(&mut self, decl: &ArgDecl) -> Result<Expanded, (ShellError, Word)> {
        let result = self.declare(decl)?;
        if let Some(v) = self.vars.get(&decl.name.text) {
            self.global.insert(decl.name.text.clone(), v.clone());
        }
        Ok(result)
    }

    /// A stage's scope: the base image's environment (`KEY=VALUE` pairs in
    /// order), no ARG declared yet; global values stay reachable through
    /// `ARG NAME`.
    #[must_use]
    pub fn stage(&self, base_env: &[(String, String)]) -> Self {
        let vars = base_env.iter().cloned().collect();
        Self {
            escape: self.escape,
            build_args: self.build_args.clone(),
            global: self.global.clone(),
            vars,
            declared: BTreeSet::new(),
            spent: Arc::clone(&self.spent),
        }
    }

    /// `ARG NAME[=default]` in this scope (its name is taken as written;
    /// BuildKit expands names too, rarely used). Returns what the default's
    /// expansion read.
    pub fn declare(&mut self, decl: &ArgDecl) -> Result<Expanded, (ShellError, Word)> {
        let name = decl.name.text.clone();
        self.declared.insert(name.clone());
        let mut expanded = Expanded::default();
        let value = if let Some(v) = self.build_args.get(&name) {
            Some(v.clone())
        } else if let Some(default) = &decl.default {
            expanded = self.expand(&default.text).map_err(|e| (e, default.clone()))?;
            Some(expanded.value.clone())
        } else {
            self.global.get(&name).cloned()
        };
        if let Some(v) = value {
            self.vars.insert(name, v);
        }
        Ok(expanded)
    }

    /// `ENV KEY=VALUE` (already expanded).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.vars.insert(key.to_owned(), value.to_owned());
    }

    /// A variable's value in this scope.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Whether `name` was declared with ARG in this scope.
    pub fn is_declared(&self, name: &str) -> bool {
        self.declared.contains(name)
    }

    /// Every variable in force, sorted by name.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The escape character words are expanded with.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands one word (quotes, escapes, variables) in this scope.
    pub fn expand(&self, word: &str) -> Result<Expanded, ShellError> {
        let lookup = |name: &str| self.vars.get(name).cloned();
        let mut lexer = Lexer::new(self.escape);
        lexer.split = false;
        let out = lexer.process(word, &lookup)?;
        self.spend(&out)?;
        Ok(out)
    }

    /// Expands the body of a `COPY`/`ADD` heredoc whose delimiter was not
    /// quoted: variables and escapes as in a word, quotes kept as text
    /// (BuildKit's `SkipProcessQuotes`).
    pub fn expand_heredoc(&self, body: &str) -> Result<Expanded, ShellError> {
        let lookup = |name: &str| self.vars.get(name).cloned();
        let mut lexer = Lexer::new('\\');
        lexer.skip_quotes = true;
        lexer.split = false;
        let out = lexer.process(body, &lookup)?;
        self.spend(&out)?;
        Ok(out)
    }

    /// Counts an expansion against the bounds of one word and of all words.
    fn spend(&self, out: &Expanded) -> Result<(), ShellError> {
        if out.value.len() > MAX_EXPANDED {
            return Err(ShellError(format!("expansion longer than {MAX_EXPANDED} bytes")));
        }
        let total = self.spent.fetch_add(out.value.len(), Ordering::Relaxed) + out.value.len();
        if total > MAX_EXPANDED_TOTAL {
            return Err(ShellError(format!(
                "expansions of this Dockerfile add up to more than {MAX_EXPANDED_TOTAL} bytes"
            )));
        }
        Ok(())
    }

    /// Expands one word and splits it into words (EXPOSE).
    pub fn expand_words(&self, word: &str) -> Result<Vec<String>, ShellError> {
        let lookup = |name: &str| self.vars.get(name).cloned();
        let out = Lexer::new(self.escape).process(word, &lookup)?;
        self.spend(&out)?;
        Ok(out.words)
    }
}
