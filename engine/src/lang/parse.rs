//! Reading and parsing the workspace's files, following `include`.
//!
//! Every file an `include` names must resolve inside the workspace boundary
//! ([`Boundary`]) before it is opened, so no diagnostic can ever quote a line
//! of a file outside the project. Globs are matched by a walk of our own:
//! it starts at the glob's literal folder (itself checked), follows a
//! symlinked folder only when it leads inside the boundary, never enters a
//! folder twice (symlink loops end), and looks at no more than
//! [`Limits::max_include_walk`] entries.

use std::collections::{HashSet, VecDeque};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kdl::{KdlDocument, KdlNode};
use miette::SourceSpan;
use rayon::prelude::*;

use super::boundary::{Boundary, Resolved};
use super::error::{Errors, LangError, quoted};
use super::limits::Limits;
use super::{FileId, SourceFile};

/// A file to read: where it is, and the `include` that asked for it.
struct Pending {
    path: PathBuf,
    text: Option<String>,
    name: Option<String>,
    /// The `include` entry that named it (none for the root file).
    from: Option<(FileId, SourceSpan)>,
}

/// Parses the root file and everything it includes, transitively.
///
/// Returns the parsed documents by file id; files that fail to read or parse
/// add errors and no document.
pub(super) fn parse_workspace(
    root: &Path,
    root_text: Option<(String, String)>,
    boundary: &Boundary,
    limits: &Limits,
    files: &mut Vec<SourceFile>,
    errors: &mut Errors,
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
    queue.push_back(Pending { path: root.to_path_buf(), text, name, from: None });
    let mut nodes = 0usize;

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
            if files.len() >= limits.max_files {
                errors.push(limit_error(
                    files,
                    pending.from,
                    "too many files in the workspace".to_owned(),
                    limits.max_files,
                    "files",
                    "this include goes past the limit",
                    "raise `limits max-files=` in bake's config file if the workspace really is this large",
                ));
                queue.clear();
                break;
            }
            let read = match pending.text {
                // Text given in memory (`load_str`) is held to the same limit.
                Some(text) if text.len() as u64 > limits.max_file_size => Err(ReadError::TooLarge),
                Some(text) => Ok(text),
                None => read_limited(&pending.path, limits.max_file_size),
            };
            let text = match read {
                Ok(text) => text,
                Err(ReadError::Io(source)) => {
                    errors.push(LangError::Read { path: pending.path, source });
                    continue;
                }
                Err(ReadError::TooLarge) => {
                    errors.push(limit_error(
                        files,
                        pending.from,
                        format!("{} is too large", pending.path.display()),
                        usize::try_from(limits.max_file_size).unwrap_or(usize::MAX),
                        "bytes",
                        "names a file past the size limit",
                        "raise `limits max-file-size=` in bake's config file to load larger build files",
                    ));
                    continue;
                }
            };
            // Too deep a nesting is reported by `parse_checked`; count nodes here,
            // before the parser spends memory on them.
            nodes = nodes.saturating_add(scan(&text, limits.max_nodes).unwrap_or(0));
            if nodes > limits.max_nodes {
                errors.push(limit_error(
                    files,
                    pending.from,
                    format!("too many nodes in the workspace (the limit is reached in {})", pending.path.display()),
                    limits.max_nodes,
                    "nodes",
                    "names a file past the limit",
                    "raise `limits max-nodes=` in bake's config file if the workspace really is this large",
                ));
                queue.clear();
                break;
            }
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
                        for (path, at) in includes(file, node, boundary, limits, errors) {
                            queue.push_back(Pending { path, text: None, name: None, from: Some((id, at)) });
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

/// Why a build file could not be read.
enum ReadError {
    Io(std::io::Error),
    TooLarge,
}

/// Reads a file as UTF-8, refusing one larger than `max` bytes without
/// reading more than that.
fn read_limited(path: &Path, max: u64) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge);
    }
    String::from_utf8(bytes)
        .map_err(|e| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error())))
}

/// A limit error pointing at the `include` that went past it, if any.
fn limit_error(
    files: &[SourceFile],
    from: Option<(FileId, SourceSpan)>,
    what: String,
    limit: usize,
    unit: &'static str,
    label: &str,
    help: &str,
) -> LangError {
    LangError::Limit {
        what,
        limit,
        unit,
        src: from.map(|(id, _)| files[id].src()),
        at: from.map(|(_, at)| at),
        label: label.to_owned(),
        help: help.to_owned(),
    }
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

/// Deepest `{` nesting, and deepest `/* /* */ */` comment nesting, bake
/// parses. The `kdl` parser recurses once per level of either with no limit
/// of its own, so a few hundred levels (90 on a 2 MiB thread in a debug
/// build) overflow the stack and abort the process; bake's language uses
/// three levels of children, and nobody nests comments 32 deep.
pub const MAX_DEPTH: usize = 32;

/// What nests too deeply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nesting {
    Children,
    Comments,
    /// `/-` after `/-`, each commenting out the next.
    Slashdash,
}

/// The byte offset of the first `{` or `/*` deeper than [`MAX_DEPTH`],
/// counting only braces outside strings and comments.
pub(crate) fn too_deep(text: &str) -> Option<(usize, Nesting)> {
    scan(text, usize::MAX).err()
}

/// About how many nodes a text holds, counted without parsing it (each place
/// a node can start, outside strings and comments, that holds something), or
/// where it nests too deeply. Counting stops past `max`. A lexer this simple
/// runs at hundreds of MB/s; the `kdl` parser at about 1.5 MB/s, with about
/// 1 KB of memory per node, so this decides what it is given.
pub(crate) fn scan(text: &str, max: usize) -> Result<usize, (usize, Nesting)> {
    let b = text.as_bytes();
    let (mut i, mut depth, mut nodes, mut starts) = (0, 0usize, 0usize, true);
    // Slashdashes in a row (`/- /- /- node`): the parser recurses on each.
    let mut dashes = 0usize;
    while i < b.len() && nodes <= max {
        let c = b[i];
        if starts && !matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}' | b'/' | b'\\') {
            nodes += 1;
            starts = false;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'-') {
            dashes += 1;
            if dashes > MAX_DEPTH {
                return Err((i, Nesting::Slashdash));
            }
            i += 2;
            continue;
        }
        if !matches!(c, b' ' | b'\t' | b'\r' | b'\n' | b'\\') {
            dashes = 0;
        }
        match c {
            b'\n' | b';' => starts = true,
            b'{' => {
                starts = true;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err((i, Nesting::Children));
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
                        if level > MAX_DEPTH {
                            return Err((i, Nesting::Comments));
                        }
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
    Ok(nodes)
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
    if let Some((at, what)) = too_deep(text) {
        let (message, help, len) = match what {
            Nesting::Children => (format!("children are nested more than {MAX_DEPTH} levels deep"), depth, 1),
            Nesting::Comments => (
                format!("`/* */` comments are nested more than {MAX_DEPTH} levels deep"),
                "close each `/*` with `*/` before opening the next, or use `//` line comments",
                2,
            ),
            Nesting::Slashdash => (
                format!("more than {MAX_DEPTH} `/-` in a row"),
                "one `/-` comments out the whole node, entry or block after it",
                2,
            ),
        };
        return Err(vec![SyntaxProblem {
            message,
            at: (at, len).into(),
            label: "too deep".to_owned(),
            help: Some(help.to_owned()),
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

/// The files one `include` node names, each with the span of its entry.
fn includes(
    file: &SourceFile,
    node: &KdlNode,
    boundary: &Boundary,
    limits: &Limits,
    errors: &mut Errors,
) -> Vec<(PathBuf, SourceSpan)> {
    let mut out = Vec::new();
    for entry in node.entries() {
        let at = entry.span();
        let error = |problem: &str, label: &str, help: Option<&str>| LangError::Include {
            pattern: quoted(&entry.value().as_string().map_or_else(|| entry.value().to_string(), str::to_owned)),
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
        let outside = |resolved: PathBuf| LangError::OutsideWorkspace {
            what: "include",
            written: quoted(pattern),
            resolved,
            workspace: boundary.root().to_path_buf(),
            src: file.src(),
            at,
        };
        let full = file.dir.join(pattern);
        let is_glob = pattern.contains(['*', '?', '[']);
        let matches: Vec<PathBuf> = if is_glob {
            let (base, rest) = split_glob(&full);
            let base = match boundary.check(&base) {
                Resolved::Inside(base) => base,
                Resolved::Outside(resolved) => {
                    errors.push(outside(resolved));
                    continue;
                }
            };
            let Some(rest) = rest.to_str() else {
                errors.push(error("is not valid UTF-8", "here", None));
                continue;
            };
            let glob = match glob::Pattern::new(rest) {
                Ok(glob) => glob,
                Err(e) => {
                    errors.push(error(&format!("is not a valid glob: {}", e.msg), "here", None));
                    continue;
                }
            };
            match walk_glob(&base, &glob, boundary, limits.max_include_walk) {
                Some(found) => found,
                None => {
                    errors.push(LangError::Limit {
                        what: format!("include `{}` looks at too many files", quoted(pattern)),
                        limit: limits.max_include_walk,
                        unit: "files and folders",
                        src: Some(file.src()),
                        at: Some(at),
                        label: "this glob walks too far".to_owned(),
                        help: "start the glob in the folder that holds the build files (`services/*/build.kdl`, not `**/build.kdl`), or raise `limits max-include-walk=` in bake's config file".to_owned(),
                    });
                    continue;
                }
            }
        } else {
            vec![full]
        };
        let mut found = Vec::new();
        let mut reported = false;
        for path in matches {
            let path = match boundary.check(&path) {
                Resolved::Inside(path) => path,
                Resolved::Outside(resolved) => {
                    errors.push(outside(resolved));
                    reported = true;
                    continue;
                }
            };
            if path.is_dir() {
                let inner = path.join("build.kdl");
                match boundary.check(&inner) {
                    Resolved::Outside(resolved) => {
                        errors.push(outside(resolved));
                        reported = true;
                    }
                    Resolved::Inside(inner) if inner.is_file() => found.push((inner, at)),
                    Resolved::Inside(_) if !is_glob => {
                        errors.push(error("names a folder without a build.kdl", "no build.kdl in this folder", None));
                        reported = true;
                    }
                    Resolved::Inside(_) => {}
                }
            } else if path.is_file() {
                found.push((path, at));
            } else if path.exists() && !is_glob {
                // A device or fifo (`/dev/zero`, `/dev/stdin`) would never end.
                errors.push(error("is not a regular file", "not a file", None));
                reported = true;
            }
        }
        if found.is_empty() && !reported {
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

/// Splits a glob path into its literal folder (the components before the
/// first one with a glob character) and the pattern below it.
fn split_glob(path: &Path) -> (PathBuf, PathBuf) {
    let mut base = PathBuf::new();
    let mut rest = PathBuf::new();
    for c in path.components() {
        let globby = matches!(c, Component::Normal(n) if n.to_str().is_some_and(|n| n.contains(['*', '?', '['])));
        if globby || !rest.as_os_str().is_empty() {
            rest.push(c.as_os_str());
        } else {
            base.push(c.as_os_str());
        }
    }
    (base, rest)
}

/// The paths under `base` that `glob` (relative to `base`) matches, sorted.
///
/// Folders are entered at most once each (by device and inode, so symlink
/// loops end), a symlinked folder only when it leads inside the boundary, and
/// no deeper than the pattern can match. `None` once more than `limit`
/// entries were looked at.
fn walk_glob(base: &Path, glob: &glob::Pattern, boundary: &Boundary, limit: usize) -> Option<Vec<PathBuf>> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let pattern = glob.as_str();
    // Without `**`, a match is exactly as deep as the pattern.
    let max_depth =
        if pattern.contains("**") { usize::MAX } else { pattern.split('/').filter(|p| !p.is_empty()).count() };
    let mut out = Vec::new();
    let mut entered = HashSet::new();
    if let Ok(meta) = std::fs::metadata(base) {
        entered.insert((meta.dev(), meta.ino()));
    }
    let mut looked = 0usize;
    let mut stack = vec![(base.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else { continue };
        for entry in read {
            looked += 1;
            if looked > limit {
                return None;
            }
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if path.strip_prefix(base).is_ok_and(|rel| glob.matches_path_with(rel, options)) {
                out.push(path.clone());
            }
            if depth + 1 >= max_depth {
                continue;
            }
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_symlink() && !matches!(boundary.check(&path), Resolved::Inside(_)) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() && entered.insert((meta.dev(), meta.ino())) {
                stack.push((path, depth + 1));
            }
        }
    }
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::{Nesting, too_deep};

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let deep = "x{".repeat(40);
        assert_eq!(too_deep(&deep), Some((65, Nesting::Children)));
        assert_eq!(too_deep(&"{".repeat(33)), Some((32, Nesting::Children)));
        assert_eq!(too_deep(&"/*".repeat(40)), Some((64, Nesting::Comments)));
        assert_eq!(too_deep(&format!("{}{}", "/*".repeat(32), "*/".repeat(32))), None);
        assert_eq!(too_deep(&format!("{}node", "/- ".repeat(40))), Some((96, Nesting::Slashdash)));
        assert_eq!(too_deep(&"/- a /- b\n".repeat(40)), None);
        assert_eq!(too_deep(&"{}".repeat(100)), None);
        let quoted = format!("run \"{}\" {{ cache \"/x\" }}", "{".repeat(100));
        assert_eq!(too_deep(&quoted), None);
        let raw = format!("run #\"{}\"# // {}\n/* {} /* */ */", "{".repeat(100), "{".repeat(100), "{".repeat(100));
        assert_eq!(too_deep(&raw), None);
        assert_eq!(too_deep("run \"a\\\"{{{\""), None);
    }
}
