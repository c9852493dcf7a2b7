//! Hostile build files: paths that lead out of the project, and small inputs
//! that ask for unbounded work. Each must end in its diagnostic (exit 2),
//! quickly, and never print a line of a file outside the project.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Run, bake, bake_cmd};

/// A line the tests write into files outside the project: it must never
/// appear in bake's output.
const SECRET: &str = "TOKEN=s3cr3t";

/// A project folder with a sibling folder outside it that holds a secret,
/// and a symlink from the project to that folder.
struct Layout {
    _tmp: tempfile::TempDir,
    home: tempfile::TempDir,
    project: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn layout() -> Layout {
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&project).expect("mkdir");
    std::fs::create_dir_all(outside.join("ctx")).expect("mkdir");
    // The secret line, then one that is a bad ignore pattern (a trailing
    // backslash), so an ignore file that reads it would echo it.
    let secret = format!("{SECRET}\n{SECRET}\\\n");
    std::fs::write(outside.join("secret.env"), &secret).expect("write");
    std::fs::write(outside.join("build.kdl"), &secret).expect("write");
    std::fs::write(outside.join("ctx/file"), "data").expect("write");
    std::os::unix::fs::symlink(&outside, project.join("link")).expect("symlink");
    Layout { _tmp: tmp, home: tempfile::tempdir().expect("tempdir"), project, outside }
}

impl Layout {
    fn run(&self, build: &str, args: &[&str]) -> Run {
        std::fs::write(self.project.join("build.kdl"), build).expect("write build.kdl");
        bake(&self.project, self.home.path(), args)
    }
}

/// Exit 2, the diagnostic code, and not a byte of the secret.
fn refused(run: &Run, code: &str) {
    let all = run.render();
    assert_eq!(run.code, 2, "{all}");
    assert!(all.contains(code), "expected {code}:\n{all}");
    assert!(!all.contains("s3cr3t"), "the secret leaked:\n{all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn includes_outside_the_project_are_refused_without_their_content() {
    let l = layout();
    let cases = [
        "include \"../outside/secret.env\"\n",
        "include \"../outside/build.kdl\"\n",
        "include \"link/secret.env\"\n",
        "include \"link\"\n",
        "include \"../outside/*.env\"\n",
        "include \"link/*.env\"\n",
        "include \"/proc/self/environ\"\n",
        "include \"/**/build.kdl\"\n",
    ];
    for case in cases {
        let run = l.run(case, &["check"]);
        refused(&run, "bake::lang::outside_workspace");
    }
}

#[test]
fn contexts_and_artifact_destinations_outside_the_project_are_refused() {
    let l = layout();
    let outside = l.outside.display().to_string();
    let cases = [
        format!("stage \"s\" from=\"busybox\" context=\"{outside}/ctx\" {{\n    copy \"file\" to=\"/\"\n}}\n"),
        "stage \"s\" from=\"busybox\" context=\"../outside/ctx\" {\n    copy \"file\" to=\"/\"\n}\n".to_owned(),
        "stage \"s\" from=\"busybox\" context=\"link/ctx\" {\n    copy \"file\" to=\"/\"\n}\n".to_owned(),
        "stage \"s\" from=\"busybox\"\nartifact \"a\" from=\"s\" path=\"/bin/sh\" dest=\"/tmp/bake-artifact\"\n"
            .to_owned(),
        "stage \"s\" from=\"busybox\"\nartifact \"a\" from=\"s\" path=\"/bin/sh\" dest=\"../../../..\"\n".to_owned(),
        "stage \"s\" from=\"busybox\"\nartifact \"a\" from=\"s\" path=\"/bin/sh\" dest=\"link/sh\"\n".to_owned(),
    ];
    for case in &cases {
        for command in [&["check"][..], &["build", "--dry-run"]] {
            let run = l.run(case, command);
            refused(&run, "bake::lang::outside_workspace");
        }
    }
    // Inside the project is fine, through a symlink too.
    std::fs::create_dir_all(l.project.join("sub/ctx")).expect("mkdir");
    std::os::unix::fs::symlink(l.project.join("sub"), l.project.join("inner")).expect("symlink");
    let ok = l.run(
        "stage \"s\" from=\"busybox\" context=\"inner/ctx\"\nartifact \"a\" from=\"s\" path=\"/x\" dest=\"inner/out/x\"\n",
        &["check"],
    );
    assert_eq!(ok.code, 0, "{}", ok.render());
}

#[test]
fn an_ignore_file_that_leads_outside_is_refused_without_its_content() {
    let l = layout();
    std::fs::write(l.project.join("app.txt"), "app").expect("write");
    std::os::unix::fs::symlink(l.outside.join("secret.env"), l.project.join(".dockerignore")).expect("symlink");
    let build = "stage \"s\" from=\"scratch\" {\n    copy \"app.txt\" to=\"/\"\n}\n";
    refused(&l.run(build, &["build", "--dry-run"]), "bake::context::ignore_outside");
    // The same through .bakeignore, and with a relative link.
    std::fs::remove_file(l.project.join(".dockerignore")).expect("rm");
    std::os::unix::fs::symlink("../outside/secret.env", l.project.join(".bakeignore")).expect("symlink");
    refused(&l.run(build, &["build", "--dry-run"]), "bake::context::ignore_outside");
    // A link to an ignore file inside the project is followed.
    std::fs::remove_file(l.project.join(".bakeignore")).expect("rm");
    std::fs::write(l.project.join("ignore.common"), "*.log\n").expect("write");
    std::os::unix::fs::symlink("ignore.common", l.project.join(".dockerignore")).expect("symlink");
    let ok = l.run(build, &["build", "--dry-run"]);
    assert_eq!(ok.code, 0, "{}", ok.render());
}

#[test]
fn allowed_paths_open_the_boundary_explicitly() {
    let l = layout();
    let build = "stage \"s\" from=\"busybox\" context=\"../outside/ctx\" {\n    copy \"file\" to=\"/\"\n}\n";
    refused(&l.run(build, &["check"]), "bake::lang::outside_workspace");
    let outside = l.outside.display().to_string();
    let flag = l.run(build, &["check", "--allow-path", &outside]);
    assert_eq!(flag.code, 0, "{}", flag.render());
    std::fs::write(l.project.join("build.kdl"), build).expect("write");
    let env = bake_cmd(&l.project, l.home.path())
        .arg("check")
        .env("BAKE_ALLOW_PATHS", format!("/nonexistent:{outside}"))
        .output()
        .expect("run bake");
    assert!(env.status.success(), "{}", String::from_utf8_lossy(&env.stderr));
    let config = l.home.path().join("config.kdl");
    std::fs::write(&config, format!("allow-path \"{outside}\"\n")).expect("write");
    let configured =
        bake_cmd(&l.project, l.home.path()).arg("check").env("BAKE_CONFIG", &config).output().expect("run bake");
    assert!(configured.status.success(), "{}", String::from_utf8_lossy(&configured.stderr));
    // With -C, the workspace is that folder: a file in a subfolder may name
    // its siblings.
    std::fs::create_dir_all(l.project.join("svc")).expect("mkdir");
    std::fs::create_dir_all(l.project.join("shared")).expect("mkdir");
    std::fs::write(l.project.join("svc/build.kdl"), "stage \"s\" from=\"busybox\" context=\"../shared\"\n")
        .expect("write");
    let home = l.home.path();
    let from_file = bake(&l.project, home, &["-f", "svc/build.kdl", "check"]);
    refused(&from_file, "bake::lang::outside_workspace");
    let with_c = bake(&l.project, home, &["-C", ".", "-f", "svc/build.kdl", "check"]);
    assert_eq!(with_c.code, 0, "{}", with_c.render());
}

/// Hostile inputs from issue 11, each generated here.
fn hostile_inputs(dir: &Path) -> Vec<(&'static str, String, &'static str)> {
    let mut out = Vec::new();
    out.push((
        "nested comments",
        format!("{}{}\nstage \"a\" from=\"scratch\"\n", "/*".repeat(4000), "*/".repeat(4000)),
        "bake::lang::syntax",
    ));
    out.push((
        "nested children",
        format!("stage \"a\" from=\"scratch\" {}{}\n", "{ x ".repeat(5000), "}".repeat(5000)),
        "bake::lang::syntax",
    ));
    let mut chain = String::new();
    for i in 0..5000 {
        let _ = writeln!(chain, "arg \"A{i}\" default=\"${{A{}}}\"", i + 1);
    }
    chain.push_str("arg \"A5000\" default=\"x\"\nstage \"s\" from=\"busybox:${A0}\"\n");
    out.push(("arg chain", chain, "bake::lang::limit"));
    let mut double = String::from("arg \"A0\" default=\"xx\"\n");
    for i in 0..40 {
        let _ = writeln!(double, "arg \"A{}\" default=\"${{A{i}}}${{A{i}}}\"", i + 1);
    }
    double.push_str("stage \"s\" from=\"busybox:${A40}\"\n");
    out.push(("doubling args", double, "bake::lang::limit"));
    let props: Vec<String> = (0..1000).map(|i| format!("p{i}=\"v\"")).collect();
    out.push((
        "unknown properties",
        format!("stage \"a\" from=\"scratch\" {}\n", props.join(" ")),
        "bake::lang::more_errors",
    ));
    let mut nodes = String::new();
    for i in 0..100_000 {
        let _ = writeln!(nodes, "n{i}");
    }
    out.push(("unknown nodes", nodes, "bake::lang::more_errors"));
    // The same with longer names is past the file size limit, refused unread.
    let mut nodes = String::new();
    for i in 0..100_000 {
        let _ = writeln!(nodes, "unknown{i}");
    }
    out.push(("unknown nodes, 1.2 MB", nodes, "bake::lang::limit"));
    let mut from = String::from("stage \"s0\" from=\"busybox:latest\" { run \"true\" }\n");
    for i in 0..10_000 {
        let _ = writeln!(from, "stage \"s{}\" from=\"s{i}\" {{ run \"true\" }}", i + 1);
    }
    out.push(("from chain", from, "bake::lang::limit"));
    let mut env = String::from("stage \"s\" from=\"busybox:1\" {\n");
    for i in 0..3000 {
        let _ = writeln!(env, "    env \"K{i}\" \"v\"");
    }
    for i in 0..3000 {
        let _ = writeln!(env, "    run \"x{i}\"");
    }
    env.push_str("}\n");
    out.push(("3,000 env entries carried by 3,000 steps", env, "bake::lang::limit"));
    // One default that uses 25,000 args declared after it.
    let mut refs = String::from("arg \"A\" default=\"");
    for i in 0..25_000 {
        let _ = write!(refs, "${{B{i}}}");
    }
    refs.push_str("\"\n");
    for i in 0..25_000 {
        let _ = writeln!(refs, "arg \"B{i}\" default=\"x\"");
    }
    refs.push_str("stage \"s\" from=\"busybox:${A}\"\n");
    out.push(("a default that uses 25,000 args", refs, "bake::lang::invalid_value"));
    // A symlink loop with three ways back at every level: a walk that follows
    // links visits 3^40 paths.
    std::fs::create_dir_all(dir.join("loop/a")).expect("mkdir");
    for name in ["l1", "l2", "l3"] {
        std::os::unix::fs::symlink("..", dir.join("loop/a").join(name)).expect("symlink");
    }
    out.push(("include through a symlink loop", "include \"loop/**/nothing.kdl\"\n".to_owned(), "bake::lang::include"));
    out.push(("include walking /", "include \"/**/build.kdl\"\n".to_owned(), "bake::lang::outside_workspace"));
    out
}

/// Well beyond the bound of a second, for an unoptimised build on a
/// loaded machine; the release build is measured in the book.
const DEADLINE: Duration = Duration::from_secs(20);
/// What the diagnostics of one input may add up to.
const MAX_OUTPUT: usize = 256 << 10;

#[test]
fn hostile_inputs_end_in_a_diagnostic() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, code) in hostile_inputs(dir.path()) {
        std::fs::write(dir.path().join("build.kdl"), &text).expect("write");
        let started = Instant::now();
        let run = bake(dir.path(), home.path(), &["check"]);
        let took = started.elapsed();
        let all = run.render();
        assert_eq!(run.code, 2, "{name}: {}", &all[..all.len().min(4000)]);
        assert!(all.contains(code), "{name}: expected {code}: {}", &all[..all.len().min(4000)]);
        assert!(all.len() < MAX_OUTPUT, "{name}: {} bytes of diagnostics", all.len());
        assert!(took < DEADLINE, "{name}: took {took:?}");
    }
}
