//! Pass 4, the declarations: each `stage`/`image` with its `from=`, context
//! and instructions, each `artifact` and `target`, and the workspace's registry
//! caches. The steps inside a stage (`copy`, `run`, `healthcheck`) are lowered
//! in [`super::steps`].

use std::path::{Path, PathBuf};

use kdl::{KdlDocument, KdlEntry, KdlNode};

use super::values::{normalize_absolute, normalize_host, parse_port};
use super::{Cx, Decl, DeclKind, Names, Resolved, Spanned};
use crate::lang::boundary::Resolved as Place;
use crate::lang::error::{LangError, quoted, suggest};
use crate::lang::schema::{self, Checked, Spec};
use crate::lang::{
    Artifact, Base, FileId, ImageOutput, Instruction, InstructionKind, Member, Port, Span, Stage, Target,
};
use crate::platform::Platform;
use crate::reference::ImageRef;
use crate::sandbox::normalize_signal;

impl Cx<'_> {
    /// `cache-from` and `cache-to` nodes: registry caches, in file order.
    pub(super) fn lower_caches(&mut self, docs: &[(FileId, KdlDocument)]) -> (Spanned, Spanned) {
        let (mut from, mut to) = (Vec::new(), Vec::new());
        for (file_id, doc) in docs {
            let file = self.file(*file_id);
            for node in doc.nodes() {
                let name = node.name().value();
                let Some(spec) = schema::TOP.iter().find(|s| s.name == name && name.starts_with("cache-")) else {
                    continue;
                };
                let Some(checked) = schema::check(spec, node, file, &mut self.errors) else { continue };
                for entry in &checked.args {
                    let raw = self.string(*file_id, entry);
                    let at = Span { file: *file_id, span: entry.span() };
                    match raw.parse::<crate::reference::CacheRef>() {
                        Ok(_) if name == "cache-from" => from.push((raw, at)),
                        Ok(_) => to.push((raw, at)),
                        Err(e) => self.invalid(
                            at,
                            format!("`{raw}` is not a registry cache"),
                            &e,
                            Some("a registry cache is a repository, like `registry.example.com/team/cache`"),
                        ),
                    }
                }
            }
        }
        (from, to)
    }

    pub(super) fn lower_stage(&mut self, decl: &Decl<'_>, names: &Names) -> Option<Stage> {
        let file_id = decl.span.file;
        let file = self.file(file_id);
        let spec = schema::TOP.iter().find(|s| s.name == decl.kind.noun())?;
        let checked = schema::check(spec, decl.node, file, &mut self.errors)?;
        self.used.clear();
        let name = decl.name.clone();

        let from_entry = checked.prop("from")?;
        let from_span = Span { file: file_id, span: from_entry.span() };
        let from_raw = self.string(file_id, from_entry);
        // A base that does not resolve was reported; the body is still
        // lowered for its own errors, but the stage is not (so checks that walk
        // `from` chains do not run on a guess).
        let from = match self.resolve_ref(&from_raw, from_span, names, "base") {
            Some(Resolved::Scratch) => Some(Base::Scratch),
            Some(Resolved::Stage(id)) => Some(Base::Stage(id)),
            Some(Resolved::Image(r)) => Some(Base::Image(r)),
            None => None,
        };

        let context = self.lower_context(checked.prop("context"), file_id);
        let pin = checked.prop("platform").and_then(|entry| {
            let at = Span { file: file_id, span: entry.span() };
            let raw = self.string(file_id, entry);
            self.platform(&raw, at).map(|p| (p, at))
        });

        let allowed: &[&str] = spec.children.unwrap_or(&[]);
        let mut instructions = Vec::new();
        let mut image = (decl.kind == DeclKind::Image).then(ImageOutput::default);
        let stage_args = std::mem::take(&mut self.used);
        for node in decl.node.iter_children() {
            let Some(body_spec) = schema::lookup(schema::BODY, allowed, node, decl.kind.noun(), file, &mut self.errors)
            else {
                continue;
            };
            let Some(checked) = schema::check(body_spec, node, file, &mut self.errors) else {
                continue;
            };
            let span = Span { file: file_id, span: node.span() };
            match (body_spec.name, image.as_mut()) {
                ("tag", Some(out)) => self.lower_tags(&checked, file_id, &mut out.tags),
                ("platforms", Some(out)) => {
                    let list = self.lower_platforms(&checked, file_id);
                    out.platforms = Some((list, span));
                }
                ("annotation", Some(out)) => {
                    let key = self.string(file_id, checked.args[0]);
                    let value = self.string(file_id, checked.args[1]);
                    out.annotations.push((key, value));
                }
                _ => {
                    let kind = self.lower_instruction(body_spec, &checked, node, file_id, &context, names);
                    let args_used = std::mem::take(&mut self.used);
                    if let Some(kind) = kind {
                        instructions.push(Instruction { span, kind, args_used });
                    }
                }
            }
        }
        let mut args_used = stage_args;
        args_used.extend(std::mem::take(&mut self.used));
        for ins in &instructions {
            args_used.extend(ins.args_used.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Some(Stage {
            instance: name.clone(),
            name,
            span: decl.span,
            from: from?,
            from_span,
            context,
            ignore_file: None,
            instructions,
            image,
            args_used,
            pin,
            // Set when the workspace's instances are made (`platforms.rs`).
            platform: Platform::legacy(),
            target: None,
        })
    }

    pub(super) fn lower_instruction(
        &mut self,
        spec: &Spec,
        c: &Checked<'_>,
        node: &KdlNode,
        file: FileId,
        context: &Path,
        names: &Names,
    ) -> Option<InstructionKind> {
        let at = |e: &KdlEntry| Span { file, span: e.span() };
        let strings = |cx: &mut Self| -> Vec<String> { c.args.iter().map(|e| cx.string(file, e)).collect() };
        Some(match spec.name {
            "workdir" => InstructionKind::Workdir(self.string(file, c.args[0])),
            "copy" => InstructionKind::Copy(self.lower_copy(c, file, context, names)?),
            "run" => InstructionKind::Run(self.lower_run(c, node, file, names)),
            "env" => {
                let (name, value) = (self.string(file, c.args[0]), self.string(file, c.args[1]));
                self.check_env_name(&name, at(c.args[0]));
                InstructionKind::Env(name, value)
            }
            "user" => {
                let user = self.string(file, c.args[0]);
                if user.is_empty() || user.contains(char::is_whitespace) {
                    self.invalid(
                        at(c.args[0]),
                        format!("`{user}` is not a user"),
                        "expected a name or uid, with an optional group",
                        Some("for example: user \"65532:65532\" or user \"nobody\""),
                    );
                }
                InstructionKind::User(user)
            }
            "expose" => InstructionKind::Expose(self.lower_ports(c, file)),
            "entrypoint" | "cmd" | "shell" => {
                let args = strings(self);
                // A `cmd` names a program only when no entrypoint is set, which
                // the chain decides (see `check_exec_forms`).
                if let (Some(program), Some(entry), false) = (args.first(), c.args.first(), spec.name == "cmd") {
                    self.check_program(spec.name, program, &args, at(entry));
                }
                match spec.name {
                    "entrypoint" => InstructionKind::Entrypoint(args),
                    "cmd" => InstructionKind::Cmd(args),
                    _ => InstructionKind::Shell(args),
                }
            }
            "label" => InstructionKind::Label(self.string(file, c.args[0]), self.string(file, c.args[1])),
            "volume" => {
                let paths = strings(self);
                for (p, e) in paths.iter().zip(&c.args) {
                    if !p.starts_with('/') {
                        self.invalid(at(e), format!("volume `{p}` is not an absolute path"), "must start with /", None);
                    }
                }
                InstructionKind::Volume(paths)
            }
            "stopsignal" => {
                let raw = self.string(file, c.args[0]);
                match normalize_signal(&raw) {
                    Some(sig) => InstructionKind::StopSignal(sig),
                    None => {
                        self.invalid(
                            at(c.args[0]),
                            format!("`{raw}` is not a signal"),
                            "unknown signal",
                            Some("use a name like \"SIGTERM\" or \"SIGINT\", or a number from 1 to 64"),
                        );
                        return None;
                    }
                }
            }
            "healthcheck" => InstructionKind::Healthcheck(self.lower_healthcheck(c, node, file)?),
            _ => return None,
        })
    }

    /// A stage's `context=` (the folder of its build file when there is
    /// none), checked against the workspace boundary.
    pub(super) fn lower_context(&mut self, entry: Option<&KdlEntry>, file_id: FileId) -> PathBuf {
        let file = self.file(file_id);
        match entry {
            None => file.dir.clone(),
            Some(entry) => {
                let raw = self.string(file_id, entry);
                let at = Span { file: file_id, span: entry.span() };
                match self.boundary.check(&file.dir.join(&raw)) {
                    _ if self.suppressed(at) => normalize_host(&file.dir.join(&raw)),
                    Place::Outside(resolved) => {
                        self.outside("context", &raw, resolved, at);
                        file.dir.clone()
                    }
                    Place::Inside(dir) => {
                        if !dir.is_dir() {
                            self.invalid(
                                at,
                                format!("context `{}` is not a folder", quoted(&raw)),
                                "no such folder",
                                Some("`context=` is relative to the folder of this build.kdl"),
                            );
                        }
                        dir
                    }
                }
            }
        }
    }

    /// An image's `tag` node: each argument an image reference.
    fn lower_tags(&mut self, checked: &Checked<'_>, file_id: FileId, tags: &mut Vec<(ImageRef, Span)>) {
        for entry in &checked.args {
            let raw = self.string(file_id, entry);
            let at = Span { file: file_id, span: entry.span() };
            match ImageRef::parse(&raw) {
                Ok(r) => tags.push((r, at)),
                Err(e) => self.invalid(
                    at,
                    format!("`{raw}` is not a valid image reference"),
                    &e.to_string(),
                    Some("a tag looks like `registry.example.com/team/app:1.0`"),
                ),
            }
        }
    }

    /// `expose PORT...`: each `8080` or `53/udp`.
    fn lower_ports(&mut self, c: &Checked<'_>, file: FileId) -> Vec<Port> {
        let mut ports = Vec::new();
        for e in &c.args {
            let raw = self.string(file, e);
            match parse_port(&raw) {
                Some(p) => ports.push(p),
                None => self.invalid(
                    Span { file, span: e.span() },
                    format!("`{raw}` is not a port"),
                    "expected a port from 1 to 65535, optionally with /tcp, /udp or /sctp",
                    Some("for example: expose 8080 \"53/udp\""),
                ),
            }
        }
        ports
    }

    pub(super) fn lower_artifact(&mut self, decl: &Decl<'_>, names: &Names) -> Option<Artifact> {
        let file_id = decl.span.file;
        let file = self.file(file_id);
        let spec = schema::TOP.iter().find(|s| s.name == "artifact")?;
        let c = schema::check(spec, decl.node, file, &mut self.errors)?;
        let from_entry = c.prop("from")?;
        let from_span = Span { file: file_id, span: from_entry.span() };
        let from_raw = self.string(file_id, from_entry);
        let from = self.resolve_stage(&from_raw, from_span, names)?;
        let path = normalize_absolute(&self.string(file_id, c.prop("path")?));
        let dest_entry = c.prop("dest")?;
        let dest_raw = self.string(file_id, dest_entry);
        let dest_at = Span { file: file_id, span: dest_entry.span() };
        if dest_raw.is_empty() {
            self.invalid(dest_at, "`dest=` cannot be empty".to_owned(), "empty", None);
        }
        let dest = match self.boundary.check(&file.dir.join(&dest_raw)) {
            _ if self.suppressed(dest_at) => return None,
            Place::Inside(dest) => dest,
            Place::Outside(resolved) => {
                self.outside("artifact destination", &dest_raw, resolved, dest_at);
                return None;
            }
        };
        let keep_setuid = c.prop("keep-setuid").and_then(|e| e.value().as_bool()).unwrap_or(false);
        Some(Artifact { name: decl.name.clone(), span: decl.span, from, path, dest, keep_setuid })
    }

    pub(super) fn lower_target(&mut self, decl: &Decl<'_>, names: &Names) -> Option<Target> {
        let file_id = decl.span.file;
        let file = self.file(file_id);
        let spec = schema::TOP.iter().find(|s| s.name == "target")?;
        let c = schema::check(spec, decl.node, file, &mut self.errors)?;
        let mut members = Vec::new();
        for entry in &c.args[1..] {
            let name = self.string(file_id, entry);
            let span = Span { file: file_id, span: entry.span() };
            let member = match names.kinds.get(&name) {
                Some(DeclKind::Stage | DeclKind::Image | DeclKind::DockerStage) => {
                    names.stages.get(&name).map(|i| Member::Stage(*i))
                }
                Some(DeclKind::Artifact) => names.artifacts.get(&name).map(|i| Member::Artifact(*i)),
                Some(DeclKind::Target) => names.targets.get(&name).map(|i| Member::Target(*i)),
                None => None,
            };
            match member {
                Some(m) => members.push((m, span)),
                None if self.suppressed(span) => {}
                None => self.errors.push_with(|| {
                    let mut all: Vec<&str> = names.kinds.keys().map(String::as_str).collect();
                    all.sort_unstable();
                    let help = Some(suggest(&name, "known names", &all));
                    LangError::UnknownName {
                        kind: "stage, image, artifact or target",
                        name: quoted(&name),
                        src: file.src(),
                        at: span.span,
                        help,
                    }
                }),
            }
        }
        Some(Target { name: decl.name.clone(), span: decl.span, members })
    }
}
