//! The metadata store boundary: SQLite (embedded default) or PostgreSQL (scale-out).
//!
//! Queries are written once in the SQL both engines accept (`$1` placeholders, integer
//! money, `RETURNING`, `ON CONFLICT`) and run on whichever pool is configured through
//! the [`with_read!`] and [`with_tx!`] macros. Where the engines differ (locking,
//! schema types) each backend has its own code or migrations.
//!
//! SQLite writes go through a one-connection pool and `BEGIN IMMEDIATE`, so writers in
//! this process queue in FIFO order instead of failing on lock upgrades; other
//! processes (e.g. `kie admin`) wait on SQLite's busy timeout.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Connection;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::config::DatabaseUrl;

pub mod health;

#[derive(Clone, Debug)]
pub struct SqliteDb {
    pub read: SqlitePool,
    pub write: SqlitePool,
    /// Group commit of write transactions (see [`group`]); `None` runs one
    /// transaction (and one fsync) per [`with_tx!`].
    pub group: Option<std::sync::Arc<group::Group>>,
    /// Direct point reads (balances, file records, the signing key) that see every
    /// acknowledged commit (see [`fastread`]).
    pub fast: std::sync::Arc<fastread::FastReader>,
}

/// A PostgreSQL store: the pool and this node's caches of what the hot paths read
/// (see [`nodecache`]: one rule for all three).
#[derive(Clone, Debug)]
pub struct PgDb {
    pub pool: PgPool,
    /// This node's committed writes; every cache below is checked against it.
    pub writes: std::sync::Arc<nodecache::Writes>,
    /// Available balances by account id.
    pub balances: std::sync::Arc<nodecache::NodeCache<i64>>,
    /// File records by id.
    pub records: std::sync::Arc<nodecache::NodeCache<records::FileRecord>>,
    /// The active link-signing key (one entry; an empty ring is not cached).
    pub active_key: std::sync::Arc<nodecache::NodeCache<records::SigningKey>>,
}

impl PgDb {
    fn new(pool: PgPool, fresh_for: Duration) -> PgDb {
        use std::sync::Arc;
        let writes = Arc::new(nodecache::Writes::default());
        let max = nodecache::MAX_CACHED;
        PgDb {
            pool,
            balances: Arc::new(nodecache::NodeCache::new(writes.clone(), fresh_for, max)),
            records: Arc::new(nodecache::NodeCache::new(writes.clone(), fresh_for, max)),
            active_key: Arc::new(nodecache::NodeCache::new(writes.clone(), fresh_for, 1)),
            writes,
        }
    }

    /// A write transaction of this node committed (see [`nodecache::Writes::wrote`]).
    pub fn wrote(&self) {
        self.writes.wrote();
    }

    /// `key` from `cache` when valid, else `read` (stored when it found something).
    async fn cached<V: Clone, F>(
        cache: &nodecache::NodeCache<V>,
        key: &str,
        read: F,
    ) -> Result<Option<V>, sqlx::Error>
    where
        F: std::future::Future<Output = Result<Option<V>, sqlx::Error>>,
    {
        if let Some(v) = cache.get(key) {
            return Ok(Some(v));
        }
        let ticket = cache.ticket();
        let v = read.await?;
        if let Some(v) = &v {
            cache.store(ticket, key, v.clone());
        }
        Ok(v)
    }
}

pub mod fastread;
pub mod group;
pub mod nodecache;
pub mod records;
pub mod sqlite_raw;

/// A connected metadata store.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgDb),
}

/// Runs `$body` with `$p` bound to the backend's read pool (`&SqlitePool` or `&PgPool`).
#[macro_export]
macro_rules! with_read {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite(s) => {
                let $p = &s.read;
                $body
            }
            $crate::store::Db::Postgres(pg) => {
                let $p = &pg.pool;
                $body
            }
        }
    };
}

/// Runs `$body` inside one write transaction bound to `$tx`, committing when the body
/// evaluates; an early return (`?`) drops the transaction, which rolls it back.
///
/// On SQLite with group commit (the default) `$tx` is the shared write connection and
/// the body runs inside its own `SAVEPOINT` of the current batch transaction: an early
/// return rolls back to that savepoint (only this body's writes), and the macro
/// returns only after the whole batch has committed (one fsync for many bodies).
#[macro_export]
macro_rules! with_tx {
    ($db:expr, |$tx:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite(s) => match &s.group {
                // One savepoint inside the shared batch transaction; acknowledged only
                // once the batch has committed.
                Some(g) => {
                    // Derefs to the write connection, like a transaction.
                    let mut $tx = g.enter().await?;
                    let r = $body;
                    $tx.finish().await?;
                    r
                }
                None => {
                    let mut $tx = s.write.begin_with("BEGIN IMMEDIATE").await?;
                    let r = $body;
                    $tx.commit().await?;
                    r
                }
            },
            $crate::store::Db::Postgres(pg) => {
                let mut $tx = pg.pool.begin().await?;
                let r = $body;
                let committed = $tx.commit().await;
                // before the write is acknowledged: this node's next read sees it
                pg.wrote();
                committed?;
                r
            }
        }
    };
}

/// Errors opening a store, phrased for a one-line message to an operator.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("data directory {path} is not writable: {reason}")]
    DataDir { path: String, reason: String },
    #[error("cannot open database {what}: {reason}")]
    Connect { what: String, reason: String },
    #[error("database migration failed: {0}")]
    Migrate(String),
}

pub struct OpenOptions {
    pub max_connections: u32,
    pub statement_timeout: Duration,
    /// Wait for a connection of the SQLite read pool.
    pub acquire_timeout: Duration,
    /// Wait for a PostgreSQL connection (the pool also retries refused connections
    /// until then). Requests do not wait this long in an outage: `health` detects it
    /// and the server fails them at once.
    pub pg_acquire_timeout: Duration,
    /// Limit of the first connection at start-up (a database that does not answer is
    /// reported, not waited for).
    pub connect_timeout: Duration,
    /// SQLite: group commit of concurrent write transactions (see [`group`]).
    pub sqlite_group_commit: bool,
    /// PostgreSQL: freshness bound of the per-node caches (see [`nodecache`]).
    pub balance_cache_ttl: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_connections: 16,
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(3),
            pg_acquire_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
            sqlite_group_commit: true,
            balance_cache_ttl: nodecache::FRESH_FOR,
        }
    }
}

/// Checks that `dir` exists (creating it) and that we can write into it.
pub fn ensure_writable_dir(dir: &Path) -> Result<(), OpenError> {
    let fail = |e: std::io::Error| OpenError::DataDir {
        path: dir.display().to_string(),
        reason: e.kind().to_string(),
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".kie-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Strips user info from a database URL so it can appear in an error.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Page cache of each SQLite connection, KiB (SQLite's `cache_size`, negative = KiB).
/// Each connection's cache would otherwise grow to 2 MiB as the database grows — with a
/// write connection, up to 64 readers and the fast readers, tens of MiB that look like
/// a leak in a soak (bench/soak.sh). Readers get a small one: the hot reads are cached
/// above SQLite (balances, file records, the signing key), the rest hit the OS page
/// cache. The one write connection gets 1 MiB: the pages every write transaction
/// touches (the account row, the right edge of the ledger's tables and indexes, whose
/// ids sort by time: `new_sorted_id`) must stay cached or each group-commit batch
/// reads them again. All together at most 1 MiB + 64 KiB per reader, which `kie
/// serve` reserves at start ([`sqlite_page_cache_slots`]) so that the caches filling
/// up as the database grows do not show as memory rising for minutes. (A
/// process-wide `soft_heap_limit` of 4 MiB did bound all caches together, but the
/// connections' own memory already exceeded it, so every cache, the writer's too,
/// only recycled pages: durable holds were 8.2k/s with it, BENCHMARKS.md.)
pub const SQLITE_READ_CACHE_KIB: i64 = 64;
/// See [`SQLITE_READ_CACHE_KIB`].
pub const SQLITE_WRITE_CACHE_KIB: i64 = 1024;

/// Page slots the caches of a SQLite store may hold together at their bounds, with
/// `readers` pooled readers: the writer's, each reader's, the direct readers' (one per
/// runtime worker, i.e. per core, the threads doing them: [`fastread`]) and their
/// anchor's, and two readers' worth of margin. What `kie serve` reserves up
/// front ([`sqlite_raw::reserve_page_cache`]); caches beyond it take pages from the
/// heap, as without a reserve (`kie_sqlite_page_cache_bytes{memory="heap"}`).
pub fn sqlite_page_cache_slots(readers: u32) -> usize {
    let fast_readers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pages = |kib: i64| (kib as usize * 1024).div_ceil(sqlite_raw::PAGE_SIZE);
    let readers = readers.clamp(1, 64) as usize + fast_readers.min(fastread::MAX_IDLE) + 1 + 2;
    pages(SQLITE_WRITE_CACHE_KIB) + readers * pages(SQLITE_READ_CACHE_KIB)
}

impl Db {
    /// Connects and runs migrations.
    pub async fn open(url: &DatabaseUrl, opts: &OpenOptions) -> Result<Db, OpenError> {
        let db = match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    ensure_writable_dir(parent)?;
                }
                let connect_err = |e: sqlx::Error| OpenError::Connect {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                };
                let base = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk when acknowledged (WAL + FULL fsyncs the
                    // log on every commit).
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
                    .pragma("temp_store", "memory");
                let cache = |kib: i64| (-kib).to_string();
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(
                        base.clone()
                            .pragma("cache_size", cache(SQLITE_WRITE_CACHE_KIB)),
                    )
                    .await
                    .map_err(connect_err)?;
                sqlx::migrate!("./migrations/sqlite")
                    .run(&write)
                    .await
                    .map_err(|e| OpenError::Migrate(e.to_string()))?;
                // Every read connection is opened at start and kept: each has its own
                // worker thread and caches, so a pool that grew to its busiest moment
                // during the first minutes under load showed as a memory step long
                // after start (bench/soak.sh); opened up front, memory is flat from
                // the first requests.
                let read_conns = opts.max_connections.clamp(1, 64);
                let read = SqlitePoolOptions::new()
                    .max_connections(read_conns)
                    .min_connections(read_conns)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(opts.acquire_timeout)
                    .connect_with(
                        base.read_only(true)
                            .pragma("cache_size", cache(SQLITE_READ_CACHE_KIB)),
                    )
                    .await
                    .map_err(connect_err)?;
                let group = opts
                    .sqlite_group_commit
                    .then(|| group::Group::start(write.clone()));
                let fast =
                    std::sync::Arc::new(fastread::FastReader::new(path, SQLITE_READ_CACHE_KIB));
                Db::Sqlite(SqliteDb {
                    read,
                    write,
                    group,
                    fast,
                })
            }
            DatabaseUrl::Postgres(u) => {
                let connect_err = |e: sqlx::Error| OpenError::Connect {
                    what: redact(u),
                    reason: e.to_string(),
                };
                let ms = opts.statement_timeout.as_millis().to_string();
                let co = PgConnectOptions::from_str(u)
                    .map_err(connect_err)?
                    .options([("statement_timeout", ms.as_str())]);
                // One connection first, so that an unreachable database or a refused
                // login is reported with its reason (the pool would only say that it
                // timed out).
                match tokio::time::timeout(opts.connect_timeout, PgConnection::connect_with(&co))
                    .await
                {
                    Ok(Ok(c)) => {
                        let _ = c.close().await;
                    }
                    Ok(Err(e)) => return Err(connect_err(e)),
                    Err(_) => {
                        return Err(OpenError::Connect {
                            what: redact(u),
                            reason: format!(
                                "no answer within {} s",
                                opts.connect_timeout.as_secs()
                            ),
                        })
                    }
                }
                let pool = PgPoolOptions::new()
                    .max_connections(opts.max_connections.max(2))
                    .acquire_timeout(opts.pg_acquire_timeout)
                    // a connection cut by a database restart is found dead before use
                    .test_before_acquire(true)
                    .connect_with(co)
                    .await
                    .map_err(connect_err)?;
                sqlx::migrate!("./migrations/postgres")
                    .run(&pool)
                    .await
                    .map_err(|e| OpenError::Migrate(e.to_string()))?;
                Db::Postgres(PgDb::new(pool, opts.balance_cache_ttl))
            }
        };
        Ok(db)
    }

    /// A file record by id (deleted or not). SQLite: a direct read that sees every
    /// acknowledged commit, by anybody (see [`fastread`]); PostgreSQL: a query.
    pub async fn file(&self, id: &str) -> Result<Option<records::FileRecord>, sqlx::Error> {
        if let Db::Sqlite(s) = self {
            if let Some(r) = s.fast.file(id) {
                return Ok(r);
            }
        }
        let row: Option<records::FileRow> =
            with_read!(self, |p| sqlx::query_as(records::GET_BY_ID_SQL)
                .bind(id)
                .fetch_optional(p)
                .await?);
        Ok(row.map(records::to_record))
    }

    /// A file record for the hot paths (serving bytes, issuing download links).
    /// SQLite: [`Db::file`], exact. PostgreSQL: this node's cache ([`nodecache`]): a
    /// change made through this node is seen at once, one acknowledged elsewhere (a
    /// deletion by another node or `kie admin`) within the bound (100 ms). Expiry is
    /// for the caller to check against the clock on every use.
    pub async fn file_recent(&self, id: &str) -> Result<Option<records::FileRecord>, sqlx::Error> {
        match self {
            Db::Sqlite(_) => self.file(id).await,
            Db::Postgres(pg) => PgDb::cached(&pg.records, id, self.file(id)).await,
        }
    }

    /// The newest active link-signing key, `None` while the ring is empty. SQLite: read
    /// directly, cached only until the next commit (a rotation is seen by the next link
    /// issued); PostgreSQL: this node's cache ([`nodecache`]): a rotation through this
    /// node is used by its next link at once, one made elsewhere within the bound
    /// (links signed meanwhile with the previous key verify while it stays in the ring).
    pub async fn active_signing_key(&self) -> Result<Option<records::SigningKey>, sqlx::Error> {
        let read = async {
            let row: Option<(String, String)> = with_read!(self, |p| {
                sqlx::query_as(records::ACTIVE_KEY_SQL)
                    .fetch_optional(p)
                    .await?
            });
            Ok(row.and_then(|(id, s)| records::decode_secret(id, &s)))
        };
        match self {
            Db::Sqlite(s) => match s.fast.active_signing_key() {
                Some(k) => Ok(k),
                None => read.await,
            },
            Db::Postgres(pg) => PgDb::cached(&pg.active_key, "", read).await,
        }
    }

    /// Whether the database can be unreachable while this process runs (PostgreSQL,
    /// watched by `health`); an embedded SQLite database cannot.
    pub fn can_go_down(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// An account's available balance (posted minus held), `None` for no such account.
    /// SQLite: a direct read that sees every acknowledged commit, by anybody.
    /// PostgreSQL: this node's cache (see [`nodecache`]): a change made through this node
    /// is seen at once, one acknowledged elsewhere within 100 ms.
    pub async fn available(&self, account_id: &str) -> Result<Option<i64>, sqlx::Error> {
        const SQL: &str = "SELECT balance - held FROM accounts WHERE id = $1";
        match self {
            Db::Sqlite(s) => {
                if let Some(v) = s.fast.available(account_id) {
                    return Ok(v);
                }
                sqlx::query_scalar(SQL)
                    .bind(account_id)
                    .fetch_optional(&s.read)
                    .await
            }
            Db::Postgres(pg) => {
                let read = sqlx::query_scalar(SQL)
                    .bind(account_id)
                    .fetch_optional(&pg.pool);
                PgDb::cached(&pg.balances, account_id, read).await
            }
        }
    }

    /// Where the database's commit history stands now, for polls that skip work when
    /// nothing was committed since they last found nothing ([`PollGate`]). SQLite: the
    /// WAL-index header, which every commit on the file changes, by this process or
    /// any other (`kie admin`, a second server); equal marks mean no commit in between.
    /// `None` when that is not known (PostgreSQL; the header unreadable): then every
    /// poll looks.
    pub fn commit_mark(&self) -> Option<CommitMark> {
        match self {
            Db::Sqlite(s) => s.fast.commit_mark().map(CommitMark),
            Db::Postgres(_) => None,
        }
    }

    /// SQLite's direct reader (`None` on PostgreSQL).
    pub fn fast(&self) -> Option<&fastread::FastReader> {
        match self {
            Db::Sqlite(s) => Some(&s.fast),
            Db::Postgres(_) => None,
        }
    }

    /// A trivial round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_read!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(s) => {
                if let Some(g) = &s.group {
                    g.flush().await;
                }
                s.read.close().await;
                s.write.close().await;
            }
            Db::Postgres(pg) => pg.pool.close().await,
        }
    }
}

/// Milliseconds since the Unix epoch.
/// See [`Db::commit_mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitMark(sqlite_raw::Header);

/// Skips the polls of a background loop (claims, the outbox, settings) that would find
/// what the last one found — nothing new — because nothing was committed since, by
/// any process (SQLite only; on PostgreSQL every poll runs). A poll whose answer also
/// depends on the clock says until when an idle answer holds ([`PollGate::idle`]).
///
/// The mark is read *before* the poll: a commit while the poll runs changes it, so the
/// next poll runs.
#[derive(Debug, Default)]
pub struct PollGate {
    /// The mark the last idle poll ran under, and until when (epoch ms) its answer
    /// holds without a commit (`i64::MAX`: for as long as nothing is committed).
    idle: Option<(CommitMark, i64)>,
}

/// A poll let through by [`PollGate::open`].
#[must_use = "report the poll's outcome with PollGate::idle or PollGate::busy"]
#[derive(Debug)]
pub struct PollTicket(Option<CommitMark>);

impl PollGate {
    /// `None`: skip this poll (nothing committed since the last idle poll, within
    /// its time). Otherwise the ticket to report the poll's outcome with.
    pub fn open(&self, db: &Db, now_ms: i64) -> Option<PollTicket> {
        let mark = db.commit_mark();
        match (mark, self.idle) {
            (Some(m), Some((idle, until))) if m == idle && now_ms < until => None,
            _ => Some(PollTicket(mark)),
        }
    }

    /// The poll found nothing to do, and would find nothing before epoch ms `until`
    /// (`i64::MAX`: ever) unless something is committed.
    pub fn idle(&mut self, ticket: PollTicket, until: i64) {
        self.idle = ticket.0.map(|m| (m, until));
    }

    /// Whether an idle answer can skip later polls at all (SQLite): only then is it
    /// worth asking until when it holds.
    pub fn can_skip(ticket: &PollTicket) -> bool {
        ticket.0.is_some()
    }

    /// The poll found work (or failed): the next one runs.
    pub fn busy(&mut self, _ticket: PollTicket) {
        self.idle = None;
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new random identifier such as `acc_3kTq…` (16 base62 characters, ~95 bits).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", kie_wire::apikey::random_base62(16))
}

/// Like [`new_id`] (same shape: `prefix_` + 16 base62 characters), but the first 7
/// characters are the time in ms since the epoch (base62 in ASCII order, so ids sort
/// by creation until the year 2081) and only the last 9 are random (53 bits). For the
/// rows written many at a time (ledger entries, holds, their idempotency keys): rows
/// inserted together land next to each other in their unique indexes, so a
/// group-commit batch dirties a page or two per index instead of a page per row
/// (BENCHMARKS.md, "durable holds"). Not for ids that must be unguessable on their own.
pub fn new_sorted_id(prefix: &str) -> String {
    let time = kie_wire::apikey::base62_fixed::<7>(now_ms().max(0) as u64);
    let time = std::str::from_utf8(&time).expect("ascii");
    format!("{prefix}_{time}{}", kie_wire::apikey::random_base62(9))
}

/// True when the error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A connection inside an open write transaction, on either backend: lets code outside
/// a module add its statements to that module's transaction (see
/// `ledger::hold_with`), so related writes commit or roll back together.
pub enum TxConn<'c> {
    Sqlite(&'c mut sqlx::SqliteConnection),
    Postgres(&'c mut sqlx::PgConnection),
}

impl<'c> From<&'c mut sqlx::SqliteConnection> for TxConn<'c> {
    fn from(c: &'c mut sqlx::SqliteConnection) -> Self {
        TxConn::Sqlite(c)
    }
}

impl<'c> From<&'c mut sqlx::PgConnection> for TxConn<'c> {
    fn from(c: &'c mut sqlx::PgConnection) -> Self {
        TxConn::Postgres(c)
    }
}

/// Runs `$body` with `$c` bound to the backend connection of a [`TxConn`]
/// (`&mut SqliteConnection` or `&mut PgConnection`).
#[macro_export]
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::TxConn::Sqlite(inner) => {
                let $c: &mut sqlx::SqliteConnection = &mut **inner;
                $body
            }
            $crate::store::TxConn::Postgres(inner) => {
                let $c: &mut sqlx::PgConnection = &mut **inner;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sorted ids have the shape of the others and sort by the millisecond they were
    /// made in (the clock is polled until it moves, never slept on).
    #[test]
    fn sorted_ids_have_the_usual_shape_and_sort_by_time() {
        let shape = |id: &str| {
            let (p, rest) = id.split_once('_').unwrap();
            p == "ent" && rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        let t0 = now_ms();
        let a = new_sorted_id("ent");
        assert!(shape(&a) && shape(&new_id("ent")), "{a}");
        while now_ms() <= t0 + 1 {
            std::hint::spin_loop();
        }
        let b = new_sorted_id("ent");
        assert!(a < b, "{a} !< {b}");
        // the first 7 characters are the time in ms, base62
        let decode = |id: &str| {
            id[4..11].bytes().fold(0i64, |n, c| {
                let d = match c {
                    b'0'..=b'9' => c - b'0',
                    b'A'..=b'Z' => c - b'A' + 10,
                    _ => c - b'a' + 36,
                };
                n * 62 + i64::from(d)
            })
        };
        assert!((t0..=now_ms()).contains(&decode(&a)), "{a}");
        assert!(decode(&b) > t0 + 1, "{b}");
    }

    /// A poll that found nothing is skipped until something is committed — here by
    /// another connection to the file, as `kie admin` or a second server would — or
    /// until the time its idle answer holds has passed; a busy poll never skips.
    #[tokio::test]
    async fn poll_gate_skips_until_a_commit_elsewhere_or_its_time() {
        let dir = std::env::temp_dir().join(format!(
            "kie-pollgate-{}-{}",
            std::process::id(),
            kie_wire::apikey::random_base62(8)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.db");
        let db = Db::open(&DatabaseUrl::Sqlite(path.clone()), &OpenOptions::default())
            .await
            .unwrap();
        assert!(db.commit_mark().is_some(), "SQLite in WAL mode has a mark");
        let mut gate = PollGate::default();
        let t = gate.open(&db, 0).expect("the first poll runs");
        gate.idle(t, i64::MAX);
        assert!(gate.open(&db, 1).is_none(), "nothing committed: skipped");
        assert!(gate.open(&db, i64::MAX - 1).is_none(), "and no time limit");

        let other = rusqlite::Connection::open(&path).unwrap();
        other
            .execute_batch("CREATE TABLE poll_gate_probe (x INTEGER)")
            .unwrap();
        let t = gate
            .open(&db, 2)
            .expect("a commit by another connection opens it");
        gate.idle(t, 100);
        assert!(gate.open(&db, 99).is_none(), "idle until 100");
        let t = gate
            .open(&db, 100)
            .expect("at 100 the idle answer no longer holds");
        gate.busy(t);
        assert!(
            gate.open(&db, 101).is_some(),
            "after a busy poll the next runs"
        );

        other
            .execute("INSERT INTO poll_gate_probe (x) VALUES (1)", [])
            .unwrap();
        let t = gate.open(&db, 102).unwrap();
        gate.idle(t, i64::MAX);
        other
            .execute("INSERT INTO poll_gate_probe (x) VALUES (2)", [])
            .unwrap();
        assert!(
            gate.open(&db, 103).is_some(),
            "a row written elsewhere opens it"
        );
        drop(other);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
