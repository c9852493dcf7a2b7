//! Bounds on what loading a workspace may cost.
//!
//! A build file is input from others, and a few kilobytes of it can ask for
//! unbounded work: args that double each other, includes that walk `/` or
//! loop through symlinks, a 10,000-deep `from=` chain. Every expansion,
//! nesting, walk and count in the front end is bounded, so any input ends in
//! a diagnostic within a second and well under 100 MB.
//!
//! The limits a real monorepo could reach are fields of [`Limits`], set in
//! bake's config file (`limits max-stages=... max-graph-depth=...`). The
//! others are constants next to the code they bound:
//! [`MAX_DEPTH`](super::parse::MAX_DEPTH) (children and comment nesting),
//! [`MAX_ARG_DEPTH`] (args referring to args),
//! [`MAX_CARRIED_ENV`] (environment carried by steps),
//! [`MAX_REPORTED`](super::error::MAX_REPORTED) (diagnostics reported) and
//! [`MAX_SHOWN_LINE`](super::error::MAX_SHOWN_LINE) (source shown per line).

/// Deepest chain of args whose defaults refer to each other
/// (`A` uses `B` uses `C` ...). Real files chain two or three.
pub const MAX_ARG_DEPTH: usize = 64;

/// Most `env` entries all steps carry, summed over the steps: each step's
/// cache key lists the environment it runs in. A 10,000-stage monorepo carries
/// about 100,000; 500,000 is about 50 MB of key inputs.
pub const MAX_CARRIED_ENV: usize = 500_000;

/// Limits a user may raise in bake's config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `build.kdl`, in bytes.
    pub max_file_size: u64,
    /// Most files one workspace includes, root included.
    pub max_files: usize,
    /// Most KDL nodes in the whole workspace, children included, counted
    /// before parsing.
    pub max_nodes: usize,
    /// Most declarations (stages, images, artifacts, targets).
    pub max_stages: usize,
    /// Most filesystem entries one `include` glob may look at.
    pub max_include_walk: usize,
    /// Longest string `${NAME}` interpolation may produce, in bytes.
    pub max_expanded: usize,
    /// Most bytes all interpolations of a workspace may add in total.
    pub max_expanded_total: usize,
    /// Longest chain of stages built on each other (`from=` or
    /// `copy from=`), counting the first.
    pub max_graph_depth: usize,
}

impl Limits {
    /// Largest `build.kdl`: 1 MiB, about 5,000 stages in one file. The `kdl`
    /// parser reads about 1.5 MB a second, so this keeps one file's parse
    /// under a second; a monorepo spreads its stages over included files.
    pub const MAX_FILE_SIZE: u64 = 1 << 20;
    /// 10,000 included files: one per service of a very large monorepo.
    pub const MAX_FILES: usize = 10_000;
    /// 200,000 nodes: a 10,000-stage monorepo has about 60,000. The parsed
    /// form of a node costs 0.5 to 3 KB, so this also bounds memory.
    pub const MAX_NODES: usize = 200_000;
    /// 100,000 declarations: ten times the largest monorepo bake plans in its
    /// benchmarks.
    pub const MAX_STAGES: usize = 100_000;
    /// 200,000 entries per `include` glob: a large checkout, walked once.
    pub const MAX_INCLUDE_WALK: usize = 200_000;
    /// 1 MiB per interpolated string: far beyond any version or path, small
    /// enough that doubling args stop after about 20 steps.
    pub const MAX_EXPANDED: usize = 1 << 20;
    /// 16 MiB added by interpolation over the whole workspace, so fanning a
    /// large arg out into many strings stays bounded too (each use is kept
    /// about three times: the string, and the args each step and stage used).
    pub const MAX_EXPANDED_TOTAL: usize = 16 << 20;
    /// 256 stages in one chain. Each step of a chain is at least one layer,
    /// and overlayfs mounts at most about 500 lower layers.
    pub const MAX_GRAPH_DEPTH: usize = 256;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_size: Self::MAX_FILE_SIZE,
            max_files: Self::MAX_FILES,
            max_nodes: Self::MAX_NODES,
            max_stages: Self::MAX_STAGES,
            max_include_walk: Self::MAX_INCLUDE_WALK,
            max_expanded: Self::MAX_EXPANDED,
            max_expanded_total: Self::MAX_EXPANDED_TOTAL,
            max_graph_depth: Self::MAX_GRAPH_DEPTH,
        }
    }
}
