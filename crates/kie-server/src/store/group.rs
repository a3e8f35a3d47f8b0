//! Group commit for SQLite writes: many write transactions, one `COMMIT` (one fsync).
//!
//! SQLite has one writer, and with `synchronous = FULL` every commit waits for an
//! fsync of the WAL; committing each write transaction on its own caps the write rate
//! at the disk's fsync rate. Here concurrent writers share one batch transaction:
//!
//! * A writer locks the shared write connection (a FIFO mutex), opens the batch
//!   transaction if none is open (`BEGIN IMMEDIATE`), runs its statements inside its
//!   own `SAVEPOINT`, and `RELEASE`s it on success. An error (insufficient credits, a
//!   constraint, an early `return`) or a cancelled caller leaves the savepoint open,
//!   and the next user of the connection rolls back to it: only that writer's
//!   statements are undone, the rest of the batch is untouched.
//! * A committer task, woken by every finished writer, queues for the same mutex and
//!   commits whatever the batch holds when its turn comes: all writers that queued
//!   before it are in the batch. While it fsyncs, new writers queue up behind it and
//!   form the next batch, so batches grow with the load and stay at one writer when
//!   the load is light.
//! * A writer is answered only after the batch's `COMMIT` returned (durability is
//!   unchanged: nothing is acknowledged before it is on disk). If the commit fails,
//!   every writer of the batch gets the error and nothing of the batch is kept.
//!
//! Writers of one batch see each other's uncommitted rows (they run on one
//! connection, in order) — the same as if they had committed one after another,
//! because the batch commits or fails as a whole before any of them is answered.
//! Readers on the read pool see a batch only once it has committed.

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use std::sync::{Arc, Weak};
use tokio::sync::{watch, Mutex, Notify, OwnedMutexGuard};

/// Most writers in one batch; the next one commits the batch first.
const MAX_BATCH: usize = 1024;

type Outcome = Option<Result<(), Arc<str>>>;

/// The shared write connection and its open batch.
pub struct Group {
    pool: SqlitePool,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Group")
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Lets the committer see that the group is gone and end.
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct State {
    /// The write connection while a batch transaction is open on it.
    conn: Option<PoolConnection<Sqlite>>,
    /// Writers in the open batch and where they learn its outcome.
    batch: Option<Batch>,
    /// A writer's savepoint was left open (error or cancellation): roll back to it.
    savepoint_open: bool,
    /// A statement of this protocol was interrupted (cancelled or failed): the
    /// transaction's state is unknown, so the batch is abandoned.
    dirty: bool,
}

struct Batch {
    writers: usize,
    done: watch::Sender<Outcome>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            writers: 0,
            done: watch::channel(None).0,
        }
    }
}

fn batch_error(msg: Arc<str>) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(format!("group commit failed: {msg}")))
}

/// Runs one control statement (prepared once and cached by sqlx).
async fn exec(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *conn).await.map(|_| ())
}

impl Group {
    /// Starts the committer task (on the current tokio runtime).
    pub fn start(pool: SqlitePool) -> Arc<Group> {
        let g = Arc::new(Group {
            pool,
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(Notify::new()),
        });
        let weak: Weak<Group> = Arc::downgrade(&g);
        let wake = g.wake.clone();
        let state = g.state.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                if weak.strong_count() == 0 {
                    break;
                }
                let mut st = state.clone().lock_owned().await;
                commit(&mut st).await;
            }
            // Last owner gone: finish whatever is open.
            let mut st = state.lock_owned().await;
            commit(&mut st).await;
        });
        g
    }

    /// Joins the current batch (opening one if needed) inside a fresh savepoint.
    pub async fn enter(self: &Arc<Self>) -> Result<Op, sqlx::Error> {
        let mut st = self.state.clone().lock_owned().await;
        if st.dirty || st.savepoint_open {
            settle(&mut st).await;
        }
        if st.batch.as_ref().is_some_and(|b| b.writers >= MAX_BATCH) {
            commit(&mut st).await;
        }
        if st.conn.is_none() {
            let conn = self.pool.acquire().await?;
            // Kept in the state before BEGIN, so an interrupted BEGIN is rolled back
            // by the next user instead of leaking an open transaction to the pool.
            st.dirty = true;
            let conn = st.conn.insert(conn);
            if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
                abandon(&mut st, e.to_string().into()).await;
                return Err(e);
            }
            st.dirty = false;
            st.batch = Some(Batch::new());
        }
        st.dirty = true;
        let conn = st.conn.as_mut().expect("open batch");
        if let Err(e) = exec(conn, "SAVEPOINT w").await {
            // Leave `dirty`: the next user abandons this batch.
            self.wake.notify_one();
            return Err(e);
        }
        st.dirty = false;
        st.savepoint_open = true;
        Ok(Op {
            group: self.clone(),
            st: Some(st),
        })
    }

    /// Commits the open batch now (shutdown).
    pub async fn flush(&self) {
        let mut st = self.state.clone().lock_owned().await;
        commit(&mut st).await;
    }
}

/// Rolls back an abandoned savepoint, or the whole batch when its state is unknown.
async fn settle(st: &mut State) {
    if !st.dirty && st.savepoint_open {
        if let Some(conn) = st.conn.as_mut() {
            st.dirty = true;
            let undone = match exec(conn, "ROLLBACK TO w").await {
                Ok(()) => exec(conn, "RELEASE w").await,
                Err(e) => Err(e),
            };
            if undone.is_ok() {
                st.dirty = false;
                st.savepoint_open = false;
                return;
            }
        }
    }
    abandon(st, "the batch transaction was interrupted".into()).await;
}

/// Rolls back the batch and fails its writers.
async fn abandon(st: &mut State, why: Arc<str>) {
    if let Some(mut conn) = st.conn.take() {
        // Fails harmlessly when SQLite already rolled back.
        let _ = exec(&mut conn, "ROLLBACK").await;
    }
    if let Some(b) = st.batch.take() {
        b.done.send_replace(Some(Err(why)));
    }
    st.dirty = false;
    st.savepoint_open = false;
}

/// Commits the open batch (if any) and answers its writers.
async fn commit(st: &mut State) {
    if st.dirty || st.savepoint_open {
        settle(st).await;
    }
    let Some(conn) = st.conn.as_mut() else {
        return;
    };
    st.dirty = true;
    match exec(conn, "COMMIT").await {
        Ok(()) => {
            st.dirty = false;
            st.conn = None;
            if let Some(b) = st.batch.take() {
                b.done.send_replace(Some(Ok(())));
            }
        }
        Err(e) => abandon(st, e.to_string().into()).await,
    }
}

/// One writer's place in a batch: its savepoint on the shared connection.
pub struct Op {
    group: Arc<Group>,
    st: Option<OwnedMutexGuard<State>>,
}

impl std::ops::Deref for Op {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.st
            .as_ref()
            .and_then(|s| s.conn.as_ref())
            .expect("open batch")
    }
}

/// The write connection, inside this writer's savepoint.
impl std::ops::DerefMut for Op {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.st
            .as_mut()
            .and_then(|s| s.conn.as_mut())
            .expect("open batch")
    }
}

impl Op {
    /// Keeps this writer's statements in the batch and waits until the batch has
    /// committed.
    pub async fn finish(mut self) -> Result<(), sqlx::Error> {
        let mut st = self.st.take().expect("not finished twice");
        st.dirty = true;
        let conn = st.conn.as_mut().expect("open batch");
        if let Err(e) = exec(conn, "RELEASE w").await {
            drop(st);
            self.group.wake.notify_one();
            return Err(e);
        }
        st.dirty = false;
        st.savepoint_open = false;
        let batch = st.batch.as_mut().expect("open batch");
        batch.writers += 1;
        let mut done = batch.done.subscribe();
        drop(st);
        self.group.wake.notify_one();
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| batch_error("the committer stopped".into()))?
            .clone();
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(msg)) => Err(batch_error(msg)),
            None => unreachable!("waited for an outcome"),
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.st.take().is_some() {
            // Returned early or cancelled: the savepoint is still open. Whoever uses
            // the connection next rolls back to it; wake the committer in case that
            // is nobody else.
            self.group.wake.notify_one();
        }
    }
}
