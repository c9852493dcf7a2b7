//! The `dockerfile` fuzz target: arbitrary text through the Dockerfile
//! parser, every word of every instruction expanded in a stage's scope, and
//! the mounts read, checking the promises the parser makes.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::dockerfile::{self, Instruction, Kind, Platform, Scope, Source, Word};

/// Parses `text` as a Dockerfile and expands what it can. Panics when a
/// promise breaks: a span outside the text or inside a character, an error
/// without a line, a dump that panics; errors themselves are fine.
pub fn dockerfile(text: &str) {
    let shared = Arc::new(text.to_owned());
    let in_text = |span: miette::SourceSpan| {
        let (start, end) = (span.offset(), span.offset() + span.len());
        assert!(end <= text.len(), "span {start}..{end} past the end ({})", text.len());
        assert!(text.is_char_boundary(start) && text.is_char_boundary(end), "span {start}..{end} splits a character");
    };
    let df = match dockerfile::parse_str("Dockerfile", Arc::clone(&shared)) {
        Ok(df) => df,
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "a failed parse without an error");
            for e in &errors.errors {
                in_text(e.span);
                assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1, "line {} out of range", e.line);
            }
            let _ = dockerfile::dump::errors(&errors);
            return;
        }
    };
    let _ = dockerfile::dump::dockerfile(&df);
    let platform = Platform::linux_amd64();
    let mut global = Scope::new(df.escape, BTreeMap::new(), &platform, &platform, None);
    for arg in &df.global_args {
        in_text(arg.span);
        if let Kind::Arg(decls) = &arg.kind {
            for d in decls {
                let _ = global.declare_global(d);
            }
        }
    }
    for stage in &df.stages {
        let from = stage.from();
        in_text(from.image.span);
        let _ = global.expand(&from.image.text);
        let mut scope = global.stage(&[("PATH".to_owned(), "/usr/bin:/bin".to_owned())]);
        for instruction in std::iter::once(&stage.from_instruction).chain(&stage.instructions) {
            visit(instruction, &mut scope, &in_text);
        }
    }
    let _ = dockerfile::lint::check(&df);
}

fn visit(instruction: &Instruction, scope: &mut Scope, in_text: &dyn Fn(miette::SourceSpan)) {
    in_text(instruction.span);
    in_text(instruction.keyword.span);
    let snapshot = scope.clone();
    let mut expand = |w: &Word| {
        in_text(w.span);
        let _ = snapshot.expand(&w.text);
    };
    match &instruction.kind {
        Kind::Arg(decls) => {
            for d in decls {
                in_text(d.name.span);
                let _ = scope.declare(d);
            }
        }
        Kind::Env(kvs) => {
            for kv in kvs {
                expand(&kv.key);
                in_text(kv.value.span);
                if let Ok(v) = scope.expand(&kv.value.text) {
                    scope.set_env(&kv.key.text, &v.value);
                }
            }
        }
        Kind::Label(kvs) => kvs.iter().for_each(|kv| {
            expand(&kv.key);
            expand(&kv.value);
        }),
        Kind::Workdir(w) | Kind::User(w) | Kind::StopSignal(w) | Kind::Maintainer(w) => expand(w),
        Kind::Expose(ws) | Kind::Volume { paths: ws, .. } => ws.iter().for_each(|w| {
            in_text(w.span);
            let _ = scope.expand_words(&w.text);
        }),
        Kind::Copy(c) => {
            c.from.iter().chain(&c.chown).chain(&c.chmod).chain(&c.excludes).chain([&c.dest]).for_each(&mut expand);
            sources(&c.sources, &mut expand);
        }
        Kind::Add(a) => {
            a.chown.iter().chain(&a.chmod).chain(&a.checksum).chain(&a.excludes).chain([&a.dest]).for_each(&mut expand);
            sources(&a.sources, &mut expand);
        }
        Kind::Run(r) => {
            for m in &r.mounts {
                in_text(m.raw.span);
                let _ = m.resolve(&snapshot);
            }
            for h in &r.heredocs {
                in_text(h.span);
                in_text(h.body_span);
                let _ = h.text();
            }
        }
        Kind::Onbuild(inner) => visit(inner, scope, in_text),
        _ => {}
    }
}

fn sources(list: &[Source], expand: &mut dyn FnMut(&Word)) {
    for s in list {
        match s {
            Source::Path(w) => expand(w),
            Source::Heredoc(h) => {
                let _ = h.text();
            }
        }
    }
}
