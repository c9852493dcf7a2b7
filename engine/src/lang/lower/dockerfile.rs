//! Dockerfiles lowered into stages: the tree [`crate::dockerfile`] reads
//! becomes the same [`Stage`]s and [`Instruction`]s a `build.kdl` gives, so
//! a Dockerfile's steps get the same keys, cache, scheduler and outputs.
//!
//! Variables are expanded here, as BuildKit's frontend expands them before
//! it builds: the global ARGs (with the predefined platform args) in `FROM`
//! lines, and in a stage its ARGs and ENVs, in instruction order, through
//! [`Scope`]. One thing BuildKit knows that a load does not: the
//! environment of a base *image* (its config is read when the build
//! fetches it). A variable the Dockerfile does not set, in a stage that
//! starts from an image, is therefore left for later in `ENV` and `WORKDIR`
//! values (`ENV PATH=/go/bin:$PATH`): the image config expands it against
//! the base image's environment when the step runs, as it does for
//! `build.kdl`. Elsewhere (a `COPY` path, a `LABEL`) it expands to nothing.
//!
//! ARG values reach `RUN` steps as environment variables, as in Docker
//! (an `ENV` of the same name wins), so they are part of the step's key
//! and never of the image config. `CMD` and `ENTRYPOINT` in shell form are
//! stored as Docker stores them: the stage's `SHELL` (default `/bin/sh -c`)
//! followed by the command line. `MAINTAINER` sets the config's `author`,
//! and `ONBUILD` adds its instruction's text to the config's `OnBuild`.
//!
//! Unnamed stages are named by their index (`0`, `1`, ...), the name
//! `COPY --from=0` uses; BuildKit's stage names start with a letter, so the
//! two never meet. The `--target` stage (default: the last) is the image.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::values::{normalize_absolute, parse_port};
use super::{Cx, Decl};
use crate::dockerfile::{
    self, CommandLine, Dockerfile, Healthcheck as DfHealthcheck, Instruction as DfInstruction, Kind, MountType,
    Platform, Scope, Source, Word,
};
use crate::lang::SourceFile;
use crate::lang::boundary::{Boundary, Resolved as Place};
use crate::lang::error::{Errors, LangError, list_names, quoted};
use crate::lang::schema;
use crate::lang::{
    Base, BindMount, CacheMount, Copy, CopySource, FileId, HealthTest, Healthcheck, ImageOutput, Instruction,
    InstructionKind, Network, Run, SecretMount, Security, Sharing, Span, Stage,
};
use crate::reference::ImageRef;
use crate::sandbox::normalize_signal;

/// What a Dockerfile build asks for besides the file.
#[derive(Debug, Clone, Default)]
pub struct DockerfileOptions {
    /// `--target`: the stage that becomes the image (default: the last).
    pub target: Option<String>,
    /// `-t`: the image's tags.
    pub tags: Vec<String>,
    /// The build context (a context argument); `None`: the workspace
    /// given with `-C`, else the Dockerfile's folder.
    pub context: Option<std::path::PathBuf>,
}

/// Where a Dockerfile's stages go and what they are built with.
#[derive(Clone, Copy)]
pub(super) struct Input<'a> {
    /// The build context of every stage.
    pub(super) context: &'a Path,
    /// `--build-arg` values (or a `dockerfile` node's `arg` children).
    pub(super) build_args: &'a [(String, String)],
    pub(super) options: &'a DockerfileOptions,
    /// Stage names are `PREFIX.NAME` when set (a `dockerfile` node).
    pub(super) prefix: Option<&'a str>,
    /// The workspace id of the first stage.
    pub(super) first_id: usize,
    /// Whether the target stage is an image (a Dockerfile built on its
    /// own); a `dockerfile` node's stages are stages only.
    pub(super) image: bool,
}

/// Marks a variable left for the image config to expand (see the module
/// docs): private-use characters no Dockerfile value holds.
const DEFER_OPEN: char = '\u{E000}';
const DEFER_CLOSE: char = '\u{E001}';

/// The state of one stage while it is lowered.
#[derive(Clone)]
struct StageState {
    scope: Scope,
    /// ARGs declared in the stage, with their values, in force for `RUN`.
    args: BTreeMap<String, String>,
    /// Names set by `ENV` in this stage or a stage it starts from.
    env_names: BTreeSet<String>,
    /// The stage's ENVs with their values (for stages built on it).
    env: Vec<(String, String)>,
    /// The `SHELL` in force.
    shell: Vec<String>,
    /// Whether variables unknown here may come from a base image's config.
    image_env: bool,
    /// `CMD` given in this stage (so `ENTRYPOINT` keeps it, as BuildKit does).
    cmd: Option<Vec<String>>,
    /// The `USER` set by this Dockerfile, for the folders `WORKDIR` makes.
    user: Option<String>,
}

/// What a finished stage passes on to stages built on it.
#[derive(Clone)]
struct Inherited {
    user: Option<String>,
    env: Vec<(String, String)>,
    env_names: BTreeSet<String>,
    shell: Vec<String>,
    image_env: bool,
}

fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned()]
}

/// `$` kept literally by the image config's expansion, and deferred
/// variables written as `${NAME}` for it.
fn for_config(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("\\$"),
            DEFER_OPEN => {
                out.push_str("${");
                for n in chars.by_ref() {
                    if n == DEFER_CLOSE {
                        break;
                    }
                    out.push(n);
                }
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out
}

/// A value with deferred variables dropped (they expand to nothing where
/// nothing expands them later).
fn settled(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut skipping = false;
    for c in value.chars() {
        match c {
            DEFER_OPEN => skipping = true,
            DEFER_CLOSE => skipping = false,
            c if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

/// A context path as BuildKit reads it: relative to the context's root,
/// where `..` stops (`../x` is `x`), `.` for the root itself.
fn context_path(raw: &str) -> String {
    let clean = normalize_absolute(raw);
    match clean.trim_start_matches('/') {
        "" => ".".to_owned(),
        rest => rest.to_owned(),
    }
}

/// The names a word uses with a modifier (`${X:-d}`, `${X#p}`, ...).
fn with_modifier(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        let after = &rest[at + 2..];
        let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if after[len..].starts_with([':', '-', '+', '?', '#', '%', '/']) {
            out.push(after[..len].to_owned());
        }
        rest = &after[len..];
    }
    out
}

/// The host architecture as a platform (`linux/amd64` on x86-64).
fn host_platform() -> Platform {
    Platform { os: "linux".to_owned(), arch: crate::image::host_architecture().to_owned(), variant: None }
}

/// How a stage is named in the workspace: `prefix.` (for a `dockerfile`
/// node) and its name, or its index when it has none.
fn stage_name(prefix: Option<&str>, stage: &dockerfile::Stage) -> String {
    let own = stage.name().map_or_else(|| stage.index.to_string(), str::to_owned);
    match prefix {
        Some(p) => format!("{p}.{own}"),
        None => own,
    }
}

/// The Dockerfiles that `dockerfile` nodes name, read and parsed before
/// names are collected (their stages are names of the workspace). Each
/// becomes a file of the workspace, so diagnostics point into it. `path=`
/// is taken as written (no `${...}`): it decides which names exist.
pub(super) fn read_nodes(
    docs: &[(FileId, kdl::KdlDocument)],
    boundary: &Boundary,
    files: &mut Vec<SourceFile>,
    errors: &mut Errors,
) -> HashMap<(FileId, usize), (FileId, Dockerfile)> {
    let mut out = HashMap::new();
    for (file_id, doc) in docs {
        for node in doc.nodes().iter().filter(|n| n.name().value() == "dockerfile") {
            let Some(entry) = node.entries().iter().find(|e| e.name().is_some_and(|n| n.value() == "path")) else {
                continue; // the schema check reports it
            };
            let Some(raw) = entry.value().as_string() else { continue };
            let file = &files[*file_id];
            let at = entry.span();
            let path = file.dir.join(raw);
            let path = match boundary.check(&path) {
                Place::Inside(p) => p,
                Place::Outside(resolved) => {
                    errors.push(LangError::OutsideWorkspace {
                        what: "Dockerfile",
                        written: quoted(raw),
                        resolved,
                        workspace: boundary.root().to_path_buf(),
                        src: file.src(),
                        at,
                    });
                    continue;
                }
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(LangError::InvalidValue {
                        message: format!("cannot read the Dockerfile `{}`: {e}", quoted(raw)),
                        src: file.src(),
                        at,
                        label: "this Dockerfile".to_owned(),
                        help: Some("`path=` is relative to the folder of this build file".to_owned()),
                    });
                    continue;
                }
            };
            let dir = path.parent().map_or_else(|| file.dir.clone(), Path::to_path_buf);
            let name = raw.trim_start_matches("./").to_owned();
            let source = SourceFile { path, name, dir, text: std::sync::Arc::new(text) };
            match crate::dockerfile::parse(&source) {
                Ok(df) => {
                    out.insert((*file_id, node.span().offset()), (files.len(), df));
                    files.push(source);
                }
                Err(e) => {
                    for one in e.errors {
                        errors.push(LangError::Dockerfile(Box::new(one)));
                    }
                }
            }
        }
    }
    out
}

/// Records the args an expansion read, with their values.
fn note_used(scope: &Scope, used: &BTreeSet<String>, into: &mut BTreeMap<String, String>) {
    for name in used {
        if let Some(v) = scope.get(name) {
            into.insert(name.clone(), v.to_owned());
        }
    }
}

/// `CMD`/`ENTRYPOINT` as stored in the image: exec form as given, shell
/// form through the stage's `SHELL`.
fn command_args(st: &StageState, cl: &CommandLine) -> Vec<String> {
    match cl {
        CommandLine::Exec { args, .. } => args.clone(),
        CommandLine::Shell(w) => {
            let mut args = st.shell.clone();
            args.push(w.text.clone());
            args
        }
    }
}

impl Cx<'_> {
    /// Lowers a parsed Dockerfile (file `file`) into stages whose ids start
    /// at `first_id`; `context` is the build context of every stage.
    /// Returns `None` when an error was reported.
    pub(super) fn lower_dockerfile(&mut self, df: &Dockerfile, file: FileId, input: &Input<'_>) -> Option<Vec<Stage>> {
        let Input { context, build_args, options, prefix, first_id, image: as_image } = *input;
        // BuildKit reads `Dockerfile.dockerignore` beside the Dockerfile in
        // place of the context's `.dockerignore`.
        let own_ignore = {
            let path = &self.file(file).path;
            let name = path.file_name().map(|n| format!("{}.dockerignore", n.to_string_lossy()));
            name.map(|n| path.with_file_name(n)).filter(|p| p.is_file())
        };
        let ignore_file = own_ignore.as_deref();
        let before = self.errors.len();
        let at = |span| Span { file, span };
        if df.stages.is_empty() {
            self.invalid(
                at((0, 0).into()),
                "the Dockerfile has no FROM".to_owned(),
                "no stage",
                Some("a Dockerfile starts its first stage with `FROM IMAGE`"),
            );
            return None;
        }
        // The image stage, found before expansion: TARGETSTAGE names it.
        let target = match &options.target {
            None => df.stages.len() - 1,
            Some(t) => {
                let wanted = t.to_ascii_lowercase();
                let found = df.stages.iter().position(|s| s.name() == Some(wanted.as_str()));
                let Some(found) = found else {
                    let names: Vec<&str> = df.stages.iter().filter_map(dockerfile::Stage::name).collect();
                    self.invalid(
                        at((0, 0).into()),
                        format!("target stage `{}` could not be found", quoted(t)),
                        "this Dockerfile",
                        Some(&if names.is_empty() {
                            "no stage has a name: name one with `FROM IMAGE AS NAME`".to_owned()
                        } else {
                            format!("the named stages are {}", list_names(&names))
                        }),
                    );
                    return None;
                };
                found
            }
        };
        let args: BTreeMap<String, String> = build_args.iter().cloned().collect();
        let mut global = Scope::new(
            df.escape,
            args,
            &host_platform(),
            &host_platform(),
            df.stages[target].name().or(options.target.as_deref()),
        );
        for ins in &df.global_args {
            if let Kind::Arg(decls) = &ins.kind {
                for decl in decls {
                    if let Err((e, word)) = global.declare_global(decl) {
                        self.expansion_error(file, &word, &e.to_string());
                    }
                }
            }
        }

        let names: HashMap<&str, usize> = df.stages.iter().filter_map(|s| s.name().map(|n| (n, s.index))).collect();
        let mut inherited: Vec<Option<Inherited>> = vec![None; df.stages.len()];
        let mut stages = Vec::with_capacity(df.stages.len());
        for stage in &df.stages {
            let from = stage.from();
            let from_span = at(from.image.span);
            let mut used = BTreeMap::new();
            let image = match global.expand(&from.image.text) {
                Ok(e) => {
                    note_used(&global, &e.used, &mut used);
                    e.value
                }
                Err(e) => {
                    self.expansion_error(file, &from.image, &e.to_string());
                    continue;
                }
            };
            // Until bake builds for other platforms, one that is not the
            // host's is refused rather than built for the wrong one.
            if let Some(p) = &from.platform {
                match global.expand(&p.text) {
                    Err(e) => self.expansion_error(file, p, &e.to_string()),
                    Ok(e) => {
                        let host = host_platform();
                        let same = Platform::parse(&e.value).is_some_and(|w| w.os == host.os && w.arch == host.arch);
                        if !same {
                            self.invalid(
                                at(p.span),
                                format!("FROM --platform={} is not supported by bake yet", e.value),
                                &format!("bake builds for {host}, the machine it runs on"),
                                Some("leave --platform out, or use $BUILDPLATFORM / $TARGETPLATFORM"),
                            );
                        }
                    }
                }
            }
            let lower = image.to_ascii_lowercase();
            let (base, parent) = if lower == "scratch" {
                (Base::Scratch, None)
            } else if let Some(&i) = names.get(lower.as_str()).filter(|&&i| i < stage.index) {
                (Base::Stage(first_id + i), inherited[i].clone())
            } else {
                match ImageRef::parse(&image) {
                    Ok(r) => (Base::Image(r), None),
                    Err(e) => {
                        self.invalid(
                            from_span,
                            format!("`{}` is neither an earlier stage nor a valid image reference", quoted(&image)),
                            &e.to_string(),
                            Some("FROM names an image like `debian:bookworm-slim`, an earlier stage, or `scratch`"),
                        );
                        continue;
                    }
                }
            };
            let parent = parent.unwrap_or(Inherited {
                user: None,
                env: Vec::new(),
                env_names: BTreeSet::new(),
                shell: default_shell(),
                image_env: matches!(base, Base::Image(_)),
            });
            let mut st = StageState {
                scope: global.stage(&parent.env),
                args: BTreeMap::new(),
                env_names: parent.env_names.clone(),
                env: parent.env.clone(),
                shell: parent.shell.clone(),
                image_env: parent.image_env,
                cmd: None,
                user: parent.user.clone(),
            };
            let mut instructions = Vec::new();
            for ins in &stage.instructions {
                self.lower_df_instruction(df, ins, file, &names, stage.index, first_id, &mut st, &mut instructions);
            }
            inherited[stage.index] = Some(Inherited {
                user: st.user,
                env: st.env,
                env_names: st.env_names,
                shell: st.shell,
                image_env: st.image_env,
            });
            let image_out = (as_image && stage.index == target).then(|| ImageOutput {
                tags: options
                    .tags
                    .iter()
                    .filter_map(|t| match ImageRef::parse(t) {
                        Ok(r) => Some((r, from_span)),
                        Err(e) => {
                            self.invalid(
                                from_span,
                                format!("`-t {}` is not a valid image reference", quoted(t)),
                                &e.to_string(),
                                None,
                            );
                            None
                        }
                    })
                    .collect(),
                annotations: Vec::new(),
                platforms: None,
                build_for: Vec::new(),
            });
            let mut args_used = used;
            for ins in &instructions {
                let ins: &Instruction = ins;
                args_used.extend(ins.args_used.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            let name_span = from.name.as_ref().map_or(from.image.span, |w| w.span);
            let name = stage_name(prefix, stage);
            stages.push(Stage {
                instance: name.clone(),
                pin: None,
                // The machine bake runs on (a `dockerfile` node's stages
                // are made instances of with the workspace's).
                platform: crate::platform::Platform::host(),
                target: None,
                name,
                span: at(name_span),
                from: base,
                from_span,
                context: context.to_path_buf(),
                ignore_file: ignore_file.map(Path::to_path_buf),
                instructions,
                image: image_out,
                args_used,
            });
        }
        (self.errors.len() == before && stages.len() == df.stages.len()).then_some(stages)
    }

    fn expansion_error(&mut self, file: FileId, word: &Word, message: &str) {
        self.invalid(
            Span { file, span: word.span },
            format!("cannot expand `{}`: {message}", quoted(&word.text)),
            "here",
            None,
        );
    }

    /// A `dockerfile` node: its Dockerfile's stages, one per declaration
    /// that names collected (`None` for each when one failed).
    pub(super) fn lower_dockerfile_node(&mut self, decl: &Decl<'_>) -> Vec<Option<Stage>> {
        let file_id = decl.span.file;
        let count = self.dockerfiles.get(&(file_id, decl.node.span().offset())).map_or(0, |(_, df)| df.stages.len());
        let failed = || vec![None; count];
        let file = self.file(file_id);
        let Some(spec) = schema::TOP.iter().find(|s| s.name == "dockerfile") else { return failed() };
        let Some(checked) = schema::check(spec, decl.node, file, &mut self.errors) else { return failed() };
        let mut build_args = Vec::new();
        for child in decl.node.iter_children() {
            let Some(arg_spec) =
                schema::lookup(schema::DOCKERFILE_BODY, &["arg"], child, "dockerfile", file, &mut self.errors)
            else {
                continue;
            };
            let Some(c) = schema::check(arg_spec, child, file, &mut self.errors) else { continue };
            let (name, value) = (self.string(file_id, c.args[0]), self.string(file_id, c.args[1]));
            build_args.push((name, value));
        }
        self.used.clear();
        let Some((df_file, df)) = self.dockerfiles.remove(&(file_id, decl.node.span().offset())) else {
            return failed();
        };
        let context = match checked.prop("context") {
            Some(entry) => self.lower_context(Some(entry), file_id),
            None => self.file(df_file).dir.clone(),
        };
        // The node's own name, as names interpolated it.
        let prefix = self.string(file_id, checked.args[0]);
        self.used.clear();
        let options = DockerfileOptions::default();
        let input = Input {
            context: &context,
            build_args: &build_args,
            options: &options,
            prefix: Some(&prefix),
            first_id: decl.index,
            image: false,
        };
        match self.lower_dockerfile(&df, df_file, &input) {
            Some(stages) => stages.into_iter().map(Some).collect(),
            None => failed(),
        }
    }

    /// Expands a word in the stage; variables the stage does not know are
    /// deferred when `defer` (ENV, WORKDIR) and the base is an image.
    fn df_expand(
        &mut self,
        st: &StageState,
        word: &Word,
        file: FileId,
        defer: bool,
        used: &mut BTreeMap<String, String>,
    ) -> Option<String> {
        let deferring = defer && st.image_env;
        let modified = with_modifier(&word.text);
        let lookup = |name: &str| -> Option<String> {
            match st.scope.get(name) {
                Some(v) => Some(v.to_owned()),
                // `${X:-default}` means the default when the Dockerfile does
                // not set X: the base image setting it is the rarer case.
                None if deferring && !modified.iter().any(|m| m == name) => {
                    Some(format!("{DEFER_OPEN}{name}{DEFER_CLOSE}"))
                }
                None => None,
            }
        };
        match dockerfile::expand_word(&word.text, st.scope.escape(), &lookup) {
            Ok(e) => {
                for name in &e.used {
                    if let Some(v) = st.args.get(name) {
                        used.insert(name.clone(), v.clone());
                    }
                }
                Some(if deferring { e.value } else { settled(&e.value) })
            }
            Err(e) => {
                self.expansion_error(file, word, &e.to_string());
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments, clippy::too_many_lines)]
    fn lower_df_instruction(
        &mut self,
        df: &Dockerfile,
        ins: &DfInstruction,
        file: FileId,
        names: &HashMap<&str, usize>,
        index: usize,
        first_id: usize,
        st: &mut StageState,
        out: &mut Vec<Instruction>,
    ) {
        let span = Span { file, span: ins.span };
        let mut used = BTreeMap::new();
        let push = |out: &mut Vec<Instruction>, kind: InstructionKind, used: &BTreeMap<String, String>| {
            out.push(Instruction { span, kind, args_used: used.clone() });
        };
        match &ins.kind {
            Kind::From(_) => {}
            Kind::Arg(decls) => {
                for decl in decls {
                    match st.scope.declare(decl) {
                        Ok(_) => {
                            if let Some(v) = st.scope.get(&decl.name.text) {
                                st.args.insert(decl.name.text.clone(), v.to_owned());
                            }
                        }
                        Err((e, word)) => self.expansion_error(file, &word, &e.to_string()),
                    }
                }
            }
            Kind::Env(pairs) => {
                for kv in pairs {
                    let Some(key) = self.df_expand(st, &kv.key, file, false, &mut used) else { continue };
                    let Some(value) = self.df_expand(st, &kv.value, file, true, &mut used) else { continue };
                    self.check_env_name(&key, Span { file, span: kv.key.span });
                    st.scope.set_env(&key, &value);
                    st.env_names.insert(key.clone());
                    st.env.retain(|(k, _)| *k != key);
                    st.env.push((key.clone(), value.clone()));
                    push(out, InstructionKind::Env(key, for_config(&value)), &used);
                }
            }
            Kind::Label(pairs) => {
                for kv in pairs {
                    let Some(key) = self.df_expand(st, &kv.key, file, false, &mut used) else { continue };
                    let Some(value) = self.df_expand(st, &kv.value, file, false, &mut used) else { continue };
                    push(out, InstructionKind::Label(key, value), &used);
                }
            }
            Kind::Maintainer(w) => push(out, InstructionKind::Author(w.text.clone()), &used),
            Kind::Workdir(w) => {
                if let Some(dir) = self.df_expand(st, w, file, true, &mut used) {
                    let root = dir.trim_end_matches('/').is_empty() && dir.starts_with('/');
                    push(out, InstructionKind::Workdir(for_config(&dir)), &used);
                    // BuildKit makes the folder, owned by the USER in force.
                    if !root {
                        let mkdir = Copy {
                            sources: Vec::new(),
                            source_spans: Vec::new(),
                            dest: ".".to_owned(),
                            from: CopySource::Context,
                            chown: st.user.clone(),
                            chmod: None,
                            exclude: Vec::new(),
                            keep_owners: false,
                            optional: false,
                            mkdir: true,
                            extract: false,
                        };
                        push(out, InstructionKind::Copy(mkdir), &used);
                    }
                }
            }
            Kind::User(w) => {
                if let Some(user) = self.df_expand(st, w, file, false, &mut used) {
                    st.user = Some(user.clone());
                    push(out, InstructionKind::User(user), &used);
                }
            }
            Kind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    let Some(text) = self.df_expand(st, w, file, false, &mut used) else { continue };
                    for p in text.split_whitespace() {
                        match parse_port(p) {
                            Some(port) => ports.push(port),
                            None => self.invalid(
                                Span { file, span: w.span },
                                format!("`{}` is not a port", quoted(p)),
                                "expected PORT or PORT/PROTOCOL",
                                Some("bake reads single ports (8080, 53/udp); port ranges are not supported"),
                            ),
                        }
                    }
                }
                push(out, InstructionKind::Expose(ports), &used);
            }
            Kind::Volume { paths, .. } => {
                let mut list = Vec::new();
                for w in paths {
                    let Some(p) = self.df_expand(st, w, file, false, &mut used) else { continue };
                    if p.is_empty() {
                        self.invalid(Span { file, span: w.span }, "VOLUME needs a path".to_owned(), "empty", None);
                        continue;
                    }
                    list.push(p);
                }
                push(out, InstructionKind::Volume(list), &used);
            }
            Kind::StopSignal(w) => {
                let Some(raw) = self.df_expand(st, w, file, false, &mut used) else { return };
                match normalize_signal(&raw) {
                    Some(sig) => push(out, InstructionKind::StopSignal(sig), &used),
                    None => self.invalid(
                        Span { file, span: w.span },
                        format!("`{}` is not a signal", quoted(&raw)),
                        "unknown signal",
                        Some("use a name like SIGTERM or a number from 1 to 64"),
                    ),
                }
            }
            Kind::Shell(args) => {
                st.shell.clone_from(args);
                push(out, InstructionKind::Shell(args.clone()), &used);
            }
            Kind::Cmd(cl) => {
                let args = command_args(st, cl);
                st.cmd = Some(args.clone());
                push(out, InstructionKind::Cmd(args), &used);
            }
            Kind::Entrypoint(cl) => {
                let args = command_args(st, cl);
                push(out, InstructionKind::Entrypoint(args), &used);
                // BuildKit keeps a CMD given earlier in the same stage; the
                // config drops the inherited one with any new entrypoint.
                if let Some(cmd) = &st.cmd {
                    push(out, InstructionKind::Cmd(cmd.clone()), &used);
                }
            }
            Kind::Healthcheck(h) => {
                let hc = match h {
                    DfHealthcheck::None => Healthcheck {
                        test: HealthTest::None,
                        interval_ns: None,
                        timeout_ns: None,
                        start_period_ns: None,
                        start_interval_ns: None,
                        retries: None,
                    },
                    DfHealthcheck::Cmd(c) => {
                        let ns = |d: Option<std::time::Duration>| {
                            d.filter(|d| !d.is_zero()).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                        };
                        Healthcheck {
                            test: match &c.command {
                                CommandLine::Exec { args, .. } => HealthTest::Exec(args.clone()),
                                CommandLine::Shell(w) => HealthTest::Shell(w.text.clone()),
                            },
                            interval_ns: ns(c.interval),
                            timeout_ns: ns(c.timeout),
                            start_period_ns: ns(c.start_period),
                            start_interval_ns: ns(c.start_interval),
                            retries: c.retries.filter(|r| *r > 0),
                        }
                    }
                };
                push(out, InstructionKind::Healthcheck(hc), &used);
            }
            Kind::Onbuild(inner) => {
                let text = &self.file(file).text;
                let start = inner.span.offset();
                let end = (start + inner.span.len()).min(text.len());
                let raw = text.get(start..end).unwrap_or_default();
                // Continuations joined, as Docker stores the trigger.
                let joined = raw.replace(&format!("{}\n", df.escape), "");
                push(out, InstructionKind::OnBuild(joined.trim().to_owned()), &used);
            }
            Kind::Run(r) => {
                let run = self.lower_df_run(r, file, st, (names, index, first_id));
                // Every ARG in force reaches the step, so every one is in its key.
                for (k, v) in &st.args {
                    used.insert(k.clone(), v.clone());
                }
                push(out, InstructionKind::Run(run), &used);
            }
            Kind::Copy(c) => {
                let from = c.from.as_ref();
                if c.parents {
                    self.unsupported(span, "COPY --parents", "copy each folder with its own COPY");
                    return;
                }
                if let Some(copy) = self.lower_df_copy(
                    st,
                    file,
                    &c.sources,
                    &c.dest,
                    from,
                    c.chown.as_ref(),
                    c.chmod.as_ref(),
                    &c.excludes,
                    names,
                    index,
                    first_id,
                    &mut used,
                ) {
                    push(out, InstructionKind::Copy(copy), &used);
                }
            }
            Kind::Add(a) => {
                if a.checksum.is_some() || a.keep_git_dir.is_some() {
                    self.unsupported(span, "ADD --checksum and --keep-git-dir", "download in a RUN step");
                    return;
                }
                for s in &a.sources {
                    if let Source::Path(w) = s {
                        let t = w.text.to_ascii_lowercase();
                        if t.starts_with("http://") || t.starts_with("https://") || t.starts_with("git@") {
                            self.unsupported(
                                Span { file, span: w.span },
                                "ADD from a URL",
                                "download it in a RUN step, or COPY a file kept in the context",
                            );
                            return;
                        }
                        // Plain and gzip tars are unpacked (by their bytes, as
                        // BuildKit decides); these need decoders bake lacks.
                        let undecoded = [".tar.bz2", ".tbz2", ".tar.xz", ".txz"];
                        if undecoded.iter().any(|ext| t.ends_with(ext)) && a.unpack != Some(false) {
                            self.unsupported(
                                Span { file, span: w.span },
                                "ADD of a bzip2 or xz archive (which Docker extracts)",
                                "COPY the archive and extract it in a RUN step, or use a gzip tar",
                            );
                            return;
                        }
                    }
                }
                if let Some(copy) = self.lower_df_copy(
                    st,
                    file,
                    &a.sources,
                    &a.dest,
                    None,
                    a.chown.as_ref(),
                    a.chmod.as_ref(),
                    &a.excludes,
                    names,
                    index,
                    first_id,
                    &mut used,
                ) {
                    let extract = a.unpack != Some(false);
                    push(out, InstructionKind::Copy(Copy { extract, ..copy }), &used);
                }
            }
        }
    }

    /// A feature of the Dockerfile that bake does not build yet.
    fn unsupported(&mut self, at: Span, what: &str, instead: &str) {
        self.invalid(at, format!("{what} is not supported by bake yet"), "not supported", Some(instead));
    }

    fn lower_df_run(
        &mut self,
        r: &dockerfile::Run,
        file: FileId,
        st: &StageState,
        (names, index, first_id): (&HashMap<&str, usize>, usize, usize),
    ) -> Run {
        let (script, exec) = match &r.command {
            CommandLine::Exec { args, .. } => (args.join(" "), Some(args.clone())),
            CommandLine::Shell(_) => (r.shell_script().unwrap_or_default(), None),
        };
        let mut run = Run {
            script,
            exec,
            caches: Vec::new(),
            secrets: Vec::new(),
            network: match r.network {
                None | Some((dockerfile::Network::Default, _)) => Network::Private,
                Some((dockerfile::Network::None, _)) => Network::None,
                Some((dockerfile::Network::Host, _)) => Network::Host,
            },
            security: match r.security {
                Some((dockerfile::Security::Insecure, at)) => Security::Insecure { at: Span { file, span: at } },
                _ => Security::Sandbox,
            },
            env: Vec::new(),
            binds: Vec::new(),
            tmpfs: Vec::new(),
        };
        for m in &r.mounts {
            let at = Span { file, span: m.raw.span };
            let mount = match m.resolve(&st.scope) {
                Ok(mount) => mount,
                Err(e) => {
                    self.invalid(at, format!("cannot read this mount: {e}"), "here", None);
                    continue;
                }
            };
            match mount.kind {
                MountType::Cache => {
                    if mount.from.is_some()
                        || mount.source.is_some()
                        || mount.uid.is_some()
                        || mount.gid.is_some()
                        || mount.mode.is_some()
                    {
                        self.unsupported(
                            at,
                            "a cache mount with from, source, uid, gid or mode",
                            "leave them out: the cache folder is root's, mode 0755",
                        );
                        continue;
                    }
                    let Some(target) = mount.target.clone() else {
                        self.invalid(at, "a cache mount needs a target".to_owned(), "no target=", None);
                        continue;
                    };
                    let path = normalize_absolute(&target);
                    let id = mount.id.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| path.clone());
                    let sharing = match mount.sharing {
                        None | Some(dockerfile::Sharing::Shared) => Sharing::Shared,
                        Some(dockerfile::Sharing::Private) => Sharing::Private,
                        Some(dockerfile::Sharing::Locked) => Sharing::Locked,
                    };
                    run.caches.push(CacheMount { path, id, sharing });
                }
                MountType::Secret => {
                    if mount.uid.is_some() || mount.gid.is_some() || mount.mode.is_some() {
                        self.unsupported(
                            at,
                            "a secret mount with uid, gid or mode",
                            "read the secret file in the step",
                        );
                        continue;
                    }
                    // BuildKit: the id defaults to the target's base name.
                    let id = mount
                        .id
                        .clone()
                        .or_else(|| mount.source.clone())
                        .or_else(|| mount.target.as_deref().and_then(|t| t.rsplit('/').next()).map(str::to_owned));
                    let Some(id) = id.filter(|i| !i.is_empty()) else {
                        self.invalid(at, "a secret mount needs an id".to_owned(), "no id=", None);
                        continue;
                    };
                    // With `env=`, a file only when a target is given too.
                    let target = match (&mount.target, &mount.env) {
                        (Some(t), _) => normalize_absolute(t),
                        (None, Some(_)) => String::new(),
                        (None, None) => format!("/run/secrets/{id}"),
                    };
                    run.secrets.push(SecretMount { id, target, required: mount.required, env: mount.env.clone() });
                }
                MountType::Bind => {
                    let Some(target) = mount.target.clone().filter(|t| !t.is_empty()) else {
                        self.invalid(at, "a bind mount needs a target".to_owned(), "no target=", None);
                        continue;
                    };
                    let raw = mount.source.as_deref().unwrap_or("/");
                    let (from, source) = match &mount.from {
                        None => (CopySource::Context, context_path(raw)),
                        Some(name) => match self.df_source(name, at, names, index, first_id) {
                            Some(from) => (from, normalize_absolute(raw)),
                            None => continue,
                        },
                    };
                    run.binds.push(BindMount { source, from, target, readonly: mount.readonly });
                }
                MountType::Tmpfs => match mount.target.clone().filter(|t| !t.is_empty()) {
                    Some(target) => run.tmpfs.push(target),
                    None => self.invalid(at, "a tmpfs mount needs a target".to_owned(), "no target=", None),
                },
                MountType::Ssh => {
                    self.unsupported(at, "RUN --mount=type=ssh", "COPY what the step needs into the stage first");
                }
            }
        }
        run.env = st
            .args
            .iter()
            .filter(|(k, _)| !st.env_names.contains(*k))
            .map(|(k, v)| (k.clone(), for_config(v)))
            .collect();
        run
    }

    #[allow(clippy::too_many_arguments)]
    fn lower_df_copy(
        &mut self,
        st: &StageState,
        file: FileId,
        sources: &[Source],
        dest: &Word,
        from: Option<&Word>,
        chown: Option<&Word>,
        chmod: Option<&Word>,
        excludes: &[Word],
        names: &HashMap<&str, usize>,
        index: usize,
        first_id: usize,
        used: &mut BTreeMap<String, String>,
    ) -> Option<Copy> {
        let from = match from {
            None => CopySource::Context,
            Some(w) => {
                let raw = self.df_expand(st, w, file, false, used)?;
                self.df_source(&raw, Span { file, span: w.span }, names, index, first_id)?
            }
        };
        self.lower_df_copy_rest(st, file, sources, dest, from, chown, chmod, excludes, used)
    }

    /// What `--from=` names: an earlier stage by index, a stage by name, or
    /// an image.
    fn df_source(
        &mut self,
        raw: &str,
        at: Span,
        names: &HashMap<&str, usize>,
        index: usize,
        first_id: usize,
    ) -> Option<CopySource> {
        let raw = raw.to_owned();
        Some({
            {
                let lower = raw.to_ascii_lowercase();
                if let Ok(i) = raw.parse::<usize>() {
                    if i >= index {
                        self.invalid(
                            at,
                            format!("COPY --from={i} names stage {i}, which is not an earlier stage"),
                            "not an earlier stage",
                            Some("stages are numbered from 0 in file order"),
                        );
                        return None;
                    }
                    CopySource::Stage(first_id + i)
                } else if let Some(&i) = names.get(lower.as_str()) {
                    if i == index {
                        self.invalid(at, "a stage cannot copy from itself".to_owned(), "this stage", None);
                        return None;
                    }
                    CopySource::Stage(first_id + i)
                } else if lower == "scratch" {
                    self.invalid(at, "cannot copy from `scratch`".to_owned(), "scratch is empty", None);
                    return None;
                } else {
                    match ImageRef::parse(&raw) {
                        Ok(r) => CopySource::Image(r),
                        Err(e) => {
                            self.invalid(
                                at,
                                format!("`{}` is neither a stage nor a valid image reference", quoted(&raw)),
                                &e.to_string(),
                                None,
                            );
                            return None;
                        }
                    }
                }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn lower_df_copy_rest(
        &mut self,
        st: &StageState,
        file: FileId,
        sources: &[Source],
        dest: &Word,
        from: CopySource,
        chown: Option<&Word>,
        chmod: Option<&Word>,
        excludes: &[Word],
        used: &mut BTreeMap<String, String>,
    ) -> Option<Copy> {
        let mut paths = Vec::new();
        let mut spans = Vec::new();
        for s in sources {
            match s {
                Source::Heredoc(h) => {
                    self.unsupported(
                        Span { file, span: h.span },
                        "COPY from a heredoc",
                        "keep the file in the context",
                    );
                    return None;
                }
                Source::Path(w) => {
                    let raw = self.df_expand(st, w, file, false, used)?;
                    let at = Span { file, span: w.span };
                    if from == CopySource::Context {
                        paths.push(context_path(&raw));
                    } else {
                        paths.push(normalize_absolute(&raw));
                    }
                    spans.push(at);
                }
            }
        }
        let dest = self.df_expand(st, dest, file, false, used)?;
        let chown = match chown {
            Some(w) => Some(self.df_expand(st, w, file, false, used)?),
            None => None,
        };
        let chmod = match chmod {
            Some(w) => {
                let raw = self.df_expand(st, w, file, false, used)?;
                match u32::from_str_radix(&raw, 8).ok().filter(|m| *m <= 0o7777) {
                    Some(m) => Some(m),
                    None => {
                        self.invalid(
                            Span { file, span: w.span },
                            format!("`--chmod={}` is not an octal mode", quoted(&raw)),
                            "expected octal permissions like 755",
                            None,
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        let mut exclude = Vec::new();
        for w in excludes {
            exclude.push(self.df_expand(st, w, file, false, used)?);
        }
        let keep_owners = from != CopySource::Context;
        Some(Copy {
            sources: paths,
            source_spans: spans,
            dest,
            from,
            chown,
            chmod,
            exclude,
            keep_owners,
            optional: false,
            mkdir: false,
            extract: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::lang::{Base, CopySource, InstructionKind, LoadOptions, Workspace, load_dockerfile_str};

    fn load(text: &str, options: &LoadOptions) -> Result<Workspace, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = options.clone();
        options.dockerfile.context = Some(dir.path().to_path_buf());
        load_dockerfile_str(&dir.path().join("Dockerfile"), text, &options)
            .map_err(|e| e.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    fn kinds(ws: &Workspace, stage: usize) -> Vec<InstructionKind> {
        ws.stages[stage].instructions.iter().map(|i| i.kind.clone()).collect()
    }

    #[test]
    fn context_paths_stop_at_the_context_root_as_in_buildkit() {
        let ws = load("FROM busybox\nCOPY ../a /b/../c ./ /x/\n", &LoadOptions::default()).expect("load");
        let InstructionKind::Copy(copy) = &kinds(&ws, 0)[0] else { panic!("a copy") };
        assert_eq!(copy.sources, ["a", "c", "."]);
    }

    #[test]
    fn from_platform_may_name_the_build_machine() {
        let text = "FROM --platform=$BUILDPLATFORM busybox AS a\nFROM --platform=${TARGETPLATFORM} busybox\n";
        load(text, &LoadOptions::default()).expect("the host's platform");
    }

    #[test]
    fn the_last_stage_is_the_image_and_unnamed_stages_are_numbered() {
        let ws =
            load("FROM busybox AS Build\nRUN true\nFROM scratch\nCOPY --from=build /x /x\n", &LoadOptions::default())
                .expect("load");
        let names: Vec<&str> = ws.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["build", "1"]);
        assert!(ws.stages[0].image.is_none() && ws.stages[1].image.is_some());
        assert_eq!(ws.stages[1].from, Base::Scratch);
        let InstructionKind::Copy(copy) = &kinds(&ws, 1)[0] else { panic!("a copy") };
        assert_eq!(copy.from, CopySource::Stage(0));
        assert!(copy.keep_owners);
    }

    #[test]
    fn a_target_that_is_not_a_stage_lists_the_named_ones() {
        let mut options = LoadOptions::default();
        options.dockerfile.target = Some("tset".to_owned());
        let err = load("FROM busybox AS test\nFROM busybox AS app\n", &options).expect_err("unknown target");
        assert!(err.contains("target stage `tset` could not be found"), "{err}");
        options.dockerfile.target = Some("TEST".to_owned());
        let ws = load("FROM busybox AS test\nFROM busybox AS app\n", &options).expect("a target by any case");
        assert!(ws.stages[0].image.is_some() && ws.stages[1].image.is_none());
    }

    #[test]
    fn args_reach_run_steps_unless_an_env_shadows_them() {
        let options = LoadOptions { set: vec![("V".to_owned(), "given".to_owned())], ..LoadOptions::default() };
        let text = "ARG G=global\nFROM busybox\nARG G\nARG V=default\nARG U\nRUN a\nENV V=env\nRUN b\n";
        let ws = load(text, &options).expect("load");
        let runs: Vec<Vec<(String, String)>> = kinds(&ws, 0)
            .into_iter()
            .filter_map(|k| match k {
                InstructionKind::Run(r) => Some(r.env),
                _ => None,
            })
            .collect();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        // U has no value: BuildKit leaves it out of the environment.
        assert_eq!(runs, [vec![pair("G", "global"), pair("V", "given")], vec![pair("G", "global")]]);
        assert_eq!(ws.stages[0].instructions[0].args_used.get("V").map(String::as_str), Some("given"));
    }

    #[test]
    fn env_leaves_base_image_variables_to_the_image_config() {
        let text =
            "FROM busybox\nENV PATH=/x:$PATH A='$HOME' B=${UNSET:-d}\nWORKDIR $HOME/w\nFROM scratch\nENV P=$PATH\n";
        let ws = load(text, &LoadOptions::default()).expect("load");
        let mut k = kinds(&ws, 0);
        // WORKDIR makes its folder, as BuildKit does.
        assert!(matches!(k.pop(), Some(InstructionKind::Copy(c)) if c.mkdir && c.dest == "." && c.sources.is_empty()));
        assert_eq!(
            k,
            [
                InstructionKind::Env("PATH".into(), "/x:${PATH}".into()),
                InstructionKind::Env("A".into(), "\\$HOME".into()),
                InstructionKind::Env("B".into(), "d".into()),
                InstructionKind::Workdir("${HOME}/w".into()),
            ]
        );
        // scratch has no environment: nothing is left for later.
        assert_eq!(kinds(&ws, 1), [InstructionKind::Env("P".into(), String::new())]);
    }

    #[test]
    fn shell_forms_go_through_shell_and_entrypoint_keeps_this_stages_cmd() {
        let text =
            "FROM busybox\nCMD [\"a\"]\nSHELL [\"/bin/bash\", \"-c\"]\nENTRYPOINT run it\nRUN [\"/bin/true\", \"x\"]\n";
        let ws = load(text, &LoadOptions::default()).expect("load");
        let k = kinds(&ws, 0);
        assert_eq!(k[2], InstructionKind::Entrypoint(vec!["/bin/bash".into(), "-c".into(), "run it".into()]));
        assert_eq!(k[3], InstructionKind::Cmd(vec!["a".into()]));
        let InstructionKind::Run(run) = &k[4] else { panic!("a run") };
        assert_eq!(run.exec.as_deref(), Some(&["/bin/true".to_owned(), "x".to_owned()][..]));
    }

    #[test]
    fn a_dockerfile_node_adds_its_stages_under_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("svc")).expect("mkdir");
        std::fs::write(
            dir.path().join("svc/Dockerfile"),
            "ARG V=default\nFROM busybox AS builder\nARG V\nRUN echo $V\nFROM builder\nRUN true\n",
        )
        .expect("write");
        let kdl = r#"
            arg "WHO" default="kdl"
            dockerfile "legacy" path="svc/Dockerfile" { arg "V" "from ${WHO}"; }
            image "app" from="legacy.builder" { copy "/x" from="legacy.1" to="/x"; }
        "#;
        let ws = crate::lang::load_str("build.kdl", dir.path(), kdl, &LoadOptions::default()).expect("load");
        let names: Vec<&str> = ws.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["legacy.builder", "legacy.1", "app"]);
        assert_eq!(ws.stages[1].from, Base::Stage(0));
        assert_eq!(ws.stages[2].from, Base::Stage(0));
        assert!(ws.stages[0].image.is_none() && ws.stages[1].image.is_none());
        assert_eq!(ws.stages[0].context, dir.path().join("svc").canonicalize().expect("canonical"));
        let InstructionKind::Run(run) = &kinds(&ws, 0)[0] else { panic!("a run") };
        assert_eq!(run.env, [("V".to_owned(), "from kdl".to_owned())]);
        let InstructionKind::Copy(copy) = &kinds(&ws, 2)[0] else { panic!("a copy") };
        assert_eq!(copy.from, CopySource::Stage(1));
        // A Dockerfile stage name is one of the workspace's names.
        let clash = format!("{kdl}\nstage \"legacy.1\" from=\"scratch\"\n");
        let err = crate::lang::load_str("build.kdl", dir.path(), &clash, &LoadOptions::default()).expect_err("clash");
        assert!(err.errors.iter().any(|e| e.to_string().contains("legacy.1")), "{err:?}");
    }

    #[test]
    fn what_bake_cannot_build_yet_is_an_error_at_its_flag() {
        for (text, says) in [
            ("FROM busybox\nRUN --mount=type=ssh true\n", "RUN --mount=type=ssh is not supported"),
            ("FROM busybox\nADD https://example.com/a.tgz /a\n", "ADD from a URL is not supported"),
            ("FROM busybox\nADD app.tar.xz /a\n", "ADD of a bzip2 or xz archive"),
            ("FROM busybox\nCOPY --from=1 /a /a\nFROM busybox\n", "not an earlier stage"),
            ("FROM busybox\nCOPY --parents a/b /x/\n", "COPY --parents is not supported"),
            ("FROM --platform=windows/arm64 busybox\n", "FROM --platform=windows/arm64 is not supported"),
        ] {
            let err = load(text, &LoadOptions::default()).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
