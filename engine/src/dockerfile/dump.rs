//! A readable dump of a parsed Dockerfile: one line per instruction, words
//! quoted as written. The fixtures in `engine/tests/dockerfile/` compare
//! against it, and `bake` can show it to explain how a file was read.

use std::fmt::Write as _;

use super::instructions::{CheckSkip, CommandLine, Healthcheck, Heredoc, Instruction, Kind, Mount, Source, Word};
use super::{Dockerfile, DockerfileErrors};

fn q(w: &Word) -> String {
    format!("{:?}", w.text)
}

fn opt(name: &str, w: Option<&Word>) -> String {
    w.map(|w| format!(" {name}={}", q(w))).unwrap_or_default()
}

fn words(ws: &[Word]) -> String {
    ws.iter().map(q).collect::<Vec<_>>().join(" ")
}

fn command(c: &CommandLine) -> String {
    match c {
        CommandLine::Exec { args, .. } => format!("exec{args:?}"),
        CommandLine::Shell(w) => format!("shell {}", q(w)),
    }
}

fn heredoc(h: &Heredoc) -> String {
    let mut s = format!("<<{}", h.name);
    if h.fd != 0 {
        s = format!("{}{s}", h.fd);
    }
    if h.chomp {
        s.push_str(" chomp");
    }
    if !h.expand {
        s.push_str(" literal");
    }
    format!("{s} {:?}", h.text())
}

fn mount(m: &Mount) -> String {
    let mut s = format!("{:?}", m.kind).to_ascii_lowercase();
    for (k, v) in [("from", &m.from), ("source", &m.source), ("target", &m.target), ("id", &m.id), ("env", &m.env)] {
        if let Some(v) = v {
            let _ = write!(s, " {k}={v:?}");
        }
    }
    if m.readonly {
        s.push_str(" ro");
    }
    if let Some(sh) = m.sharing {
        let _ = write!(s, " sharing={}", format!("{sh:?}").to_ascii_lowercase());
    }
    if m.required {
        s.push_str(" required");
    }
    if let Some(n) = m.size {
        let _ = write!(s, " size={n}");
    }
    if let Some(n) = m.mode {
        let _ = write!(s, " mode={n:o}");
    }
    if let Some(n) = m.uid {
        let _ = write!(s, " uid={n}");
    }
    if let Some(n) = m.gid {
        let _ = write!(s, " gid={n}");
    }
    s
}

fn sources(list: &[Source]) -> String {
    list.iter()
        .map(|s| match s {
            Source::Path(w) => q(w),
            Source::Heredoc(h) => heredoc(h),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One instruction on one line (its heredocs on the lines after).
pub fn instruction(i: &Instruction) -> String {
    let lines = if i.line == i.end_line { format!("{}", i.line) } else { format!("{}-{}", i.line, i.end_line) };
    format!("{lines}: {}", body(i))
}

fn body(i: &Instruction) -> String {
    let name = i.name();
    let rest = match &i.kind {
        Kind::From(f) => {
            format!("{}{}{}", q(&f.image), opt("platform", f.platform.as_ref()), opt("as", f.name.as_ref()))
        }
        Kind::Arg(decls) => decls
            .iter()
            .map(|d| match &d.default {
                Some(v) => format!("{}={}", q(&d.name), q(v)),
                None => q(&d.name),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Kind::Env(kvs) | Kind::Label(kvs) => kvs
            .iter()
            .map(|kv| format!("{}{}{}", q(&kv.key), if kv.legacy { " " } else { "=" }, q(&kv.value)))
            .collect::<Vec<_>>()
            .join(" "),
        Kind::Maintainer(w) | Kind::Workdir(w) | Kind::User(w) | Kind::StopSignal(w) => q(w),
        Kind::Expose(ws) => words(ws),
        Kind::Volume { paths, json } => format!("{}{}", if *json { "json " } else { "" }, words(paths)),
        Kind::Shell(args) => format!("{args:?}"),
        Kind::Cmd(c) | Kind::Entrypoint(c) => command(c),
        Kind::Run(r) => {
            let mut s = String::new();
            for m in &r.mounts {
                match &m.mount {
                    Some(mt) => {
                        let _ = write!(s, "mount[{}] ", mount(mt));
                    }
                    None => {
                        let _ = write!(s, "mount{:?} ", m.raw.text);
                    }
                }
            }
            if let Some((n, _)) = r.network {
                let _ = write!(s, "network={} ", format!("{n:?}").to_ascii_lowercase());
            }
            if let Some((n, _)) = r.security {
                let _ = write!(s, "security={} ", format!("{n:?}").to_ascii_lowercase());
            }
            s.push_str(&command(&r.command));
            for h in &r.heredocs {
                let _ = write!(s, "\n    {}", heredoc(h));
            }
            s
        }
        Kind::Copy(c) => {
            let mut s = String::new();
            s.push_str(&opt("from", c.from.as_ref()));
            s.push_str(&opt("chown", c.chown.as_ref()));
            s.push_str(&opt("chmod", c.chmod.as_ref()));
            if c.link {
                s.push_str(" link");
            }
            if c.parents {
                s.push_str(" parents");
            }
            for e in &c.excludes {
                let _ = write!(s, " exclude={}", q(e));
            }
            let _ = write!(s, " {}{} -> {}", if c.json { "json " } else { "" }, sources(&c.sources), q(&c.dest));
            s.trim_start().to_owned()
        }
        Kind::Add(a) => {
            let mut s = String::new();
            s.push_str(&opt("chown", a.chown.as_ref()));
            s.push_str(&opt("chmod", a.chmod.as_ref()));
            if a.link {
                s.push_str(" link");
            }
            if let Some(k) = a.keep_git_dir {
                let _ = write!(s, " keep-git-dir={k}");
            }
            s.push_str(&opt("checksum", a.checksum.as_ref()));
            if let Some(k) = a.unpack {
                let _ = write!(s, " unpack={k}");
            }
            for e in &a.excludes {
                let _ = write!(s, " exclude={}", q(e));
            }
            let _ = write!(s, " {}{} -> {}", if a.json { "json " } else { "" }, sources(&a.sources), q(&a.dest));
            s.trim_start().to_owned()
        }
        Kind::Healthcheck(Healthcheck::None) => "NONE".to_owned(),
        Kind::Healthcheck(Healthcheck::Cmd(h)) => {
            let mut s = String::new();
            for (k, v) in [
                ("interval", h.interval),
                ("timeout", h.timeout),
                ("start-period", h.start_period),
                ("start-interval", h.start_interval),
            ] {
                if let Some(v) = v {
                    let _ = write!(s, "{k}={v:?} ");
                }
            }
            if let Some(r) = h.retries {
                let _ = write!(s, "retries={r} ");
            }
            format!("{s}CMD {}", command(&h.command))
        }
        Kind::Onbuild(inner) => body(inner),
    };
    if rest.is_empty() { name.to_owned() } else { format!("{name} {rest}") }
}

/// The whole file.
pub fn dockerfile(df: &Dockerfile) -> String {
    let mut out = String::new();
    let d = &df.directives;
    if let Some(s) = &d.syntax {
        let _ = writeln!(out, "# syntax {:?}", s.value);
    }
    if let Some(e) = &d.escape {
        let _ = writeln!(out, "# escape {:?}", e.value);
    }
    if let Some(c) = &d.check {
        let skip = match &c.skip {
            CheckSkip::None => String::new(),
            CheckSkip::All => "skip=all ".to_owned(),
            CheckSkip::Rules(r) => format!("skip={} ", r.join(",")),
        };
        let _ = writeln!(out, "# check {skip}error={}", c.error);
    }
    for a in &df.global_args {
        for c in &a.comments {
            let _ = writeln!(out, "# {c}");
        }
        let _ = writeln!(out, "{}", instruction(a));
    }
    for stage in &df.stages {
        let _ = writeln!(out, "stage {}{}", stage.index, stage.name().map(|n| format!(" {n}")).unwrap_or_default());
        for i in std::iter::once(&stage.from_instruction).chain(&stage.instructions) {
            for c in &i.comments {
                let _ = writeln!(out, "  # {c}");
            }
            let _ = writeln!(out, "  {}", instruction(i));
        }
    }
    for w in &df.warnings {
        let _ = writeln!(out, "warning {}: {}", w.line, w.message);
    }
    out
}

/// The errors of a failed parse, one a line: `LINE: CODE: MESSAGE`.
pub fn errors(errors: &DockerfileErrors) -> String {
    let mut out = String::new();
    for e in &errors.errors {
        let _ = writeln!(out, "{}: {}: {}", e.line, e.kind.short(), e.message);
    }
    if errors.more > 0 {
        let _ = writeln!(out, "and {} more", errors.more);
    }
    out
}
