//! BuildKit's Dockerfile checks (`bake check`): each rule a function over
//! the parsed file, each finding pointing at its instruction, the rules
//! `# check=skip=` names left out.
//!
//! The rules and their messages are BuildKit's (its `linter` package):
//! StageNameCasing, FromAsCasing, ConsistentInstructionCasing,
//! DuplicateStageName, ReservedStageName, JSONArgsRecommended,
//! MaintainerDeprecated, UndefinedArgInFrom, UndefinedVar, WorkdirRelativePath,
//! MultipleInstructionsDisallowed, LegacyKeyValueFormat, NoEmptyContinuation,
//! ExposeProtoCasing. UndefinedVar needs each stage's base environment, which
//! only the caller knows ([`check_with`]).

use std::collections::{BTreeMap, BTreeSet};

use miette::SourceSpan;

use super::instructions::{CheckSkip, CommandLine, Instruction, Kind, Source, Word};
use super::{Dockerfile, Lines, Platform, Scope, Stage};
use crate::lang::did_you_mean;

/// One finding of a check rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule's name as BuildKit spells it (`StageNameCasing`).
    pub rule: &'static str,
    pub message: String,
    pub span: SourceSpan,
    /// 1-based line.
    pub line: usize,
}

/// Every rule this module knows.
pub const RULES: [&str; 14] = [
    "StageNameCasing",
    "FromAsCasing",
    "ConsistentInstructionCasing",
    "DuplicateStageName",
    "ReservedStageName",
    "JSONArgsRecommended",
    "MaintainerDeprecated",
    "UndefinedArgInFrom",
    "UndefinedVar",
    "WorkdirRelativePath",
    "MultipleInstructionsDisallowed",
    "LegacyKeyValueFormat",
    "NoEmptyContinuation",
    "ExposeProtoCasing",
];

struct Findings<'a> {
    df: &'a Dockerfile,
    lines: Lines,
    out: Vec<Finding>,
}

impl Findings<'_> {
    fn push(&mut self, rule: &'static str, span: SourceSpan, message: String) {
        let skipped = match self.df.directives.check.as_ref().map(|c| &c.skip) {
            Some(CheckSkip::All) => true,
            Some(CheckSkip::Rules(rules)) => rules.iter().any(|r| r == rule),
            _ => false,
        };
        if !skipped {
            self.out.push(Finding { rule, message, span, line: self.lines.line(span.offset()) });
        }
    }
}

/// The findings of every rule but UndefinedVar, in line order.
pub fn check(df: &Dockerfile) -> Vec<Finding> {
    check_with(df, &|_| None)
}

/// The findings of every rule; `base_env` gives a stage's base image
/// environment (variable names), or `None` to skip UndefinedVar there.
pub fn check_with(df: &Dockerfile, base_env: &dyn Fn(&Stage) -> Option<Vec<String>>) -> Vec<Finding> {
    let text = df.src_text();
    let mut f = Findings { df, lines: Lines::new(&text), out: Vec::new() };
    casing(df, &mut f);
    let mut names = BTreeSet::new();
    let platform = Platform::linux_amd64();
    let mut global = Scope::new(df.escape, BTreeMap::new(), &platform, &platform, None);
    for arg in &df.global_args {
        if let Kind::Arg(decls) = &arg.kind {
            for d in decls {
                let _ = global.declare_global(d);
            }
        }
    }
    for w in &df.warnings {
        f.push("NoEmptyContinuation", w.span, "Empty continuation line".to_owned());
    }
    for stage in &df.stages {
        let from = stage.from();
        let at = stage.from_instruction.span;
        if let (Some(name), Some(as_kw)) = (&from.name, &from.as_keyword) {
            let written = &text[name.span.offset()..name.span.offset() + name.span.len()];
            if written != name.text {
                f.push("StageNameCasing", at, format!("Stage name '{written}' should be lowercase"));
            }
            let kw = &stage.from_instruction.keyword.text;
            let lower = *kw == kw.to_ascii_lowercase();
            let upper = *kw == kw.to_ascii_uppercase();
            if (lower && as_kw.text != as_kw.text.to_ascii_lowercase())
                || (upper && as_kw.text != as_kw.text.to_ascii_uppercase())
            {
                f.push("FromAsCasing", at, format!("'{}' and '{kw}' keywords' casing do not match", as_kw.text));
            }
            if matches!(name.text.as_str(), "context" | "scratch") {
                f.push(
                    "ReservedStageName",
                    at,
                    format!("Stage name should not use the same name as reserved stage {:?}", name.text),
                );
            }
            if !names.insert(name.text.clone()) {
                f.push(
                    "DuplicateStageName",
                    at,
                    format!("Duplicate stage name {:?}, stage names should be unique", name.text),
                );
            }
        }
        for word in std::iter::once(&from.image).chain(&from.platform) {
            if let Ok(e) = global.expand(&word.text) {
                for unset in &e.unset {
                    let keys: Vec<&str> = global.vars().keys().map(String::as_str).collect();
                    let hint = did_you_mean(unset, keys).map(|s| format!(" (did you mean {s}?)")).unwrap_or_default();
                    f.push("UndefinedArgInFrom", at, format!("FROM argument '{unset}' is not declared{hint}"));
                }
            }
        }
        stage_rules(stage, base_env(stage).as_deref(), &global, &mut f);
    }
    f.out.sort_by_key(|x| (x.span.offset(), x.rule));
    f.out
}

fn casing(df: &Dockerfile, f: &mut Findings<'_>) {
    let all: Vec<&Instruction> =
        df.stages.iter().flat_map(|s| std::iter::once(&s.from_instruction).chain(&s.instructions)).collect();
    let (mut lower, mut upper) = (0, 0);
    for i in &all {
        let k = &i.keyword.text;
        if *k == k.to_ascii_lowercase() {
            lower += 1;
        } else if *k == k.to_ascii_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for i in all {
        let k = &i.keyword.text;
        let wrong = if majority_lower { *k != k.to_ascii_lowercase() } else { *k != k.to_ascii_uppercase() };
        if wrong {
            let casing = if majority_lower { "lowercase" } else { "uppercase" };
            f.push(
                "ConsistentInstructionCasing",
                i.span,
                format!("Command '{k}' should match the case of the command majority ({casing})"),
            );
        }
    }
}

fn stage_rules(stage: &Stage, base_env: Option<&[String]>, global: &Scope, f: &mut Findings<'_>) {
    let mut shell_set = false;
    let mut workdir_set = false;
    let mut last: BTreeMap<&'static str, SourceSpan> = BTreeMap::new();
    let env: Vec<(String, String)> = base_env.into_iter().flatten().map(|n| (n.clone(), String::new())).collect();
    let mut scope = global.stage(&env);
    for i in &stage.instructions {
        let name = i.name();
        if let Some(prev) =
            (matches!(name, "CMD" | "ENTRYPOINT" | "HEALTHCHECK")).then(|| last.insert(name, i.span)).flatten()
        {
            f.push(
                "MultipleInstructionsDisallowed",
                prev,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    i.keyword.text
                ),
            );
        }
        match &i.kind {
            Kind::Shell(_) => shell_set = true,
            Kind::Cmd(CommandLine::Shell(w)) | Kind::Entrypoint(CommandLine::Shell(w))
                if !shell_set && !w.text.is_empty() =>
            {
                f.push(
                    "JSONArgsRecommended",
                    i.span,
                    format!(
                        "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                        i.keyword.text
                    ),
                );
            }
            Kind::Maintainer(_) => {
                f.push(
                    "MaintainerDeprecated",
                    i.span,
                    "Maintainer instruction is deprecated in favor of using label".into(),
                );
            }
            Kind::Workdir(w) => {
                let path = scope.expand(&w.text).map_or_else(|_| w.text.clone(), |e| e.value);
                if !workdir_set && !path.starts_with('/') {
                    f.push(
                        "WorkdirRelativePath",
                        i.span,
                        format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                    );
                }
                workdir_set = true;
            }
            Kind::Env(kvs) | Kind::Label(kvs) if kvs.iter().any(|kv| kv.legacy) => {
                let n = &i.keyword.text;
                f.push(
                    "LegacyKeyValueFormat",
                    i.span,
                    format!("\"{n} key=value\" should be used instead of legacy \"{n} key value\" format"),
                );
            }
            Kind::Expose(ports) => {
                for p in ports {
                    if let Some((_, proto)) = p.text.split_once('/')
                        && proto != proto.to_ascii_lowercase()
                    {
                        f.push(
                            "ExposeProtoCasing",
                            i.span,
                            format!("Defined protocol '{}' in EXPOSE instruction should be lowercase", p.text),
                        );
                    }
                }
            }
            _ => {}
        }
        // UndefinedVar: words the frontend expands, against what is in scope.
        if base_env.is_some() {
            for w in expanded_words(i) {
                if let Ok(e) = scope.expand(&w.text) {
                    for unset in &e.unset {
                        if scope.is_declared(unset) {
                            continue;
                        }
                        let keys: Vec<&str> = scope.vars().keys().map(String::as_str).collect();
                        let hint =
                            did_you_mean(unset, keys).map(|s| format!(" (did you mean ${s}?)")).unwrap_or_default();
                        f.push("UndefinedVar", i.span, format!("Usage of undefined variable '${unset}'{hint}"));
                    }
                }
            }
        }
        match &i.kind {
            Kind::Arg(decls) => {
                for d in decls {
                    let _ = scope.declare(d);
                }
            }
            Kind::Env(kvs) => {
                for kv in kvs {
                    let v = scope.expand(&kv.value.text).map(|e| e.value).unwrap_or_default();
                    scope.set_env(&kv.key.text, &v);
                }
            }
            _ => {}
        }
    }
}

/// The words of an instruction the frontend expands.
fn expanded_words(i: &Instruction) -> Vec<&Word> {
    match &i.kind {
        Kind::Env(kvs) | Kind::Label(kvs) => kvs.iter().map(|kv| &kv.value).collect(),
        Kind::Workdir(w) | Kind::User(w) | Kind::StopSignal(w) => vec![w],
        Kind::Expose(ws) | Kind::Volume { paths: ws, .. } => ws.iter().collect(),
        Kind::Copy(c) => c.sources.iter().filter_map(path).chain([&c.dest]).chain(&c.chown).chain(&c.chmod).collect(),
        Kind::Add(a) => a.sources.iter().filter_map(path).chain([&a.dest]).chain(&a.chown).chain(&a.chmod).collect(),
        _ => Vec::new(),
    }
}

fn path(s: &Source) -> Option<&Word> {
    match s {
        Source::Path(w) => Some(w),
        Source::Heredoc(_) => None,
    }
}
