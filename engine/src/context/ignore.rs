//! Docker's ignore rules (`.dockerignore`), which are not gitignore's.
//!
//! This follows moby's `patternmatcher` and `dockerignore` packages:
//!
//! - a line is a pattern relative to the context root; `#` starts a comment
//!   line, blank lines are skipped, a leading `/` is dropped and the pattern is
//!   cleaned like Go's `filepath.Clean`;
//! - `*` matches within one path component, `?` one character other than `/`,
//!   `[...]` a class (`[^...]` negated), `\` escapes, and `**` any number of
//!   components (`**/` may match none);
//! - unlike gitignore, a pattern without a `/` is *not* matched at any depth:
//!   `*.md` matches `README.md` but not `docs/guide.md` (write `**/*.md`);
//! - a pattern matches a path when it matches the path itself or one of its
//!   parent folders, so `build` excludes `build/out/app`;
//! - `!pattern` re-includes, and the last matching line wins.
//!
//! The same rules serve a `copy`'s `exclude=` patterns.

use regex::Regex;

/// One compiled pattern.
#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern text, without `!`.
    text: String,
    /// `!pattern`: re-include what it matches.
    exclusion: bool,
    /// Number of `/`-separated components of `text`.
    depth: usize,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcard: compare as a string.
    Literal,
    Regex(Regex),
}

/// A pattern that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadPattern {
    pub(crate) pattern: String,
    pub(crate) reason: &'static str,
}

/// An ordered list of patterns: the last one that matches decides.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    patterns: Vec<Pattern>,
}

impl Rules {
    /// Rules from the lines of an ignore file, with 1-based line numbers on errors.
    pub(crate) fn parse_file(text: &str) -> Result<Self, (usize, BadPattern)> {
        let mut rules = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = if i == 0 { line.trim_start_matches('\u{feff}') } else { line };
            if line.starts_with('#') {
                continue;
            }
            rules.push(line).map_err(|e| (i + 1, e))?;
        }
        Ok(rules)
    }

    /// Rules from a list of patterns (a `copy`'s `exclude=`).
    pub(crate) fn from_patterns<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, BadPattern> {
        let mut rules = Self::default();
        for p in patterns {
            rules.push(p)?;
        }
        Ok(rules)
    }

    /// Appends another list's patterns after this one's (they win ties).
    pub(crate) fn extend(&mut self, other: Self) {
        self.patterns.extend(other.patterns);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    fn push(&mut self, line: &str) -> Result<(), BadPattern> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        let (exclusion, rest) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if exclusion && rest.is_empty() {
            return Err(BadPattern { pattern: line.to_owned(), reason: "`!` must be followed by a pattern" });
        }
        let mut text = clean(rest);
        if text.len() > 1 && text.starts_with('/') {
            text.remove(0);
        }
        let matcher = if text.contains(['*', '?', '[', '\\']) {
            let re = translate(&text).map_err(|reason| BadPattern { pattern: line.to_owned(), reason })?;
            Matcher::Regex(
                Regex::new(&re).map_err(|_| BadPattern { pattern: line.to_owned(), reason: "invalid pattern" })?,
            )
        } else {
            Matcher::Literal
        };
        let depth = text.split('/').count();
        self.patterns.push(Pattern { text, exclusion, depth, matcher });
        Ok(())
    }

    /// Whether `path` (relative, `/`-separated, cleaned) is excluded: the last
    /// pattern matching it or one of its parents decides.
    pub(crate) fn is_excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for p in &self.patterns {
            // An exclusion only matters once something matched, and an
            // inclusion only while nothing has.
            if p.exclusion != excluded {
                continue;
            }
            if p.matches_or_parent(path) {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// Whether a `!` pattern could re-include something below the excluded
    /// folder `dir`; when none can, the walk skips the folder (as moby does).
    pub(crate) fn may_reinclude_below(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let literal_prefix = &p.text[..p.text.find(['*', '?', '[', '\\']).unwrap_or(p.text.len())];
            let text_slash = format!("{}/", p.text);
            text_slash.starts_with(&dir_slash)
                || dir_slash.starts_with(literal_prefix)
                || literal_prefix.starts_with(&dir_slash)
        })
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Literal => self.text == path,
            Matcher::Regex(re) => re.is_match(path),
        }
    }

    /// The pattern matches the path, or a parent folder of it at most as deep
    /// as the pattern.
    fn matches_or_parent(&self, path: &str) -> bool {
        if self.matches(path) {
            return true;
        }
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            // A literal pattern can only match the parent of its own depth.
            if let Matcher::Literal = self.matcher
                && parent.split('/').count() != self.depth
            {
                continue;
            }
            if self.matches(parent) {
                return true;
            }
        }
        false
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub(crate) fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// A pattern as an anchored regular expression, as moby's `compile` does.
fn translate(pattern: &str) -> Result<String, &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                re.push_str(if i == chars.len() { ".*" } else { "(.*/)?" });
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '\\' => {
                let next = chars.get(i).ok_or("a pattern cannot end with `\\`")?;
                i += 1;
                re.push_str(&regex::escape(&next.to_string()));
            }
            '[' => {
                let mut class = String::from("[");
                let negated = matches!(chars.get(i), Some('^' | '!'));
                if negated {
                    class.push('^');
                    i += 1;
                }
                let mut members = 0;
                loop {
                    match chars.get(i) {
                        None => return Err("unclosed `[` in pattern"),
                        Some(']') if members > 0 => break,
                        Some('\\') => {
                            i += 1;
                            let escaped = chars.get(i).ok_or("unclosed `[` in pattern")?;
                            class.push_str(&regex::escape(&escaped.to_string()));
                        }
                        Some(&m @ ('[' | ']' | '&' | '~' | '^')) => {
                            class.push('\\');
                            class.push(m);
                        }
                        Some(&m) => class.push(m),
                    }
                    members += 1;
                    i += 1;
                }
                i += 1;
                if negated {
                    class.push('/');
                }
                class.push(']');
                re.push_str(&class);
            }
            other => re.push_str(&regex::escape(&other.to_string())),
        }
    }
    re.push('$');
    Ok(re)
}

/// Go's `filepath.Match` extended with `**`, on whole `/`-separated paths:
/// what a `copy` source glob selects.
pub(crate) fn glob(pattern: &str) -> Result<Regex, &'static str> {
    Regex::new(&translate(pattern)?).map_err(|_| "invalid pattern")
}

/// Whether a string has glob metacharacters.
pub(crate) fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(lines: &str) -> Rules {
        Rules::parse_file(lines).expect("valid rules")
    }

    #[test]
    fn root_only_unlike_gitignore() {
        let r = rules("*.md\nfoo\n");
        assert!(r.is_excluded("README.md"));
        assert!(!r.is_excluded("docs/guide.md"));
        assert!(r.is_excluded("foo"));
        assert!(r.is_excluded("foo/bar/baz.txt"));
        assert!(!r.is_excluded("a/foo"));
    }

    #[test]
    fn double_star_any_depth() {
        let r = rules("**/*.md\n");
        assert!(r.is_excluded("README.md"));
        assert!(r.is_excluded("docs/deep/guide.md"));
        assert!(!r.is_excluded("docs/guide.txt"));
        let r = rules("docs/**\n");
        assert!(r.is_excluded("docs/a/b"));
        assert!(!r.is_excluded("doc"));
        let r = rules("a/**/z\n");
        assert!(r.is_excluded("a/z"));
        assert!(r.is_excluded("a/b/c/z"));
        assert!(!r.is_excluded("b/z"));
    }

    #[test]
    fn last_match_wins_and_negation_reincludes() {
        let r = rules("*.txt\n!keep.txt\n");
        assert!(r.is_excluded("drop.txt"));
        assert!(!r.is_excluded("keep.txt"));
        let r = rules("!keep.txt\n*.txt\n");
        assert!(r.is_excluded("keep.txt"));
        // Re-including under an excluded folder.
        let r = rules("src\n!src/keep\n");
        assert!(r.is_excluded("src/drop"));
        assert!(!r.is_excluded("src/keep"));
        assert!(!r.is_excluded("src/keep/inner"));
        assert!(r.may_reinclude_below("src"));
        assert!(!r.may_reinclude_below("other"));
    }

    #[test]
    fn comments_blank_lines_and_leading_slash() {
        let r = rules("# comment\n\n  /build  \n ./dist/\n");
        assert!(r.is_excluded("build/x"));
        assert!(r.is_excluded("dist/y"));
        assert!(!r.is_excluded("# comment"));
    }

    #[test]
    fn classes_and_escapes() {
        let r = rules("file[0-9].txt\nx[^a].log\n\\*star\n");
        assert!(r.is_excluded("file3.txt"));
        assert!(!r.is_excluded("filea.txt"));
        assert!(r.is_excluded("xb.log"));
        assert!(!r.is_excluded("xa.log"));
        assert!(!r.is_excluded("x/.log"));
        assert!(r.is_excluded("*star"));
        assert!(!r.is_excluded("anystar"));
        // Regex metacharacters are literal.
        let r = rules("a+b(c).{d}$\n");
        assert!(r.is_excluded("a+b(c).{d}$"));
        assert!(!r.is_excluded("aab(c).{d}$"));
    }

    #[test]
    fn bad_patterns_are_reported_with_their_line() {
        assert!(matches!(Rules::parse_file("ok\n[abc\n"), Err((2, _))));
        assert!(Rules::parse_file("!\n").is_err());
        assert!(Rules::parse_file("trailing\\").is_err());
    }

    #[test]
    fn clean_like_go() {
        assert_eq!(clean("a//b/./c/"), "a/b/c");
        assert_eq!(clean("a/../../b"), "../b");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean(""), ".");
        assert_eq!(clean("./"), ".");
    }
}
