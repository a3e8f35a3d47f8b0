//! Webhook callbacks (SPEC §6): the durable outbox and the dispatcher (the task
//! callback payload is built by `tasks`, which enqueues it here).
//!
//! A callback is enqueued in the same transaction as its task's final state (see
//! `tasks::finish`), so it cannot be lost. The dispatcher ([`dispatch`]) leases due
//! deliveries with a conditional UPDATE on `locked_until`, so each attempt is made by
//! exactly one node; a node that dies mid-attempt leaves a lease that expires and the
//! delivery is picked up again.
//!
//! Balance alert events (issue 16) are deliveries without a task (`task_id` NULL),
//! enqueued by the `accounts_balance_alert` trigger (migration 0007) or by
//! [`enqueue_event`]; their delivery id is the event id, which the KIE.AI signature
//! scheme signs in place of the task id (and listings show in the task id's place).
//!
//! Delivery states: `pending` (an attempt is due at `next_attempt_at`), `delivered`
//! (a 2xx answer), `stopped` (the receiver answered 410 Gone), `failed` (the retry
//! schedule is exhausted), `refused` (the target resolves to a forbidden address).

pub mod dispatch;

use serde::Serialize;

use crate::store::{new_id, Db, TxConn};
use crate::{on_conn, with_read};

/// Adds a delivery to the outbox inside the caller's transaction, its first attempt
/// due at `first_at`.
pub async fn enqueue(
    conn: &mut TxConn<'_>,
    task_id: &str,
    account_id: &str,
    url: &str,
    body: &str,
    now: i64,
    first_at: i64,
) -> Result<(), sqlx::Error> {
    let id = new_id("msg");
    on_conn!(conn, |c| {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, task_id, account_id, url, body, state, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7)",
        )
        .bind(&id)
        .bind(task_id)
        .bind(account_id)
        .bind(url)
        .bind(body)
        .bind(first_at)
        .bind(now)
        .execute(&mut *c)
        .await?;
    });
    Ok(())
}

/// Sends one of an account's finished deliveries again: back to `pending`, due now,
/// for one more attempt (the same `webhook-id` and body). `false` when there is no such
/// delivery of the account or it is still pending.
pub async fn redeliver(db: &Db, account_id: &str, delivery_id: &str) -> Result<bool, sqlx::Error> {
    let now = crate::store::now_ms();
    let n = crate::with_tx!(db, |tx| {
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, \
             locked_until = NULL, finished_at = NULL \
             WHERE id = $2 AND account_id = $3 AND state <> 'pending'",
        )
        .bind(now)
        .bind(delivery_id)
        .bind(account_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    });
    Ok(n == 1)
}

/// The state of one of the account's deliveries (`None`: no such delivery of it).
pub async fn delivery_state(
    db: &Db,
    account_id: &str,
    delivery_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    Ok(with_read!(db, |p| {
        sqlx::query_scalar("SELECT state FROM webhook_deliveries WHERE id = $1 AND account_id = $2")
            .bind(delivery_id)
            .bind(account_id)
            .fetch_optional(p)
            .await?
    }))
}

/// Sends every delivery of the account that failed (retries exhausted) and was
/// created since `since_ms` again, once each: how many.
pub async fn replay_failed(db: &Db, account_id: &str, since_ms: i64) -> Result<u64, sqlx::Error> {
    let now = crate::store::now_ms();
    Ok(crate::with_tx!(db, |tx| {
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, \
             locked_until = NULL, finished_at = NULL \
             WHERE account_id = $2 AND state = 'failed' AND created_at >= $3",
        )
        .bind(now)
        .bind(account_id)
        .bind(since_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    }))
}

/// One delivery with its attempts, for operators (`kie admin webhook deliveries`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryInfo {
    pub id: String,
    /// The task; for a balance event (no task) its event id, as operators' listings
    /// have always shown it (the account's own listing shows `event` instead).
    pub task_id: String,
    /// The event id of a balance event (`evt_…`, the delivery id); `None` for a task's
    /// callback.
    pub event: Option<String>,
    pub url: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub attempt_log: Vec<AttemptInfo>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AttemptInfo {
    pub attempt: i64,
    pub started_at: i64,
    pub duration_ms: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
}

type DeliveryRow = (
    String,
    Option<String>,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
);

/// Deliveries of a task (or the latest ones), with their attempt logs.
pub async fn deliveries(
    db: &Db,
    task_id: Option<&str>,
    limit: i64,
) -> Result<Vec<DeliveryInfo>, sqlx::Error> {
    deliveries_where(db, task_id, None, limit).await
}

/// An account's latest deliveries, with their attempt logs (the console).
pub async fn deliveries_of_account(
    db: &Db,
    account_id: &str,
    limit: i64,
) -> Result<Vec<DeliveryInfo>, sqlx::Error> {
    deliveries_where(db, None, Some(account_id), limit).await
}

async fn deliveries_where(
    db: &Db,
    task_id: Option<&str>,
    account_id: Option<&str>,
    limit: i64,
) -> Result<Vec<DeliveryInfo>, sqlx::Error> {
    let rows: Vec<DeliveryRow> = with_read!(db, |p| {
        sqlx::query_as(
        "SELECT id, task_id, url, state, attempts, next_attempt_at, last_status, last_error, created_at, finished_at \
         FROM webhook_deliveries WHERE ($1 IS NULL OR task_id = $1) AND ($2 IS NULL OR account_id = $2) \
         ORDER BY created_at DESC, id LIMIT $3"
    )
    .bind(task_id)
    .bind(account_id)
    .bind(limit)
    .fetch_all(p)
    .await?
    });
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let log: Vec<AttemptInfo> = with_read!(db, |p| sqlx::query_as(
            "SELECT attempt, started_at, duration_ms, status, error FROM webhook_attempts \
             WHERE delivery_id = $1 ORDER BY attempt"
        )
        .bind(&r.0)
        .fetch_all(p)
        .await?);
        let pending = r.3 == "pending";
        let event = r.1.is_none().then(|| r.0.clone());
        out.push(DeliveryInfo {
            task_id: r.1.unwrap_or_else(|| r.0.clone()),
            event,
            id: r.0,
            url: r.2,
            state: r.3,
            attempts: r.4,
            next_attempt_at: pending.then_some(r.5),
            last_status: r.6,
            last_error: r.7,
            created_at: r.8,
            finished_at: r.9,
            attempt_log: log,
        });
    }
    Ok(out)
}
