//! PostgreSQL: the per-node caches behind the store's hot reads — available balances
//! ([`super::Db::available`]), file records ([`super::Db::file_recent`]) and the active link-signing key
//! ([`super::Db::active_signing_key`]). Each would otherwise be a database round trip
//! per request. One type, one rule, stated exactly:
//!
//! * **A change made through this node is visible to its next read at once.** Every
//!   write transaction of this node (`with_tx!`, and the single-statement holds and
//!   resolutions of `ledger`) calls [`Writes::wrote`] after its commit, before the
//!   write is acknowledged to anybody; an entry read before that is never used again.
//! * **A change acknowledged elsewhere (another node, `kie admin`) is visible within
//!   the bound** (TOML `balance_cache_ttl`, default [`FRESH_FOR`] = 100 ms; 0 turns
//!   every cache off). An entry is valid for that long counted from the moment its
//!   database read *started*, so the value a reader gets was current at most that long
//!   ago.
//! * **A read never puts an older value over a newer one.** A reader takes a
//!   [`ReadTicket`] (the write generation) before its database read and stores the
//!   result only if no write of this node committed in between.
//!
//! Bound: each cache holds at most its `max` entries, and only what exists enters (a
//! made-up id is a miss every time, as for SQLite's direct reads); an insert into a
//! full cache first drops the entries no longer valid, then everything.
//! [`Writes::wrote`] is one atomic increment: entries of an older generation are
//! simply never used again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old a cached value may be when it is read, by default.
pub const FRESH_FOR: Duration = Duration::from_millis(100);
/// Bound of each keyed cache.
pub const MAX_CACHED: usize = 10_000;

/// This node's committed writes: a generation counter shared by its caches.
#[derive(Debug, Default)]
pub struct Writes(AtomicU64);

impl Writes {
    /// A write transaction of this node committed: nothing cached before may be used.
    pub fn wrote(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// What a reader notes before its database read (see [`NodeCache::store`]).
#[derive(Clone, Copy, Debug)]
pub struct ReadTicket {
    generation: u64,
    started: Instant,
}

/// A bounded map of values read from the database, under the rule above.
#[derive(Debug)]
pub struct NodeCache<V> {
    fresh_for: Duration,
    max: usize,
    writes: Arc<Writes>,
    map: Mutex<HashMap<String, (V, ReadTicket)>>,
}

impl<V: Clone> NodeCache<V> {
    /// A cache of at most `max` entries, each used for `fresh_for` (zero: nothing is
    /// cached) and never after a write of this node.
    pub fn new(writes: Arc<Writes>, fresh_for: Duration, max: usize) -> NodeCache<V> {
        NodeCache {
            fresh_for,
            max,
            writes,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn valid(&self, t: &ReadTicket, generation: u64) -> bool {
        t.generation == generation && t.started.elapsed() < self.fresh_for
    }

    /// The cached value of `key`, if still valid.
    pub fn get(&self, key: &str) -> Option<V> {
        let generation = self.writes.generation();
        let map = self.map.lock().expect("node cache");
        let (v, t) = map.get(key)?;
        self.valid(t, generation).then(|| v.clone())
    }

    /// Taken just before a database read whose result may be stored.
    pub fn ticket(&self) -> ReadTicket {
        ReadTicket {
            generation: self.writes.generation(),
            started: Instant::now(),
        }
    }

    /// Stores what a read begun at `t` found, unless a write of this node committed
    /// since (its value may be older than that write).
    pub fn store(&self, t: ReadTicket, key: &str, v: V) {
        if self.fresh_for.is_zero() || self.max == 0 {
            return;
        }
        let mut map = self.map.lock().expect("node cache");
        // Checked under the lock; a write after this check makes the entry invalid.
        let generation = self.writes.generation();
        if generation != t.generation {
            return;
        }
        if map.len() >= self.max && !map.contains_key(key) {
            map.retain(|_, (_, e)| self.valid(e, generation));
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(key.to_owned(), (v, t));
    }

    /// Entries held now (valid or not; at most `max`).
    pub fn len(&self) -> usize {
        self.map.lock().expect("node cache").len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max: usize) -> (Arc<Writes>, NodeCache<i64>) {
        let w = Arc::new(Writes::default());
        (w.clone(), NodeCache::new(w, FRESH_FOR, max))
    }

    #[test]
    fn a_read_overtaken_by_a_local_write_is_not_stored() {
        let (w, b) = cache(MAX_CACHED);
        let t = b.ticket();
        w.wrote();
        b.store(t, "acc", 5);
        assert_eq!(b.get("acc"), None);
        let t = b.ticket();
        b.store(t, "acc", 7);
        assert_eq!(b.get("acc"), Some(7));
        w.wrote();
        assert_eq!(b.get("acc"), None, "a local write ends every entry");
    }

    #[test]
    fn entries_expire_counted_from_the_start_of_their_read() {
        let (_, b) = cache(MAX_CACHED);
        let t = ReadTicket {
            generation: 0,
            started: Instant::now() - FRESH_FOR,
        };
        b.store(t, "acc", 1);
        assert_eq!(b.get("acc"), None);
    }

    #[test]
    fn a_zero_bound_caches_nothing() {
        let w = Arc::new(Writes::default());
        let b = NodeCache::new(w, Duration::ZERO, MAX_CACHED);
        b.store(b.ticket(), "acc", 1);
        assert_eq!((b.get("acc"), b.len()), (None, 0));
    }

    #[test]
    fn bounded() {
        let (w, b) = cache(1000);
        for i in 0..100_000 {
            if i % 10_000 == 0 {
                w.wrote();
            }
            let t = b.ticket();
            b.store(t, &format!("acc{i}"), i);
            assert!(b.len() <= 1000);
        }
        assert_eq!(b.get("acc99999"), Some(99_999));
    }
}
