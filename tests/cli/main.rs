//! End-to-end tests of the `bake` binary: real process, real files, inline
//! and file snapshots of everything it prints, with the exit code.

mod harness;
mod images;
mod lang;
mod plan;
#[allow(dead_code, unreachable_pub)]
#[path = "../../engine/tests/common/registry.rs"]
mod registry;
