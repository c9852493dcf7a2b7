//! `bake import`: a parsed Dockerfile written out as a `build.kdl`.
//!
//! The translation keeps the file's shape: every stage becomes a `stage`
//! (the last one an `image`), every instruction the node of the same name,
//! in the same order, with the comments above it. What the two languages
//! say differently is spelled out instead of lost:
//!
//! - ARGs become top-level `arg` nodes, used as `${NAME}` where the
//!   Dockerfile expands them; in a `run` step, where Docker gives the ARGs
//!   in force to the command as environment variables, they become that
//!   step's `env` children.
//! - A variable the Dockerfile sets with ENV is written out where Docker
//!   expands it (a `copy` path, a `label`); in `env` and `workdir` values, a
//!   variable that may come from the base image is left for the image
//!   config to expand, as Docker does.
//! - Shell-form CMD, ENTRYPOINT and healthchecks are written as the exec
//!   form they mean: the stage's SHELL (`/bin/sh -c`) and the text.
//! - Unnamed stages are named after their base image (`golang`, `node`),
//!   or `app` for a last stage with no base to name it by, made unique with
//!   a number.
//!
//! Whatever changes meaning or cannot be carried (ONBUILD, `COPY --link`,
//! a mount option bake lacks, ADD of a URL) gets a `// bake import: ...`
//! comment where it was, so nothing is dropped silently. Strings are
//! escaped twice: for bake's `${NAME}` interpolation (a literal `${` or `$$`
//! is written `$${` or `$$$$`), then as KDL v2 strings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use super::instructions::{
    CommandLine, Healthcheck, Instruction, Kind, MountType, Network, Security, Sharing, Source, Word,
};
use super::{Dockerfile, expand_word, is_predefined};

/// Marks an ARG reference inside an expanded value (written `${NAME}`).
const ARG_OPEN: char = '\u{E002}';
const ARG_CLOSE: char = '\u{E003}';
/// Marks a variable left for the image config to expand (`$${NAME}`).
const DEFER_OPEN: char = '\u{E000}';
const DEFER_CLOSE: char = '\u{E001}';

/// A translated Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The build.kdl text.
    pub text: String,
    /// How many `// bake import:` notes it holds.
    pub notes: usize,
    /// The name of the `image` node (the last stage).
    pub image: String,
}

/// What an import needs besides the Dockerfile.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// What the header calls the Dockerfile (`Dockerfile`).
    pub origin: String,
    /// Tags for the image (`tag` nodes).
    pub tags: Vec<String>,
    /// The Dockerfile's own ignore file (`app.Dockerfile.dockerignore`),
    /// which BuildKit reads in place of `.dockerignore` and a build.kdl
    /// does not.
    pub own_ignore: Option<String>,
}

/// Writes `df` as a build.kdl.
pub fn import(df: &Dockerfile, options: &ImportOptions) -> Imported {
    let mut w = Writer::new(df);
    w.file(options);
    let notes = w.notes;
    Imported { text: w.out, notes, image: w.image_name }
}

/// How a value is used, which decides how variables in it are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A string bake uses as it is (paths, labels, users).
    Plain,
    /// An `env` or `workdir` value, which the image config expands again:
    /// `$` is escaped for it, and variables it may know are left to it.
    Config,
}

struct Writer<'a> {
    df: &'a Dockerfile,
    out: String,
    notes: usize,
    /// The bake name of each stage, by index.
    names: Vec<String>,
    /// Dockerfile stage names (lowercase) to their index.
    by_name: HashMap<String, usize>,
    image_name: String,
}

/// What a stage knows while it is written.
#[derive(Default, Clone)]
struct StageVars {
    /// Variables and their values (ARG references and deferred variables
    /// marked, see [`ARG_OPEN`] and [`DEFER_OPEN`]).
    vars: BTreeMap<String, String>,
    /// ARGs in force, in declaration order.
    args: Vec<String>,
    /// Names set by ENV (in this stage or its base stages).
    env_names: BTreeSet<String>,
    shell: Vec<String>,
    /// Whether unknown variables may come from a base image's config.
    image_base: bool,
    /// CMD given in this stage (kept after an ENTRYPOINT, as BuildKit does).
    cmd: Option<Vec<String>>,
    /// The USER in force, when this stage set one.
    user: Option<String>,
}

impl<'a> Writer<'a> {
    fn new(df: &'a Dockerfile) -> Self {
        let mut by_name = HashMap::new();
        for s in &df.stages {
            if let Some(n) = s.name() {
                by_name.entry(n.to_owned()).or_insert(s.index);
            }
        }
        let names = stage_names(df);
        let image_name = names.last().cloned().unwrap_or_else(|| "app".to_owned());
        Self { df, out: String::new(), notes: 0, names, by_name, image_name }
    }

    fn note(&mut self, indent: &str, text: &str) {
        self.notes += 1;
        let _ = writeln!(self.out, "{indent}// bake import: {text}");
    }

    fn comments(&mut self, indent: &str, ins: &Instruction) {
        for c in &ins.comments {
            let c = c.strip_prefix(' ').unwrap_or(c);
            if c.is_empty() {
                let _ = writeln!(self.out, "{indent}//");
            } else {
                let _ = writeln!(self.out, "{indent}// {c}");
            }
        }
    }

    fn file(&mut self, options: &ImportOptions) {
        let _ = writeln!(self.out, "// Imported from {} by `bake import`.", options.origin);
        if let Some(ignore) = &options.own_ignore {
            let text = format!(
                "{ignore} replaces .dockerignore for the Dockerfile only; a build.kdl reads .dockerignore, then .bakeignore: move its rules there so the context is the same"
            );
            self.note("", &text);
        }
        if let Some(d) = &self.df.directives.syntax {
            let text = format!("`# syntax={}` dropped: bake reads Dockerfiles itself", d.value);
            self.note("", &text);
        }
        if self.df.directives.check.is_some() {
            self.note("", "`# check=` applies to the Dockerfile's lint rules; build.kdl has none of them");
        }
        self.out.push('\n');

        // Every ARG of the file, once, at the top: the global ones with their
        // defaults, then those only stages declare.
        let mut global = StageVars::default();
        let mut declared: BTreeMap<String, Option<String>> = BTreeMap::new();
        for ins in &self.df.global_args {
            self.comments("", ins);
            if let Kind::Arg(decls) = &ins.kind {
                for d in decls {
                    self.arg_node(&mut global, &mut declared, &d.name.text, d.default.as_ref(), true);
                }
            }
        }
        let from_vars = global.clone();
        let mut stage_args = Vec::new();
        for stage in &self.df.stages {
            for ins in &stage.instructions {
                if let Kind::Arg(decls) = &ins.kind {
                    for d in decls {
                        stage_args.push((d.name.text.clone(), d.default.clone()));
                    }
                }
            }
        }
        for (name, default) in stage_args {
            if is_predefined(&name) {
                continue;
            }
            match declared.get(&name) {
                None => self.arg_node(&mut global, &mut declared, &name, default.as_ref(), false),
                Some(first) => {
                    let this = default.as_ref().map(|w| w.text.clone());
                    if this.is_some() && *first != this {
                        let text = format!(
                            "ARG {name} has another default in a stage ({}); build.kdl args have one default, the first",
                            this.unwrap_or_default()
                        );
                        self.note("", &text);
                    }
                }
            }
        }
        if !declared.is_empty() {
            self.out.push('\n');
        }

        let last = self.df.stages.len().saturating_sub(1);
        let mut finished: Vec<StageVars> = Vec::new();
        for (i, stage) in self.df.stages.iter().enumerate() {
            let from = stage.from();
            self.comments("", &stage.from_instruction);
            let image = self.expand(&from_vars, &from.image, Mode::Plain, "");
            let base_text = strip_markers(&image);
            let base_stage = self.by_name.get(&base_text.to_ascii_lowercase()).copied().filter(|&b| b < i);
            let mut st = StageVars { shell: vec!["/bin/sh".to_owned(), "-c".to_owned()], ..StageVars::default() };
            let from_value = match base_stage {
                Some(b) => {
                    if let Some(prev) = finished.get(b) {
                        st.vars = prev
                            .vars
                            .iter()
                            .filter(|(k, _)| prev.env_names.contains(*k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        st.env_names.clone_from(&prev.env_names);
                        st.shell.clone_from(&prev.shell);
                        st.image_base = prev.image_base;
                    }
                    kdl_string(&self.names[b])
                }
                None => {
                    st.image_base = !base_text.eq_ignore_ascii_case("scratch");
                    bake_string(&image)
                }
            };
            if let Some(p) = &from.platform {
                let text = format!("FROM --platform={} dropped: bake builds for the machine's platform", p.text);
                self.note("", &text);
            }
            let node = if i == last { "image" } else { "stage" };
            let name = kdl_string(&self.names[i]);
            let before = std::mem::take(&mut self.out);
            for ins in &stage.instructions {
                self.instruction(&mut st, ins, "    ");
            }
            let mut inner = std::mem::replace(&mut self.out, before);
            if i == last {
                for t in &options.tags {
                    let _ = writeln!(inner, "    tag {}", kdl_string(&escape_interp(t)));
                }
            }
            let _ = write!(self.out, "{node} {name} from={from_value}");
            if inner.is_empty() {
                self.out.push('\n');
            } else {
                let _ = write!(self.out, " {{\n{inner}}}\n");
            }
            if i != last {
                self.out.push('\n');
            }
            finished.push(st);
        }
    }

    /// Writes `arg NAME default=...` once per name.
    fn arg_node(
        &mut self,
        vars: &mut StageVars,
        declared: &mut BTreeMap<String, Option<String>>,
        name: &str,
        default: Option<&Word>,
        global: bool,
    ) {
        if declared.contains_key(name) {
            return;
        }
        declared.insert(name.to_owned(), default.map(|w| w.text.clone()));
        if is_predefined(name) {
            return;
        }
        match default {
            Some(w) => {
                let value = self.expand(vars, w, Mode::Plain, "");
                let _ = writeln!(self.out, "arg {} default={}", kdl_string(name), bake_string(&value));
            }
            None => {
                let where_ = if global { "" } else { " in a stage" };
                let text = format!(
                    "ARG {name}{where_} has no default; here it is empty, so RUN steps see {name} set to \"\" rather than unset"
                );
                self.note("", &text);
                let _ = writeln!(self.out, "arg {} default=\"\"", kdl_string(name));
            }
        }
        vars.vars.insert(name.to_owned(), arg_ref(name));
    }

    /// Expands a word as Docker would, with ARGs kept as references.
    fn expand(&mut self, st: &StageVars, word: &Word, mode: Mode, indent: &str) -> String {
        let defer = mode == Mode::Config && st.image_base;
        let missing = std::cell::RefCell::new(BTreeSet::new());
        let lookup = |name: &str| -> Option<String> {
            if let Some(v) = st.vars.get(name) {
                return Some(v.clone());
            }
            if defer {
                return Some(format!("{DEFER_OPEN}{name}{DEFER_CLOSE}"));
            }
            missing.borrow_mut().insert(name.to_owned());
            None
        };
        match expand_word(&word.text, self.df.escape, &lookup) {
            Ok(e) => {
                for name in missing.into_inner() {
                    let text = format!("`${name}` is not set by the Dockerfile here and expands to nothing");
                    self.note(indent, &text);
                }
                e.value
            }
            Err(e) => {
                let text = format!("`{}` could not be expanded ({e}); kept as written", word.text);
                self.note(indent, &text);
                word.text.clone()
            }
        }
    }

    /// A value for an `env` or `workdir` node.
    fn config_value(&mut self, st: &StageVars, word: &Word, indent: &str) -> String {
        config_escape(&self.expand(st, word, Mode::Config, indent))
    }

    fn instruction(&mut self, st: &mut StageVars, ins: &Instruction, indent: &str) {
        self.comments(indent, ins);
        match &ins.kind {
            Kind::From(_) => {}
            Kind::Arg(decls) => {
                for d in decls {
                    let name = &d.name.text;
                    if is_predefined(name) {
                        let value = predefined_value(name);
                        let text = format!("ARG {name} is {value:?} here: bake builds for linux/amd64 in this import");
                        self.note(indent, &text);
                        st.vars.insert(name.clone(), value.to_owned());
                        continue;
                    }
                    st.vars.insert(name.clone(), arg_ref(name));
                    if !st.args.contains(name) {
                        st.args.push(name.clone());
                    }
                }
            }
            Kind::Env(pairs) => {
                for kv in pairs {
                    let key = strip_markers(&self.expand(st, &kv.key, Mode::Plain, indent));
                    let plain = self.expand(st, &kv.value, Mode::Config, indent);
                    let value = config_escape(&plain);
                    let _ = writeln!(self.out, "{indent}env {} {}", kdl_string(&key), bake_string(&value));
                    st.vars.insert(key.clone(), plain);
                    st.env_names.insert(key);
                }
            }
            Kind::Label(pairs) => {
                for kv in pairs {
                    let key = self.expand(st, &kv.key, Mode::Plain, indent);
                    let value = self.expand(st, &kv.value, Mode::Plain, indent);
                    let _ = writeln!(self.out, "{indent}label {} {}", bake_string(&key), bake_string(&value));
                }
            }
            Kind::Maintainer(w) => {
                let text = format!("MAINTAINER {} (the image's author) has no build.kdl node; not carried", w.text);
                self.note(indent, &text);
            }
            Kind::Workdir(w) => {
                let value = self.config_value(st, w, indent);
                if let Some(user) =
                    st.user.clone().filter(|u| !matches!(u.as_str(), "root" | "0" | "0:0" | "root:root"))
                {
                    let text = format!(
                        "WORKDIR makes its folder owned by USER {user} in Docker; build.kdl's workdir makes it root's"
                    );
                    self.note(indent, &text);
                }
                let _ = writeln!(self.out, "{indent}workdir {}", bake_string(&value));
            }
            Kind::User(w) => {
                let value = self.expand(st, w, Mode::Plain, indent);
                st.user = Some(value.clone());
                let _ = writeln!(self.out, "{indent}user {}", bake_string(&value));
            }
            Kind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    let value = self.expand(st, w, Mode::Plain, indent);
                    if value.contains(ARG_OPEN) {
                        ports.push(bake_string(&value));
                        continue;
                    }
                    for p in value.split_whitespace() {
                        match p.parse::<u16>() {
                            Ok(n) => ports.push(n.to_string()),
                            Err(_) => ports.push(bake_string(p)),
                        }
                    }
                }
                let _ = writeln!(self.out, "{indent}expose {}", ports.join(" "));
            }
            Kind::Volume { paths, .. } => {
                let list: Vec<String> =
                    paths.iter().map(|w| bake_string(&self.expand(st, w, Mode::Plain, indent))).collect();
                let _ = writeln!(self.out, "{indent}volume {}", list.join(" "));
            }
            Kind::StopSignal(w) => {
                let value = self.expand(st, w, Mode::Plain, indent);
                let _ = writeln!(self.out, "{indent}stopsignal {}", bake_string(&value));
            }
            Kind::Shell(args) => {
                st.shell.clone_from(args);
                let _ = writeln!(self.out, "{indent}shell {}", literal_list(args));
            }
            Kind::Cmd(cl) => {
                let args = command_args(st, cl);
                let _ = writeln!(self.out, "{indent}{}", trim_end(&format!("cmd {}", literal_list(&args))));
                st.cmd = Some(args);
            }
            Kind::Entrypoint(cl) => {
                let args = command_args(st, cl);
                let _ = writeln!(self.out, "{indent}{}", trim_end(&format!("entrypoint {}", literal_list(&args))));
                if let Some(cmd) = st.cmd.clone() {
                    let _ = writeln!(
                        self.out,
                        "{indent}// The CMD above, again: a new entrypoint clears the cmd, where Docker keeps one set in the same stage."
                    );
                    let _ = writeln!(self.out, "{indent}{}", trim_end(&format!("cmd {}", literal_list(&cmd))));
                }
            }
            Kind::Healthcheck(h) => self.healthcheck(h, indent),
            Kind::Onbuild(inner) => {
                let text = format!(
                    "ONBUILD {} not carried: build.kdl has no triggers for images built on this one",
                    inner.name()
                );
                self.note(indent, &text);
            }
            Kind::Run(r) => self.run(st, r, indent),
            Kind::Copy(c) => {
                if c.link {
                    self.note(indent, "COPY --link dropped: bake's copy layers are already independent of the base");
                }
                if c.parents {
                    self.note(
                        indent,
                        "COPY --parents is not supported by bake: the sources below are copied without their folders",
                    );
                }
                self.copy(
                    st,
                    &c.sources,
                    &c.dest,
                    c.from.as_ref(),
                    c.chown.as_ref(),
                    c.chmod.as_ref(),
                    &c.excludes,
                    indent,
                );
            }
            Kind::Add(a) => {
                let mut plain = a.checksum.is_none() && a.keep_git_dir.is_none();
                for s in &a.sources {
                    if let Source::Path(w) = s {
                        let t = w.text.to_ascii_lowercase();
                        let remote = t.starts_with("http://") || t.starts_with("https://") || t.starts_with("git@");
                        let archive = [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst"]
                            .iter()
                            .any(|ext| t.ends_with(ext))
                            && a.unpack != Some(false);
                        plain &= !remote && !archive;
                    }
                }
                if !plain {
                    let line = self.df.text.get(ins.span.offset()..ins.span.offset() + ins.span.len()).unwrap_or("ADD");
                    let first = line.lines().next().unwrap_or("ADD").to_owned();
                    let text = format!(
                        "not carried, bake has no `add` yet (a URL, a git repository or an archive to extract): {first}"
                    );
                    self.note(indent, &text);
                    return;
                }
                if a.link {
                    self.note(indent, "ADD --link dropped: bake's copy layers are already independent of the base");
                }
                self.copy(st, &a.sources, &a.dest, None, a.chown.as_ref(), a.chmod.as_ref(), &a.excludes, indent);
            }
        }
    }

    fn healthcheck(&mut self, h: &Healthcheck, indent: &str) {
        let c = match h {
            Healthcheck::None => {
                let _ = writeln!(self.out, "{indent}healthcheck none=#true");
                return;
            }
            Healthcheck::Cmd(c) => c,
        };
        let mut line = String::from("healthcheck");
        match &c.command {
            CommandLine::Exec { args, .. } => {
                // `["CMD", ...]` in JSON form: the program and its arguments.
                let args = args.strip_prefix(&["CMD".to_owned()]).unwrap_or(args);
                for a in args {
                    line.push(' ');
                    line.push_str(&kdl_string(&escape_interp(a)));
                }
            }
            CommandLine::Shell(w) => {
                let _ = write!(line, " shell={}", kdl_string(&escape_interp(&w.text)));
            }
        }
        for (name, d) in [
            ("interval", c.interval),
            ("timeout", c.timeout),
            ("start-period", c.start_period),
            ("start-interval", c.start_interval),
        ] {
            if let Some(d) = d.filter(|d| !d.is_zero()) {
                let _ = write!(line, " {name}={}", kdl_string(&go_duration(d)));
            }
        }
        if let Some(r) = c.retries.filter(|r| *r > 0) {
            let _ = write!(line, " retries={r}");
        }
        let _ = writeln!(self.out, "{indent}{line}");
    }

    fn run(&mut self, st: &StageVars, r: &super::Run, indent: &str) {
        let head = match &r.command {
            CommandLine::Exec { args, .. } => format!("run {} exec=#true", literal_list(args)),
            CommandLine::Shell(_) => {
                let text = r.shell_script().unwrap_or_default();
                format!("run {}", script_string(&escape_interp(&text), indent))
            }
        };
        let inner = format!("{indent}    ");
        let mut children = String::new();
        let mut notes = Vec::new();
        for m in &r.mounts {
            let Some(mount) = &m.mount else {
                notes.push(format!("--mount={} uses variables; not carried", m.raw.text));
                continue;
            };
            match mount.kind {
                MountType::Cache => {
                    if mount.from.is_some()
                        || mount.source.is_some()
                        || mount.uid.is_some()
                        || mount.gid.is_some()
                        || mount.mode.is_some()
                    {
                        notes.push(format!(
                            "--mount={}: from, source, uid, gid and mode dropped (bake's cache folder is root's, 0755)",
                            m.raw.text
                        ));
                    }
                    let Some(target) = &mount.target else {
                        notes.push(format!("--mount={} has no target; not carried", m.raw.text));
                        continue;
                    };
                    let mut line = format!("cache {}", kdl_string(&escape_interp(target)));
                    if let Some(id) = mount.id.as_ref().filter(|i| !i.is_empty()) {
                        let _ = write!(line, " id={}", kdl_string(&escape_interp(id)));
                    }
                    match mount.sharing {
                        Some(Sharing::Private) => line.push_str(" sharing=\"private\""),
                        Some(Sharing::Locked) => line.push_str(" sharing=\"locked\""),
                        _ => {}
                    }
                    let _ = writeln!(children, "{inner}{line}");
                }
                MountType::Secret => {
                    if mount.uid.is_some() || mount.gid.is_some() || mount.mode.is_some() {
                        notes.push(format!("--mount={}: uid, gid and mode dropped", m.raw.text));
                    }
                    let id = mount
                        .id
                        .clone()
                        .or_else(|| mount.source.clone())
                        .or_else(|| mount.target.as_deref().and_then(|t| t.rsplit('/').next()).map(str::to_owned));
                    let Some(id) = id.filter(|i| !i.is_empty()) else {
                        notes.push(format!("--mount={} has no id; not carried", m.raw.text));
                        continue;
                    };
                    let mut line = format!("secret {}", kdl_string(&escape_interp(&id)));
                    if let Some(t) = &mount.target {
                        let _ = write!(line, " target={}", kdl_string(&escape_interp(t)));
                    }
                    if mount.required {
                        line.push_str(" required=#true");
                    }
                    if let Some(e) = &mount.env {
                        let _ = write!(line, " env={}", kdl_string(&escape_interp(e)));
                    }
                    let _ = writeln!(children, "{inner}{line}");
                }
                MountType::Bind if mount.from.is_none() => {
                    let Some(target) = mount.target.as_ref().filter(|t| !t.is_empty()) else {
                        notes.push(format!("--mount={} has no target; not carried", m.raw.text));
                        continue;
                    };
                    let source = mount.source.as_deref().unwrap_or(".");
                    let mut line = format!(
                        "bind {} target={}",
                        kdl_string(&escape_interp(source)),
                        kdl_string(&escape_interp(target))
                    );
                    if !mount.readonly {
                        line.push_str(" rw=#true");
                    }
                    let _ = writeln!(children, "{inner}{line}");
                }
                MountType::Tmpfs => match mount.target.as_ref().filter(|t| !t.is_empty()) {
                    Some(t) => {
                        if mount.size.is_some() {
                            notes.push(format!("--mount={}: size dropped", m.raw.text));
                        }
                        let _ = writeln!(children, "{inner}tmpfs {}", kdl_string(&escape_interp(t)));
                    }
                    None => notes.push(format!("--mount={} has no target; not carried", m.raw.text)),
                },
                MountType::Bind | MountType::Ssh => {
                    notes.push(format!("--mount={} is not supported by bake's run; not carried", m.raw.text));
                }
            }
        }
        match r.network {
            Some((Network::None, _)) => {
                let _ = writeln!(children, "{inner}network \"none\"");
            }
            Some((Network::Host, _)) => {
                let _ = writeln!(children, "{inner}network \"host\"");
            }
            _ => {}
        }
        if let Some((Security::Insecure, _)) = r.security {
            let _ = writeln!(children, "{inner}security \"insecure\"");
        }
        for name in &st.args {
            if st.env_names.contains(name) {
                continue;
            }
            if let Some(v) = st.vars.get(name) {
                let _ = writeln!(children, "{inner}env {} {}", kdl_string(name), bake_string(v));
            }
        }
        for n in notes {
            self.note(indent, &n);
        }
        if children.is_empty() {
            let _ = writeln!(self.out, "{indent}{head}");
        } else {
            let _ = write!(self.out, "{indent}{head} {{\n{children}{indent}}}\n");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        st: &StageVars,
        sources: &[Source],
        dest: &Word,
        from: Option<&Word>,
        chown: Option<&Word>,
        chmod: Option<&Word>,
        excludes: &[Word],
        indent: &str,
    ) {
        let mut line = String::from("copy");
        let mut any = false;
        for s in sources {
            match s {
                Source::Path(w) => {
                    let v = self.expand(st, w, Mode::Plain, indent);
                    line.push(' ');
                    line.push_str(&bake_string(&v));
                    any = true;
                }
                Source::Heredoc(h) => {
                    let text =
                        format!("COPY <<{} (a file from a heredoc) is not supported by bake; not carried", h.name);
                    self.note(indent, &text);
                }
            }
        }
        if !any {
            return;
        }
        let to = self.expand(st, dest, Mode::Plain, indent);
        let _ = write!(line, " to={}", bake_string(&to));
        if let Some(f) = from {
            if chown.is_none() {
                self.note(
                    indent,
                    "COPY --from keeps the files' owners; bake's copy makes them root's (give chown= if they matter)",
                );
            }
            let raw = strip_markers(&self.expand(st, f, Mode::Plain, indent));
            let stage = raw
                .parse::<usize>()
                .ok()
                .filter(|&i| i < self.names.len())
                .or_else(|| self.by_name.get(&raw.to_ascii_lowercase()).copied());
            let value = match stage {
                Some(i) => kdl_string(&self.names[i]),
                None => kdl_string(&escape_interp(&raw)),
            };
            let _ = write!(line, " from={value}");
        }
        for (name, w) in [("chown", chown), ("chmod", chmod)] {
            if let Some(w) = w {
                let v = self.expand(st, w, Mode::Plain, indent);
                if name == "chmod" && !v.is_empty() && v.chars().all(|c| c.is_digit(8)) {
                    let digits = v.trim_start_matches('0');
                    let _ = write!(line, " chmod=0o{}", if digits.is_empty() { "0" } else { digits });
                } else {
                    let _ = write!(line, " {name}={}", bake_string(&v));
                }
            }
        }
        for e in excludes {
            let v = self.expand(st, e, Mode::Plain, indent);
            let _ = write!(line, " exclude={}", bake_string(&v));
        }
        let _ = writeln!(self.out, "{indent}{line}");
    }
}

/// The bake name of every stage: its own name, or one made from its base
/// image, unique across the file.
fn stage_names(df: &Dockerfile) -> Vec<String> {
    let mut taken: BTreeSet<String> = df.stages.iter().filter_map(|s| s.name().map(str::to_owned)).collect();
    let last = df.stages.len().saturating_sub(1);
    let mut out = Vec::with_capacity(df.stages.len());
    for s in &df.stages {
        if let Some(n) = s.name() {
            out.push(n.to_owned());
            continue;
        }
        let base = image_stem(&s.from().image.text);
        let stem = match base {
            Some(b) if b != "scratch" && !df.stages.iter().any(|o| o.name() == Some(b.as_str())) => b,
            _ if s.index == last => "app".to_owned(),
            _ => "files".to_owned(),
        };
        let mut name = stem.clone();
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        taken.insert(name.clone());
        out.push(name);
    }
    out
}

/// `golang` of `docker.io/library/golang:1.22@sha256:...`, cleaned to a
/// valid name; `None` when the reference is made of variables.
fn image_stem(image: &str) -> Option<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let repo = last.split(':').next().unwrap_or(last);
    let clean: String =
        repo.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c.to_ascii_lowercase() } else { '-' }
            })
            .collect();
    let clean = clean.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned();
    (!clean.is_empty() && !repo.contains('$')).then_some(clean)
}

/// `$` escaped for the image config's expansion of `env` and `workdir`.
fn config_escape(value: &str) -> String {
    value.replace('$', "\\$")
}

fn predefined_value(name: &str) -> &'static str {
    match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => "linux/amd64",
        "TARGETOS" | "BUILDOS" => "linux",
        "TARGETARCH" | "BUILDARCH" => "amd64",
        _ => "",
    }
}

fn arg_ref(name: &str) -> String {
    format!("{ARG_OPEN}{name}{ARG_CLOSE}")
}

/// The value with ARG references as their names' values would be unknown:
/// only the text (for deciding what a `from` names).
fn strip_markers(value: &str) -> String {
    value.chars().filter(|c| ![ARG_OPEN, ARG_CLOSE, DEFER_OPEN, DEFER_CLOSE].contains(c)).collect()
}

fn command_args(st: &StageVars, cl: &CommandLine) -> Vec<String> {
    match cl {
        CommandLine::Exec { args, .. } => args.clone(),
        CommandLine::Shell(w) if w.text.is_empty() => Vec::new(),
        CommandLine::Shell(w) => {
            let mut args = st.shell.clone();
            args.push(w.text.clone());
            args
        }
    }
}

fn trim_end(s: &str) -> String {
    s.trim_end().to_owned()
}

/// Literal strings (no ARGs in them) as KDL arguments.
fn literal_list(args: &[String]) -> String {
    args.iter().map(|a| kdl_string(&escape_interp(a))).collect::<Vec<_>>().join(" ")
}

/// A value with marked ARG references as a KDL string for bake: references
/// become `${NAME}`, deferred variables `$${NAME}`, literal `$` escaped for
/// interpolation.
pub(crate) fn bake_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ARG_OPEN => {
                out.push_str("${");
                i += 1;
                while i < chars.len() && chars[i] != ARG_CLOSE {
                    out.push(chars[i]);
                    i += 1;
                }
                out.push('}');
            }
            DEFER_OPEN => {
                out.push_str("$${");
                i += 1;
                while i < chars.len() && chars[i] != DEFER_CLOSE {
                    out.push(chars[i]);
                    i += 1;
                }
                out.push('}');
            }
            '$' if matches!(chars.get(i + 1), Some(&('$' | '{' | ARG_OPEN | DEFER_OPEN))) => out.push_str("$$"),
            c => out.push(c),
        }
        i += 1;
    }
    kdl_string(&out)
}

/// Literal text for bake's interpolation: `${` and `$$` would be read as
/// an arg or an escape, so their `$` is doubled.
pub fn escape_interp(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '$' && matches!(chars.peek(), Some('$' | '{')) {
            out.push('$');
        }
    }
    out
}

/// A KDL v2 quoted string holding exactly `text`.
pub fn kdl_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_kdl_disallowed(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Code points KDL v2 forbids in a document, and the ones it reads as a
/// newline (so they cannot stand in a single-line string).
fn is_kdl_disallowed(c: char) -> bool {
    matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{7F}')
        || ('\u{E000}'..='\u{E003}').contains(&c)
}

/// A run script: a KDL v2 multi-line string when it has several lines and
/// can be written as one exactly, else a quoted string.
fn script_string(text: &str, indent: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let multi = lines.len() > 1
        && !text.contains("\"\"\"")
        && !text.contains('\r')
        && lines.iter().all(|l| l.is_empty() || !l.trim().is_empty())
        && !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t' || is_kdl_disallowed(c));
    if !multi {
        return kdl_string(text);
    }
    let pad = format!("{indent}    ");
    let mut out = String::from("\"\"\"\n");
    for l in &lines {
        if !l.is_empty() {
            out.push_str(&pad);
            out.push_str(&l.replace('\\', "\\\\"));
        }
        out.push('\n');
    }
    out.push_str(&pad);
    out.push_str("\"\"\"");
    out
}

/// A duration as Go writes it (`1m30s`, `500ms`).
fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if !ns.is_multiple_of(1_000_000_000) {
        return if ns.is_multiple_of(1_000_000) { format!("{}ms", ns / 1_000_000) } else { format!("{ns}ns") };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if m > 0 {
        let _ = write!(out, "{m}m");
    }
    if s > 0 || out.is_empty() {
        let _ = write!(out, "{s}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{bake_string, escape_interp, import, kdl_string, script_string};
    use crate::lang::{InstructionKind, LoadOptions, Workspace, load_dockerfile_str, load_str};

    /// What each stage does, without spans: the thing an import must keep.
    fn steps(ws: &Workspace) -> Vec<(String, Vec<InstructionKind>)> {
        ws.stages
            .iter()
            .map(|s| {
                // The Dockerfile's WORKDIR makes its folder in a step of its
                // own; build.kdl's `workdir` leaves that to the first step
                // that uses it (the sandbox makes a run step's folder, a copy
                // makes its destination): the book lists it as a difference.
                let kept = s.instructions.iter().filter(|i| !matches!(&i.kind, InstructionKind::Copy(c) if c.mkdir));
                let kinds = kept.map(|i| match &i.kind {
                    // Spans differ, and owners are the one thing build.kdl
                    // cannot say (the import notes it).
                    InstructionKind::Copy(c) => {
                        let mut c = c.clone();
                        c.source_spans.clear();
                        c.keep_owners = false;
                        InstructionKind::Copy(c)
                    }
                    k => k.clone(),
                });
                (format!("{:?}", s.image.is_some()), kinds.collect())
            })
            .collect()
    }

    /// Loads `dockerfile` both ways: as itself, and imported as a build.kdl.
    fn both(dockerfile: &str) -> (Workspace, Workspace, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = LoadOptions::default();
        options.dockerfile.context = Some(dir.path().to_path_buf());
        let direct = load_dockerfile_str(&dir.path().join("Dockerfile"), dockerfile, &options)
            .unwrap_or_else(|e| panic!("the Dockerfile loads: {e:?}"));
        let df = super::super::parse_str("Dockerfile", Arc::new(dockerfile.to_owned())).expect("parses");
        let options = super::ImportOptions { origin: "Dockerfile".to_owned(), ..super::ImportOptions::default() };
        let kdl = import(&df, &options).text;
        let imported = load_str("build.kdl", dir.path(), &kdl, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("the import loads:\n{kdl}\n{:?}", e.errors));
        (direct, imported, kdl)
    }

    #[test]
    fn strings_survive_kdl_and_interpolation_exactly() {
        let hard =
            ["plain", "a \"quoted\" word", "back\\slash\\", "two\nlines\n", "tab\there", "${HOME} $$ $x $", "\u{7f}\r"];
        for text in hard {
            let kdl = format!("env \"X\" {}\n", bake_string(text));
            let doc: kdl::KdlDocument = kdl.parse().unwrap_or_else(|e| panic!("{kdl}: {e:?}"));
            let value = doc.nodes()[0].entries()[1].value().as_string().expect("a string").to_owned();
            assert_eq!(value, escape_interp(text), "{kdl}");
            let doc: kdl::KdlDocument = format!("n {}", kdl_string(text)).parse().expect("parses");
            assert_eq!(doc.nodes()[0].entries()[0].value().as_string(), Some(text));
        }
        for script in ["set -e\necho \"a\\b\"\n\ttabbed\n", "one\n\nthree", "x\n  \ny"] {
            let kdl = format!("run {}\n", script_string(script, ""));
            let doc: kdl::KdlDocument = kdl.parse().unwrap_or_else(|e| panic!("{kdl}: {e:?}"));
            assert_eq!(doc.nodes()[0].entries()[0].value().as_string(), Some(script), "{kdl}");
        }
    }

    #[test]
    fn an_import_means_what_the_dockerfile_means() {
        let (direct, imported, kdl) = both(
            "ARG BASE=busybox:1.36\nFROM $BASE AS build\nARG V=1\nENV P=/x:$PATH W=\"$V two\"\nWORKDIR /src/$V\n\
             COPY a b ./\nRUN --mount=type=cache,target=/c,sharing=locked echo ${V} '$$' \\\n  && echo \"${HOME}\"\n\
             RUN [\"/bin/echo\", \"${V}\"]\n\
             FROM scratch\nCOPY --from=0 --chmod=644 /src /s\nCOPY --from=build /src /t\nEXPOSE 80 53/udp\n\
             LABEL a=b \"c d\"=e\nUSER 1:2\nVOLUME /v\nSTOPSIGNAL SIGINT\nSHELL [\"/bin/bash\", \"-c\"]\n\
             HEALTHCHECK --interval=1m30s --retries=3 CMD true\nCMD echo hi\nENTRYPOINT [\"/e\"]\n",
        );
        assert_eq!(steps(&imported), steps(&direct), "{kdl}");
        assert!(!kdl.contains("stage \"0\"") && !kdl.contains("stage0"), "{kdl}");
        assert_eq!(kdl.matches("// bake import: COPY --from keeps the files' owners").count(), 2, "{kdl}");
    }
}
