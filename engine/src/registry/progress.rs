//! Progress of blob transfers: the events a pull or push sends
//! ([`TransferEvent`]) and the [`Progress`] trait that receives them. The
//! engine turns them into its own `Event`s; the CLI renders those.

use crate::oci::Digest;

/// Which way a blob travels (the one `Direction` of the engine: build
/// events carry it too, as `pull` or `push`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Pull,
    Push,
}

/// Why a blob was not transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The destination had it already.
    Present,
    /// The registry linked it from another repository.
    Mounted,
}

/// Progress of blob transfers (layers when pulling; configs and layers when
/// pushing). A push sends one `Skipped` or `Started`…`Done` per blob and
/// repository. `Started` comes again for a digest when a transfer is
/// retried, and its byte count restarts from zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    Started {
        digest: Digest,
        size: u64,
        direction: Direction,
    },
    Bytes {
        digest: Digest,
        bytes: u64,
    },
    Skipped {
        digest: Digest,
        reason: SkipReason,
    },
    Done {
        digest: Digest,
    },
    /// No byte has moved for `silent`: sent every few seconds while a
    /// transfer (or the answer to an upload) stalls, until it moves again
    /// or the idle timeout ends it.
    Stalled {
        digest: Digest,
        silent: std::time::Duration,
    },
}

/// Receives transfer events. It is called from the transfer tasks, so it
/// should be quick (send to a channel, bump a counter).
pub trait Progress: Send + Sync {
    fn event(&self, event: TransferEvent);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: TransferEvent) {}
}

impl Progress for () {
    fn event(&self, _: TransferEvent) {}
}
