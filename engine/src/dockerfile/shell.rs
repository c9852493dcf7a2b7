//! BuildKit's word expansion: the rules of its `shell` package, written
//! anew.
//!
//! A word is read once, left to right: single quotes keep everything
//! literally; double quotes keep spaces and let `$` and the escape character
//! (before `"`, `$` or itself) work; outside quotes the escape character
//! keeps the next character literally; `$NAME`, `${NAME}` and
//! `${NAME<modifier>word}` are replaced by their value:
//!
//! | form | value |
//! |---|---|
//! | `${V:-w}` / `${V-w}` | `w` when V is unset or empty / unset, else V |
//! | `${V:+w}` / `${V+w}` | `w` when V is set and not empty / set, else empty |
//! | `${V:?m}` / `${V?m}` | an error `V: m` when V is unset or empty / unset |
//! | `${V#p}` / `${V##p}` | V without its shortest / longest prefix matching p |
//! | `${V%p}` / `${V%%p}` | V without its shortest / longest suffix matching p |
//! | `${V/p/r}` / `${V//p/r}` | the first / every match of p replaced by r |
//!
//! Patterns take `*` and `?`. Positional and special parameters (`$1`,
//! `$@`, `$#`...) are never set in a Dockerfile and expand to nothing.
//!
//! The same pass splits the result into words where Docker splits (EXPOSE,
//! heredoc markers): at unquoted whitespace, including whitespace that came
//! from a variable's value. It also records which variables were read, set
//! or not, for cache keys and the UndefinedVar lint.
//!
//! One difference from BuildKit on purpose: BuildKit (since mid-2024) shares
//! one buffer between nested substitutions when splitting words, so
//! `a${X:-b}c` split into words loses its `a`. bake keeps it.

use std::collections::BTreeSet;

use super::limits::{MAX_EXPANDED, MAX_EXPANSION_DEPTH};

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShellError(pub String);

/// The result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The word as one string (quotes removed, variables replaced).
    pub value: String,
    /// The same, split into words at unquoted whitespace (left empty by
    /// [`Scope::expand`](super::Scope::expand), which only needs the value).
    pub words: Vec<String>,
    /// Variables read that had a value.
    pub used: BTreeSet<String>,
    /// Variables read that were not set.
    pub unset: BTreeSet<String>,
}

/// Words as a split expansion returns them.
pub type Words = Vec<String>;

/// Expands `word` with variables from `env`, as one word (WORKDIR, ENV
/// values, COPY paths...).
pub fn expand_word(word: &str, escape: char, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ShellError> {
    Lexer::new(escape).process(word, env)
}

/// Expands `word` and splits it into words (EXPOSE).
pub fn expand_words(word: &str, escape: char, env: &dyn Fn(&str) -> Option<String>) -> Result<Words, ShellError> {
    Lexer::new(escape).process(word, env).map(|e| e.words)
}

/// The lexer's switches, as BuildKit's `Lex` has them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lexer {
    pub(crate) escape: char,
    /// Keep quote characters in the result.
    pub(crate) raw_quotes: bool,
    /// Keep escape characters in the result.
    pub(crate) raw_escapes: bool,
    /// Leave unset variables as written (`$X`, `${X:-y}`).
    pub(crate) skip_unset: bool,
    /// Treat quotes as ordinary characters (heredoc bodies).
    pub(crate) skip_quotes: bool,
    /// Split the result into words too (off when only the value is wanted:
    /// splitting copies every byte of every value once more).
    pub(crate) split: bool,
}

impl Lexer {
    pub(crate) fn new(escape: char) -> Self {
        Self { escape, raw_quotes: false, raw_escapes: false, skip_unset: false, skip_quotes: false, split: true }
    }

    pub(crate) fn process(self, word: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ShellError> {
        let chars: Vec<char> = word.chars().collect();
        let mut state =
            State { lex: self, chars, pos: 0, env, used: BTreeSet::new(), unset: BTreeSet::new(), depth: 0 };
        let (value, words) = state.stop_on(None, self.raw_escapes)?;
        Ok(Expanded { value, words, used: state.used, unset: state.unset })
    }
}

struct State<'a> {
    lex: Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Fn(&str) -> Option<String>,
    used: BTreeSet<String>,
    unset: BTreeSet<String>,
    depth: usize,
}

/// Words being split: BuildKit's `wordsStruct`.
struct Splitter {
    buf: String,
    words: Vec<String>,
    in_word: bool,
    enabled: bool,
}

impl Splitter {
    fn new(enabled: bool) -> Self {
        Self { buf: String::new(), words: Vec::new(), in_word: false, enabled }
    }

    fn add_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        if ch.is_whitespace() && self.in_word {
            if !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else if !ch.is_whitespace() {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        if !self.enabled {
            return;
        }
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        if !self.enabled {
            return;
        }
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, ShellError> {
    Err(ShellError(message.into()))
}

fn check_len(s: &str) -> Result<(), ShellError> {
    if s.len() > MAX_EXPANDED {
        return err(format!("expansion longer than {MAX_EXPANDED} bytes"));
    }
    Ok(())
}

impl State<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match (self.env)(name) {
            Some(v) => {
                self.used.insert(name.to_owned());
                Some(v)
            }
            None => {
                self.unset.insert(name.to_owned());
                None
            }
        }
    }

    /// Reads until `stop` (consumed) or the end; BuildKit's `processStopOn`.
    fn stop_on(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<(String, Vec<String>), ShellError> {
        self.depth += 1;
        if self.depth > MAX_EXPANSION_DEPTH {
            return err(format!("substitutions nested more than {MAX_EXPANSION_DEPTH} deep"));
        }
        let result = self.stop_on_inner(stop, raw_escapes);
        self.depth -= 1;
        result
    }

    fn stop_on_inner(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = Splitter::new(self.lex.split);
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let value = self.dollar()?;
                    result.push_str(&value);
                    words.add_string(&value);
                }
                '<' => {
                    let value = self.possible_heredoc();
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                '\'' if !self.lex.skip_quotes => {
                    let value = self.single_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                '"' if !self.lex.skip_quotes => {
                    let value = self.double_quote(raw_escapes)?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                _ => {
                    self.pos += 1;
                    let mut ch = ch;
                    if ch == self.lex.escape {
                        if raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        match self.next() {
                            None => break,
                            Some(c) => ch = c,
                        }
                        words.add_raw_char(ch);
                    } else {
                        words.add_char(ch);
                    }
                    result.push(ch);
                }
            }
            check_len(&result)?;
        }
        if let Some(stop) = stop {
            return err(format!("unexpected end of statement while looking for matching {stop}"));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Result<String, ShellError> {
        let mut result = String::new();
        self.pos += 1;
        if self.lex.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => return err("unexpected end of statement while looking for matching single-quote"),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn double_quote(&mut self, raw_escapes: bool) -> Result<String, ShellError> {
        let mut result = String::new();
        self.pos += 1;
        if self.lex.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => return err("unexpected end of statement while looking for matching double-quote"),
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    result.push_str(&value);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.lex.escape {
                        if raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                self.pos += 1;
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
            check_len(&result)?;
        }
    }

    fn possible_heredoc(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".to_owned();
        }
        self.pos += 1;
        let mut out = "<<".to_owned();
        while let Some(c @ ('\t' | '\r' | ' ')) = self.peek() {
            out.push(c);
            self.pos += 1;
        }
        out
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }

    /// `$NAME` or `${...}`, the `$` not yet consumed.
    fn dollar(&mut self) -> Result<String, ShellError> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return err("syntax error: missing '}'"),
            Some('{' | '}' | ':') => return err("syntax error: bad substitution"),
            Some(_) => {}
        }
        let name = self.name();
        let Some(mut ch) = self.next() else {
            return err("syntax error: missing '}'");
        };
        let mut modifier = ch.to_string();
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = ch == ':';
                if null_is_unset {
                    match self.next() {
                        Some(c) => {
                            ch = c;
                            modifier.push(c);
                        }
                        None => return err("syntax error: missing '}'"),
                    }
                }
                let trims = ch == '#' || ch == '%';
                if null_is_unset && trims {
                    return err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let word = match self.stop_on(Some('}'), trims) {
                    Ok((word, _)) => word,
                    Err(_) if self.peek().is_none() => return err("syntax error: missing '}'"),
                    Err(e) => return Err(e),
                };
                let value = self.get_env(&name);
                if self.lex.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let empty = |v: &Option<String>| v.as_deref().is_none_or(|v| null_is_unset && v.is_empty());
                match ch {
                    '-' => Ok(if empty(&value) { word } else { value.unwrap_or_default() }),
                    '+' => Ok(if empty(&value) { String::new() } else { word }),
                    '?' => match value {
                        None => {
                            let message = if word.is_empty() { "is not allowed to be unset" } else { word.as_str() };
                            err(format!("{name}: {message}"))
                        }
                        Some(v) if null_is_unset && v.is_empty() => {
                            let message = if word.is_empty() { "is not allowed to be empty" } else { word.as_str() };
                            err(format!("{name}: {message}"))
                        }
                        Some(v) => Ok(v),
                    },
                    '%' | '#' => {
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(ch) {
                            Some(rest) => (true, rest.to_owned()),
                            None => (false, word),
                        };
                        if ch == '%' {
                            trim_suffix(&pattern, &value, greedy)
                        } else {
                            trim_prefix(&pattern, &value, greedy)
                        }
                    }
                    _ => err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pattern = match self.stop_on(Some('/'), true) {
                    Ok((p, _)) => p,
                    Err(_) if self.peek().is_none() => return err("syntax error: missing '/' in ${}"),
                    Err(e) => return Err(e),
                };
                let replacement = match self.stop_on(Some('}'), true) {
                    Ok((r, _)) => r,
                    Err(_) if self.peek().is_none() => return err("syntax error: missing '}'"),
                    Err(e) => return Err(e),
                };
                let value = self.get_env(&name);
                let Some(value) = value else {
                    if self.lex.skip_unset {
                        return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                    }
                    // BuildKit replaces in the empty string: nothing to do
                    // unless the pattern matches it.
                    return replace(&pattern, "", &replacement, all);
                };
                replace(&pattern, &value, &replacement, all)
            }
            _ => err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }
}

fn replace(pattern: &str, value: &str, replacement: &str, all: bool) -> Result<String, ShellError> {
    let re = pattern_regex(pattern, true, false)?;
    let out = if all {
        // `replace_all`, with the length checked as it grows: an empty
        // pattern matches between every two characters.
        let mut out = String::new();
        let mut last = 0;
        for caps in re.captures_iter(value) {
            let Some(m) = caps.get(0) else { continue };
            out.push_str(&value[last..m.start()]);
            caps.expand(replacement, &mut out);
            last = m.end();
            check_len(&out)?;
        }
        out.push_str(&value[last..]);
        out
    } else if let Some(m) = re.find(value) {
        format!("{}{replacement}{}", &value[..m.start()], &value[m.end()..])
    } else {
        value.to_owned()
    };
    check_len(&out)?;
    Ok(out)
}

/// A shell pattern (`*`, `?`, `\` escapes) as a regex, as BuildKit converts it.
fn pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<regex::Regex, ShellError> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => {
                out.push_str(if greedy { ".*" } else { ".*?" });
                continue;
            }
            '?' => {
                out.push('.');
                continue;
            }
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(c @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(c);
                    }
                    Some(c) => {
                        return err(format!("invalid pattern ({pattern}) in substitution: invalid escape '\\{c}'"));
                    }
                    None => return err(format!("invalid pattern ({pattern}) in substitution: invalid escape '\\'")),
                }
                continue;
            }
            _ => {}
        }
        let mut buf = [0u8; 4];
        out.push_str(&regex::escape(tok.encode_utf8(&mut buf)));
    }
    regex::RegexBuilder::new(&out)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ShellError(format!("invalid pattern ({pattern}) in substitution: {e}")))
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let re = pattern_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_owned(),
        None => value.to_owned(),
    })
}

/// A pattern read backwards, escapes kept before the character they escape.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec![' '; chars.len()];
    let last = chars.len().saturating_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let at = last - i;
        if chars[i] == '\\' && i != last {
            out[at - 1] = '\\';
            out[at] = chars[i + 1];
            i += 2;
        } else {
            out[at] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}
