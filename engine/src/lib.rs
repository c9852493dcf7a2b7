//! The bake engine.
//!
//! bake builds container images from a declarative build graph. Data flows one
//! way through the engine:
//!
//! ```text
//! build.kdl ──lang::load──▶ Workspace ──Plan::build──▶ Plan ──Engine::build──▶ images
//!                 │                         │                   │
//!                 └── diagnostics           └── context:        ├── store: blobs, images, cache entries
//!                                               digests,        ├── registry: pull, push
//!                                               file index      ├── snapshot: layers unpacked once
//!                                                               ├── layer: deterministic tars, safe unpack
//!                                                               └── image: configs, manifests, outputs
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
//! - [`exec`] runs a plan: keys looked up in the local store and registry
//!   caches, what must run scheduled over the DAG in parallel, early cutoff,
//!   images written to the store, outputs and registries; `explain` says why
//!   a step runs.
//! - [`store`] is the local content-addressed store (cacache layout): blobs by
//!   sha256, image records by name, node results by key, garbage collection;
//!   [`home`] lays out bake's folder, private to its owner, and [`scratch`]
//!   names scratch folders by their owner so a prune can remove a dead one's.
//! - [`registry`] speaks to OCI registries (oci-client): resolve, pull, push,
//!   mirrors, credentials; [`config`] is bake's own configuration file.
//! - [`layer`] writes deterministic layer tarballs and unpacks pulled ones
//!   safely; [`snapshot`] keeps each layer unpacked once, overlay-ready, and
//!   reads stacks of them as one filesystem.
//! - [`container`] runs an image's process for `bake run`, in the same
//!   sandbox as `run` steps, with the caller's stdio and signals.
//! - [`watch`] decides which file changes matter to a plan and when a burst of
//!   them is over (`bake watch`).
//! - [`image`] assembles image configs and manifests and writes OCI layouts and
//!   `docker load` archives; [`oci`] holds what they all share.
//!
//! The engine never prints and never exits: it returns values and typed errors,
//! and sends progress as [`exec::Event`]s that the CLI renders. Every error
//! says whose it is ([`Tier`]), and the CLI turns that into an exit code.

// The engine never prints or exits: it sends `exec::Event`s and returns typed
// errors, and the CLI decides what reaches the terminal and the exit code
// (STYLE.md, "Typed events out, rendering at the edge"). Cargo cannot add
// lints to one member on top of `[workspace.lints]`, so they are denied here;
// the engine's integration tests and benches are other crates and may print.
#![deny(clippy::print_stdout, clippy::print_stderr, clippy::exit, clippy::dbg_macro)]

pub mod attest;
pub mod config;
pub mod container;
pub mod context;
pub mod dockerfile;
pub mod exec;
#[doc(hidden)]
pub mod fuzz;
pub mod graph;
pub mod home;
pub mod image;
pub mod lang;
pub mod layer;
pub mod oci;
pub mod platform;
pub mod reference;
pub mod registry;
pub mod sandbox;
pub mod scratch;
pub mod snapshot;
pub mod store;
pub mod watch;

/// Whose an error is: it decides the exit code and what the message asks of
/// the reader. Ordered from the least to the most serious, so the tier of
/// several errors is the greatest of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// What the user wrote or asked for: a build file, an argument, a step
    /// that failed. Fixed by changing the input.
    Input,
    /// The machine or the network the build ran on: a registry that is
    /// down or refuses access, a full disk, a damaged store, a kernel
    /// without a feature, missing permissions. Fixed outside bake.
    Environment,
    /// A bug in bake: an invariant broken, a thread that panicked. Reported
    /// with a request to tell the maintainers.
    Bug,
}
