//! Fixtures shared by the benches.

pub(crate) mod monorepo;
