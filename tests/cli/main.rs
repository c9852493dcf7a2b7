//! End-to-end tests of the `bake` binary: real process, real files, inline
//! and file snapshots of everything it prints, with the exit code.

mod harness;
mod lang;
mod plan;
