//! Pass 3: names. Every top-level `stage`, `image`, `artifact` and `target`
//! is checked against the schema, its name validated and made unique, so that
//! pass 4 can resolve references in any order.

use std::collections::HashMap;

use kdl::KdlDocument;

use super::{Cx, Decl, DeclKind, valid_name};
use crate::lang::error::LangError;
use crate::lang::schema::{self};
use crate::lang::{FileId, Span};

impl Cx<'_> {
    pub(super) fn collect_names<'d>(&mut self, docs: &'d [(FileId, KdlDocument)]) -> Vec<Decl<'d>> {
        let mut decls: Vec<Decl<'d>> = Vec::new();
        let mut sites: HashMap<String, (Span, DeclKind)> = HashMap::new();
        let mut counts = [0usize; 3];
        for (file_id, doc) in docs {
            let file = self.file(*file_id);
            let top: Vec<&str> = schema::TOP.iter().map(|s| s.name).collect();
            for node in doc.nodes() {
                let Some(spec) = schema::lookup(schema::TOP, &top, node, "top-level", file, &mut self.errors) else {
                    continue;
                };
                let kind = match spec.name {
                    "dockerfile" => DeclKind::DockerStage,
                    "stage" => DeclKind::Stage,
                    "image" => DeclKind::Image,
                    "artifact" => DeclKind::Artifact,
                    "target" => DeclKind::Target,
                    _ => continue,
                };
                let Some(name_entry) = node.entries().iter().find(|e| e.name().is_none()) else {
                    // `check` reports the missing name when the node is lowered.
                    let _ = schema::check(spec, node, file, &mut self.errors);
                    continue;
                };
                let span = Span { file: *file_id, span: name_entry.span() };
                let Some(raw) = name_entry.value().as_string() else {
                    let _ = schema::check(spec, node, file, &mut self.errors);
                    continue;
                };
                let name = self.interpolate(raw, span);
                if name == "scratch" {
                    self.invalid(
                        span,
                        "`scratch` is reserved".to_owned(),
                        "means the empty image",
                        Some("pick another name"),
                    );
                    continue;
                }
                if !valid_name(&name) {
                    self.invalid(
                        span,
                        format!("`{name}` is not a valid {} name", kind.noun()),
                        "not a valid name",
                        Some("names start with a letter or digit and use letters, digits, `.`, `_` and `-`"),
                    );
                    continue;
                }
                if kind == DeclKind::DockerStage {
                    // One declaration per stage of the Dockerfile: `NAME.STAGE`.
                    let key = (*file_id, node.span().offset());
                    let stage_names: Vec<String> = self.dockerfiles.get(&key).map_or_else(Vec::new, |(_, df)| {
                        df.stages
                            .iter()
                            .map(|s| format!("{name}.{}", s.name().map_or_else(|| s.index.to_string(), str::to_owned)))
                            .collect()
                    });
                    for (part, full) in stage_names.into_iter().enumerate() {
                        if let Some((first, _)) = sites.get(&full) {
                            self.duplicate("name", &full, *first, span);
                            continue;
                        }
                        sites.insert(full.clone(), (span, kind));
                        decls.push(Decl { kind, name: full, span, node, index: counts[0], part });
                        counts[0] += 1;
                    }
                    continue;
                }
                if let Some((first, first_kind)) = sites.get(&name) {
                    let what = if *first_kind == kind { kind.noun() } else { "name" };
                    self.duplicate(what, &name, *first, span);
                    continue;
                }
                if decls.len() >= self.limits.max_stages {
                    self.errors.push(LangError::Limit {
                        what: "too many stages, images, artifacts and targets".to_owned(),
                        limit: self.limits.max_stages,
                        unit: "declarations",
                        src: Some(file.src()),
                        at: Some(span.span),
                        label: "this one goes past the limit".to_owned(),
                        help: "raise `limits max-stages=` in bake's config file if the workspace really is this large"
                            .to_owned(),
                    });
                    return decls;
                }
                sites.insert(name.clone(), (span, kind));
                let family = match kind {
                    DeclKind::Stage | DeclKind::Image | DeclKind::DockerStage => 0,
                    DeclKind::Artifact => 1,
                    DeclKind::Target => 2,
                };
                decls.push(Decl { kind, name, span, node, index: counts[family], part: 0 });
                counts[family] += 1;
            }
        }
        self.used.clear();
        decls
    }
}
