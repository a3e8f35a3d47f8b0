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
//!
//! Writers whose statements are known in advance (a plain ledger hold or resolution;
//! a hold through an API key runs its cap check, `ledger::KEY_USE`, in the same
//! closure, so a refusal rolls back only that writer's savepoint)
//! use [`Group::run`] instead: they hand a closure to the committer, which runs every
//! queued closure in one go on the write connection's raw handle (rusqlite, on the
//! committer's thread), each inside its own savepoint, and then commits the batch.
//! Through `enter` every statement is a round trip to sqlx's worker thread (two thread
//! wake-ups); through `run` a whole batch of writers costs one round trip to lock the
//! handle, plus `BEGIN` and `COMMIT`.

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use tokio::sync::{oneshot, watch, Mutex, Notify, OwnedMutexGuard};

/// Most writers in one batch; the next one commits the batch first.
const MAX_BATCH: usize = 1024;

/// Most queued writers run under one lock of the raw handle (bounds how long the
/// committer keeps its runtime thread between two awaits).
const MAX_RUN: usize = 128;

type Outcome = Option<Result<(), Arc<str>>>;

/// The shared write connection and its open batch.
pub struct Group {
    pool: SqlitePool,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    /// Writers queued by [`Group::run`], run by the committer.
    jobs: Arc<Jobs>,
}

type Jobs = std::sync::Mutex<VecDeque<Box<dyn Work>>>;

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
            pool: pool.clone(),
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(Notify::new()),
            jobs: Arc::default(),
        });
        let weak: Weak<Group> = Arc::downgrade(&g);
        let wake = g.wake.clone();
        let state = g.state.clone();
        let jobs = g.jobs.clone();
        tokio::spawn(async move {
            loop {
                wake.notified().await;
                if weak.strong_count() == 0 {
                    break;
                }
                let mut st = state.clone().lock_owned().await;
                if run_jobs(&pool, &jobs, &mut st).await {
                    // More are queued than one batch takes.
                    wake.notify_one();
                }
                commit(&mut st).await;
            }
            // Last owner gone: finish whatever is open.
            let mut st = state.lock_owned().await;
            while run_jobs(&pool, &jobs, &mut st).await {
                commit(&mut st).await;
            }
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
        open_batch(&self.pool, &mut st).await?;
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

    /// Runs `f` in the current batch, inside its own savepoint, and returns its result
    /// once the batch has committed.
    ///
    /// `f` runs synchronously on the write connection (rusqlite on the raw handle of
    /// sqlx's connection; no other statement runs meanwhile), on the committer's
    /// thread, together with the other queued writers: keep it to a few statements
    /// that wait for nothing. An `Err` from `f` rolls back to its savepoint (only its
    /// own statements are undone) and is returned at once; an `Ok` is kept and
    /// returned after the `COMMIT` that contains it (or the batch's error, and then
    /// nothing of the batch is kept). A caller that stops waiting before `f` started
    /// (cancelled) is skipped: `f` never runs.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            f: Some(f),
            out: None,
            tx,
        };
        self.jobs
            .lock()
            .expect("group commit queue")
            .push_back(Box::new(job));
        self.wake.notify_one();
        let (out, batch) = rx
            .await
            .map_err(|_| batch_error("the committer stopped".into()))??;
        if let Some(mut done) = batch {
            let outcome = done
                .wait_for(Option::is_some)
                .await
                .map_err(|_| batch_error("the committer stopped".into()))?
                .clone();
            if let Some(Err(msg)) = outcome {
                return Err(batch_error(msg).into());
            }
        }
        out
    }
}

/// A queued writer of [`Group::run`], type-erased.
trait Work: Send {
    /// False when its caller stopped waiting.
    fn wanted(&self) -> bool;
    /// Runs the writer's statements; true when they are to be kept.
    fn exec(&mut self, c: &rusqlite::Connection) -> bool;
    /// Tells the caller what became of it: `Some(batch)` when its statements are in
    /// the batch (wait for its outcome), `None` when they were undone.
    fn answer(self: Box<Self>, to: Result<Option<watch::Receiver<Outcome>>, sqlx::Error>);
}

type Answer<T, E> = Result<(Result<T, E>, Option<watch::Receiver<Outcome>>), sqlx::Error>;

struct Job<F, T, E> {
    f: Option<F>,
    out: Option<Result<T, E>>,
    tx: oneshot::Sender<Answer<T, E>>,
}

impl<F, T, E> Work for Job<F, T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    fn wanted(&self) -> bool {
        !self.tx.is_closed()
    }

    fn exec(&mut self, c: &rusqlite::Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        // A panic is this writer's failure, not the committer's (which would strand
        // every other writer): its savepoint is rolled back like after an error.
        let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(c))) {
            Ok(out) => out,
            Err(_) => Err(batch_error("a writer panicked".into()).into()),
        };
        let keep = out.is_ok();
        self.out = Some(out);
        keep
    }

    fn answer(self: Box<Self>, to: Result<Option<watch::Receiver<Outcome>>, sqlx::Error>) {
        let Job { out, tx, .. } = *self;
        let answer = match (to, out) {
            (Ok(batch), Some(out)) => Ok((out, batch)),
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(batch_error("the writer did not run".into())),
        };
        let _ = tx.send(answer);
    }
}

/// Opens the batch transaction if none is open.
async fn open_batch(pool: &SqlitePool, st: &mut State) -> Result<(), sqlx::Error> {
    if st.conn.is_some() {
        return Ok(());
    }
    let conn = pool.acquire().await?;
    // Kept in the state before BEGIN, so an interrupted BEGIN is rolled back by the
    // next user instead of leaking an open transaction to the pool.
    st.dirty = true;
    let conn = st.conn.insert(conn);
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        abandon(st, e.to_string().into()).await;
        return Err(e);
    }
    st.dirty = false;
    st.batch = Some(Batch::new());
    Ok(())
}

/// Runs queued writers of [`Group::run`] in the open batch (opening one), up to what
/// one batch takes. True when writers are left in the queue.
async fn run_jobs(pool: &SqlitePool, jobs: &Jobs, st: &mut State) -> bool {
    loop {
        let mut run: Vec<Box<dyn Work>> = {
            let mut q = jobs.lock().expect("group commit queue");
            // Callers that stopped waiting are dropped here, before anything runs.
            q.retain(|j| j.wanted());
            if q.is_empty() {
                return false;
            }
            let room = MAX_BATCH - st.batch.as_ref().map_or(0, |b| b.writers);
            if room == 0 {
                return true;
            }
            let n = q.len().min(room).min(MAX_RUN);
            q.drain(..n).collect()
        };
        if st.dirty || st.savepoint_open {
            settle(st).await;
        }
        if let Err(e) = open_batch(pool, st).await {
            let msg: Arc<str> = e.to_string().into();
            for j in run {
                j.answer(Err(batch_error(msg.clone())));
            }
            continue;
        }
        // From here until the handle is unlocked again the transaction's state is
        // unknown to the next user if we are interrupted.
        st.dirty = true;
        let broken = {
            let State { conn, batch, .. } = &mut *st;
            let conn = conn.as_mut().expect("open batch");
            let batch = batch.as_mut().expect("open batch");
            match super::sqlite_raw::with_raw(conn, |c| run_locked(c, &mut run, batch)).await {
                Ok(broken) => broken,
                Err(e) => Some(Arc::from(e.to_string())),
            }
        };
        match broken {
            None => st.dirty = false,
            Some(msg) => {
                // Writers not yet answered fail; the answered ones learn the batch's
                // fate from it: it is abandoned now.
                for j in run {
                    j.answer(Err(batch_error(msg.clone())));
                }
                abandon(st, msg).await;
            }
        }
    }
}

/// Runs `run`'s writers in order, each inside a savepoint, and answers them. On a
/// failed savepoint statement the transaction's state is unknown: returns why, with
/// the writers not yet answered left in `run`.
fn run_locked(
    c: &rusqlite::Connection,
    run: &mut Vec<Box<dyn Work>>,
    batch: &mut Batch,
) -> Option<Arc<str>> {
    let step = |sql: &str| c.prepare_cached(sql).and_then(|mut s| s.execute([]));
    let mut left = std::mem::take(run).into_iter();
    while let Some(mut j) = left.next() {
        if !j.wanted() {
            continue;
        }
        if let Err(e) = step("SAVEPOINT w") {
            run.push(j);
            run.extend(left);
            return Some(e.to_string().into());
        }
        let keep = j.exec(c);
        let end = if keep {
            step("RELEASE w")
        } else {
            step("ROLLBACK TO w").and_then(|_| step("RELEASE w"))
        };
        let end = match end {
            // Some errors (disk full, I/O) make SQLite roll back the whole transaction.
            Ok(_) if c.is_autocommit() => Err("the batch transaction was rolled back".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(Arc::from(e.to_string())),
        };
        if let Err(msg) = end {
            run.push(j);
            run.extend(left);
            return Some(msg);
        }
        if keep {
            batch.writers += 1;
            j.answer(Ok(Some(batch.done.subscribe())));
        } else {
            j.answer(Ok(None));
        }
    }
    None
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

#[cfg(test)]
mod tests {
    use super::super::sqlite_raw::db_error;
    use super::*;
    use crate::config::DatabaseUrl;
    use crate::store::{Db, OpenOptions};
    use futures::poll;
    use std::path::PathBuf;

    /// A fresh SQLite store with group commit and a table `t(k PRIMARY KEY)`.
    pub(crate) async fn open() -> (Db, Arc<Group>, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "kie-group-{}-{}",
            std::process::id(),
            kie_wire::apikey::random_base62(8)
        ));
        let db = Db::open(
            &DatabaseUrl::Sqlite(dir.join("t.db")),
            &OpenOptions::default(),
        )
        .await
        .unwrap();
        let Db::Sqlite(s) = &db else { unreachable!() };
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .execute(&s.write)
            .await
            .unwrap();
        let g = s.group.clone().expect("group commit is the default");
        (db, g, dir)
    }

    async fn keys(db: &Db) -> Vec<String> {
        let Db::Sqlite(s) = db else { unreachable!() };
        sqlx::query_scalar("SELECT k FROM t ORDER BY k")
            .fetch_all(&s.read)
            .await
            .unwrap()
    }

    fn insert(c: &rusqlite::Connection, k: &str) -> Result<(), sqlx::Error> {
        c.execute("INSERT INTO t (k) VALUES (?1)", [k])
            .map(|_| ())
            .map_err(db_error)
    }

    async fn close(db: Db, dir: PathBuf) {
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn acknowledged_only_once_committed() {
        let (db, g, dir) = open().await;
        g.run(|c| insert(c, "a")).await.unwrap();
        // A separate (read) connection sees it: the batch committed before the answer.
        assert_eq!(keys(&db).await, ["a"]);
        close(db, dir).await;
    }

    /// Writers queued together run in one batch; one whose statement fails, one that
    /// refuses, and one that panics undo only their own statements.
    #[tokio::test]
    async fn a_failing_writer_in_a_batch_undoes_only_itself() {
        let (db, g, dir) = open().await;
        g.run(|c| insert(c, "dup")).await.unwrap();
        // Keep the committer out until all writers are queued: one batch.
        let st = g.state.clone().lock_owned().await;
        let a = g.run(|c| insert(c, "a"));
        let b = g.run(|c| {
            insert(c, "b1")?;
            insert(c, "dup") // unique violation, after a write of its own
        });
        let r = g.run(|c| {
            insert(c, "r1")?;
            Err::<(), _>(sqlx::Error::RowNotFound) // refused
        });
        let p = g.run(|c| -> Result<(), sqlx::Error> {
            insert(c, "p1")?;
            panic!("writer bug")
        });
        let z = g.run(|c| insert(c, "z"));
        tokio::pin!(a, b, r, p, z);
        assert!(poll!(&mut a).is_pending());
        assert!(poll!(&mut b).is_pending());
        assert!(poll!(&mut r).is_pending());
        assert!(poll!(&mut p).is_pending());
        assert!(poll!(&mut z).is_pending());
        assert_eq!(g.jobs.lock().unwrap().len(), 5);
        drop(st);
        let (a, b, r, p, z) = tokio::join!(a, b, r, p, z);
        a.unwrap();
        z.unwrap();
        assert!(crate::store::is_unique_violation(&b.unwrap_err()));
        assert!(matches!(r, Err(sqlx::Error::RowNotFound)));
        assert!(p.unwrap_err().to_string().contains("panicked"));
        assert_eq!(keys(&db).await, ["a", "dup", "z"]);
        close(db, dir).await;
    }

    /// A caller that stops waiting before its turn is skipped: its closure never runs.
    #[tokio::test]
    async fn a_cancelled_writer_never_runs() {
        let (db, g, dir) = open().await;
        let st = g.state.clone().lock_owned().await;
        let x = g.run(|c| insert(c, "x"));
        let y = g.run(|c| insert(c, "y"));
        tokio::pin!(y);
        {
            tokio::pin!(x);
            assert!(poll!(&mut x).is_pending());
        } // x dropped: cancelled while queued
        assert!(poll!(&mut y).is_pending());
        drop(st);
        y.await.unwrap();
        assert_eq!(keys(&db).await, ["y"]);
        close(db, dir).await;
    }

    /// `enter` writers and `run` writers share batches; an `enter` writer that returns
    /// early is rolled back by the committer before it runs the queued closures.
    #[tokio::test]
    async fn enter_and_run_share_the_connection() {
        let (db, g, dir) = open().await;
        {
            let mut op = g.enter().await.unwrap();
            sqlx::query("INSERT INTO t (k) VALUES ('e1')")
                .execute(&mut *op)
                .await
                .unwrap();
            // dropped without finish: an early return
        }
        let ok = g.run(|c| insert(c, "r1"));
        let entered = async {
            let mut op = g.enter().await.unwrap();
            sqlx::query("INSERT INTO t (k) VALUES ('e2')")
                .execute(&mut *op)
                .await
                .unwrap();
            op.finish().await
        };
        let (ok, entered) = tokio::join!(ok, entered);
        ok.unwrap();
        entered.unwrap();
        assert_eq!(keys(&db).await, ["e2", "r1"]);
        close(db, dir).await;
    }

    /// A writer that ends the batch transaction behind the group's back: nothing of
    /// the batch is kept and every writer of it gets an error, including those whose
    /// statements had run fine; the next batch works.
    #[tokio::test]
    async fn a_broken_batch_acknowledges_nobody() {
        let (db, g, dir) = open().await;
        let st = g.state.clone().lock_owned().await;
        let a = g.run(|c| insert(c, "a"));
        let b = g.run(|c| {
            c.execute_batch("ROLLBACK").map_err(db_error)?;
            Ok::<(), sqlx::Error>(())
        });
        let z = g.run(|c| insert(c, "z"));
        tokio::pin!(a, b, z);
        assert!(poll!(&mut a).is_pending());
        assert!(poll!(&mut b).is_pending());
        assert!(poll!(&mut z).is_pending());
        drop(st);
        let (a, b, z) = tokio::join!(a, b, z);
        assert!(a.is_err() && b.is_err() && z.is_err(), "{a:?} {b:?} {z:?}");
        assert!(keys(&db).await.is_empty());
        g.run(|c| insert(c, "after")).await.unwrap();
        assert_eq!(keys(&db).await, ["after"]);
        close(db, dir).await;
    }

    #[tokio::test]
    async fn many_concurrent_writers() {
        let (db, g, dir) = open().await;
        let mut all = Vec::new();
        for i in 0..300 {
            let g = g.clone();
            all.push(tokio::spawn(async move {
                let k = format!("k{i:03}");
                g.run(move |c| insert(c, &k)).await
            }));
        }
        for h in all {
            h.await.unwrap().unwrap();
        }
        assert_eq!(keys(&db).await.len(), 300);
        close(db, dir).await;
    }
}
