//! Point reads on SQLite for the hottest endpoints, without the async driver's hop.
//!
//! sqlx runs every SQLite statement on a worker thread per connection: a pool
//! acquire, a channel send, a thread wake-up and a channel reply per query. For the
//! one-row reads of `GET /api/v1/chat/credit` and `POST /api/v1/common/download-url`
//! that hop costs more than the read itself (see BENCHMARKS.md). Here the read runs
//! on the calling thread through a small pool of read-only connections with cached
//! prepared statements: a WAL read is a few microseconds and never waits for the
//! writer.
//!
//! Every read is a fresh read transaction, so it sees every commit acknowledged before
//! it started (same guarantee as the sqlx read pool). On any error (busy, schema, I/O)
//! the caller gets `None` and uses the sqlx path, which waits and reports errors
//! properly. The busy timeout is zero so a read never sleeps on the runtime thread.
//!
//! **Balances are cached, but only while the database is unchanged.** Starting and
//! ending a read transaction is most of a point read's cost (WAL snapshot and shared
//! locks: ~4.5k of a credit request's ~27k instructions). SQLite itself tells whether
//! anything committed since a snapshot: every commit of any connection of any process
//! rewrites the *WAL-index header* at the start of the `-shm` file (its change counter,
//! last frame and salts), which readers map into memory and compare to decide whether
//! their page cache is still valid (`walIndexTryHdr` in SQLite's wal.c). [`WalWatch`]
//! (in [`super::sqlite_raw`], with every `unsafe` block of the crate)
//! reads that header (never writes it); a cached balance is returned only when the
//! header is exactly the one read *before* the balance was fetched, i.e. when no
//! transaction committed since. A change acknowledged by this server, another `kie
//! serve` on the same file or `kie admin` rewrites the header before its COMMIT
//! returns, so the next credit read misses the cache and sees it. A header being
//! rewritten (its two copies differ), an uninitialised one, or a mapping that cannot
//! be had all mean "no cache".
//! The header is read through the mapping SQLite itself made of the `-shm` file for
//! an anchor connection that stays open for the reader's life (the VFS's `xShmMap`),
//! never through a descriptor of our own: closing any descriptor of a file drops
//! every POSIX lock this process holds on it, SQLite's included (its "dead man
//! switch" and reader/writer locks on `-shm`), after which another process opening
//! the database believes it is alone, truncates `-shm` under this process's mappings
//! (SIGBUS) and may write or checkpoint past this process's readers.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::sqlite_raw::{Header, WalWatch};

/// Idle connections kept; more may be open briefly under a burst.
pub const MAX_IDLE: usize = 16;
/// Bound of each cache (balances, file records — made-up file ids included, as
/// "no such row" —, the signing key): an insert into a full cache empties it first.
pub const MAX_CACHED: usize = 10_000;

pub struct FastReader {
    path: PathBuf,
    /// Page cache of each connection, KiB (the store's `SQLITE_READ_CACHE_KIB`).
    cache_kib: i64,
    idle: Mutex<Vec<Connection>>,
    wal: OnceLock<Option<WalWatch>>,
    /// account id → (available, or `None` for no such account; the header it was read
    /// under). Account ids come from authenticated keys, never from the client, so
    /// this map hashes with foldhash; the others keep SipHash (file ids are the
    /// client's).
    balances: Cache<Option<i64>, foldhash::fast::RandomState>,
    /// file id → record (`None`: no such row)
    files: Cache<Option<super::records::FileRecord>>,
    /// "" → the active link signing key
    signing_key: Cache<Option<super::records::SigningKey>>,
}

/// Values by key, each with the WAL-index header read before it was fetched.
type Cache<V, H = std::collections::hash_map::RandomState> = Mutex<HashMap<String, (V, Header), H>>;

impl std::fmt::Debug for FastReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastReader")
            .field("path", &self.path)
            .finish()
    }
}

impl FastReader {
    /// A reader for the SQLite database at `path` whose connections cache up to
    /// `cache_kib` KiB of pages each (nothing is opened yet).
    pub fn new(path: &Path, cache_kib: i64) -> FastReader {
        FastReader {
            path: path.to_path_buf(),
            cache_kib,
            idle: Mutex::new(Vec::new()),
            wal: OnceLock::new(),
            balances: Mutex::default(),
            files: Mutex::default(),
            signing_key: Mutex::default(),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(std::time::Duration::ZERO)?;
        c.pragma_update(None, "cache_size", -self.cache_kib)?;
        c.set_prepared_statement_cache_capacity(8);
        Ok(c)
    }

    /// Runs `f` on an idle connection (opening one if none is idle). `None` when
    /// anything fails; the connection is dropped then, not reused.
    fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Option<R> {
        let conn = self.idle.lock().ok()?.pop();
        let conn = match conn {
            Some(c) => c,
            None => self.open().ok()?,
        };
        match f(&conn) {
            Ok(r) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
                Some(r)
            }
            Err(_) => None,
        }
    }

    /// The current WAL-index header, if the database is watched (see the module docs).
    fn header(&self) -> Option<Header> {
        self.wal
            .get_or_init(|| WalWatch::open(self.open().ok()?))
            .as_ref()
            .and_then(WalWatch::header)
    }

    /// The WAL-index header now, for [`super::Db::commit_mark`].
    pub fn commit_mark(&self) -> Option<Header> {
        self.header()
    }

    /// `read` of `key`, answered from `cache` when no transaction committed since the
    /// cached value was read (see the module documentation).
    fn cached<V: Clone, H: std::hash::BuildHasher>(
        &self,
        cache: &Cache<V, H>,
        key: &str,
        read: impl FnOnce(&Connection) -> rusqlite::Result<V>,
    ) -> Option<V> {
        // Read before the value: a commit in between makes the entry stale at once.
        let before = self.header();
        if let Some(h) = before {
            if let Some((v, at)) = cache.lock().ok()?.get(key) {
                if *at == h {
                    return Some(v.clone());
                }
            }
        }
        let v = self.with_conn(read)?;
        if let Some(h) = before {
            let mut cache = cache.lock().ok()?;
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key.to_owned(), (v.clone(), h));
        }
        Some(v)
    }

    /// Entries of the (balance, file record, signing key) caches now.
    pub fn cache_lens(&self) -> (usize, usize, usize) {
        fn n<V, H>(c: &Cache<V, H>) -> usize {
            c.lock().map_or(0, |m| m.len())
        }
        (n(&self.balances), n(&self.files), n(&self.signing_key))
    }

    /// `balance - held` of an account (`Some(None)`: no such account); the same query
    /// as `ledger::available`.
    pub fn available(&self, account_id: &str) -> Option<Option<i64>> {
        self.cached(&self.balances, account_id, |c| {
            c.prepare_cached("SELECT balance - held FROM accounts WHERE id = ?1")?
                .query_row([account_id], |r| r.get(0))
                .optional()
        })
    }

    /// A file record by id (`Some(None)`: no such row); the same query as `files::get`.
    /// Whether it is still live is for the caller to check against the clock.
    pub fn file(&self, id: &str) -> Option<Option<super::records::FileRecord>> {
        self.cached(&self.files, id, |c| {
            c.prepare_cached(super::records::GET_BY_ID_SQL)?
                .query_row([id], |r| {
                    Ok(super::records::FileRecord {
                        id: r.get(0)?,
                        account_id: r.get(1)?,
                        name: r.get(2)?,
                        content_type: r.get(3)?,
                        size: r.get(4)?,
                        sha256: r.get(5)?,
                        kind: r.get(6)?,
                        upload_path: r.get(7)?,
                        task_id: r.get(8)?,
                        storage_key: r.get(9)?,
                        created_at: r.get(10)?,
                        expires_at: r.get(11)?,
                        deleted_at: r.get(12)?,
                    })
                })
                .optional()
        })
    }

    /// The newest active link signing key (`Some(None)`: none, or undecodable); the
    /// same query as `links::active_key`. A rotation commits, so the next link is
    /// signed with the new key.
    pub fn active_signing_key(&self) -> Option<Option<super::records::SigningKey>> {
        self.cached(&self.signing_key, "", |c| {
            c.prepare_cached(super::records::ACTIVE_KEY_SQL)?
                .query_row([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
                .optional()
                .map(|row| row.and_then(|(id, s)| super::records::decode_secret(id, &s)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kie-fastread-{}-{}",
            std::process::id(),
            crate::http::new_request_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.db")
    }

    #[test]
    fn cached_balance_is_used_only_until_the_next_commit() {
        let path = temp_db();
        let w = Connection::open(&path).unwrap();
        w.pragma_update(None, "journal_mode", "wal").unwrap();
        w.execute_batch(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER, held INTEGER);
             INSERT INTO accounts VALUES ('a', 1000, 100), ('b', 5, 0);",
        )
        .unwrap();
        let r = FastReader::new(&path, 64);
        assert_eq!(r.available("a"), Some(Some(900)));
        let watch = r.wal.get().unwrap().as_ref().expect("WAL header mapped");
        let h0 = watch.header().unwrap();
        assert_eq!(r.balances.lock().unwrap().get("a"), Some(&(Some(900), h0)));
        // unchanged database: the same header, answered from the cache
        assert_eq!(r.available("a"), Some(Some(900)));
        assert_eq!(watch.header(), Some(h0));
        assert_eq!(r.available("nobody"), Some(None));
        // a commit by another connection changes the header: the next read sees it
        w.execute("UPDATE accounts SET held = 300 WHERE id = 'a'", [])
            .unwrap();
        assert_ne!(watch.header(), Some(h0));
        assert_eq!(r.available("a"), Some(Some(700)));
        // so does a commit that touches another row only (any commit invalidates)
        let h1 = watch.header().unwrap();
        w.execute("UPDATE accounts SET balance = 6 WHERE id = 'b'", [])
            .unwrap();
        assert_ne!(watch.header(), Some(h1));
        assert_eq!(r.available("b"), Some(Some(6)));
        // and a checkpoint that restarts the WAL
        w.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        w.execute("UPDATE accounts SET balance = 2000 WHERE id = 'a'", [])
            .unwrap();
        assert_eq!(r.available("a"), Some(Some(1700)));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// POSIX locks this process holds on `file`, as `/proc/locks` lists them: "READ 128
    /// 128" (type, first and last byte), sorted.
    #[cfg(target_os = "linux")]
    fn own_locks(file: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(file).unwrap().ino().to_string();
        let pid = std::process::id().to_string();
        let mut held: Vec<String> = std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter(|l| !l.contains("->")) // waiting for a lock, not holding it
            .filter_map(|l| {
                // "6: POSIX  ADVISORY  READ 21467 fe:00:10027409 128 128"
                let f: Vec<&str> = l.split_whitespace().collect();
                let ours = f.len() == 8
                    && f[1] == "POSIX"
                    && f[4] == pid
                    && f[5].rsplit(':').next() == Some(ino.as_str());
                ours.then(|| format!("{} {} {}", f[3], f[6], f[7]))
            })
            .collect();
        held.sort();
        held
    }

    /// Watching the WAL-index header must not cost SQLite its locks on `-shm`: closing
    /// any descriptor of a file drops every POSIX lock the process holds on it. Without
    /// its shared "dead man switch" lock (byte 128), another process opening the
    /// database takes itself for the only user and truncates `-shm` under this
    /// process's mappings (the server died of SIGBUS, under load, in the crash test).
    #[cfg(target_os = "linux")]
    #[test]
    fn watching_the_header_keeps_sqlites_locks_on_the_shm_file() {
        let path = temp_db();
        let w = Connection::open(&path).unwrap();
        w.pragma_update(None, "journal_mode", "wal").unwrap();
        w.execute_batch(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER, held INTEGER);
             INSERT INTO accounts VALUES ('a', 10, 0);",
        )
        .unwrap();
        let shm = path.with_file_name("t.db-shm");
        let held = own_locks(&shm);
        assert!(held.contains(&"READ 128 128".to_string()), "{held:?}");
        let r = FastReader::new(&path, 64);
        assert_eq!(r.available("a"), Some(Some(10)));
        assert!(r.wal.get().unwrap().is_some(), "WAL header watched");
        assert_eq!(r.available("a"), Some(Some(10)));
        assert_eq!(own_locks(&shm), held, "SQLite's locks on -shm");
        // the watch still sees commits
        w.execute("UPDATE accounts SET balance = 12 WHERE id = 'a'", [])
            .unwrap();
        assert_eq!(r.available("a"), Some(Some(12)));
        drop(r);
        assert_eq!(
            own_locks(&shm),
            held,
            "SQLite's locks on -shm after the reader"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn no_cache_without_wal() {
        let path = temp_db();
        let w = Connection::open(&path).unwrap();
        w.execute_batch(
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER, held INTEGER);
             INSERT INTO accounts VALUES ('a', 10, 0);",
        )
        .unwrap();
        let r = FastReader::new(&path, 64);
        assert_eq!(r.available("a"), Some(Some(10)));
        assert!(r.wal.get().unwrap().is_none());
        assert!(r.balances.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
