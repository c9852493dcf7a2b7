//! Bounds on what reading a Dockerfile may cost.
//!
//! A Dockerfile is input from others, and a few kilobytes of it can ask for
//! unbounded work: a continuation chain that joins every line into one,
//! `${a:-${b:-...}}` nested thousands deep, thousands of heredocs on one
//! line. Each is bounded here, so any input ends in a diagnostic within a
//! second and a few times its size in memory.

/// Largest Dockerfile read, in bytes: the largest real ones are tens of
/// kilobytes.
pub const MAX_FILE_SIZE: usize = 4 << 20;

/// Longest logical line (continuations joined), in bytes. BuildKit's
/// scanner stops at 64 KiB for one physical line; a joined RUN of a few
/// hundred lines is about 20 KiB.
pub const MAX_LINE: usize = 1 << 20;

/// Most instructions in one file.
pub const MAX_INSTRUCTIONS: usize = 100_000;

/// Most heredocs one instruction opens.
pub const MAX_HEREDOCS: usize = 256;

/// Deepest nesting of `${...}` inside a substitution's word.
pub const MAX_EXPANSION_DEPTH: usize = 64;

/// Longest result of expanding one word, in bytes.
pub const MAX_EXPANDED: usize = 1 << 20;

/// Most bytes all expansions from one global [`Scope`](super::Scope) (one
/// build of one Dockerfile) may produce: an ENV that doubles itself twenty
/// times, used by 100,000 instructions, would otherwise copy 100 GB.
pub const MAX_EXPANDED_TOTAL: usize = 64 << 20;
