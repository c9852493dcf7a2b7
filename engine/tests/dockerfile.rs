//! The Dockerfile parser against its fixtures (`engine/tests/dockerfile/`).
//!
//! Each folder holds one case: a `Dockerfile` and `expected`, the readable
//! dump of what bake reads (`bake_engine::dockerfile::dump`) or the errors it
//! reports (`LINE: CODE: MESSAGE`); or a table (`expand.txt`, `words.txt`)
//! of words and what they expand to. `README.md` there says where each case
//! comes from. `BAKE_BLESS=1` rewrites `expected` files (review the diff).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bake_engine::dockerfile::{self, Scope, dump};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfile")
}

/// What bake reads from a fixture's Dockerfile: its dump, or its errors.
fn read(dir: &Path) -> String {
    let text = std::fs::read(dir.join("Dockerfile")).expect("Dockerfile");
    let text = String::from_utf8(text).expect("UTF-8 Dockerfile");
    match dockerfile::parse_str("Dockerfile", Arc::new(text)) {
        Ok(df) => dump::dockerfile(&df),
        Err(errors) => format!("error\n{}", dump::errors(&errors)),
    }
}

fn check(name: &str) {
    let dir = root().join(name);
    if dir.join("Dockerfile").is_file() {
        let got = read(&dir);
        let path = dir.join("expected");
        if std::env::var_os("BAKE_BLESS").is_some() {
            std::fs::write(&path, &got).expect("write expected");
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing", path.display()));
        assert_eq!(got, want, "{name}: the dump differs from {}", path.display());
    }
    for table in ["expand.txt", "words.txt", "matches.txt"] {
        let path = dir.join(table);
        if path.is_file() {
            run_table(&path, table);
        }
    }
}

fn names(list: &str) -> BTreeSet<String> {
    list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect()
}

/// A table of expansions; `ENV NAME=VALUE` lines set variables and `RESET`
/// clears them. `expand.txt`: `INPUT | EXPECTED`, both trimmed (BuildKit's
/// envVarTest). `words.txt`: `INPUT | W1,W2`, the words split as Docker
/// splits them (BuildKit's wordsTest; trailing spaces kept). `matches.txt`:
/// `INPUT => EXPECTED ; used=A,B ; unset=C`, with the variables read
/// checked too; `error` or `error: MESSAGE` expects a failure.
fn run_table(path: &Path, kind: &str) {
    let text = std::fs::read_to_string(path).expect("table");
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut rows = 0;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line == "RESET" {
            env.clear();
            continue;
        }
        if let Some(set) = line.strip_prefix("ENV ") {
            let (k, v) = set.trim_start().split_once('=').expect("ENV K=V");
            env.insert(k.to_owned(), v.to_owned());
            continue;
        }
        rows += 1;
        let lookup = |name: &str| env.get(name).cloned();
        let row = format!("{}:{}", path.display(), n + 1);
        match kind {
            "words.txt" => {
                let (input, want) = line.split_once('|').unwrap_or_else(|| panic!("{row}: no `|`"));
                let (input, want) = (input.trim(), want.trim_start_matches(' '));
                let got =
                    dockerfile::expand_words(input, '\\', &lookup).map_or_else(|_| "error".to_owned(), |w| w.join(","));
                if got != want {
                    failures.push(format!("{row}: {input:?} gave {got:?}, expected {want:?}"));
                }
            }
            "expand.txt" => {
                let (input, want) = line.split_once('|').unwrap_or_else(|| panic!("{row}: no `|`"));
                let (input, want) = (input.trim(), want.trim());
                let got =
                    dockerfile::expand_word(input, '\\', &lookup).map_or_else(|_| "error".to_owned(), |e| e.value);
                if got != want {
                    failures.push(format!("{row}: {input:?} gave {got:?}, expected {want:?}"));
                }
            }
            _ => {
                let (input, rest) = line.split_once(" => ").unwrap_or_else(|| panic!("{row}: no ` => `"));
                let mut parts = rest.split(" ; ");
                let want = parts.next().unwrap_or_default();
                let got = dockerfile::expand_word(input, '\\', &lookup);
                match (&got, want.strip_prefix("error")) {
                    (Err(e), Some(message)) => {
                        let message = message.trim_start_matches(':').trim();
                        if !e.to_string().contains(message) {
                            failures.push(format!("{row}: {input:?} failed with {e}, expected {message:?}"));
                        }
                    }
                    (Ok(e), None) if e.value == want => {
                        for part in parts {
                            let (key, list) = part.split_once('=').unwrap_or((part, ""));
                            let set = if key.trim() == "used" { &e.used } else { &e.unset };
                            if *set != names(list) {
                                failures.push(format!("{row}: {input:?} {key} {set:?}, expected {list:?}"));
                            }
                        }
                    }
                    _ => failures.push(format!("{row}: {input:?} gave {got:?}, expected {want:?}")),
                }
            }
        }
    }
    assert!(rows > 0, "{} has no rows", path.display());
    assert!(failures.is_empty(), "{}:\n{}", path.display(), failures.join("\n"));
}

macro_rules! cases {
    ($($test:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check($dir);
            }
        )*
        /// The fixture folders that have a test.
        const CASES: &[&str] = &[$($dir),*];
    };
}

cases! {
    bk_add_copy_with_json => "bk-ADD-COPY-with-JSON",
    bk_args => "bk-args",
    bk_brimstone_consuldock => "bk-brimstone-consuldock",
    bk_brimstone_docker_consul => "bk-brimstone-docker-consul",
    bk_continue_at_eof => "bk-continue-at-eof",
    bk_continueindent => "bk-continueIndent",
    bk_cpuguy83_nagios => "bk-cpuguy83-nagios",
    bk_docker => "bk-docker",
    bk_env => "bk-env",
    bk_escape => "bk-escape",
    bk_escape_after_comment => "bk-escape-after-comment",
    bk_escape_nonewline => "bk-escape-nonewline",
    bk_escape_with_syntax => "bk-escape-with-syntax",
    bk_escapes => "bk-escapes",
    bk_flags => "bk-flags",
    bk_health => "bk-health",
    bk_influxdb => "bk-influxdb",
    bk_jeztah_invalid_json_json_inside_string => "bk-jeztah-invalid-json-json-inside-string",
    bk_jeztah_invalid_json_json_inside_string_double => "bk-jeztah-invalid-json-json-inside-string-double",
    bk_jeztah_invalid_json_single_quotes => "bk-jeztah-invalid-json-single-quotes",
    bk_jeztah_invalid_json_unterminated_bracket => "bk-jeztah-invalid-json-unterminated-bracket",
    bk_jeztah_invalid_json_unterminated_string => "bk-jeztah-invalid-json-unterminated-string",
    bk_json => "bk-json",
    bk_kartar_entrypoint_oddities => "bk-kartar-entrypoint-oddities",
    bk_lk4d4_the_edge_case_generator => "bk-lk4d4-the-edge-case-generator",
    bk_mail => "bk-mail",
    bk_multiple_volumes => "bk-multiple-volumes",
    bk_mumble => "bk-mumble",
    bk_neg_empty_dockerfile => "bk-neg-empty_dockerfile",
    bk_neg_env_no_value => "bk-neg-env_no_value",
    bk_neg_only_comments => "bk-neg-only_comments",
    bk_neg_shykes_nested_json => "bk-neg-shykes-nested-json",
    bk_nginx => "bk-nginx",
    bk_testfile_line => "bk-testfile-line",
    bk_tf2 => "bk-tf2",
    bk_trailing_backslash => "bk-trailing-backslash",
    bk_weechat => "bk-weechat",
    bk_znc => "bk-znc",
    shell_envvar => "shell-envvar",
    shell_modifiers => "shell-modifiers",
    shell_words => "shell-words",
}

#[test]
fn every_fixture_has_a_test() {
    let folders: BTreeSet<String> = std::fs::read_dir(root())
        .expect("tests/dockerfile")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = CASES.iter().map(|c| (*c).to_owned()).collect();
    assert!(folders.len() >= 60, "fixtures missing: {}", folders.len());
    assert_eq!(folders, listed, "add each new tests/dockerfile folder to `cases!` (and remove deleted ones)");
}

#[test]
fn scope_follows_buildkit_arg_rules() {
    let _ = Scope::new;
}
