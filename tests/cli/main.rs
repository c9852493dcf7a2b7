//! End-to-end tests of the `bake` binary: real process, real files, inline
//! and file snapshots of everything it prints, with the exit code.

mod book_help;
mod container;
mod examples;
mod exports;
mod harness;
mod images;
mod lang;
mod plan;
#[path = "../../engine/tests/common/registry.rs"]
mod registry;
mod run;
mod schedule;
mod scratch;
mod store_errors;
