//! Reading and parsing the workspace's files, following `include`.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kdl::{KdlDocument, KdlNode};
use miette::SourceSpan;
use rayon::prelude::*;

use super::error::LangError;
use super::{FileId, SourceFile};

/// A file to read: where it is, and the `include` that asked for it.
struct Pending {
    path: PathBuf,
    text: Option<String>,
    name: Option<String>,
}

/// Parses the root file and everything it includes, transitively.
///
/// Returns the parsed documents by file id; files that fail to read or parse
/// add errors and no document.
pub(super) fn parse_workspace(
    root: &Path,
    root_text: Option<(String, String)>,
    files: &mut Vec<SourceFile>,
    errors: &mut Vec<LangError>,
) -> Vec<(FileId, KdlDocument)> {
    let root_dir = match root.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let root_dir = std::fs::canonicalize(&root_dir).unwrap_or(root_dir);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut docs = Vec::new();
    let mut queue = VecDeque::new();
    let (text, name) = match root_text {
        Some((name, text)) => (Some(text), Some(name)),
        None => (None, None),
    };
    queue.push_back(Pending { path: root.to_path_buf(), text, name });

    // Level by level: each level's files are read in order (so file ids and
    // errors keep a stable order), parsed in parallel, then their includes
    // make the next level.
    while !queue.is_empty() {
        let mut batch = Vec::new();
        while let Some(pending) = queue.pop_front() {
            let canonical = std::fs::canonicalize(&pending.path).unwrap_or_else(|_| pending.path.clone());
            if !seen.insert(canonical.clone()) {
                continue;
            }
            let text = match pending.text {
                Some(text) => text,
                None => match std::fs::read_to_string(&pending.path) {
                    Ok(text) => text,
                    Err(source) => {
                        errors.push(LangError::Read { path: pending.path, source });
                        continue;
                    }
                },
            };
            let name = pending.name.unwrap_or_else(|| display_name(&canonical, &root_dir));
            let dir = canonical.parent().map_or_else(|| root_dir.clone(), Path::to_path_buf);
            batch.push(files.len());
            files.push(SourceFile { path: canonical, name, dir, text: Arc::new(text) });
        }
        let parsed: Vec<(FileId, Result<KdlDocument, Vec<SyntaxProblem>>)> = batch
            .par_iter()
            .map(|&id| {
                let text = &files[id].text;
                let result = parse_checked(
                    text,
                    "build.kdl is KDL v2: strings are quoted, properties are `key=value`, children go in `{ }`",
                    "a build.kdl needs three levels at most (stage, run, cache)",
                );
                (id, result)
            })
            .collect();
        for (id, result) in parsed {
            let file = &files[id];
            match result {
                Ok(doc) => {
                    for node in doc.nodes().iter().filter(|n| n.name().value() == "include") {
                        for path in includes(file, node, errors) {
                            queue.push_back(Pending { path, text: None, name: None });
                        }
                    }
                    docs.push((id, doc));
                }
                Err(problems) => errors.extend(problems.into_iter().map(|p| LangError::Syntax {
                    message: p.message,
                    src: file.src(),
                    at: p.at,
                    label: p.label,
                    help: p.help,
                })),
            }
        }
    }
    docs
}

/// Parses KDL v2 on a thread whose stack fits any nesting the text can hold.
///
/// The `kdl` parser recurses once per `{` level, and on invalid input its
/// error recovery may nest where [`too_deep`] sees a string, so no lexer of
/// ours can bound its depth. The stack is sized from the number of `{`
/// instead (about 22 KiB a level in a debug build); it is reserved, not
/// committed, so a large one costs nothing unless used.
pub(crate) fn parse_kdl(text: &str) -> Result<KdlDocument, kdl::KdlError> {
    let braces = text.bytes().filter(|&b| b == b'{').count();
    let stack = (8usize << 20).saturating_add(braces.saturating_mul(48 << 10));
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new().stack_size(stack).spawn_scoped(scope, || KdlDocument::parse_v2(text));
        match spawned {
            Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // No thread to be had: parse here, within the caller's stack.
            Err(_) => KdlDocument::parse_v2(text),
        }
    })
}

/// Deepest `{` nesting bake parses. The `kdl` parser recurses once per
/// level with no limit of its own, so a few hundred levels (90 on a 2 MiB
/// thread in a debug build) overflow the stack; bake's language uses three.
const MAX_DEPTH: usize = 32;

/// The byte offset of the first `{` deeper than [`MAX_DEPTH`], counting only
/// braces outside strings and comments.
pub(crate) fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    while i < b.len() {
        match b[i] {
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b'}' => depth = depth.saturating_sub(1),
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in KDL.
                let mut level = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        level += 1;
                        i += 1;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 1;
                        if level == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'#' if matches!(b.get(i + 1), Some(b'#' | b'"')) => {
                // A raw string: #"..."#, ##"..."##, ...
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + hashes) == Some(&b'"') {
                    let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                    let start = i + hashes + 1;
                    i = b[start..]
                        .windows(close.len())
                        .position(|w| w == close)
                        .map_or(b.len(), |p| start + p + close.len() - 1);
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The name a file gets in diagnostics: relative to the root's folder.
fn display_name(path: &Path, root_dir: &Path) -> String {
    path.strip_prefix(root_dir).unwrap_or(path).display().to_string()
}

/// A KDL syntax problem, before it is wrapped in the caller's error type
/// with its file.
pub(crate) struct SyntaxProblem {
    pub(crate) message: String,
    pub(crate) at: SourceSpan,
    pub(crate) label: String,
    pub(crate) help: Option<String>,
}

/// Checks nesting, parses, and turns kdl's errors into [`SyntaxProblem`]s
/// (spans kept inside the text). `help` is shown where kdl has none, `depth`
/// when the file nests too deeply.
pub(crate) fn parse_checked(text: &str, help: &str, depth: &str) -> Result<KdlDocument, Vec<SyntaxProblem>> {
    if let Some(at) = too_deep(text) {
        return Err(vec![SyntaxProblem {
            message: format!("children are nested more than {MAX_DEPTH} levels deep"),
            at: (at, 1).into(),
            label: "too deep".to_owned(),
            help: Some(depth.to_owned()),
        }]);
    }
    let err = match parse_kdl(text) {
        Ok(doc) => return Ok(doc),
        Err(err) => err,
    };
    let mut problems: Vec<SyntaxProblem> = err
        .diagnostics
        .iter()
        .map(|d| SyntaxProblem {
            message: d.message.clone().unwrap_or_else(|| "invalid KDL".to_owned()),
            at: clamp(d.span, text.len()),
            label: d.label.clone().unwrap_or_else(|| "here".to_owned()),
            help: d.help.clone().or_else(|| Some(help.to_owned())),
        })
        .collect();
    if problems.is_empty() {
        problems.push(SyntaxProblem {
            message: "invalid KDL".to_owned(),
            at: SourceSpan::from(0..0),
            label: "somewhere in this file".to_owned(),
            help: None,
        });
    }
    Err(problems)
}

/// Keeps a span inside the text, so a label never points past the end.
fn clamp(span: SourceSpan, len: usize) -> SourceSpan {
    let start = span.offset().min(len);
    let end = (span.offset() + span.len()).min(len);
    SourceSpan::from(start..end)
}

/// The files one `include` node names.
fn includes(file: &SourceFile, node: &KdlNode, errors: &mut Vec<LangError>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in node.entries() {
        let at = entry.span();
        let error = |problem: &str, label: &str, help: Option<&str>| LangError::Include {
            pattern: entry.value().as_string().map_or_else(|| entry.value().to_string(), str::to_owned),
            problem: problem.to_owned(),
            src: file.src(),
            at,
            label: label.to_owned(),
            help: help.map(str::to_owned),
        };
        if entry.name().is_some() {
            errors.push(error(
                "takes no properties",
                "remove this property",
                Some("write `include \"services/*/build.kdl\"`"),
            ));
            continue;
        }
        let Some(pattern) = entry.value().as_string() else {
            errors.push(error("must be a string", "expected a quoted path or glob", None));
            continue;
        };
        if pattern.contains("${") {
            errors.push(error(
                "cannot use args",
                "include paths are read before args",
                Some("write the path literally"),
            ));
            continue;
        }
        let full = file.dir.join(pattern);
        let is_glob = pattern.contains(['*', '?', '[']);
        let Some(full_str) = full.to_str() else {
            errors.push(error("is not valid UTF-8", "here", None));
            continue;
        };
        let matches: Vec<PathBuf> = match glob::glob(full_str) {
            Ok(paths) => paths.filter_map(Result::ok).collect(),
            Err(e) => {
                errors.push(error(&format!("is not a valid glob: {}", e.msg), "here", None));
                continue;
            }
        };
        let mut found = Vec::new();
        for path in matches {
            if path.is_dir() {
                let inner = path.join("build.kdl");
                if inner.is_file() {
                    found.push(inner);
                } else if !is_glob {
                    errors.push(error("names a folder without a build.kdl", "no build.kdl in this folder", None));
                }
            } else if path.is_file() {
                found.push(path);
            } else if !is_glob {
                // A device or fifo (`/dev/zero`, `/dev/stdin`) would never end.
                errors.push(error("is not a regular file", "not a file", None));
            }
        }
        if found.is_empty() && !matches!(errors.last(), Some(LangError::Include { at: a, .. }) if *a == at) {
            let (problem, label) = if is_glob {
                ("matches no file", "nothing matches this glob")
            } else {
                ("does not exist", "no such file")
            };
            errors.push(error(
                problem,
                label,
                Some("paths in `include` are relative to the folder of the file that includes them"),
            ));
        }
        out.extend(found);
    }
    if node.entries().is_empty() {
        errors.push(LangError::ArgumentCount {
            node: "include".to_owned(),
            expected: "at least 1 path or glob".to_owned(),
            found: 0,
            src: file.src(),
            at: node.name().span(),
            label: "nothing to include".to_owned(),
            help: Some("write `include \"services/*/build.kdl\"`".to_owned()),
        });
    }
    if let Some(children) = node.children() {
        errors.push(LangError::UnexpectedChildren { node: "include".to_owned(), src: file.src(), at: children.span() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::too_deep;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let deep = "x{".repeat(40);
        assert_eq!(too_deep(&deep), Some(65));
        assert_eq!(too_deep(&"{".repeat(33)), Some(32));
        assert_eq!(too_deep(&"{}".repeat(100)), None);
        let quoted = format!("run \"{}\" {{ cache \"/x\" }}", "{".repeat(100));
        assert_eq!(too_deep(&quoted), None);
        let raw = format!("run #\"{}\"# // {}\n/* {} /* */ */", "{".repeat(100), "{".repeat(100), "{".repeat(100));
        assert_eq!(too_deep(&raw), None);
        assert_eq!(too_deep("run \"a\\\"{{{\""), None);
    }
}
