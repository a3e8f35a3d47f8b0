//! PostgreSQL: the per-node cache of available balances behind [`super::Db::available`].
//!
//! A credit read on PostgreSQL is otherwise a database round trip per request. The
//! cache keeps each account's available balance for at most its freshness bound
//! (TOML `balance_cache_ttl`, default [`FRESH_FOR`]; 0 turns it off) and states exactly
//! what a reader can see:
//!
//! * **A change made through this node is visible to its next read at once.** Every
//!   write transaction of this node (`with_tx!`, and the single-statement holds and
//!   resolutions of `ledger`) calls [`Balances::wrote`] after its commit, which empties
//!   the cache before the write is acknowledged to anybody.
//! * **A change acknowledged elsewhere (another node, `kie admin`) is visible within
//!   the bound (100 ms by default).** An entry is valid for that long counted from the
//!   moment its database read *started*, so the value a reader gets was current at
//!   most that long ago.
//! * **A read never puts an older value over a newer one.** The cache has a generation
//!   counter that [`Balances::wrote`] bumps; a reader notes it before its database read
//!   and stores the result only if no write of this node committed in between.
//!
//! Bound: [`MAX_CACHED`] accounts (only accounts that exist enter: a made-up id is a
//! miss every time, as for SQLite's direct reads); an insert into a full cache empties
//! it first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How old a cached balance may be when it is read, by default.
pub const FRESH_FOR: Duration = Duration::from_millis(100);
/// Bound of the cache.
pub const MAX_CACHED: usize = 10_000;

#[derive(Debug)]
pub struct Balances {
    fresh_for: Duration,
    generation: AtomicU64,
    /// account id → (available, when the read that produced it started)
    map: Mutex<HashMap<String, (i64, Instant)>>,
}

/// What a reader notes before its database read (see [`Balances::store`]).
#[derive(Clone, Copy, Debug)]
pub struct ReadTicket {
    generation: u64,
    started: Instant,
}

impl Default for Balances {
    fn default() -> Self {
        Balances::new(FRESH_FOR)
    }
}

impl Balances {
    /// A cache whose entries are used for `fresh_for` (zero: nothing is cached).
    pub fn new(fresh_for: Duration) -> Balances {
        Balances {
            fresh_for,
            generation: AtomicU64::new(0),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cached available balance of `account`, if fresh.
    pub fn get(&self, account: &str) -> Option<i64> {
        let map = self.map.lock().expect("balance cache");
        let (v, at) = map.get(account)?;
        (at.elapsed() < self.fresh_for).then_some(*v)
    }

    /// Taken just before a database read whose result may be stored.
    pub fn ticket(&self) -> ReadTicket {
        ReadTicket {
            generation: self.generation.load(Ordering::Acquire),
            started: Instant::now(),
        }
    }

    /// Stores what a read begun at `t` found, unless a write of this node committed
    /// since (its value may be older than that write).
    pub fn store(&self, t: ReadTicket, account: &str, available: i64) {
        let mut map = self.map.lock().expect("balance cache");
        // Checked under the lock: `wrote` bumps the generation, then clears under it.
        if self.generation.load(Ordering::Acquire) != t.generation || self.fresh_for.is_zero() {
            return;
        }
        if map.len() >= MAX_CACHED && !map.contains_key(account) {
            map.clear();
        }
        map.insert(account.to_string(), (available, t.started));
    }

    /// A write transaction of this node committed: nothing cached may be older.
    pub fn wrote(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.map.lock().expect("balance cache").clear();
    }

    /// Accounts cached now (bound: [`MAX_CACHED`]).
    pub fn len(&self) -> usize {
        self.map.lock().expect("balance cache").len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_overtaken_by_a_local_write_is_not_stored() {
        let b = Balances::default();
        let t = b.ticket();
        b.wrote();
        b.store(t, "acc", 5);
        assert_eq!(b.get("acc"), None);
        let t = b.ticket();
        b.store(t, "acc", 7);
        assert_eq!(b.get("acc"), Some(7));
        b.wrote();
        assert_eq!(b.get("acc"), None, "a local write empties the cache");
    }

    #[test]
    fn entries_expire_counted_from_the_start_of_their_read() {
        let b = Balances::default();
        let t = ReadTicket {
            generation: 0,
            started: Instant::now() - FRESH_FOR,
        };
        b.store(t, "acc", 1);
        assert_eq!(b.get("acc"), None);
    }

    #[test]
    fn bounded() {
        let b = Balances::default();
        for i in 0..(MAX_CACHED + 10) {
            let t = b.ticket();
            b.store(t, &format!("acc{i}"), 1);
            assert!(b.len() <= MAX_CACHED);
        }
    }
}
