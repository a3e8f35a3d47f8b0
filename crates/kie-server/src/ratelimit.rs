//! Keyed request-rate limiters with a hard bound on the keys they remember.
//!
//! Both limiters of the service (per client IP, before authentication, and per API key)
//! are GCRA limiters from `governor`, one state cell per key. A client chooses its
//! address (a whole IPv6 /64, or many addresses behind a NAT), so the number of keys is
//! not ours to pick: left alone, the state map grows with every address ever seen.
//!
//! **Bound:** at most [`KeyedLimiter::max`] + [`CHECK_EVERY`] keys. Every
//! `CHECK_EVERY` checks (and on every housekeeping tick) the size is looked at; past
//! `max` the keys whose state is indistinguishable from a fresh one (back to a full
//! burst: idle for one second at most, since the burst is one second's worth) are
//! dropped, and if that is not enough — more than `max` distinct keys active within
//! the last second — the whole state is replaced by an empty one.
//!
//! **Eviction:** forgetting a key only ever gives that key a fresh, full burst; it never
//! refuses anybody. So the worst an attacker with more than `max` addresses per second
//! gains is one extra burst per address per reset, which the per-key limit (after
//! authentication) and `--max-connections` still bound.

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use std::net::IpAddr;

use crate::http::ApiError;

/// How many checks pass between two looks at the size.
pub const CHECK_EVERY: u32 = 1024;

/// A keyed limiter of `per_second` requests per key (burst: one second's worth) that
/// remembers at most `max` (+ [`CHECK_EVERY`]) keys.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    quota: Quota,
    max: usize,
    inner: ArcSwap<DefaultKeyedRateLimiter<K>>,
    checks: AtomicU32,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `None` when `per_second` is 0 (off).
    pub fn new(per_second: u32, max: usize) -> Option<KeyedLimiter<K>> {
        let n = NonZeroU32::new(per_second)?;
        let quota = Quota::per_second(n).allow_burst(n);
        Some(KeyedLimiter {
            quota,
            max,
            inner: ArcSwap::from_pointee(RateLimiter::keyed(quota)),
            checks: AtomicU32::new(0),
        })
    }

    /// `Err(wait)` when `key` is over its limit.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % CHECK_EVERY == CHECK_EVERY - 1 {
            self.enforce_bound();
        }
        let limiter = self.inner.load();
        // The limiter's own clock: a new `DefaultClock` (quanta) calibrates itself with
        // CPUID, tens of microseconds in a VM: once per refusal, a refused client cost
        // the server more than an admitted one.
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.inner.load().len()
    }

    /// Always `false` for a limiter that has seen a request; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on remembered keys (see the module docs).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Drops keys back to a full burst and releases memory (called periodically).
    pub fn housekeeping(&self) {
        let l = self.inner.load();
        l.retain_recent();
        l.shrink_to_fit();
        drop(l);
        self.enforce_bound();
    }

    fn enforce_bound(&self) {
        let l = self.inner.load();
        if l.len() <= self.max {
            return;
        }
        l.retain_recent();
        if l.len() > self.max {
            self.inner.store(Arc::new(RateLimiter::keyed(self.quota)));
        } else {
            l.shrink_to_fit();
        }
    }
}

/// Per-account limiter of the model catalog endpoints (`None` when `per_second` is 0),
/// keyed by account id (a bounded set: the accounts of this deployment).
pub fn catalog_limiter(per_second: u32) -> Option<KeyedLimiter<Arc<str>>> {
    KeyedLimiter::new(per_second, 100_000)
}

/// Client addresses the per-IP limiter remembers at most (see `ratelimit` for the
/// eviction): 64 Ki addresses are a few MiB.
pub const IP_LIMITER_MAX: usize = 65_536;

/// The per-IP request limiter.
pub struct IpLimiter {
    limiter: KeyedLimiter<IpAddr>,
}

impl IpLimiter {
    /// `None` when `per_second` is 0 (off). The burst is one second's worth.
    pub fn new(per_second: u32) -> Option<Arc<IpLimiter>> {
        KeyedLimiter::new(per_second, IP_LIMITER_MAX).map(|limiter| Arc::new(IpLimiter { limiter }))
    }

    /// Drops state of addresses that are back to a full burst (called periodically).
    pub fn housekeeping(&self) {
        self.limiter.housekeeping();
    }

    /// Addresses remembered now (bound: [`IP_LIMITER_MAX`] + a little).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// `Some(answer)` (429 with `Retry-After`) when `ip` is over its limit.
    pub fn check(&self, ip: IpAddr, path: &str) -> Option<Response> {
        let wait = self.limiter.check(&ip).err()?;
        let mut e = ApiError::rate_limited(wait.as_secs_f64().ceil() as u64);
        e.upload = crate::http::error::is_upload_path(path);
        Some(e.into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_never_remembers_more_than_the_bound() {
        let l: KeyedLimiter<u32> = KeyedLimiter::new(2, 1000).unwrap();
        assert!(l.check(&7).is_ok());
        assert!(l.check(&7).is_ok());
        assert!(l.check(&7).is_err(), "burst of 2 used up");
        assert!(l.check(&8).is_ok(), "another key has its own burst");
        for k in 0..100_000u32 {
            let _ = l.check(&(k + 10));
            assert!(l.len() <= l.max() + CHECK_EVERY as usize, "{}", l.len());
        }
        l.housekeeping();
        assert!(l.len() <= l.max(), "{}", l.len());
    }
}
