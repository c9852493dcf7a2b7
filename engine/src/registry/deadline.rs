//! Deadlines on registry I/O, so that a registry that accepts a connection
//! and then says nothing cannot hold a build.
//!
//! Three limits, from the config file's `network` node ([`Timeouts`]):
//!
//! - **connect**: opening the connection (reqwest's own connect timeout);
//! - **first byte**: a request's answer. oci-client reads small documents
//!   (tokens, manifests, HEAD answers, a pushed manifest's answer) whole, so
//!   for those it bounds the whole exchange; for blobs it bounds the wait
//!   for the response headers, and, for an upload, the wait for the answer
//!   once the last byte was sent;
//! - **idle**: no byte moving during a blob's body, either way.
//!
//! Each is a [`RegistryError::Timeout`] naming the registry and what stalled;
//! it is transient, so the retry policy tries again. While a blob's body is
//! silent, [`TransferEvent::Stalled`] reports it every [`STALL_NOTICE`] (or
//! sooner, with a short idle limit), so progress can show a stall long
//! before it becomes an error.
//!
//! These are `tokio::time` deadlines around oci-client's futures: dropping
//! such a future drops its connection, which is also how a cancelled build
//! stops a transfer (the executor `select!`s registry calls against its
//! cancellation token).

use std::future::Future;
use std::time::Duration;

use super::error::{Ctx, RegistryError};
use crate::config::Timeouts;

/// How often a silent transfer is reported as stalled.
pub(crate) const STALL_NOTICE: Duration = Duration::from_secs(10);

/// Which limit ran out, for the error's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connect,
    FirstByte,
    Idle,
}

impl Limit {
    /// Its property in the config file's `network` node.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Connect => "connect-timeout",
            Self::FirstByte => "first-byte-timeout",
            Self::Idle => "idle-timeout",
        }
    }

    /// The environment variable that overrides it.
    pub fn variable(self) -> &'static str {
        let [connect, first_byte, idle] = crate::config::TIMEOUT_VARS;
        match self {
            Self::Connect => connect,
            Self::FirstByte => first_byte,
            Self::Idle => idle,
        }
    }
}

/// The error for `limit` running out while `stalled` (`"waiting for an
/// answer to the manifest of x"`).
pub(crate) fn timeout(ctx: Ctx<'_>, limit: Limit, after: Duration, stalled: String) -> RegistryError {
    RegistryError::Timeout {
        registry: ctx.registry.to_owned(),
        stalled,
        after: humantime::format_duration(round(after)).to_string(),
        limit,
    }
}

/// Runs a request that must be answered within the first-byte limit.
pub(crate) async fn answered<T>(
    timeouts: &Timeouts,
    ctx: Ctx<'_>,
    request: impl Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    let limit = timeouts.first_byte;
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result,
        Err(_) => Err(timeout(ctx, Limit::FirstByte, limit, format!("no answer about {}", ctx.reference))),
    }
}

/// The interval between stall notices for an idle limit.
pub(crate) fn notice_every(idle: Duration) -> Duration {
    STALL_NOTICE.min(idle / 2).max(Duration::from_millis(100))
}

/// Whole seconds above a second (errors say "30s", not "30s 2ms").
fn round(d: Duration) -> Duration {
    if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
}
