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
//! Nothing is cached: every call is a fresh read transaction, so it sees every commit
//! acknowledged before it started (same guarantee as the sqlx read pool). On any error
//! (busy, schema, I/O) the caller gets `None` and uses the sqlx path, which waits and
//! reports errors properly. The busy timeout is zero so a read never sleeps on the
//! runtime thread.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Idle connections kept; more may be open briefly under a burst.
const MAX_IDLE: usize = 16;

pub struct FastReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for FastReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastReader")
            .field("path", &self.path)
            .finish()
    }
}

impl FastReader {
    /// A reader for the SQLite database at `path` (nothing is opened yet).
    pub fn new(path: &Path) -> FastReader {
        FastReader {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(std::time::Duration::ZERO)?;
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

    /// `balance - held` of an account (`Some(None)`: no such account); the same query
    /// as `ledger::available`.
    pub fn available(&self, account_id: &str) -> Option<Option<i64>> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT balance - held FROM accounts WHERE id = ?1")?
                .query_row([account_id], |r| r.get(0))
                .optional()
        })
    }

    /// A file record by id (`Some(None)`: no such row); the same query as `files::get`.
    pub fn file(&self, id: &str) -> Option<Option<crate::files::FileRecord>> {
        self.with_conn(|c| {
            c.prepare_cached(crate::files::GET_BY_ID_SQL)?
                .query_row([id], |r| {
                    Ok(crate::files::FileRecord {
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

    /// `(id, secret)` of the newest active link signing key; the same query as
    /// `links::active_key`.
    pub fn active_signing_key(&self) -> Option<Option<(String, String)>> {
        self.with_conn(|c| {
            c.prepare_cached(crate::files::links::ACTIVE_KEY_SQL)?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
    }
}
