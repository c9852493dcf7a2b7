//! Lines to instructions, as BuildKit's `parser` package reads them.
//!
//! The file is read line by line. Parser directives are recognised only in
//! the leading comment block (the first line that is not a directive ends
//! it, and `# escape=` changes the escape character for every line after
//! it). A line ending in the escape character (trailing spaces and tabs
//! allowed, but not a doubled escape character) continues on the next one;
//! inside a continuation, comment lines are dropped and empty lines are
//! skipped with a warning, and the pieces are joined without a space. Once
//! a logical line is whole, its keyword and `--flags` are split off and, for
//! `RUN`, `COPY` and `ADD` in shell form, the heredocs it opens are read
//! from the lines that follow.
//!
//! A logical line is pieced together from several physical lines, so each
//! keeps a map from its offsets back to the file's: every [`Word`] gets a
//! span into the file even when it sits after a continuation.

use std::collections::BTreeSet;
use std::sync::Arc;

use miette::SourceSpan;

use super::error::{DockerfileError, DockerfileErrors, ErrorKind};
use super::instructions::{self, CheckDirective, CheckSkip, Directive, Directives, Heredoc, Instruction, Kind, Word};
use super::limits::{MAX_FILE_SIZE, MAX_HEREDOCS, MAX_INSTRUCTIONS, MAX_LINE};
use super::shell::Lexer;
use super::{DEFAULT_ESCAPE, Dockerfile, Lines, Stage, Warning};
use crate::lang::Src;

/// Reports errors against one file.
#[derive(Clone)]
pub(super) struct Ctx<'a> {
    pub(super) src: &'a Src,
    pub(super) escape: char,
    pub(super) lines: Arc<Lines>,
}

impl Ctx<'_> {
    pub(super) fn error(&self, kind: ErrorKind, span: SourceSpan, message: impl Into<String>) -> DockerfileError {
        self.error_labelled(kind, span, message, "here", None)
    }

    pub(super) fn error_labelled(
        &self,
        kind: ErrorKind,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> DockerfileError {
        DockerfileError {
            kind,
            message: message.into(),
            src: self.src.clone(),
            span,
            label: label.into(),
            help,
            line: self.lines.line(span.offset()),
        }
    }
}

/// One physical line: where it starts, its text without the line break,
/// and where the next one starts.
#[derive(Debug, Clone, Copy)]
struct Physical<'a> {
    start: usize,
    text: &'a str,
    /// The line with its line break, as heredoc bodies keep it.
    full: &'a str,
}

fn physical_lines(text: &str) -> Vec<Physical<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i + 1);
        let full = &text[start..end];
        out.push(Physical { start, text: full.trim_end_matches(['\r', '\n']), full });
        start = end;
    }
    out
}

/// A logical line: the joined text, and for each piece where it starts in
/// the joined text and in the file.
#[derive(Debug, Default, Clone)]
pub(super) struct Logical {
    pub(super) text: String,
    map: Vec<(usize, usize)>,
}

impl Logical {
    fn push(&mut self, piece: &str, file_offset: usize) {
        self.map.push((self.text.len(), file_offset));
        self.text.push_str(piece);
    }

    /// The file offset of a byte offset in the joined text.
    pub(super) fn offset(&self, at: usize) -> usize {
        let i = self.map.partition_point(|&(start, _)| start <= at).saturating_sub(1);
        self.map.get(i).map_or(at, |&(start, file)| file + (at - start))
    }

    /// The file span of `start..end` in the joined text.
    pub(super) fn span(&self, start: usize, end: usize) -> SourceSpan {
        let from = self.offset(start);
        let to = if end > start { self.offset(end - 1) + 1 } else { from };
        SourceSpan::from(from..to.max(from))
    }

    pub(super) fn word(&self, text: impl Into<String>, start: usize, end: usize) -> Word {
        Word::new(text, self.span(start, end))
    }
}

/// The leading-comment directive reader (BuildKit's `DirectiveParser`).
#[derive(Default)]
struct DirectiveReader {
    done: bool,
    seen: BTreeSet<String>,
}

/// `(name, value)` of a directive line (`# name = value`), if it is one.
fn directive_of(line: &str) -> Option<(String, &str, usize)> {
    let rest = line.strip_prefix('#')?;
    let trimmed = rest.trim_start();
    let first = trimmed.chars().next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_len = trimmed.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(trimmed.len());
    let name = &trimmed[..name_len];
    let after = trimmed[name_len..].trim_start();
    let value = after.strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    let value_at = value.as_ptr() as usize - line.as_ptr() as usize;
    Some((name.to_ascii_lowercase(), value, value_at))
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// BuildKit's `trimContinuationCharacter`: the line without its trailing
/// escape character, and whether the logical line ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, true);
    };
    if before.is_empty() {
        return ("", false);
    }
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

/// A `--name[=value]` before an instruction's arguments.
#[derive(Debug, Clone)]
pub(super) struct RawFlag {
    pub(super) name: String,
    pub(super) value: Option<String>,
    pub(super) span: SourceSpan,
}

/// BuildKit's `extractBuilderFlags`: the flags at the start of `rest`
/// (quotes removed, escapes applied) and where the arguments start.
pub(super) fn builder_flags(line: &Logical, rest_start: usize, escape: char) -> (Vec<RawFlag>, usize) {
    let text = &line.text[rest_start..];
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut flags = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && is_space(chars[i].1) {
            i += 1;
        }
        if i >= chars.len() {
            return (flags, line.text.len());
        }
        let start = chars[i].0;
        if !text[start..].starts_with("--") {
            return (flags, rest_start + start);
        }
        let mut word = String::new();
        let mut blank_ok = false;
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i].1;
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                } else if c == escape {
                    if i + 1 == chars.len() {
                        quote = None;
                    } else {
                        i += 1;
                        word.push(chars[i].1);
                    }
                } else {
                    word.push(c);
                }
                i += 1;
                continue;
            }
            if is_space(c) {
                break;
            }
            if c == '\'' || c == '"' {
                quote = Some(c);
                blank_ok = true;
            } else if c == escape {
                if i + 1 < chars.len() {
                    i += 1;
                    word.push(chars[i].1);
                }
            } else {
                word.push(c);
            }
            i += 1;
        }
        let end = chars.get(i).map_or(text.len(), |&(at, _)| at);
        if word == "--" {
            // `--` ends the flags; the arguments start after it.
            return (flags, rest_start + end);
        }
        if blank_ok || !word.is_empty() {
            let body = &word[2..];
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (body.to_owned(), None),
            };
            flags.push(RawFlag { name, value, span: line.span(rest_start + start, rest_start + end) });
        }
    }
}

/// BuildKit's heredoc marker regex, `^(\d*)<<(-?)\s*([^<]*)$`, on one word.
fn heredoc_marker(word: &str) -> Option<(u32, bool, &str)> {
    let digits = word.find(|c: char| !c.is_ascii_digit()).unwrap_or(word.len());
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_space);
    if rest.contains('<') || rest.is_empty() {
        return None;
    }
    let fd = word[..digits].parse::<u32>().unwrap_or(0);
    Some((fd, chomp, rest))
}

/// A heredoc's delimiter word: its name (quotes removed) and whether the
/// body expands. `None` when the word is not a single word.
pub(super) fn heredoc_of(word: &str) -> Option<(u32, bool, String, bool)> {
    let (fd, chomp, rest) = heredoc_marker(word)?;
    let none = |_: &str| None;
    let mut lex = Lexer::new('\\');
    lex.skip_unset = true;
    let plain = lex.process(rest, &none).ok()?.words;
    if plain.len() != 1 {
        return None;
    }
    lex.raw_quotes = true;
    let raw = lex.process(rest, &none).ok()?.words;
    if raw.len() != 1 {
        return None;
    }
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let name = plain.into_iter().next()?;
    let expand = quotes(&name) == quotes(&raw[0]);
    Some((fd, chomp, name, expand))
}

/// The heredocs a logical line opens, in order (BuildKit lexes the whole
/// line with quotes and escapes kept and reads each word as a marker).
fn heredocs_of_line(line: &str) -> Vec<(u32, bool, String, bool)> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset = true;
    let Ok(words) = lex.process(line, &|_| None) else {
        return Vec::new();
    };
    words.words.iter().filter_map(|w| heredoc_of(w)).collect()
}

/// Whether `name` (lowercase) may open heredocs.
fn heredoc_instruction(name: &str) -> bool {
    matches!(name, "run" | "copy" | "add")
}

pub(super) fn parse(src: &Src, shared: Arc<String>) -> Result<Dockerfile, DockerfileErrors> {
    let owned: Arc<String> = shared;
    let text = owned.as_str();
    let mut ctx = Ctx { src, escape: DEFAULT_ESCAPE, lines: Arc::new(Lines::new(text)) };
    if text.len() > MAX_FILE_SIZE {
        let span = SourceSpan::from(0..0);
        return Err(DockerfileErrors::one(ctx.error(
            ErrorKind::Limit,
            span,
            format!("the Dockerfile is {} bytes; bake reads at most {MAX_FILE_SIZE}", text.len()),
        )));
    }
    let lines = physical_lines(text);
    let mut errors = DockerfileErrors { errors: Vec::new(), more: 0 };
    let mut directives = Directives::default();
    let mut reader = DirectiveReader::default();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut instructions: Vec<Instruction> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let mut line = lines[i];
        if i == 0 && line.text.starts_with('\u{feff}') {
            line.start += 3;
            line.text = &line.text[3..];
            line.full = &line.full[3..];
        }
        i += 1;
        let trimmed = line.text.trim_start_matches(is_space);
        let token_start = line.start + (line.text.len() - trimmed.len());
        if is_comment(trimmed) {
            let comment = trimmed[1..].trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_owned());
            }
        }
        match read_directive(&mut reader, &mut directives, &mut ctx, trimmed, token_start) {
            Ok(true) => {
                comments.pop();
            }
            Ok(false) => {}
            Err(e) => return Err(DockerfileErrors::one(e)),
        }
        let token = if is_comment(trimmed) { "" } else { trimmed };
        let (piece, mut end_of_line) = trim_continuation(token, ctx.escape);
        if end_of_line && piece.is_empty() {
            continue;
        }
        let start_line = i;
        let mut logical = Logical::default();
        logical.push(piece, token_start);
        let mut empty_continuation = false;
        while !end_of_line && i < lines.len() {
            let next = lines[i];
            i += 1;
            // Directives are over by now, but BuildKit still counts the line.
            reader.done = true;
            if is_comment(next.text) {
                continue;
            }
            if next.text.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (piece, end) = trim_continuation(next.text, ctx.escape);
            end_of_line = end;
            logical.push(piece, next.start);
            if logical.text.len() > MAX_LINE {
                let span = SourceSpan::from(token_start..next.start);
                return Err(DockerfileErrors::one(ctx.error(
                    ErrorKind::Limit,
                    span,
                    format!("a line continued past {MAX_LINE} bytes"),
                )));
            }
        }
        let end_offset = lines.get(i.saturating_sub(1)).map_or(text.len(), |l| l.start + l.text.len());
        if empty_continuation {
            warnings.push(Warning {
                message: format!("Empty continuation line found in: {}", shorten(&logical.text)),
                span: SourceSpan::from(token_start..end_offset.max(token_start)),
                line: start_line,
            });
        }
        if instructions.len() >= MAX_INSTRUCTIONS {
            return Err(DockerfileErrors::one(ctx.error(
                ErrorKind::Limit,
                SourceSpan::from(token_start..token_start),
                format!("more than {MAX_INSTRUCTIONS} instructions"),
            )));
        }
        // Heredocs: read their bodies from the lines that follow.
        let keyword = first_word(&logical.text);
        let lower = keyword.to_ascii_lowercase();
        let target =
            if lower == "onbuild" { first_word(after_first_word(&logical.text)).to_ascii_lowercase() } else { lower };
        let mut heredocs = Vec::new();
        let mut body_end = end_offset;
        if heredoc_instruction(&target) && logical.text.contains("<<") && !json_form(&logical.text, ctx.escape) {
            let markers = heredocs_of_line(&logical.text);
            if markers.len() > MAX_HEREDOCS {
                let span = logical.span(0, logical.text.len());
                return Err(DockerfileErrors::one(ctx.error(
                    ErrorKind::Limit,
                    span,
                    format!("{} heredocs in one instruction; bake reads at most {MAX_HEREDOCS}", markers.len()),
                )));
            }
            let mut cursor = 0;
            for (fd, chomp, name, expand) in markers {
                let (marker_start, marker_end) = find_marker(&logical.text, cursor, &name);
                cursor = marker_end;
                let body_start = lines.get(i).map_or(text.len(), |l| l.start);
                let mut content = String::new();
                let mut terminated = false;
                while i < lines.len() {
                    let body = lines[i];
                    i += 1;
                    let candidate = if chomp { body.text.trim_start_matches('\t') } else { body.text };
                    if candidate == name {
                        terminated = true;
                        break;
                    }
                    content.push_str(body.full);
                }
                body_end = lines.get(i.saturating_sub(1)).map_or(text.len(), |l| l.start + l.text.len());
                if !terminated {
                    let span = logical.span(marker_start, marker_end);
                    return Err(DockerfileErrors::one(ctx.error_labelled(
                        ErrorKind::Heredoc,
                        span,
                        "unterminated heredoc",
                        format!("no line `{name}` closes this heredoc"),
                        None,
                    )));
                }
                heredocs.push(Heredoc {
                    name,
                    fd,
                    expand,
                    chomp,
                    content,
                    span: logical.span(marker_start, marker_end),
                    body_span: SourceSpan::from(body_start..body_end.max(body_start)),
                });
            }
        }
        let whole = SourceSpan::from(token_start..body_end.max(token_start));
        let end_line = ctx.lines.line(body_end.saturating_sub(1).max(token_start));
        let taken = std::mem::take(&mut comments);
        match instructions::build(&ctx, &logical, 0, heredocs) {
            Ok(kind_and_keyword) => {
                let (keyword, kind) = kind_and_keyword;
                instructions.push(Instruction {
                    span: whole,
                    keyword,
                    line: start_line,
                    end_line,
                    comments: taken,
                    kind,
                });
            }
            Err(e) => errors.push(e),
        }
    }
    if instructions.is_empty() && errors.errors.is_empty() {
        let at = text.len();
        errors.push(ctx.error(ErrorKind::Empty, SourceSpan::from(at..at), "file with no instructions"));
    }
    // Stages: global ARGs, then one stage per FROM.
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions {
        match (&instruction.kind, stages.last_mut()) {
            (Kind::From(_), _) => {
                stages.push(Stage { index: stages.len(), from_instruction: instruction, instructions: Vec::new() });
            }
            (_, Some(stage)) => stage.instructions.push(instruction),
            (Kind::Arg(_), None) => global_args.push(instruction),
            (_, None) => errors.push(ctx.error_labelled(
                ErrorKind::BeforeFrom,
                instruction.keyword.span,
                format!("{} before the first FROM", instruction.name()),
                "only ARG may come before FROM",
                Some("a Dockerfile starts with FROM, optionally after ARG instructions".to_owned()),
            )),
        }
    }
    if !errors.errors.is_empty() {
        return Err(errors);
    }
    Ok(Dockerfile {
        src: src.clone(),
        text: Arc::clone(&owned),
        directives,
        escape: ctx.escape,
        global_args,
        stages,
        warnings,
    })
}

/// A long line shortened for a warning.
fn shorten(text: &str) -> String {
    crate::lang::quoted(text)
}

fn first_word(text: &str) -> &str {
    let t = text.trim_start_matches(is_space);
    t.split(|c: char| c.is_whitespace()).next().unwrap_or_default()
}

fn after_first_word(text: &str) -> &str {
    let t = text.trim_start_matches(is_space);
    let end = t.find(char::is_whitespace).unwrap_or(t.len());
    &t[end..]
}

/// Whether the instruction (or ONBUILD's) arguments are a JSON array, so it
/// opens no heredoc.
fn json_form(text: &str, escape: char) -> bool {
    let mut logical = Logical::default();
    logical.push(text, 0);
    let mut rest = after_first_word(text);
    if first_word(text).eq_ignore_ascii_case("onbuild") {
        rest = after_first_word(rest);
    }
    let start = text.len() - rest.len();
    let (_, args_at) = builder_flags(&logical, start, escape);
    instructions::parse_json(logical.text[args_at..].trim()).is_ok_and(|v| v.is_some())
}

/// Where the marker of heredoc `name` is, from `from` on: `<<`, an optional
/// `-`, and the delimiter, quoted or not.
fn find_marker(text: &str, from: usize, name: &str) -> (usize, usize) {
    let mut at = from;
    while let Some(i) = text.get(at..).and_then(|t| t.find("<<")) {
        let start = at + i;
        let after = &text[start + 2..];
        let after_dash = after.strip_prefix('-').unwrap_or(after);
        let trimmed = after_dash.trim_start();
        let unquoted = trimmed.trim_start_matches(['"', '\'']);
        if unquoted.starts_with(name) {
            let mut end = text.len() - unquoted.len() + name.len();
            if text[end..].starts_with(['"', '\'']) {
                end += 1;
            }
            let digits = text[..start].len() - text[..start].trim_end_matches(|c: char| c.is_ascii_digit()).len();
            return (start - digits, end);
        }
        at = start + 2;
    }
    (from.min(text.len()), text.len())
}

/// Reads one line as a parser directive, if directives are still open.
fn read_directive(
    reader: &mut DirectiveReader,
    directives: &mut Directives,
    ctx: &mut Ctx<'_>,
    line: &str,
    offset: usize,
) -> Result<bool, DockerfileError> {
    if reader.done {
        return Ok(false);
    }
    let Some((name, value, value_at)) = directive_of(line) else {
        reader.done = true;
        return Ok(false);
    };
    if !matches!(name.as_str(), "syntax" | "escape" | "check") {
        reader.done = true;
        return Ok(false);
    }
    let span = SourceSpan::from(offset..offset + line.len());
    let value_span = SourceSpan::from(offset + value_at..offset + value_at + value.len());
    if !reader.seen.insert(name.clone()) {
        return Err(ctx.error(ErrorKind::Directive, span, format!("only one {name} parser directive can be used")));
    }
    let directive = Directive { value: value.to_owned(), span: value_span };
    match name.as_str() {
        "escape" => {
            ctx.escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(ctx.error_labelled(
                        ErrorKind::Directive,
                        value_span,
                        format!("invalid escape token '{value}' does not match ` or \\"),
                        "not ` or \\",
                        None,
                    ));
                }
            };
            directives.escape = Some(directive);
        }
        "syntax" => directives.syntax = Some(directive),
        _ => directives.check = Some(check_directive(ctx, value, value_span)?),
    }
    Ok(true)
}

/// `skip=A,B;error=true`.
fn check_directive(ctx: &Ctx<'_>, value: &str, span: SourceSpan) -> Result<CheckDirective, DockerfileError> {
    let mut check = CheckDirective { skip: CheckSkip::None, error: false, span };
    for part in value.split(';') {
        let (key, v) = part.split_once('=').unwrap_or((part, ""));
        match key.trim().to_ascii_lowercase().as_str() {
            "skip" => {
                let rules: Vec<String> =
                    v.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect();
                check.skip = if rules.iter().any(|r| r.eq_ignore_ascii_case("all")) {
                    CheckSkip::All
                } else {
                    CheckSkip::Rules(rules)
                };
            }
            "error" => {
                check.error = match v.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "t" => true,
                    "false" | "0" | "f" => false,
                    _ => {
                        return Err(ctx.error(
                            ErrorKind::Directive,
                            span,
                            format!("failed to parse check options: invalid error value {v:?}"),
                        ));
                    }
                };
            }
            "experimental" | "" => {}
            other => {
                return Err(ctx.error(
                    ErrorKind::Directive,
                    span,
                    format!("failed to parse check options: invalid check option {other:?}"),
                ));
            }
        }
    }
    Ok(check)
}
