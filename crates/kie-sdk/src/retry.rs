//! When to try a request again, and how long to wait first.
//!
//! Retried: transport failures, server errors (5xx, body code 500), rate limiting (429,
//! waiting `Retry-After`, capped) and a few times maintenance (455, usually short).
//! Never retried: business answers — 401, 402, 404, 405, 422/400, 505 — because asking
//! again gives the same answer and, for 402, could hide a real problem.
//!
//! Requests that are not idempotent (`createTask`) are retried only when the server
//! certainly did not act on them: the connection could not be made, the request was
//! rate limited or refused for maintenance. A timeout or a 500 after sending may have
//! created the task (and held its credits), so it is reported instead.

use std::time::Duration;

use rand::Rng;

use crate::error::Error;

/// Retry schedule: exponential backoff with jitter.
///
/// ```
/// use kie_sdk::RetryPolicy;
/// use std::time::Duration;
///
/// let p = RetryPolicy::default();
/// assert_eq!(p.max_retries, 3);
/// // attempt n waits between half and all of base * 2^n, never more than max_delay
/// let d = p.backoff(2);
/// assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further attempts after the first one.
    pub max_retries: u32,
    /// Backoff of the first retry; doubled each time.
    pub base_delay: Duration,
    /// Upper bound of one backoff.
    pub max_delay: Duration,
    /// Upper bound of a wait asked for by `Retry-After`.
    pub max_retry_after: Duration,
    /// How many of the retries may be spent on "under maintenance" (455).
    pub maintenance_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            maintenance_retries: 2,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            maintenance_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before retry number `attempt` (0-based): a random duration in
    /// `[d/2, d]` with `d = min(base * 2^attempt, max_delay)`. The jitter spreads the
    /// retries of many clients that failed at the same moment.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let d = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay);
        let half = d / 2;
        let nanos = u64::try_from((d - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if nanos == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=nanos)
        })
    }

    /// How long to wait before retrying after `err` on retry number `attempt`
    /// (0-based), or `None` when the error must be reported now.
    pub fn delay_for(&self, err: &Error, attempt: u32, idempotent: bool) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        match err {
            Error::Transport(e) if idempotent || e.is_connect() => Some(self.backoff(attempt)),
            Error::Server { .. } if idempotent => Some(self.backoff(attempt)),
            Error::UnexpectedResponse { status, .. } if idempotent && *status >= 500 => {
                Some(self.backoff(attempt))
            }
            Error::UnexpectedResponse { status: 429, .. } => Some(self.backoff(attempt)),
            Error::RateLimited { retry_after, .. } => Some(match retry_after {
                Some(ra) => (*ra).min(self.max_retry_after),
                None => self.backoff(attempt),
            }),
            Error::Maintenance { .. } if attempt < self.maintenance_retries => {
                Some(self.backoff(attempt))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let b0 = p.backoff(0);
            assert!(b0 >= Duration::from_millis(50) && b0 <= Duration::from_millis(100));
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(400) && b3 <= Duration::from_millis(800));
            let b9 = p.backoff(9);
            assert!(b9 >= Duration::from_millis(500) && b9 <= Duration::from_millis(1000));
        }
        assert!(p.backoff(40) <= Duration::from_millis(1000));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy::default();
        let rl = |s| Error::RateLimited {
            retry_after: Some(Duration::from_secs(s)),
            msg: String::new(),
        };
        assert_eq!(p.delay_for(&rl(10), 0, true), Some(Duration::from_secs(10)));
        assert_eq!(
            p.delay_for(&rl(10), 0, false),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            p.delay_for(&rl(3600), 0, true),
            Some(Duration::from_secs(60))
        );
        assert_eq!(p.delay_for(&rl(10), 3, true), None, "retries exhausted");
    }

    #[test]
    fn business_errors_are_never_retried() {
        let p = RetryPolicy::default();
        let m = String::new;
        for e in [
            Error::Unauthorized { msg: m() },
            Error::InsufficientCredits { msg: m() },
            Error::KeyCapExceeded { msg: m() },
            Error::Validation { msg: m() },
            Error::NotFound { msg: m() },
            Error::FeatureDisabled { msg: m() },
            Error::Api {
                code: 405,
                msg: m(),
            },
            Error::UnexpectedResponse {
                status: 403,
                snippet: m(),
            },
        ] {
            assert_eq!(p.delay_for(&e, 0, true), None, "{e}");
        }
    }

    #[test]
    fn maintenance_gets_a_few_retries_and_500_only_when_idempotent() {
        let p = RetryPolicy::default();
        let maint = Error::Maintenance { msg: String::new() };
        assert!(p.delay_for(&maint, 0, true).is_some());
        assert!(p.delay_for(&maint, 1, false).is_some());
        assert_eq!(p.delay_for(&maint, 2, true), None);
        let server = Error::Server {
            request_id: None,
            msg: String::new(),
        };
        assert!(p.delay_for(&server, 0, true).is_some());
        assert_eq!(p.delay_for(&server, 0, false), None);
    }
}
