//! The bake engine.
//!
//! bake builds container images from a declarative build graph. Data flows one
//! way through the engine:
//!
//! ```text
//! build.kdl ──lang::load──▶ Workspace ──graph::plan──▶ Plan ──exec──▶ images
//!                 │                          │
//!                 └── diagnostics            └── context: ignore rules, file index, digests
//! ```
//!
//! - [`lang`] parses `build.kdl` (KDL v2) and every file it includes into a typed,
//!   resolved [`lang::Workspace`]: args interpolated, names resolved, cycles and
//!   mistakes reported as miette diagnostics that point into the user's files.
//! - [`context`] turns the files a `copy` reads into digests, honouring
//!   `.dockerignore` / `.bakeignore`, through a persistent file index so that an
//!   unchanged tree is only stat'ed.
//! - [`graph`] compiles the workspace into a DAG of operations, prunes what the
//!   requested targets do not need, and gives every node a content-hashed key.
//!
//! The engine never prints and never exits: it returns values and typed errors,
//! and the CLI renders them.

pub mod config;
pub mod context;
pub mod exec;
#[doc(hidden)]
pub mod fuzz;
pub mod graph;
pub mod home;
pub mod image;
pub mod lang;
pub mod layer;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod store;
