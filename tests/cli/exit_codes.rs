//! Exit codes by whose the failure is: the user's input, the environment
//! (here, a registry that cannot be reached and a home that cannot be
//! made) or a bug (see `cli/src/commands.rs` for the mapping's unit test;
//! a bug cannot be provoked from outside).

use crate::harness::bake;
use crate::run::project;

/// The exit code of an environment failure (`EXIT_ENVIRONMENT`).
pub(crate) const ENVIRONMENT: i32 = 3;

#[test]
fn an_unreachable_registry_is_an_environment_failure() {
    let home = tempfile::tempdir().expect("tempdir");
    // Nothing listens on the discard port.
    let p = project("stage \"s\" from=\"127.0.0.1:9/nothing/here:1\" {\n    run \"true\"\n}\n");
    let run = bake(p.path(), home.path(), &["build"]);
    assert_eq!(run.code, ENVIRONMENT, "{}", run.render());
    assert!(run.stderr.contains("bake::registry::"), "{}", run.render());
    assert!(!run.stderr.contains("this is a bug"), "{}", run.render());
}

#[test]
fn a_home_that_cannot_be_made_is_an_environment_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file where bake's folder should be.
    let home = dir.path().join("home");
    std::fs::write(&home, "not a folder").expect("write");
    let p = project("stage \"s\" from=\"scratch\" {\n    env \"A\" \"1\"\n}\n");
    let run = bake(p.path(), &home, &["build"]);
    assert_eq!(run.code, ENVIRONMENT, "{}", run.render());
    assert!(!run.stderr.contains("this is a bug"), "{}", run.render());
}
