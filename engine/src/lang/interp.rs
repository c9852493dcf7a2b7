//! `${NAME}` interpolation.
//!
//! `${NAME}` is replaced by the arg's value; `$$` is a literal `$` (as in
//! Compose files), so a shell variable in a `run` script is written `$${HOME}`
//! or `$HOME`. A `$` followed by anything else is kept as it is.

/// A piece of an interpolated string.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece<'a> {
    Text(&'a str),
    /// `${name}`, with the byte range of the whole `${name}` in the input.
    Arg {
        name: &'a str,
        start: usize,
        end: usize,
    },
}

/// A malformed `${...}`: byte range in the input and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed {
    pub start: usize,
    pub end: usize,
    pub message: &'static str,
}

/// Splits a string into text and arg references.
pub(super) fn pieces(input: &str) -> Result<Vec<Piece<'_>>, Malformed> {
    let mut out = Vec::new();
    let bytes = input.as_bytes();
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => {
                // `$$` -> `$`: emit up to and including the first `$`.
                out.push(Piece::Text(&input[text_start..=i]));
                i += 2;
                text_start = i;
            }
            Some(b'{') => {
                let Some(close) = input[i + 2..].find('}') else {
                    return Err(Malformed { start: i, end: input.len(), message: "`${` is never closed" });
                };
                let name = &input[i + 2..i + 2 + close];
                if !is_name(name) {
                    return Err(Malformed {
                        start: i,
                        end: i + 3 + close,
                        message: "an arg name is letters, digits and `_`, not starting with a digit",
                    });
                }
                if text_start < i {
                    out.push(Piece::Text(&input[text_start..i]));
                }
                out.push(Piece::Arg { name, start: i, end: i + 3 + close });
                i += 3 + close;
                text_start = i;
            }
            _ => i += 1,
        }
    }
    if text_start < input.len() {
        out.push(Piece::Text(&input[text_start..]));
    }
    Ok(out)
}

/// Whether `name` is a valid arg name.
pub(super) fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(s: &str) -> String {
        match pieces(s) {
            Ok(p) => p
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => (*t).to_owned(),
                    Piece::Arg { name, .. } => format!("<{name}>"),
                })
                .collect(),
            Err(m) => format!("error {}..{}: {}", m.start, m.end, m.message),
        }
    }

    #[test]
    fn interpolation_rules() {
        assert_eq!(render("plain"), "plain");
        assert_eq!(render("golang:${GO_VERSION}"), "golang:<GO_VERSION>");
        assert_eq!(render("${A}${B}"), "<A><B>");
        assert_eq!(render("echo $HOME"), "echo $HOME");
        assert_eq!(render("echo $${HOME}"), "echo ${HOME}");
        assert_eq!(render("cost: $$5"), "cost: $5");
        assert_eq!(render("trailing $"), "trailing $");
        assert_eq!(render("x ${A"), "error 2..5: `${` is never closed");
        assert_eq!(render("${1A}"), "error 0..5: an arg name is letters, digits and `_`, not starting with a digit");
        assert_eq!(render("${}"), "error 0..3: an arg name is letters, digits and `_`, not starting with a digit");
        assert_eq!(render("ünï ${A} ✓"), "ünï <A> ✓");
    }
}
