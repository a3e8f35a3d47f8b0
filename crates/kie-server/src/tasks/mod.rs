//! Tasks of the Jobs API: creation (with its credit hold), the worker queue, and the
//! final state with its settlement and callback.
//!
//! Invariants:
//! * A task and the hold that pays for it are created in one transaction
//!   ([`ledger::hold_with`]): there is never a task without a hold or a hold without a
//!   task. The per-account creation limit is counted in that same transaction, after
//!   the account row is locked, so it holds across any number of nodes.
//! * A task reaches `success` or `fail` in the same transaction that resolves its hold
//!   ([`ledger::resolve_with`]) and enqueues its callback: a hold resolves exactly once,
//!   so a task finishes exactly once (a second completion, or one after the timeout,
//!   is refused and changes nothing), and no finished task can lack its callback.
//! * Claiming is a conditional UPDATE on `state IN ('waiting','queuing')`: one worker
//!   wins, on any number of nodes.
//!
//! States: a task is `waiting` from creation until a worker claims it, `generating`
//! while claimed, then `success` or `fail`. `queuing` (SPEC §4 lists it among the
//! values of `state` but gives it no transition) is never written: every unclaimed
//! task is claimable at once, so there is no second pre-claim stage to report, and
//! writing one would cost an extra write per task on the hot path. Claims, the
//! reaper and the queue index accept it, so a scheduler that holds tasks back (e.g.
//! per-account concurrency) can use it without a migration.

use kie_wire::task::{RecordInfo, STATE_FAIL, STATE_SUCCESS};
use kie_wire::Credits;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

use crate::config::Model;
use crate::ledger::{self, InSameTx, LedgerError, Resolution, TxCtx};
use crate::store::{new_id, now_ms, Db, TxConn};
use crate::{on_conn, webhooks, with_read};

/// In-process coordination of the jobs machinery. The notifiers wake waiters as soon
/// as work appears: long-polling workers when a task is created, the webhook
/// dispatcher when a callback is enqueued. Other nodes' work is found by polling.
#[derive(Clone, Default)]
pub struct Runtime {
    pub tasks: Arc<Notify>,
    pub webhooks: Arc<Notify>,
    /// Delay of a callback's first attempt (the retry schedule's first entry).
    pub first_callback_delay_ms: i64,
}

/// A task row.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    pub account_id: String,
    pub model: String,
    pub state: String,
    pub param: String,
    pub callback_url: Option<String>,
    pub hold_id: String,
    pub price: i64,
    pub result_json: String,
    pub fail_code: String,
    pub fail_msg: String,
    pub consume_credits: i64,
    pub worker: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub claimed_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub deadline_at: i64,
}

const TASK_COLUMNS: &str = "id, account_id, model, state, param, callback_url, hold_id, price, \
     result_json, fail_code, fail_msg, consume_credits, worker, created_at, updated_at, \
     claimed_at, completed_at, deadline_at";

/// States a task can still leave.
pub const OPEN_STATES: &str = "'waiting','queuing','generating'";

impl Task {
    pub fn is_finished(&self) -> bool {
        self.state == STATE_SUCCESS || self.state == STATE_FAIL
    }

    /// Milliseconds spent generating (claim to completion; 0 when never claimed).
    pub fn cost_time(&self) -> Option<i64> {
        self.completed_at
            .map(|c| c - self.claimed_at.unwrap_or(c).min(c))
    }

    /// The `recordInfo` view, with the account's current available balance.
    pub fn record_info(&self, available: Credits) -> RecordInfo {
        let consumed = Credits(self.consume_credits);
        RecordInfo {
            task_id: self.id.clone(),
            model: self.model.clone(),
            state: self.state.clone(),
            param: self.param.clone(),
            result_json: self.result_json.clone(),
            fail_code: self.fail_code.clone(),
            fail_msg: self.fail_msg.clone(),
            cost_time: self.cost_time(),
            create_time: Some(self.created_at),
            update_time: Some(self.updated_at),
            complete_time: self.completed_at,
            consume_credits: consumed,
            credits_consumed: consumed,
            remained_credits: available,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("insufficient credits")]
    InsufficientCredits,
    /// A cap of the API key would be exceeded (code 433); nothing was written.
    #[error("sub-key usage exceeds limit")]
    CapExceeded,
    #[error("task creation limit reached; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("unknown account")]
    UnknownAccount,
    #[error("{0}")]
    Internal(String),
}

/// The per-account creation limit, refused inside the hold's transaction.
#[derive(Debug, thiserror::Error)]
#[error("task creation limit reached")]
struct RateLimited {
    retry_after: u64,
}

/// What a new task needs.
pub struct NewTask<'a> {
    pub account_id: &'a str,
    /// The API key the task is created through: its price counts against the key's
    /// caps (see `ledger`). `None`: not through a key.
    pub key_id: Option<&'a str>,
    pub model: &'a Model,
    /// The original request as a JSON string.
    pub param: String,
    pub callback_url: Option<String>,
    pub timeout: Duration,
    /// `(limit, window)`; `None` or a zero limit means unlimited.
    pub rate: Option<(u32, Duration)>,
}

/// Tasks of account `$1` created after `$2`: the rate rule's count (both backends;
/// placeholders in ascending order of first use, so rusqlite runs the same text).
const TASKS_IN_WINDOW: &str =
    "SELECT COUNT(*), MIN(created_at) FROM tasks WHERE account_id = $1 AND created_at > $2";

/// A new task (both backends, like [`TASKS_IN_WINDOW`]).
const INSERT_TASK: &str = "INSERT INTO tasks (id, account_id, model, state, param, callback_url, \
     hold_id, price, created_at, updated_at, deadline_at) \
     VALUES ($1, $2, $3, 'waiting', $4, $5, $6, $7, $8, $8, $9)";

struct InsertTask<'a> {
    id: &'a str,
    new: &'a NewTask<'a>,
    now: i64,
}

#[async_trait::async_trait]
impl InSameTx for InsertTask<'_> {
    /// PostgreSQL; on SQLite the same rule and insert run as [`Self::sqlite_direct`].
    async fn run(&self, conn: TxConn<'_>, ctx: &TxCtx<'_>) -> Result<(), LedgerError> {
        let TxConn::Postgres(c) = conn else {
            return Err(LedgerError::Invalid(
                "on SQLite a task is inserted by its direct statements".into(),
            ));
        };
        let n = self.new;
        if let Some((limit, window)) = n.rate.filter(|(l, _)| *l > 0) {
            let (count, oldest): (i64, Option<i64>) = sqlx::query_as(TASKS_IN_WINDOW)
                .bind(n.account_id)
                .bind(self.now - window.as_millis() as i64)
                .fetch_one(&mut *c)
                .await?;
            rate_rule(count, oldest, limit, window, self.now)?;
        }
        sqlx::query(INSERT_TASK)
            .bind(self.id)
            .bind(n.account_id)
            .bind(&n.model.name)
            .bind(&n.param)
            .bind(n.callback_url.as_deref())
            .bind(ctx.hold_id)
            .bind(n.model.price.0)
            .bind(self.now)
            .bind(self.now + n.timeout.as_millis() as i64)
            .execute(&mut *c)
            .await?;
        Ok(())
    }

    fn sqlite_direct(&self) -> Option<ledger::SqliteDirect> {
        let n = self.new;
        let id = self.id.to_owned();
        let account_id = n.account_id.to_owned();
        let model = n.model.name.clone();
        let param = n.param.clone();
        let callback_url = n.callback_url.clone();
        let price = n.model.price.0;
        let now = self.now;
        let deadline = now + n.timeout.as_millis() as i64;
        let rate = n.rate.filter(|(l, _)| *l > 0);
        Some(Box::new(move |c, ctx| {
            if let Some((limit, window)) = rate {
                let since = now - window.as_millis() as i64;
                let (count, oldest): (i64, Option<i64>) = c
                    .prepare_cached(TASKS_IN_WINDOW)?
                    .query_row(rusqlite::params![account_id, since], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                rate_rule(count, oldest, limit, window, now)?;
            }
            c.prepare_cached(INSERT_TASK)?.execute(rusqlite::params![
                id,
                account_id,
                model,
                param,
                callback_url,
                ctx.hold_id,
                price,
                now,
                deadline
            ])?;
            Ok(())
        }))
    }
}

/// The per-account task rate rule, once for both backends: `count` tasks created in the
/// window (the oldest at `oldest`) leave room for one more, or the caller is told when
/// a slot frees (when the oldest task of the window leaves it).
fn rate_rule(
    count: i64,
    oldest: Option<i64>,
    limit: u32,
    window: Duration,
    now: i64,
) -> Result<(), LedgerError> {
    if count < i64::from(limit) {
        return Ok(());
    }
    let free_at = oldest.unwrap_or(now) + window.as_millis() as i64;
    let wait_ms = (free_at - now).max(1) as u64;
    Err(LedgerError::Refused(Box::new(RateLimited {
        retry_after: wait_ms.div_ceil(1000),
    })))
}

/// Creates a task in state `waiting` with its price held. Returns the task id.
pub async fn create(db: &Db, new: &NewTask<'_>) -> Result<String, CreateError> {
    let id = new_id("task");
    let insert = InsertTask {
        id: &id,
        new,
        now: now_ms(),
    };
    let reason = format!("task {id} ({})", new.model.name);
    let held = ledger::hold_via(
        db,
        new.account_id,
        new.key_id,
        new.model.price,
        Some(&reason),
        &insert,
    )
    .await;
    match held {
        Ok(_) => Ok(id),
        Err(LedgerError::InsufficientCredits) => Err(CreateError::InsufficientCredits),
        Err(LedgerError::CapExceeded) => Err(CreateError::CapExceeded),
        Err(LedgerError::UnknownAccount) => Err(CreateError::UnknownAccount),
        Err(LedgerError::Refused(e)) => match e.downcast::<RateLimited>() {
            Ok(r) => Err(CreateError::RateLimited {
                retry_after: r.retry_after,
            }),
            Err(e) => Err(CreateError::Internal(e.to_string())),
        },
        Err(e) => Err(CreateError::Internal(e.to_string())),
    }
}

pub async fn get(db: &Db, task_id: &str) -> Result<Option<Task>, sqlx::Error> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
    Ok(with_read!(db, |p| sqlx::query_as::<_, Task>(&sql)
        .bind(task_id)
        .fetch_optional(p)
        .await?))
}

/// A task of `account_id` (another account's task is `None`, like an unknown one).
pub async fn get_for_account(
    db: &Db,
    account_id: &str,
    task_id: &str,
) -> Result<Option<Task>, sqlx::Error> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND account_id = $2");
    Ok(with_read!(db, |p| sqlx::query_as::<_, Task>(&sql)
        .bind(task_id)
        .bind(account_id)
        .fetch_optional(p)
        .await?))
}

/// Tasks, newest first (for `kie admin task list`).
pub async fn list(db: &Db, account_id: Option<&str>, limit: i64) -> Result<Vec<Task>, sqlx::Error> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE ($1 IS NULL OR account_id = $1) \
         ORDER BY created_at DESC, id LIMIT $2"
    );
    Ok(with_read!(db, |p| sqlx::query_as::<_, Task>(&sql)
        .bind(account_id)
        .bind(limit)
        .fetch_all(p)
        .await?))
}

/// What the console's task log shows: an account's tasks, optionally of one state or
/// model, created in `[from, to)` (epoch ms).
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub state: Option<String>,
    pub model: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// A page of an account's task log, newest first, older than the `before` cursor
/// (`(created_at, id)` of the previous page's last task). Each filter is added only
/// when set, so every query can use `tasks_account_created` or the console's
/// `(account_id, state|model, created_at)` indexes and stops after `limit` rows.
pub async fn log(
    db: &Db,
    account_id: &str,
    f: &LogFilter,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE account_id = $1");
    let mut n = 1;
    let mut next = || {
        n += 1;
        n
    };
    if f.state.is_some() {
        sql += &format!(" AND state = ${}", next());
    }
    if f.model.is_some() {
        sql += &format!(" AND model = ${}", next());
    }
    if f.from.is_some() {
        sql += &format!(" AND created_at >= ${}", next());
    }
    if f.to.is_some() {
        sql += &format!(" AND created_at < ${}", next());
    }
    if before.is_some() {
        let (a, b) = (next(), next());
        sql += &format!(" AND (created_at < ${a} OR (created_at = ${a} AND id < ${b}))");
    }
    sql += &format!(" ORDER BY created_at DESC, id DESC LIMIT ${}", next());
    Ok(with_read!(db, |p| {
        let mut q = sqlx::query_as::<_, Task>(&sql).bind(account_id);
        if let Some(s) = &f.state {
            q = q.bind(s);
        }
        if let Some(m) = &f.model {
            q = q.bind(m);
        }
        if let Some(t) = f.from {
            q = q.bind(t);
        }
        if let Some(t) = f.to {
            q = q.bind(t);
        }
        if let Some((t, id)) = &before {
            q = q.bind(*t).bind(id);
        }
        q.bind(limit).fetch_all(p).await?
    }))
}

/// Claims up to `limit` of the oldest waiting tasks of `models` for `worker`:
/// `generating` from now on. One statement, conditional on the state, so each task
/// goes to exactly one claimer; on PostgreSQL `SKIP LOCKED` lets concurrent claimers
/// pass each other.
pub async fn claim_batch(
    db: &Db,
    models: &[String],
    worker: &str,
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    if models.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..models.len()).map(|i| format!("${}", i + 4)).collect();
    let lock = match db {
        Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        Db::Sqlite(_) => "",
    };
    let sql = format!(
        "UPDATE tasks SET state = 'generating', worker = $1, claimed_at = $2, updated_at = $2 \
         WHERE id IN (SELECT id FROM tasks WHERE state IN ('waiting','queuing') AND deadline_at > $2 \
         AND model IN ({}) ORDER BY created_at LIMIT $3{lock}) AND state IN ('waiting','queuing') \
         RETURNING {TASK_COLUMNS}",
        placeholders.join(", ")
    );
    let now = now_ms();
    let mut r = crate::with_tx!(db, |tx| {
        let mut q = sqlx::query_as::<_, Task>(&sql)
            .bind(worker)
            .bind(now)
            .bind(limit.max(1));
        for m in models {
            q = q.bind(m);
        }
        q.fetch_all(&mut *tx).await?
    });
    r.sort_by_key(|t| t.created_at);
    Ok(r)
}

/// How a task ends.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `cost` is what the worker reports (default: the model's price); never more than
    /// the hold is charged.
    Success {
        result_json: String,
        cost: Option<Credits>,
    },
    Fail {
        code: String,
        msg: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("unknown task")]
    UnknownTask,
    /// Already `success`/`fail` (completed twice, or after its timeout).
    #[error("task already finished")]
    AlreadyFinished,
    /// Still waiting: a worker must claim a task before completing it.
    #[error("task is not being generated (claim it first)")]
    NotClaimed,
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, thiserror::Error)]
#[error("task state changed")]
struct StateChanged;

/// The task's final state, written with the hold's resolution.
struct FinishTask<'a> {
    /// The task as it will be once finished.
    done: &'a Task,
    first_callback_at: i64,
    /// States the task may be in for this transition to apply.
    from: &'static str,
}

#[async_trait::async_trait]
impl InSameTx for FinishTask<'_> {
    async fn run(&self, mut conn: TxConn<'_>, ctx: &TxCtx<'_>) -> Result<(), LedgerError> {
        // What the ledger charged (the cost clamped to the hold) is what the task
        // records.
        let mut t = self.done.clone();
        t.consume_credits = ctx.charged.0;
        let t = &t;
        let sql = format!(
            "UPDATE tasks SET state = $1, result_json = $2, fail_code = $3, fail_msg = $4, \
             consume_credits = $5, completed_at = $6, updated_at = $6 \
             WHERE id = $7 AND state IN ({})",
            self.from
        );
        let changed = on_conn!(&mut conn, |c| sqlx::query(&sql)
            .bind(&t.state)
            .bind(&t.result_json)
            .bind(&t.fail_code)
            .bind(&t.fail_msg)
            .bind(t.consume_credits)
            .bind(t.updated_at)
            .bind(&t.id)
            .execute(&mut *c)
            .await?
            .rows_affected());
        if changed != 1 {
            return Err(LedgerError::Refused(Box::new(StateChanged)));
        }
        if let Some(url) = &t.callback_url {
            let body = callback_body(t, ctx.applied.available());
            webhooks::enqueue(
                &mut conn,
                &t.id,
                &t.account_id,
                url,
                &body,
                t.updated_at,
                self.first_callback_at,
            )
            .await?;
        }
        Ok(())
    }
}

/// Ends a task: resolves its hold (post on success, void on failure), records the
/// final state and enqueues the callback, all in one transaction. `from` lists the
/// states the task may be in (a worker completes only a `generating` task).
async fn finish(
    db: &Db,
    wake: &Runtime,
    task_id: &str,
    outcome: Outcome,
    from: &'static str,
) -> Result<Task, FinishError> {
    let task = get(db, task_id)
        .await
        .map_err(|e| FinishError::Internal(e.to_string()))?
        .ok_or(FinishError::UnknownTask)?;
    if task.is_finished() {
        return Err(FinishError::AlreadyFinished);
    }
    let now = now_ms();
    let mut done = task.clone();
    done.completed_at = Some(now);
    done.updated_at = now;
    // The charge is the reported cost (the price when none), clamped to the hold by
    // the ledger; the task records what it charged.
    let how = match outcome {
        Outcome::Success { result_json, cost } => {
            done.state = STATE_SUCCESS.into();
            done.result_json = result_json;
            Resolution::Post(cost.unwrap_or(Credits(task.price)))
        }
        Outcome::Fail { code, msg } => {
            done.state = STATE_FAIL.into();
            done.fail_code = code;
            done.fail_msg = msg;
            Resolution::Void
        }
    };
    let reason = format!("task {} ({})", task.id, task.model);
    let step = FinishTask {
        done: &done,
        first_callback_at: now + wake.first_callback_delay_ms,
        from,
    };
    match ledger::resolve_with(db, &task.hold_id, how, Some(&reason), &step).await {
        Ok((_, charged)) => done.consume_credits = charged.0,
        Err(LedgerError::HoldResolved) => return Err(FinishError::AlreadyFinished),
        Err(LedgerError::Refused(_)) => {
            // The state moved under us: finished by someone else, or never claimed.
            let now = get(db, task_id)
                .await
                .map_err(|e| FinishError::Internal(e.to_string()))?
                .ok_or(FinishError::UnknownTask)?;
            return Err(if now.is_finished() {
                FinishError::AlreadyFinished
            } else {
                FinishError::NotClaimed
            });
        }
        Err(e) => return Err(FinishError::Internal(e.to_string())),
    }
    if done.callback_url.is_some() {
        wake.webhooks.notify_one();
    }
    Ok(done)
}

/// A worker's success report for a task it claimed.
pub async fn complete(
    db: &Db,
    wake: &Runtime,
    task_id: &str,
    result_json: String,
    cost: Option<Credits>,
) -> Result<Task, FinishError> {
    let outcome = Outcome::Success { result_json, cost };
    finish(db, wake, task_id, outcome, "'generating'").await
}

/// A worker's failure report for a task it claimed.
pub async fn fail(
    db: &Db,
    wake: &Runtime,
    task_id: &str,
    code: String,
    msg: String,
) -> Result<Task, FinishError> {
    finish(
        db,
        wake,
        task_id,
        Outcome::Fail { code, msg },
        "'generating'",
    )
    .await
}

/// `failCode` of a task that ran out of time.
pub const TIMEOUT_FAIL_CODE: &str = "504";

/// Fails every unfinished task past its deadline (voiding its hold). Safe to run on
/// every node at once: each hold resolves once, the losers see `AlreadyFinished`.
pub async fn reap_expired(db: &Db, wake: &Runtime) -> Result<usize, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM tasks WHERE state IN ({OPEN_STATES}) AND deadline_at <= $1 \
         ORDER BY deadline_at LIMIT 200"
    );
    let ids: Vec<String> = with_read!(db, |p| sqlx::query_scalar(&sql)
        .bind(now_ms())
        .fetch_all(p)
        .await?);
    let mut n = 0;
    for id in ids {
        let Some(t) = get(db, &id).await? else {
            continue;
        };
        let secs = (t.deadline_at - t.created_at) / 1000;
        let outcome = Outcome::Fail {
            code: TIMEOUT_FAIL_CODE.into(),
            msg: format!("Task timed out after {secs} s"),
        };
        match finish(db, wake, &id, outcome, OPEN_STATES).await {
            Ok(_) => n += 1,
            Err(FinishError::AlreadyFinished) => {}
            Err(e) => tracing::warn!(task_id = %id, error = %e, "could not time out task"),
        }
    }
    Ok(n)
}

/// Background loop: times out expired tasks, checking a few times per `timeout`.
pub async fn reaper_loop(
    db: Db,
    wake: Runtime,
    timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = (timeout / 8).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // logged once per outage, not on every tick
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match reap_expired(&db, &wake).await {
                    Ok(_) if failing => {
                        tracing::info!("task timeout reaper recovered");
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "task timeout reaper failed; retrying every tick");
                        failing = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "task timeout reaper failed again"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The callback body's `data`, in the order KIE.AI sends it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallbackData<'a> {
    task_id: &'a str,
    #[serde(rename = "task_id")]
    task_id_snake: &'a str,
    model: &'a str,
    state: &'a str,
    param: &'a str,
    result_json: &'a str,
    fail_code: &'a str,
    fail_msg: &'a str,
    consume_credits: Credits,
    remained_credits: Credits,
    cost_time: Option<i64>,
    create_time: i64,
    complete_time: Option<i64>,
    update_time: i64,
    callback_type: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Callback<'a> {
    code: i64,
    msg: &'a str,
    task_id: &'a str,
    data: CallbackData<'a>,
}

/// The JSON body POSTed for a finished task: code 200 on success, 501 on failure.
pub fn callback_body(t: &Task, remained: Credits) -> String {
    let ok = t.state == STATE_SUCCESS;
    let cb = Callback {
        code: if ok { 200 } else { 501 },
        msg: if ok { "success" } else { "Task failed" },
        task_id: &t.id,
        data: CallbackData {
            task_id: &t.id,
            task_id_snake: &t.id,
            model: &t.model,
            state: &t.state,
            param: &t.param,
            result_json: &t.result_json,
            fail_code: &t.fail_code,
            fail_msg: &t.fail_msg,
            consume_credits: Credits(t.consume_credits),
            remained_credits: remained,
            cost_time: t.cost_time(),
            create_time: t.created_at,
            complete_time: t.completed_at,
            update_time: t.updated_at,
            callback_type: if ok { "task_completed" } else { "task_failed" },
        },
    };
    serde_json::to_string(&cb).expect("callback serialises")
}
