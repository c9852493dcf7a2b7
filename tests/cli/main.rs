//! End-to-end tests of the `bake` binary: real process, real files, inline
//! and file snapshots of everything it prints, with the exit code.

mod attest;
mod book_help;
mod container;
mod docker;
mod dockerfile;
mod examples;
mod exit_codes;
mod exports;
#[path = "../../engine/tests/common/fake_registry.rs"]
mod fake_registry;
mod harness;
mod hostile;
mod images;
mod import;
mod lang;
mod plan;
mod platform;
#[path = "../../engine/tests/common/registry.rs"]
mod registry;
mod rootless;
mod run;
mod schedule;
mod scratch;
mod secrets;
mod stall;
mod store_errors;
#[path = "../../engine/tests/common/tmpfs.rs"]
mod tmpfs;
