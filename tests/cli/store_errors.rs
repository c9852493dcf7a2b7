//! Errors that used to mislead, made clear: a FIFO named in `copy`, a stack
//! of layers deeper than overlayfs mounts, a full disk.

use crate::exit_codes::ENVIRONMENT;
use crate::harness::{bake, settings};
use crate::run::project;
use crate::tmpfs::Tmpfs;

/// The diagnostic at the end of a failed build's stderr (progress lines cut).
fn diagnostic(stderr: &str) -> &str {
    stderr.find("bake::").map_or(stderr, |at| &stderr[at..])
}

#[test]
fn a_fifo_named_in_copy_is_called_a_fifo_not_an_ignored_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let p = project("stage \"s\" from=\"scratch\" {\n    copy \"pipe\" to=\"/pipe\"\n}\n");
    nix::unistd::mkfifo(&p.path().join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
    let run = bake(p.path(), home.path(), &["build"]);
    assert_eq!(run.code, 1, "{}", run.render());
    assert!(!run.stderr.contains("dockerignore"), "no ignore file to blame: {}", run.stderr);
    settings().bind(|| insta::assert_snapshot!("copy-fifo", diagnostic(&run.stderr)));
}

#[test]
fn a_run_step_or_container_on_more_layers_than_overlayfs_stacks_says_how_many() {
    let home = tempfile::tempdir().expect("tempdir");
    let copies = (0..600).map(|i| format!("    copy \"f\" to=\"/f{i}\"")).collect::<Vec<_>>().join("\n");
    let build = format!(
        "image \"deep\" from=\"scratch\" {{\n{copies}\n    cmd \"/f0\"\n}}\nstage \"on-top\" from=\"deep\" {{\n    run \"true\"\n}}\n"
    );
    let p = project(&build);
    std::fs::write(p.path().join("f"), "x").expect("write");
    let run = bake(p.path(), home.path(), &["build", "on-top"]);
    assert_eq!(run.code, 1, "{}", run.render());
    assert!(!run.stderr.contains("Invalid argument"), "{}", diagnostic(&run.stderr));
    settings().bind(|| insta::assert_snapshot!("run-on-600-layers", diagnostic(&run.stderr)));

    let image = bake(p.path(), home.path(), &["build", "deep"]);
    assert_eq!(image.code, 0, "{}", image.render());
    let container = bake(p.path(), home.path(), &["run", "deep"]);
    assert_ne!(container.code, 0, "{}", container.render());
    assert!(
        container.stderr.contains("image `deep` has 600 layers, but a container can sit on at most 499"),
        "{}",
        container.render()
    );
}

#[test]
fn a_full_disk_names_the_folder_being_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let _tmpfs = Tmpfs::mount(&home, "3m");
    let p = project("stage \"s\" from=\"scratch\" {\n    copy \"big\" to=\"/big\"\n}\n");
    // Incompressible, larger than the disk: the layer cannot be written.
    let noise: Vec<u8> = (0..8_000_000u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2]).collect();
    std::fs::write(p.path().join("big"), noise).expect("write");
    let run = bake(p.path(), &home, &["build"]);
    assert_eq!(run.code, ENVIRONMENT, "{}", run.render());
    settings().bind(|| insta::assert_snapshot!("disk-full-writing-a-layer", diagnostic(&run.stderr)));
}
