//! Pass 2: args. Every `arg` node is collected, checked for duplicates and
//! given its value (`--set`, else its default, else none); defaults that name
//! other args are resolved on demand, with cycles and over-long chains reported
//! once each.

use std::collections::HashMap;

use kdl::KdlDocument;

use super::{ArgState, Cx, Frame, scalar};
use crate::lang::error::{LangError, quoted, suggest};
use crate::lang::interp::is_name;
use crate::lang::limits::MAX_ARG_DEPTH;
use crate::lang::schema::{self};
use crate::lang::{Arg, FileId, LoadOptions, PREDEFINED_ARGS, Span};

impl Cx<'_> {
    /// The args, with the predefined ones (`TARGETARCH`, ...) given
    /// `predefined`'s values: they need no `arg` node, and one that names
    /// them only says they are used, as `ARG TARGETARCH` does in a
    /// Dockerfile.
    pub(super) fn collect_args(
        &mut self,
        docs: &[(FileId, KdlDocument)],
        options: &LoadOptions,
        predefined: &[(&'static str, String)],
    ) -> Vec<Arg> {
        let spec = &schema::TOP[0];
        let mut order: Vec<(String, Span, Option<String>)> = Vec::new();
        let mut sites: HashMap<String, Span> = HashMap::new();
        for (name, value) in predefined {
            let nowhere = Span { file: 0, span: (0, 0).into() };
            self.args.insert((*name).to_owned(), (ArgState::Value(value.clone()), nowhere));
        }
        for (file_id, doc) in docs {
            let file = self.file(*file_id);
            for node in doc.nodes().iter().filter(|n| n.name().value() == "arg") {
                let Some(checked) = schema::check(spec, node, file, &mut self.errors) else {
                    continue;
                };
                let name_entry = checked.args[0];
                let name = name_entry.value().as_string().unwrap_or_default().to_owned();
                let span = Span { file: *file_id, span: name_entry.span() };
                if !is_name(&name) {
                    self.invalid(
                        span,
                        format!("`{name}` is not a valid arg name"),
                        "not a valid name",
                        Some("an arg name is letters, digits and `_`, not starting with a digit"),
                    );
                    continue;
                }
                if PREDEFINED_ARGS.contains(&name.as_str()) {
                    continue;
                }
                if let Some(first) = sites.get(&name) {
                    self.duplicate("arg", &name, *first, span);
                    continue;
                }
                sites.insert(name.clone(), span);
                let default = checked.prop("default").map(|e| {
                    let raw = scalar(e.value());
                    (raw, Span { file: *file_id, span: e.span() })
                });
                self.args.insert(name.clone(), (ArgState::Pending { default: default.clone() }, span));
                order.push((name, span, default.map(|d| d.0)));
            }
        }
        for (name, value) in &options.set {
            if PREDEFINED_ARGS.contains(&name.as_str()) {
                self.errors.push(LangError::PredefinedSet { name: name.clone() });
                continue;
            }
            match self.args.get_mut(name) {
                Some((state, _)) => *state = ArgState::Value(value.clone()),
                None => {
                    let known: Vec<&str> = order.iter().map(|(n, ..)| n.as_str()).collect();
                    self.errors.push(LangError::UnknownSet { name: name.clone(), help: suggest(name, "args", &known) });
                }
            }
        }
        let mut out = Vec::new();
        for (name, span, default) in order {
            let value = match self.resolve_arg(&name) {
                ArgState::Value(v) => Some(v),
                _ => None,
            };
            out.push(Arg { name, span, default, value });
        }
        self.used.clear();
        out
    }

    /// The value of an arg, resolving defaults that use other args. Returns
    /// `Value`, `NoValue` or `Broken`.
    ///
    /// Depth first with an explicit stack, not recursion, so a chain of any
    /// length cannot overflow the stack; a chain deeper than
    /// [`MAX_ARG_DEPTH`] is an error, and a cycle is reported whole.
    pub(super) fn resolve_arg(&mut self, name: &str) -> ArgState {
        // Args being resolved, outermost first.
        let mut chain: Vec<Frame> = Vec::new();
        let mut next = Some(name.to_owned());
        loop {
            if let Some(n) = next.take() {
                match self.args.get(&n).cloned() {
                    Some((ArgState::Pending { default: None }, span)) => {
                        self.args.insert(n, (ArgState::NoValue, span));
                    }
                    Some((ArgState::Pending { default: Some((raw, at)) }, span)) => {
                        if chain.len() >= MAX_ARG_DEPTH {
                            self.too_deep_args(&chain, &n, at);
                            for member in chain.drain(..).map(|f| f.name).chain([n]) {
                                if let Some(a) = self.args.get_mut(&member) {
                                    a.0 = ArgState::Broken;
                                }
                            }
                            break;
                        }
                        self.args.insert(n.clone(), (ArgState::Resolving, span));
                        chain.push(Frame::new(n, raw, at));
                    }
                    Some((ArgState::Resolving, _)) => {
                        let start = chain.iter().position(|f| f.name == n).unwrap_or(0);
                        let members: Vec<(String, Span)> =
                            chain[start..].iter().map(|f| (f.name.clone(), f.at)).collect();
                        self.cycle_error("arg", &members, &n);
                        for (m, _) in &members {
                            if let Some(a) = self.args.get_mut(m) {
                                a.0 = ArgState::Broken;
                            }
                        }
                    }
                    _ => {}
                }
            }
            let Some(frame) = chain.last_mut() else { break };
            if matches!(self.args.get(&frame.name), Some((ArgState::Broken, _))) {
                chain.pop();
                continue;
            }
            // The next arg this default uses that is not settled yet; each
            // reference is looked at once it is settled, so a frame costs its
            // references, not references × length.
            while frame
                .refs
                .get(frame.next)
                .is_some_and(|r| !matches!(self.args.get(r), Some((ArgState::Pending { .. } | ArgState::Resolving, _))))
            {
                frame.next += 1;
            }
            if let Some(unsettled) = frame.refs.get(frame.next) {
                next = Some(unsettled.clone());
                continue;
            }
            // Everything it uses is settled, so this does not recurse.
            let Some(Frame { name: top, raw, at, .. }) = chain.pop() else { break };
            let value = self.interpolate_with(&raw, at);
            if let Some((state, _)) = self.args.get_mut(&top) {
                *state = match (&*state, value) {
                    (ArgState::Broken, _) | (_, None) => ArgState::Broken,
                    (_, Some(v)) => ArgState::Value(v),
                };
            }
        }
        self.args.get(name).map_or(ArgState::Broken, |a| a.0.clone())
    }

    /// Args that refer to each other deeper than [`MAX_ARG_DEPTH`]. Reported
    /// once: the rest of a very long chain would repeat it every 64 args.
    pub(super) fn too_deep_args(&mut self, chain: &[Frame], last: &str, at: Span) {
        if std::mem::replace(&mut self.args_too_deep, true) {
            return;
        }
        let first = chain.first().map_or(last, |f| f.name.as_str());
        self.errors.push(LangError::Limit {
            what: format!("args refer to each other too deeply (from `{}` to `{}`)", quoted(first), quoted(last)),
            limit: MAX_ARG_DEPTH,
            unit: "levels",
            src: Some(self.file(at.file).src()),
            at: Some(at.span),
            label: format!("`{}` is {} args down the chain", quoted(last), chain.len() + 1),
            help: "give an arg in this chain a literal default instead of another arg".to_owned(),
        });
    }
}
