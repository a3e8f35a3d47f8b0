//! Request-rate limiters with a hard bound on the keys they remember.
//!
//! The limiters of the service (per client IP, before authentication; per API key;
//! per account on the catalog) are GCRA limiters from `governor`, one state cell per
//! key. A client chooses its address (a whole IPv6 /64, or many addresses behind a
//! NAT), so the number of keys is not ours to pick: left alone, the state would grow
//! with every address ever seen. The per-IP limiter keeps a cell per address that
//! connections hold ([`IpLimiter`], its bound and eviction there); the keyed ones
//! below are bounded as follows.
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

/// Client addresses the per-IP limiter remembers at most (see [`IpLimiter`] for the
/// eviction) besides those of open connections: 64 Ki addresses are a few MiB.
pub const IP_LIMITER_MAX: usize = 65_536;

/// The per-IP request limiter: one GCRA cell (a `governor` direct limiter, all on one
/// clock) per client address, looked up **once per connection** (`kie serve` hands it to
/// the connection's pipeline, `PipelineService::for_peer`) and checked per request
/// without hashing the address again: a request pays one atomic update, not a map
/// look-up (it was ~450 instructions of a 21k-instruction credit request).
///
/// **Bound:** at most [`IP_LIMITER_MAX`] cells plus one per open connection (those are
/// bounded by `--max-connections`). A cell held by an open connection is never dropped,
/// so every connection from an address shares that address's one cell. Others go:
/// every housekeeping tick (30 s) the cells no connection holds and not checked since
/// the tick before (so idle for at least one tick, longer than the one-second burst
/// takes to refill) are dropped — indistinguishable from fresh ones; and when a new
/// address finds the map full, every cell no connection holds is dropped.
///
/// **Eviction** only ever gives an address a fresh, full burst, as for the keyed
/// limiters (module docs).
pub struct IpLimiter {
    quota: Quota,
    /// One clock for all cells (a `DefaultClock` calibrates itself when made).
    clock: governor::clock::DefaultClock,
    /// Client-chosen keys: SipHash (std's `RandomState`).
    cells: std::sync::Mutex<std::collections::HashMap<IpAddr, Arc<IpCell>>>,
    /// Housekeeping ticks so far; a cell notes the tick of its last check.
    tick: Arc<AtomicU32>,
}

/// One address's limiter cell (see [`IpLimiter`]).
pub struct IpCell {
    limiter: governor::DefaultDirectRateLimiter,
    /// The housekeeping tick of the last check.
    seen: AtomicU32,
    tick: Arc<AtomicU32>,
}

impl IpLimiter {
    /// `None` when `per_second` is 0 (off). The burst is one second's worth.
    pub fn new(per_second: u32) -> Option<Arc<IpLimiter>> {
        let n = NonZeroU32::new(per_second)?;
        Some(Arc::new(IpLimiter {
            quota: Quota::per_second(n).allow_burst(n),
            clock: governor::clock::DefaultClock::default(),
            cells: Default::default(),
            tick: Arc::default(),
        }))
    }

    /// The cell of `ip`, for one connection from it.
    pub fn cell(&self, ip: IpAddr) -> Arc<IpCell> {
        let mut cells = self.cells.lock().expect("ip limiter");
        if let Some(c) = cells.get(&ip) {
            return c.clone();
        }
        if cells.len() >= IP_LIMITER_MAX {
            cells.retain(|_, c| Arc::strong_count(c) > 1);
        }
        let c = Arc::new(IpCell {
            limiter: RateLimiter::direct_with_clock(self.quota, self.clock.clone()),
            seen: AtomicU32::new(self.tick.load(Ordering::Relaxed)),
            tick: self.tick.clone(),
        });
        cells.insert(ip, c.clone());
        c
    }

    /// Drops the cells no connection holds that were not checked since the last tick
    /// (called periodically; see the type's docs).
    pub fn housekeeping(&self) {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut cells = self.cells.lock().expect("ip limiter");
        cells.retain(|_, c| Arc::strong_count(c) > 1 || c.seen.load(Ordering::Relaxed) >= now);
        let keep = cells.len().max(IP_LIMITER_MAX / 64);
        cells.shrink_to(keep);
    }

    /// Addresses remembered now (bound: [`IP_LIMITER_MAX`] + open connections).
    pub fn len(&self) -> usize {
        self.cells.lock().expect("ip limiter").len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IpCell {
    /// `Some(answer)` (429 with `Retry-After`) when this address is over its limit;
    /// `path` picks the envelope.
    pub fn check(&self, path: &str) -> Option<Response> {
        self.seen
            .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
        let not_until = self.limiter.check().err()?;
        let wait = not_until.wait_time_from(self.limiter.clock().now());
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

    /// Every connection from an address shares its one cell; a cell a connection holds
    /// survives the map filling up and housekeeping; the others are bounded and go.
    #[test]
    fn ip_cells_are_shared_per_address_held_while_used_and_bounded() {
        let l = IpLimiter::new(2).unwrap();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x7f01_0000 + i));
        let (a, b) = (l.cell(ip(1)), l.cell(ip(1)));
        assert!(Arc::ptr_eq(&a, &b), "two connections, one cell");
        assert!(a.check("/healthz").is_none());
        assert!(b.check("/healthz").is_none());
        let refused = a
            .check("/healthz")
            .expect("the burst of 2 is the address's, not each connection's");
        let code = refused.extensions().get::<crate::http::error::BodyCode>();
        assert_eq!(code.map(|c| c.code), Some(429));
        assert!(refused.headers().contains_key("retry-after"));
        // 100,000 more addresses, one short connection each
        for i in 10..100_010 {
            let c = l.cell(ip(i));
            let _ = c.check("/healthz");
            assert!(l.len() <= IP_LIMITER_MAX + 1, "{} cells", l.len());
        }
        assert!(Arc::ptr_eq(&a, &l.cell(ip(1))), "the held cell was kept");
        l.housekeeping();
        l.housekeeping();
        assert_eq!(
            l.len(),
            1,
            "after a tick without checks only the held cell stays"
        );
        drop((a, b));
        l.housekeeping();
        assert_eq!(l.len(), 0, "released and idle since the last tick: gone");
    }
}
