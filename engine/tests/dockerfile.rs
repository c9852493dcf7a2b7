//! The Dockerfile parser against its fixtures (`engine/tests/dockerfile/`).
//!
//! Each folder holds one case: a `Dockerfile` and `expected`, the readable
//! dump of what bake reads (`bake_engine::dockerfile::dump`) or the errors it
//! reports (`LINE: CODE: MESSAGE`); or a table (`expand.txt`, `words.txt`)
//! of words and what they expand to. `README.md` there says where each case
//! comes from. Folders named `lint-*` expect the lint findings instead
//! (`LINE: RULE: MESSAGE`). `BAKE_BLESS=1` rewrites `expected` files (review
//! the diff).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
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
    let lint = dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("lint-"));
    match dockerfile::parse_str("Dockerfile", Arc::new(text)) {
        Ok(df) if lint => {
            // The base image's environment, as most images have it.
            let findings = dockerfile::lint::check_with(&df, &|_| Some(vec!["PATH".to_owned()]));
            let mut out = String::new();
            for f in &findings {
                let _ = writeln!(out, "{}: {}: {}", f.line, f.rule, f.message);
            }
            out
        }
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
    add_flags => "add-flags",
    arg_empty => "arg-empty",
    arg_errors => "arg-errors",
    arg_forms => "arg-forms",
    before_from => "before-from",
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
    bk_heredocs => "bk-heredocs",
    bk_influxdb => "bk-influxdb",
    bk_instruction_errors => "bk-instruction-errors",
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
    bom => "bom",
    cmd_entrypoint_forms => "cmd-entrypoint-forms",
    comments_kept => "comments-kept",
    continuation_comments => "continuation-comments",
    continuation_eof_escape => "continuation-eof-escape",
    continuation_odd_escapes => "continuation-odd-escapes",
    continuation_only_escape => "continuation-only-escape",
    copy_errors => "copy-errors",
    copy_flags => "copy-flags",
    crlf => "crlf",
    directive_after_blank => "directive-after-blank",
    directive_after_unknown => "directive-after-unknown",
    directive_case_spaces => "directive-case-spaces",
    directive_check => "directive-check",
    directive_check_all => "directive-check-all",
    directive_check_bad => "directive-check-bad",
    directive_duplicate => "directive-duplicate",
    directive_escape_backtick => "directive-escape-backtick",
    directive_invalid_escape => "directive-invalid-escape",
    directive_not_at_top => "directive-not-at-top",
    empty_continuation_eof => "empty-continuation-eof",
    env_errors => "env-errors",
    env_forms => "env-forms",
    expose_forms => "expose-forms",
    from_errors => "from-errors",
    from_forms => "from-forms",
    healthcheck_errors => "healthcheck-errors",
    healthcheck_forms => "healthcheck-forms",
    heredoc_errors => "heredoc-errors",
    heredoc_not_read => "heredoc-not-read",
    heredoc_several => "heredoc-several",
    instruction_case => "instruction-case",
    label_forms => "label-forms",
    lint_casing => "lint-casing",
    lint_empty_continuation => "lint-empty-continuation",
    lint_json_args => "lint-json-args",
    lint_multiple => "lint-multiple",
    lint_skip => "lint-skip",
    lint_skip_all => "lint-skip-all",
    lint_stage_names => "lint-stage-names",
    lint_undefined => "lint-undefined",
    lint_workdir_maintainer_legacy => "lint-workdir-maintainer-legacy",
    many_errors => "many-errors",
    missing_arguments => "missing-arguments",
    multi_stage => "multi-stage",
    onbuild => "onbuild",
    onbuild_errors => "onbuild-errors",
    run_mount_errors => "run-mount-errors",
    run_mounts => "run-mounts",
    shell_envvar => "shell-envvar",
    shell_errors => "shell-errors",
    shell_forms => "shell-forms",
    shell_modifiers => "shell-modifiers",
    shell_words => "shell-words",
    unknown_instruction => "unknown-instruction",
    user_workdir_stopsignal => "user-workdir-stopsignal",
    volume_errors => "volume-errors",
    volume_forms => "volume-forms",
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

fn parse(text: &str) -> dockerfile::Dockerfile {
    dockerfile::parse_str("Dockerfile", Arc::new(text.to_owned())).unwrap_or_else(|e| panic!("{}", dump::errors(&e)))
}

fn parse_err(text: &str) -> dockerfile::DockerfileErrors {
    dockerfile::parse_str("Dockerfile", Arc::new(text.to_owned())).expect_err("the Dockerfile should not parse")
}

/// The text a span covers.
fn at(text: &str, span: miette::SourceSpan) -> &str {
    &text[span.offset()..span.offset() + span.len()]
}

#[test]
fn words_point_into_the_file_across_continuations() {
    let text = "FROM alpine AS base\nCOPY --from=base \\\n  # a comment\n  /src/a.txt \\\n  /dst/\nENV K=v \\\n    L=\"w x\"\nRUN <<EOF\necho hi\nEOF\n";
    let df = parse(text);
    let stage = &df.stages[0];
    assert_eq!(at(text, stage.from().image.span), "alpine");
    assert_eq!(at(text, stage.from().name.as_ref().expect("name").span), "base");
    let dockerfile::Kind::Copy(copy) = &stage.instructions[0].kind else { panic!("COPY") };
    assert_eq!(at(text, copy.from.as_ref().expect("--from").span), "--from=base");
    let dockerfile::Source::Path(src) = &copy.sources[0] else { panic!("a path") };
    assert_eq!(at(text, src.span), "/src/a.txt");
    assert_eq!(at(text, copy.dest.span), "/dst/");
    assert_eq!((stage.instructions[0].line, stage.instructions[0].end_line), (2, 5));
    let dockerfile::Kind::Env(env) = &stage.instructions[1].kind else { panic!("ENV") };
    assert_eq!(at(text, env[1].key.span), "L");
    assert_eq!(at(text, env[1].value.span), "\"w x\"");
    let dockerfile::Kind::Run(run) = &stage.instructions[2].kind else { panic!("RUN") };
    assert_eq!(at(text, run.heredocs[0].span), "<<EOF");
    assert_eq!(at(text, run.heredocs[0].body_span), "echo hi\nEOF");
    assert_eq!(at(text, stage.instructions[2].span), "RUN <<EOF\necho hi\nEOF");
}

#[test]
fn errors_render_with_their_line_and_a_suggestion() {
    let text = "FROM alpine\nRUN true\nCOPY --form=builder a b\n";
    let errors = parse_err(text);
    let e = &errors.errors[0];
    assert_eq!((e.line, at(text, e.span)), (3, "--form=builder"));
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(80)
        .render_report(&mut out, &errors)
        .expect("render");
    assert!(out.contains("bake::dockerfile::unknown_flag"), "{out}");
    assert!(out.contains("Dockerfile:3:6"), "{out}");
    assert!(out.contains("did you mean `--from`?"), "{out}");
    let e = &parse_err("FROM alpine\nRUNN x\n").errors[0];
    assert_eq!(e.help.as_deref(), Some("did you mean `RUN`?"));
}

#[test]
fn hostile_files_end_in_an_error_fast() {
    // A continuation chain joining 2 MB into one line.
    let long = format!("FROM a\nRUN x{}\n", " \\\nx".repeat(700_000));
    let e = parse_err(&long);
    assert_eq!(e.errors[0].kind, dockerfile::ErrorKind::Limit, "{}", dump::errors(&e));
    // Too many heredocs on one line.
    let markers: Vec<String> = (0..300).map(|i| format!("<<E{i}")).collect();
    let many = format!("FROM a\nRUN {}\n", markers.join(" "));
    let e = parse_err(&many);
    assert_eq!(e.errors[0].kind, dockerfile::ErrorKind::Limit, "{}", dump::errors(&e));
    // A file past the size limit.
    let big = "#".repeat(dockerfile::MAX_FILE_SIZE + 1);
    assert_eq!(parse_err(&big).errors[0].kind, dockerfile::ErrorKind::Limit);
    // Deeply nested substitutions fail instead of recursing without bound.
    let deep = format!("{}x{}", "${a:-".repeat(100_000), "}".repeat(100_000));
    assert!(dockerfile::expand_word(&deep, '\\', &|_| None).is_err());
    // A replacement between every two characters of a long value stops at the bound.
    let long = "a".repeat(1 << 19);
    let grow = dockerfile::expand_word("${V//$E/0123456789}", '\\', &|n| (n == "V").then(|| long.clone()));
    assert!(grow.is_err_and(|e| e.0.contains("longer than")));
    // A variable doubled up to the per-word bound, then used over and over,
    // stops at the bound on all expansions of the file.
    let mut scope = Scope::new(
        '\\',
        BTreeMap::new(),
        &dockerfile::Platform::linux_amd64(),
        &dockerfile::Platform::linux_amd64(),
        None,
    );
    scope.set_env("A", &"x".repeat(1 << 19));
    let stage = scope.stage(&[("A".to_owned(), "x".repeat(1 << 19))]);
    let results: Vec<_> = (0..200).map(|_| stage.expand("$A$A")).collect();
    assert!(results[0].is_ok());
    let spent = results.iter().position(Result::is_err).expect("the total bound");
    assert_eq!(spent, dockerfile::MAX_EXPANDED_TOTAL / (1 << 20));
    let fine = format!("{}x{}", "${a:-".repeat(20), "}".repeat(20));
    assert_eq!(dockerfile::expand_word(&fine, '\\', &|_| None).map(|e| e.value), Ok("x".to_owned()));
}

#[test]
fn large_files_parse_in_linear_time() {
    // 100,000 instructions (the limit), 1.6 MB: a line number is found
    // for each, which must not rescan the file every time.
    let text = format!("FROM a\n{}", "RUN echo hello world\n".repeat(99_999));
    let started = std::time::Instant::now();
    let df = parse(&text);
    assert_eq!(df.stages[0].instructions.len(), 99_999);
    assert_eq!(df.stages[0].instructions[99_998].line, 100_000);
    let _ = dockerfile::lint::check(&df);
    // One past the limit is refused.
    let e = parse_err(&format!("{text}RUN x\n"));
    assert_eq!(e.errors[0].kind, dockerfile::ErrorKind::Limit);
    eprintln!("parsed 100,000 instructions in {:?}", started.elapsed());
}

#[test]
fn which_instructions_expand_is_buildkits_list() {
    let df = parse(
        "FROM a\nRUN x\nCMD x\nENTRYPOINT x\nSHELL [\"a\"]\nMAINTAINER m\nHEALTHCHECK NONE\nWORKDIR /\nENV A=1\nCOPY a b\nADD a b\nLABEL a=b\nEXPOSE 1\nUSER u\nVOLUME /v\nSTOPSIGNAL 1\nONBUILD RUN x\nARG X\n",
    );
    let expanded: Vec<&str> =
        df.stages[0].instructions.iter().filter(|i| i.kind.expands()).map(dockerfile::Instruction::name).collect();
    // RUN's mounts are expanded; its command is left to the shell.
    assert_eq!(
        expanded,
        ["RUN", "WORKDIR", "ENV", "COPY", "ADD", "LABEL", "EXPOSE", "USER", "VOLUME", "STOPSIGNAL", "ONBUILD", "ARG"]
    );
    assert!(df.stages[0].from_instruction.kind.expands());
}

fn decl(text: &str) -> dockerfile::ArgDecl {
    let df = parse(&format!("ARG {text}\nFROM a\n"));
    let dockerfile::Kind::Arg(decls) = &df.global_args[0].kind else { panic!("ARG") };
    decls[0].clone()
}

#[test]
fn scope_follows_buildkit_arg_rules() {
    let build_args: BTreeMap<String, String> =
        [("FROM_CLI".to_owned(), "cli".to_owned()), ("TARGETARCH".to_owned(), "riscv64".to_owned())].into();
    let target = dockerfile::Platform::parse("linux/arm64/v8").expect("platform");
    let build = dockerfile::Platform::linux_amd64();
    let mut global = Scope::new('\\', build_args, &target, &build, Some("final"));
    assert_eq!(global.get("TARGETPLATFORM"), Some("linux/arm64/v8"));
    assert_eq!(global.get("TARGETVARIANT"), Some("v8"));
    assert_eq!(global.get("BUILDPLATFORM"), Some("linux/amd64"));
    assert_eq!(global.get("TARGETSTAGE"), Some("final"));
    // A build arg overrides a predefined one.
    assert_eq!(global.get("TARGETARCH"), Some("riscv64"));
    // Global ARGs: defaults see the ARGs before them; build args win.
    global.declare_global(&decl("V=1.2")).expect("V");
    global.declare_global(&decl("IMAGE=alpine:${V}")).expect("IMAGE");
    global.declare_global(&decl("FROM_CLI=default")).expect("FROM_CLI");
    assert_eq!(global.expand("${IMAGE}-$FROM_CLI").expect("expand").value, "alpine:1.2-cli");
    // A stage sees only its base image's env until it declares an ARG.
    let mut stage = global.stage(&[("PATH".to_owned(), "/bin".to_owned())]);
    let e = stage.expand("$V|$PATH|$TARGETARCH").expect("expand");
    assert_eq!(e.value, "|/bin|");
    assert_eq!(e.unset.iter().map(String::as_str).collect::<Vec<_>>(), ["TARGETARCH", "V"]);
    // `ARG NAME` without a default takes the global value (or the predefined one).
    stage.declare(&decl("V")).expect("V");
    stage.declare(&decl("TARGETARCH")).expect("TARGETARCH");
    stage.declare(&decl("NOTSET")).expect("NOTSET");
    assert_eq!(stage.expand("$V $TARGETARCH").expect("expand").value, "1.2 riscv64");
    assert_eq!(stage.get("NOTSET"), None);
    assert!(stage.is_declared("NOTSET"));
    // A default is expanded in the stage; a build arg replaces it.
    stage.declare(&decl("DIR=${PATH}/x")).expect("DIR");
    stage.declare(&decl("FROM_CLI=ignored")).expect("FROM_CLI");
    assert_eq!(stage.expand("$DIR $FROM_CLI").expect("expand").value, "/bin/x cli");
    // ENV sets a variable for the words after it.
    stage.set_env("V", "env");
    assert_eq!(stage.expand("$V").expect("expand").value, "env");
    // Proxy args are predefined but not visible without ARG.
    assert!(dockerfile::is_predefined("http_proxy") && dockerfile::is_predefined("TARGETOS"));
    assert!(!dockerfile::is_predefined("PATH"));
    // `${V:?}` errors name the variable.
    let e = stage.expand("${MISSING:?set it}").expect_err("unset");
    assert_eq!(e.to_string(), "MISSING: set it");
}

#[test]
fn mounts_with_variables_resolve_in_a_scope() {
    let df = parse("FROM a\nRUN --mount=type=cache,target=${HOME}/.cache,id=$ID,uid=${UID:-1000} true\n");
    let dockerfile::Kind::Run(run) = &df.stages[0].instructions[0].kind else { panic!("RUN") };
    assert!(run.mounts[0].mount.is_none(), "a mount with variables is read later");
    let mut scope = Scope::new(
        '\\',
        BTreeMap::new(),
        &dockerfile::Platform::linux_amd64(),
        &dockerfile::Platform::linux_amd64(),
        None,
    )
    .stage(&[("HOME".to_owned(), "/root".to_owned())]);
    scope.set_env("ID", "go");
    let mount = run.mounts[0].resolve(&scope).expect("mount");
    assert_eq!(mount.kind, dockerfile::MountType::Cache);
    assert_eq!(mount.target.as_deref(), Some("/root/.cache"));
    assert_eq!(mount.id.as_deref(), Some("go"));
    assert_eq!(mount.uid, Some(1000));
    scope.set_env("UID", "nobody");
    assert_eq!(run.mounts[0].resolve(&scope).expect_err("uid"), "invalid value nobody for uid");
}

#[test]
fn heredoc_bodies_expand_with_quotes_kept() {
    let scope = Scope::new(
        '\\',
        BTreeMap::new(),
        &dockerfile::Platform::linux_amd64(),
        &dockerfile::Platform::linux_amd64(),
        None,
    )
    .stage(&[("NAME".to_owned(), "world".to_owned())]);
    let body = "echo \"hello $NAME\" 'it''s' ${MISSING:-x}\n";
    let e = scope.expand_heredoc(body).expect("expand");
    assert_eq!(e.value, "echo \"hello world\" 'it''s' x\n");
    // As a word, the same text loses its quotes.
    assert_eq!(scope.expand(body).expect("word").value, "echo hello world its x\n");
}

#[test]
fn heredoc_bodies_strip_tabs_only_for_chomp() {
    let df = parse("FROM a\nCOPY <<-EOF <<PLAIN /\n\t\tindented\n\tEOF\n\tkept\nPLAIN\n");
    let dockerfile::Kind::Copy(copy) = &df.stages[0].instructions[0].kind else { panic!("COPY") };
    let [dockerfile::Source::Heredoc(a), dockerfile::Source::Heredoc(b)] = copy.sources.as_slice() else {
        panic!("two heredocs")
    };
    assert_eq!((a.content.as_str(), a.text().as_str()), ("\t\tindented\n", "indented\n"));
    assert_eq!(b.text(), "\tkept\n");
}

/// The fenced `dockerfile` blocks of a book page.
fn dockerfile_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```dockerfile") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn every_dockerfile_in_the_book_parses() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src/dockerfile.md");
    let text = std::fs::read_to_string(&page).expect("book/src/dockerfile.md");
    let blocks = dockerfile_blocks(&text);
    assert!(blocks.len() >= 3, "expected the page's examples, found {}", blocks.len());
    for block in blocks {
        let df = parse(&block);
        assert!(!df.stages.is_empty(), "{block}");
    }
}

/// The script each RUN of `text`'s first stage gives its shell.
fn scripts(text: &str) -> Vec<Option<String>> {
    parse(text).stages[0]
        .instructions
        .iter()
        .filter_map(|i| match &i.kind {
            dockerfile::Kind::Run(r) => Some(r.shell_script()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_run_gives_its_shell_the_heredocs_it_names() {
    let got = scripts(
        "FROM scratch\nRUN <<EOF\necho one\nEOF\nRUN cat <<A >/a && cat <<-B\nx\nA\n\ty\n\tB\nRUN [\"/bin/true\"]\n",
    );
    assert_eq!(
        got,
        [
            // Only a heredoc: its body is the script.
            Some("echo one\n".to_owned()),
            // A command that reads them: the shell reads the bodies and
            // closing words after the line (`<<-` bodies without their tabs).
            Some("cat <<A >/a && cat <<-B\nx\nA\ny\nB".to_owned()),
            None,
        ]
    );
}
