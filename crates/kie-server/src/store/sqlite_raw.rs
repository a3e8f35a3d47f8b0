//! Every `unsafe` block of this crate, and why each is sound: where SQLite is reached
//! below the two drivers' safe APIs.
//!
//! * [`with_raw`]: sqlx's SQLite connection handle borrowed as a rusqlite connection,
//!   so the group committer (`store::group`) and the ledger's SQLite statements
//!   (`ledger::sqlite_hold`, `ledger::sqlite_resolve`) run synchronously inside a sqlx
//!   transaction or savepoint.
//! * [`WalWatch`]: the WAL-index header read from SQLite's own mapping of the `-shm`
//!   file, the change detection behind the direct reads' caches (`store::fastread`,
//!   whose module documentation explains the scheme and why no descriptor of our own
//!   is opened).
//! * [`reserve_page_cache`]: SQLite's page caches given one buffer, allocated and
//!   written at start (`SQLITE_CONFIG_PAGECACHE`), and [`page_cache_usage`], how much
//!   of it and of the heap they use (`sqlite3_status64`).
//!
//! Tests: `store::fastread`'s (a commit by this process, by another connection and
//! by another process each end the cache), `store::group`'s and `ledger`'s (every
//! write path through the borrowed handle, under concurrency).

use rusqlite::Connection;
use sqlx::SqliteConnection;

/// The WAL-index header (both copies must agree), compared as words.
pub type Header = [u64; 6];

/// Runs `f` on the SQLite connection behind sqlx's `conn`, as a borrowed rusqlite
/// connection: how the group committer and the ledger's SQLite statements
/// (`ledger::sqlite_hold`, `ledger::sqlite_resolve`) run synchronously inside a sqlx
/// transaction or savepoint. The only place the two libraries share a handle.
pub async fn with_raw<R>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&rusqlite::Connection) -> R,
) -> Result<R, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is locked: sqlx's worker makes no call on this connection
    // until `handle` drops, and `c` (with every statement it prepared) is dropped
    // before that. rusqlite links the same libsqlite3-sys as sqlx, so the handle is of
    // the same SQLite library. A borrowed handle is never closed by rusqlite, and
    // without its `hooks` feature dropping it touches nothing else.
    let c = unsafe { rusqlite::Connection::from_handle(handle.as_raw_handle().as_ptr()) }
        .map_err(db_error)?;
    let r = f(&c);
    drop(c);
    drop(handle);
    Ok(r)
}

/// The WAL-index header of the database's `-shm` file, as mapped by SQLite for the
/// anchor connection (see the module documentation: no descriptor of our own).
pub struct WalWatch {
    /// Start of the first wal-index region in SQLite's mapping; only read.
    ptr: *const u8,
    /// The connection whose mapping `ptr` points into: SQLite keeps the mapping (and
    /// the `-shm` file, with this process's locks on it) while a connection of this
    /// process is attached; it is only kept open, never used after `open`.
    _anchor: Connection,
}

// SAFETY: the memory is only read, with volatile loads; the pointer is never handed
// out. The anchor connection is only kept open (and closed on drop), never used after
// `open`.
unsafe impl Send for WalWatch {}
unsafe impl Sync for WalWatch {}

impl WalWatch {
    /// Size of a wal-index region (WALINDEX_PGSZ): what SQLite's WAL maps per call.
    const REGION: i32 = 32 * 1024;
    /// `iVersion` of the WAL-index header (WALINDEX_MAX_VERSION).
    const VERSION: u32 = 3_007_000;

    /// Region 0 of the wal-index of `anchor`'s database as SQLite mapped it (the VFS's
    /// `xShmMap` without extending), or `None`.
    fn shm_region0(anchor: &Connection) -> Option<*const u8> {
        use rusqlite::ffi;
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: `anchor` is open and used by this thread only; FILE_POINTER writes
        // the main database's `sqlite3_file` (owned by the connection, valid while it
        // is open) into `file`.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                anchor.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            )
        };
        if rc != ffi::SQLITE_OK || file.is_null() {
            return None;
        }
        // SAFETY: `file` is the connection's open database file; its methods table
        // is static in the VFS. xShmMap (I/O methods version 2+) with bExtend = 0
        // only returns the region when the file already has it, mapped by SQLite
        // with SQLite's own descriptor, under its shm mutex (safe with other threads'
        // connections); the mapping stays until this process's last connection to
        // the database detaches, and `anchor` stays attached.
        unsafe {
            let methods = (*file).pMethods;
            if methods.is_null() || (*methods).iVersion < 2 {
                return None;
            }
            let map = (*methods).xShmMap?;
            let mut region: *mut std::ffi::c_void = std::ptr::null_mut();
            let rc = map(file, 0, Self::REGION, 0, &mut region);
            // READONLY: mapped, but read-only to this process (fine for reading)
            ((rc == ffi::SQLITE_OK || rc == ffi::SQLITE_READONLY) && !region.is_null())
                .then_some(region as *const u8)
        }
    }

    /// Watches the wal-index header of a WAL database, or `None` (not WAL, not
    /// initialised yet, no shared-memory wal-index …: the reader then reads every time).
    pub fn open(anchor: Connection) -> Option<WalWatch> {
        // A read transaction makes sure the -shm file exists and is initialised.
        let mode: String = anchor
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        anchor
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()?;
        let ptr = Self::shm_region0(&anchor)?;
        let w = WalWatch {
            ptr,
            _anchor: anchor,
        };
        w.header().map(|_| w)
    }

    /// The current header, when its two copies agree and it is initialised.
    pub fn header(&self) -> Option<Header> {
        use std::sync::atomic::{fence, Ordering};
        // SAFETY: both 48-byte copies lie inside the 32 KiB region; volatile
        // loads because another process writes them (SQLite's writer stores copy 2,
        // then copy 1, with barriers; a reader compares them, as done here).
        let (a, b) = unsafe {
            let words = self.ptr as *const u64;
            let a: Header = std::array::from_fn(|i| std::ptr::read_volatile(words.add(i)));
            fence(Ordering::SeqCst);
            let b: Header = std::array::from_fn(|i| std::ptr::read_volatile(words.add(6 + i)));
            (a, b)
        };
        let version = (a[0] & 0xffff_ffff) as u32;
        let is_init = (a[1] >> 32) as u8; // byte 12 (little-endian words)
        let native = cfg!(target_endian = "little");
        (native && a == b && version == Self::VERSION && is_init == 1).then_some(a)
    }
}

/// Page size SQLite creates databases with (`SQLITE_DEFAULT_PAGE_SIZE`); the store
/// never sets another, so every page of a cache fits a slot of [`reserve_page_cache`].
pub const PAGE_SIZE: usize = 4096;

/// What [`reserve_page_cache`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCacheReserve {
    /// `slots` slots of `slot_bytes` each (a page and SQLite's header for it), in one
    /// buffer allocated and written now.
    Reserved { slots: usize, slot_bytes: usize },
    /// SQLite refused (it was already in use in this process, or `slots` was 0 or too
    /// large): its caches take their pages from the heap as they grow, as without.
    Refused,
}

/// Gives the page caches of every SQLite connection of the process one buffer of
/// `slots` page slots, allocated **and written** now (`SQLITE_CONFIG_PAGECACHE`).
///
/// Why: each connection's cache takes a page from the heap the first time it holds
/// one, so the caches' memory grows for as long as the database grows into them —
/// minutes under writes, hours under a trickle — until every cache reaches its bound
/// (`store::SQLITE_WRITE_CACHE_KIB`, `SQLITE_READ_CACHE_KIB`). Under a steady load
/// that showed as resident memory rising for the first minutes (BENCHMARKS.md, "Soak").
/// With the buffer written up front, those pages are resident from the start and a
/// cache filling up only takes slots already counted; a cache wanting more than the
/// buffer has left takes pages from the heap, as before ([`page_cache_usage`] tells).
///
/// # Safety
/// `sqlite3_config` is not thread-safe: no other thread may call SQLite while this
/// runs. Call it first thing, before the runtime and any connection exist.
pub unsafe fn reserve_page_cache(slots: usize) -> PageCacheReserve {
    use rusqlite::ffi;
    use std::ffi::c_int;
    let Ok(n) = c_int::try_from(slots) else {
        return PageCacheReserve::Refused;
    };
    if n == 0 {
        return PageCacheReserve::Refused;
    }
    let mut header: c_int = 0;
    // SAFETY: PCACHE_HDRSZ writes one int through the pointer (allowed at any time).
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE_HDRSZ, &raw mut header) };
    if rc != ffi::SQLITE_OK || header < 0 {
        return PageCacheReserve::Refused;
    }
    let slot_bytes = (PAGE_SIZE + header as usize).next_multiple_of(8);
    // u64 words: 8-byte aligned, as SQLite requires. Written (not zero-allocated,
    // which would leave the pages untouched until SQLite first uses each slot), so
    // the buffer is resident from now on.
    let mut buf = vec![u64::MAX; slot_bytes / 8 * slots].into_boxed_slice();
    // SAFETY: the caller guarantees no other thread uses SQLite; the buffer holds
    // `n` slots of `slot_bytes` bytes, 8-byte aligned, and on success it is leaked
    // below, so it stays valid (and unused by Rust) for the rest of the process.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PAGECACHE,
            buf.as_mut_ptr().cast::<std::ffi::c_void>(),
            slot_bytes as c_int,
            n,
        )
    };
    if rc != ffi::SQLITE_OK {
        return PageCacheReserve::Refused;
    }
    Box::leak(buf);
    let _ = RESERVED.set((slots, slot_bytes));
    PageCacheReserve::Reserved { slots, slot_bytes }
}

/// The buffer [`reserve_page_cache`] gave SQLite, if any: (slots, bytes per slot).
static RESERVED: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();

/// SQLite's page-cache memory now, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCacheUsage {
    /// Size of the buffer of [`reserve_page_cache`] (0 without one).
    pub reserved: i64,
    /// Bytes of it in use.
    pub reserved_used: i64,
    /// Bytes the caches took from the heap (beyond the buffer, or without one).
    pub heap: i64,
}

/// How much of the reserved buffer and of the heap SQLite's page caches use now.
pub fn page_cache_usage() -> PageCacheUsage {
    use rusqlite::ffi;
    let status = |op| {
        let (mut now, mut high) = (0i64, 0i64);
        // SAFETY: sqlite3_status64 is thread-safe and writes the two integers.
        let rc = unsafe { ffi::sqlite3_status64(op, &mut now, &mut high, 0) };
        if rc == ffi::SQLITE_OK {
            now
        } else {
            0
        }
    };
    let (slots, slot_bytes) = RESERVED.get().copied().unwrap_or((0, 0));
    PageCacheUsage {
        reserved: (slots * slot_bytes) as i64,
        reserved_used: status(ffi::SQLITE_STATUS_PAGECACHE_USED) * slot_bytes as i64,
        heap: status(ffi::SQLITE_STATUS_PAGECACHE_OVERFLOW),
    }
}

/// A rusqlite error, reported the way sqlx reports SQLite's errors (same code string,
/// same [`sqlx::error::ErrorKind`]), so that e.g. [`super::is_unique_violation`] sees it.
#[derive(Debug)]
pub struct SqliteError {
    message: String,
    /// SQLite's extended result code, when the error came from SQLite.
    code: Option<i32>,
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteError {}

impl sqlx::error::DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.map(|c| c.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        use sqlx::error::ErrorKind;
        match self.code {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                ErrorKind::UniqueViolation
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// A rusqlite error as a [`sqlx::Error`].
pub fn db_error(e: rusqlite::Error) -> sqlx::Error {
    let code = e.sqlite_error().map(|f| f.extended_code);
    sqlx::Error::Database(Box::new(SqliteError {
        message: e.to_string(),
        code,
    }))
}
