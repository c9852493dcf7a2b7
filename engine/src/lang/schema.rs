//! The shape of every node: arguments, properties and children.
//!
//! One table describes the language; [`check`] validates a node against it
//! and reports argument counts, value types, unknown or repeated properties
//! and unexpected children the same way for every node. Lowering then reads
//! values knowing their shape is right.

use std::collections::HashMap;

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::SourceFile;
use super::error::{Errors, LangError, quoted, suggest};

/// The type a value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Int,
    Bool,
    /// A string, integer or boolean, used as a string.
    Scalar,
    /// A string or an integer (ports, signals, users).
    StrOrInt,
    /// Any value: the setting's own parser says what it must be (the config
    /// file's sizes and durations, whose messages explain the format).
    Any,
}

impl Kind {
    fn accepts(self, value: &KdlValue) -> bool {
        match self {
            Self::Str => value.is_string(),
            Self::Int => value.is_integer(),
            Self::Bool => value.is_bool(),
            Self::Scalar => value.is_string() || value.is_integer() || value.is_bool(),
            Self::StrOrInt => value.is_string() || value.is_integer(),
            Self::Any => true,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Str => "a string",
            Self::Int => "an integer",
            Self::Bool => "#true or #false",
            Self::Scalar => "a string, number or boolean",
            Self::StrOrInt => "a string or an integer",
            Self::Any => "any value",
        }
    }
}

/// What a value is, for "found ..." messages.
pub(super) fn found(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a decimal number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

/// A property a node accepts.
#[derive(Debug)]
pub(crate) struct Prop {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    /// May be given several times (`exclude`).
    pub repeat: bool,
}

const fn prop(name: &'static str, kind: Kind) -> Prop {
    Prop { name, kind, required: false, repeat: false }
}

const fn required(name: &'static str, kind: Kind) -> Prop {
    Prop { name, kind, required: true, repeat: false }
}

/// The shape of one node.
#[derive(Debug)]
pub(crate) struct Spec {
    pub name: &'static str,
    pub min: usize,
    pub max: Option<usize>,
    /// Kinds of the positional arguments; the last one repeats.
    pub args: &'static [Kind],
    /// What the arguments are, for messages ("1 path", "a name and a value").
    pub args_doc: &'static str,
    pub props: &'static [Prop],
    /// Node names allowed in a children block; `None` when a block is not allowed.
    pub children: Option<&'static [&'static str]>,
    pub example: &'static str,
}

use Kind::{Bool, Int, Scalar, Str, StrOrInt};

const STAGE_BODY: &[&str] = &[
    "workdir",
    "copy",
    "run",
    "env",
    "user",
    "expose",
    "entrypoint",
    "cmd",
    "label",
    "volume",
    "stopsignal",
    "healthcheck",
    "shell",
];
const IMAGE_BODY: &[&str] = &[
    "workdir",
    "copy",
    "run",
    "env",
    "user",
    "expose",
    "entrypoint",
    "cmd",
    "label",
    "volume",
    "stopsignal",
    "healthcheck",
    "shell",
    "tag",
    "annotation",
    "platforms",
];
const RUN_BODY: &[&str] = &["cache", "secret", "network", "security", "env", "bind", "tmpfs"];

/// Nodes at the top of a file.
pub(super) const TOP: &[Spec] = &[
    Spec {
        name: "arg",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 name",
        props: &[prop("default", Scalar)],
        children: None,
        example: "arg \"VERSION\" default=\"dev\"",
    },
    Spec {
        name: "stage",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 name",
        props: &[required("from", Str), prop("context", Str), prop("platform", Str)],
        children: Some(STAGE_BODY),
        example: "stage \"builder\" from=\"golang:1.19\" { ... }",
    },
    Spec {
        name: "image",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 name",
        props: &[required("from", Str), prop("context", Str), prop("platform", Str)],
        children: Some(IMAGE_BODY),
        example: "image \"app\" from=\"scratch\" { ... }",
    },
    Spec {
        name: "artifact",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 name",
        props: &[required("from", Str), required("path", Str), required("dest", Str), prop("keep-setuid", Bool)],
        children: None,
        example: "artifact \"app-bin\" from=\"builder\" path=\"/out/app\" dest=\"dist/app\"",
    },
    Spec {
        name: "target",
        min: 2,
        max: None,
        args: &[Str],
        args_doc: "a name and at least 1 member",
        props: &[],
        children: None,
        example: "target \"default\" \"app\"",
    },
    Spec {
        name: "cache-from",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 registry cache",
        props: &[],
        children: None,
        example: "cache-from \"registry.example.com/team/cache\"",
    },
    Spec {
        name: "cache-to",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 registry cache",
        props: &[],
        children: None,
        example: "cache-to \"registry.example.com/team/cache\"",
    },
    Spec {
        name: "dockerfile",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 name",
        props: &[required("path", Str), prop("context", Str)],
        children: Some(&["arg"]),
        example: "dockerfile \"legacy\" path=\"svc/Dockerfile\" context=\"svc\" { arg \"VERSION\" \"1.2\" }",
    },
    Spec {
        name: "platforms",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 platform",
        props: &[],
        children: None,
        example: "platforms \"linux/amd64\" \"linux/arm64\"",
    },
    Spec {
        name: "include",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 path or glob",
        props: &[],
        children: None,
        example: "include \"services/*/build.kdl\"",
    },
];

/// Nodes inside `dockerfile`: its build args.
pub(super) const DOCKERFILE_BODY: &[Spec] = &[Spec {
    name: "arg",
    min: 2,
    max: Some(2),
    args: &[Str, Scalar],
    args_doc: "a name and a value",
    props: &[],
    children: None,
    example: "arg \"VERSION\" \"1.2\"",
}];

/// Nodes inside `stage` and `image`.
pub(super) const BODY: &[Spec] = &[
    Spec {
        name: "platforms",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 platform",
        props: &[],
        children: None,
        example: "platforms \"linux/amd64\" \"linux/arm64\"",
    },
    Spec {
        name: "workdir",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 path",
        props: &[],
        children: None,
        example: "workdir \"/src\"",
    },
    Spec {
        name: "copy",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 source",
        props: &[
            required("to", Str),
            prop("from", Str),
            prop("chown", StrOrInt),
            prop("chmod", StrOrInt),
            Prop { name: "exclude", kind: Str, required: false, repeat: true },
            prop("optional", Bool),
        ],
        children: None,
        example: "copy \"go.mod\" \"go.sum\" to=\"./\"",
    },
    Spec {
        name: "run",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "1 script, or with `exec=#true` the program and its arguments",
        props: &[prop("exec", Bool)],
        children: Some(RUN_BODY),
        example: "run \"make\" { cache \"/root/.cache\" }",
    },
    Spec {
        name: "env",
        min: 2,
        max: Some(2),
        args: &[Str, Scalar],
        args_doc: "a name and a value",
        props: &[],
        children: None,
        example: "env \"CGO_ENABLED\" \"0\"",
    },
    Spec {
        name: "user",
        min: 1,
        max: Some(1),
        args: &[StrOrInt],
        args_doc: "1 user",
        props: &[],
        children: None,
        example: "user \"65532:65532\"",
    },
    Spec {
        name: "expose",
        min: 1,
        max: None,
        args: &[StrOrInt],
        args_doc: "at least 1 port",
        props: &[],
        children: None,
        example: "expose 8080 \"53/udp\"",
    },
    Spec {
        name: "entrypoint",
        min: 0,
        max: None,
        args: &[Str],
        args_doc: "the program and its arguments",
        props: &[],
        children: None,
        example: "entrypoint \"/app\" \"-port\" \"8080\"",
    },
    Spec {
        name: "cmd",
        min: 0,
        max: None,
        args: &[Str],
        args_doc: "the program and its arguments",
        props: &[],
        children: None,
        example: "cmd \"/app\" \"-port\" \"8080\"",
    },
    Spec {
        name: "label",
        min: 2,
        max: Some(2),
        args: &[Str, Scalar],
        args_doc: "a key and a value",
        props: &[],
        children: None,
        example: "label \"org.opencontainers.image.version\" \"1.0\"",
    },
    Spec {
        name: "volume",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 path",
        props: &[],
        children: None,
        example: "volume \"/data\"",
    },
    Spec {
        name: "stopsignal",
        min: 1,
        max: Some(1),
        args: &[StrOrInt],
        args_doc: "1 signal",
        props: &[],
        children: None,
        example: "stopsignal \"SIGTERM\"",
    },
    Spec {
        name: "healthcheck",
        min: 0,
        max: None,
        args: &[Str],
        args_doc: "the program and its arguments",
        props: &[
            prop("shell", Str),
            prop("none", Bool),
            prop("interval", Str),
            prop("timeout", Str),
            prop("start-period", Str),
            prop("start-interval", Str),
            prop("retries", Int),
        ],
        children: None,
        example: "healthcheck \"/app\" \"-healthcheck\" interval=\"30s\"",
    },
    Spec {
        name: "shell",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "the shell and its arguments",
        props: &[],
        children: None,
        example: "shell \"/bin/bash\" \"-eo\" \"pipefail\" \"-c\"",
    },
    Spec {
        name: "tag",
        min: 1,
        max: None,
        args: &[Str],
        args_doc: "at least 1 image reference",
        props: &[],
        children: None,
        example: "tag \"registry.example.com/acme/app:1.0\"",
    },
    Spec {
        name: "annotation",
        min: 2,
        max: Some(2),
        args: &[Str, Scalar],
        args_doc: "a key and a value",
        props: &[],
        children: None,
        example: "annotation \"org.opencontainers.image.source\" \"https://example.com\"",
    },
];

/// Nodes inside `run`.
pub(super) const RUN: &[Spec] = &[
    Spec {
        name: "cache",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 path",
        props: &[prop("id", Str), prop("sharing", Str)],
        children: None,
        example: "cache \"/root/go/pkg/mod\"",
    },
    Spec {
        name: "bind",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 path (in the context, or in the `from=` stage or image)",
        props: &[required("target", Str), prop("rw", Bool), prop("from", Str)],
        children: None,
        example: "bind \"go.mod\" target=\"/src/go.mod\"",
    },
    Spec {
        name: "tmpfs",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 path",
        props: &[],
        children: None,
        example: "tmpfs \"/tmp\"",
    },
    Spec {
        name: "secret",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "1 secret id",
        props: &[prop("target", Str), prop("required", Bool), prop("env", Str)],
        children: None,
        example: "secret \"npmrc\" target=\"/root/.npmrc\"",
    },
    Spec {
        name: "network",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "\"private\" (the default), \"host\" or \"none\"",
        props: &[],
        children: None,
        example: "network \"none\"",
    },
    Spec {
        name: "security",
        min: 1,
        max: Some(1),
        args: &[Str],
        args_doc: "\"sandbox\" (the default) or \"insecure\" (needs `bake build --allow security.insecure`)",
        props: &[],
        children: None,
        example: "security \"insecure\"",
    },
    Spec {
        name: "env",
        min: 2,
        max: Some(2),
        args: &[Str, Scalar],
        args_doc: "a name and a value",
        props: &[],
        children: None,
        example: "env \"DEBIAN_FRONTEND\" \"noninteractive\"",
    },
];

/// Finds the spec for a node name among `specs`, or reports it as unknown.
pub(super) fn lookup<'s>(
    specs: &'s [Spec],
    allowed: &[&str],
    node: &KdlNode,
    context: &'static str,
    file: &SourceFile,
    errors: &mut Errors,
) -> Option<&'s Spec> {
    let name = node.name().value();
    if let Some(spec) = specs.iter().find(|s| s.name == name && allowed.contains(&s.name)) {
        return Some(spec);
    }
    errors.push_with(|| {
        let mut help = suggest(name, &format!("{context} nodes"), allowed);
        if context == "stage" && (name == "tag" || name == "annotation") {
            help = format!("`{name}` belongs in an `image`, which is a stage that is exported; {help}");
        }
        LangError::UnknownNode { name: quoted(name), context, src: file.src(), at: node.name().span(), help }
    });
    None
}

/// A node whose shape matched its spec.
pub(crate) struct Checked<'a> {
    pub args: Vec<&'a KdlEntry>,
    props: HashMap<&'static str, Vec<&'a KdlEntry>>,
}

impl<'a> Checked<'a> {
    /// The (last) value of a property.
    pub(crate) fn prop(&self, name: &str) -> Option<&'a KdlEntry> {
        self.props.get(name).and_then(|v| v.last().copied())
    }

    /// Every value of a repeatable property.
    pub(crate) fn props(&self, name: &str) -> &[&'a KdlEntry] {
        self.props.get(name).map_or(&[], Vec::as_slice)
    }
}

/// One way a node does not fit its spec. [`shape`] finds them; [`check`]
/// turns them into language diagnostics and the config file (`config.rs`)
/// into its own, so both report the same mistakes the same way.
#[derive(Clone, Copy)]
pub(crate) enum Mismatch<'a> {
    /// A value of the wrong type: argument `index` (from 0), or property `prop`.
    WrongType { index: usize, prop: Option<&'static Prop>, kind: Kind, entry: &'a KdlEntry },
    /// A property the node does not take.
    UnknownProperty { entry: &'a KdlEntry, name: &'a str },
    /// A property given twice that may be given once.
    DuplicateProperty { prop: &'static Prop, first: &'a KdlEntry, second: &'a KdlEntry },
    /// Too few arguments (`extra` is `None`), or too many from `extra` on.
    ArgumentCount { found: usize, extra: Option<&'a KdlEntry> },
    /// A required property is missing.
    MissingProperty { prop: &'static Prop },
    /// A children block on a node that takes none.
    UnexpectedChildren { at: SourceSpan },
}

/// Matches a node against its spec: the arguments and properties it has,
/// each mismatch passed to `report` in the order of the node's entries,
/// then the argument count, required properties and children.
pub(crate) fn shape<'a>(spec: &'static Spec, node: &'a KdlNode, report: &mut dyn FnMut(Mismatch<'a>)) -> Checked<'a> {
    let mut args = Vec::new();
    let mut props: HashMap<&'static str, Vec<&'a KdlEntry>> = HashMap::new();
    for entry in node.entries() {
        match entry.name() {
            None => {
                let index = args.len();
                args.push(entry);
                let kind = spec.args.get(index).or(spec.args.last()).copied().unwrap_or(Str);
                if !kind.accepts(entry.value()) {
                    report(Mismatch::WrongType { index, prop: None, kind, entry });
                }
            }
            Some(key) => {
                let Some(p) = spec.props.iter().find(|p| p.name == key.value()) else {
                    report(Mismatch::UnknownProperty { entry, name: key.value() });
                    continue;
                };
                if !p.kind.accepts(entry.value()) {
                    report(Mismatch::WrongType { index: 0, prop: Some(p), kind: p.kind, entry });
                }
                let seen = props.entry(p.name).or_default();
                if let (false, Some(first)) = (p.repeat, seen.first()) {
                    report(Mismatch::DuplicateProperty { prop: p, first, second: entry });
                }
                seen.push(entry);
            }
        }
    }
    let count_ok = args.len() >= spec.min && spec.max.is_none_or(|max| args.len() <= max);
    if !count_ok {
        report(Mismatch::ArgumentCount { found: args.len(), extra: args.get(spec.max.unwrap_or(usize::MAX)).copied() });
    }
    for p in spec.props.iter().filter(|p| p.required && !props.contains_key(p.name)) {
        report(Mismatch::MissingProperty { prop: p });
    }
    if let (None, Some(children)) = (spec.children, node.children()) {
        report(Mismatch::UnexpectedChildren { at: children.span() });
    }
    Checked { args, props }
}

/// Validates a node against its spec. Returns `None` (after reporting) when
/// the node cannot be lowered.
pub(super) fn check<'a>(
    spec: &'static Spec,
    node: &'a KdlNode,
    file: &SourceFile,
    errors: &mut Errors,
) -> Option<Checked<'a>> {
    let before = errors.len();
    let checked = shape(spec, node, &mut |mismatch| match mismatch {
        Mismatch::WrongType { index, prop: None, kind, entry } => {
            errors.push(wrong_type(format!("argument {} of `{}`", index + 1, spec.name), kind, entry, file));
        }
        Mismatch::WrongType { prop: Some(p), kind, entry, .. } => {
            errors.push(wrong_type(format!("`{}=` of `{}`", p.name, spec.name), kind, entry, file));
        }
        Mismatch::UnknownProperty { entry, name } => errors.push_with(|| {
            let valid: Vec<&str> = spec.props.iter().map(|p| p.name).collect();
            LangError::UnknownProperty {
                node: spec.name.to_owned(),
                name: quoted(name),
                src: file.src(),
                at: entry.span(),
                help: if valid.is_empty() {
                    format!("`{}` takes no properties; for example: {}", spec.name, spec.example)
                } else {
                    suggest(name, &format!("properties of `{}`", spec.name), &valid)
                },
            }
        }),
        Mismatch::DuplicateProperty { prop, first, second } => errors.push(LangError::DuplicateProperty {
            name: format!("{}=", prop.name),
            src: file.src(),
            first: first.span(),
            second: second.span(),
        }),
        Mismatch::ArgumentCount { found, extra } => {
            let (at, label) = match extra {
                Some(extra) => (extra.span(), "unexpected from here on".to_owned()),
                None => (node.name().span(), format!("needs {}", spec.args_doc)),
            };
            errors.push(LangError::ArgumentCount {
                node: spec.name.to_owned(),
                expected: spec.args_doc.to_owned(),
                found,
                src: file.src(),
                at,
                label,
                help: Some(format!("for example: {}", spec.example)),
            });
        }
        Mismatch::MissingProperty { prop } => errors.push(LangError::MissingProperty {
            node: spec.name.to_owned(),
            name: prop.name,
            src: file.src(),
            at: node.name().span(),
            help: Some(format!("for example: {}", spec.example)),
        }),
        Mismatch::UnexpectedChildren { at } => {
            errors.push(LangError::UnexpectedChildren { node: spec.name.to_owned(), src: file.src(), at });
        }
    });
    (errors.len() == before).then_some(checked)
}

fn wrong_type(what: String, kind: Kind, entry: &KdlEntry, file: &SourceFile) -> LangError {
    let help = match entry.value() {
        KdlValue::Float(_) => Some(
            "quote it: a decimal number loses trailing zeros (`1.10` is `1.1`), so versions are strings".to_owned(),
        ),
        KdlValue::Integer(_) | KdlValue::Bool(_) if kind == Kind::Str => {
            Some("quote it to make it a string".to_owned())
        }
        KdlValue::Null => Some("`#null` is not a value bake uses here".to_owned()),
        _ => None,
    };
    LangError::WrongType {
        what,
        expected: kind.describe(),
        found: found(entry.value()),
        src: file.src(),
        at: entry.span(),
        help,
    }
}
