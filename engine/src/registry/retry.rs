//! Retries with exponential backoff.
//!
//! oci-client makes one attempt per call. bake retries what may succeed on a
//! second try: connection failures, broken-off transfers, 5xx and 429 answers
//! ([`RegistryError::is_transient`]). A 4xx answer is the registry's final
//! word and is never retried.

use std::future::Future;
use std::time::Duration;

use super::RegistryError;

/// How often and how patiently to retry a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt; it doubles for each further one.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, waiting about 0.25 s, 0.5 s and 1 s in between.
    fn default() -> Self {
        Self { attempts: 4, initial_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(8) }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub const NONE: RetryPolicy =
        RetryPolicy { attempts: 1, initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO };

    /// The wait after failed attempt `n` (1-based), with up to 25% jitter so
    /// that parallel transfers do not retry in lockstep.
    fn backoff(&self, n: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1 << n.saturating_sub(1).min(16)).min(self.max_backoff);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of attempts.
    pub(crate) async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() && attempt < self.attempts.max(1) => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy { attempts, initial_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(2) }
    }

    #[tokio::test]
    async fn retries_transient_errors_only() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(RegistryError::Server { registry: "r".into(), status: 503, message: String::new() })
            })
            .await;
        assert!(matches!(result, Err(RegistryError::Server { status: 503, .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(RegistryError::NotFound { reference: "x".into() })
            })
            .await;
        assert!(matches!(result, Err(RegistryError::NotFound { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let result = fast(3)
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(RegistryError::Unreachable { registry: "r".into(), reason: "refused".into(), cause: None })
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.ok(), Some(7));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let first = policy.backoff(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        let third = policy.backoff(3);
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(500));
        assert!(policy.backoff(30) <= Duration::from_millis(625));
    }
}
