//! Language behaviour that diagnostics snapshots do not show: values as the
//! engine sees them.

use bake_engine::lang::{InstructionKind, LoadOptions, Workspace, load_str};

fn load(text: &str) -> Workspace {
    let dir = tempfile::tempdir().expect("tempdir");
    load_str("build.kdl", dir.path(), text, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)))
}

#[test]
fn chmod_digits_are_octal_like_the_chmod_command() {
    let ws = load(
        r#"
image "a" from="scratch" {
    copy "f" to="/a" chmod=755
    copy "f" to="/b" chmod=0o755
    copy "f" to="/c" chmod="0755"
    copy "f" to="/d" chmod=4755
}
"#,
    );
    let modes: Vec<Option<u32>> = ws.stages[0]
        .instructions
        .iter()
        .map(|i| match &i.kind {
            InstructionKind::Copy(c) => c.chmod,
            _ => None,
        })
        .collect();
    assert_eq!(modes, [Some(0o755), Some(0o755), Some(0o755), Some(0o4755)]);
}

#[test]
fn cmd_with_spaces_is_fine_when_an_entrypoint_takes_it() {
    load(
        r#"
image "a" from="busybox" {
    entrypoint "/bin/sh" "-c"
    cmd "echo base"
}
image "b" from="busybox" {
    cmd "echo inherited entrypoint may take it"
}
"#,
    );
}
