//! Low-balance alerts (issue 16): per-account warning and critical thresholds
//! (hundredths, like all money) and an alert URL.
//!
//! The events themselves are enqueued by the `accounts_balance_alert` trigger
//! (migration 0007) in the same transaction as the balance change that crosses a
//! threshold — see the invariants at the top of `ledger.rs`. This module reads and
//! sets the settings and enqueues the sample event of `POST /api/v1/account/alerts/test`.

use kie_wire::Credits;
use serde::Serialize;

use crate::store::{new_id, now_ms, Db};
use crate::{with_read, with_tx};

/// An account's alert settings and where its available balance stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertSettings {
    #[schema(value_type = Option<f64>)]
    pub warn: Option<Credits>,
    #[schema(value_type = Option<f64>)]
    pub critical: Option<Credits>,
    pub url: Option<String>,
    /// `ok`, `warning` or `critical`: the level last seen by the trigger.
    pub state: &'static str,
    #[schema(value_type = f64)]
    pub available: Credits,
}

/// A change of settings: `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Default, Clone)]
pub struct AlertUpdate {
    pub warn: Option<Option<Credits>>,
    pub critical: Option<Option<Credits>>,
    pub url: Option<Option<String>>,
}

fn state_name(s: i64) -> &'static str {
    match s {
        0 => "ok",
        1 => "warning",
        _ => "critical",
    }
}

type Row = (Option<i64>, Option<i64>, Option<String>, i64, i64, i64);

/// The account's settings; `None` for an unknown account.
pub async fn get(db: &Db, account_id: &str) -> Result<Option<AlertSettings>, sqlx::Error> {
    let row: Option<Row> = with_read!(db, |p| {
        sqlx::query_as(
        "SELECT alert_warn, alert_critical, alert_url, CAST(alert_state AS BIGINT), balance, held \
         FROM accounts WHERE id = $1"
    )
    .bind(account_id)
    .fetch_optional(p)
    .await?
    });
    Ok(row.map(|(w, c, u, s, b, h)| AlertSettings {
        warn: w.map(Credits),
        critical: c.map(Credits),
        url: u,
        state: state_name(s),
        available: Credits(b - h),
    }))
}

/// Applies `u`. The alert state is set to where the balance stands now, quietly (no
/// event): an alert is sent when a later balance change crosses a threshold.
pub async fn set(
    db: &Db,
    account_id: &str,
    u: &AlertUpdate,
) -> Result<Option<AlertSettings>, sqlx::Error> {
    let Some(cur) = get(db, account_id).await? else {
        return Ok(None);
    };
    let warn = u.warn.unwrap_or(cur.warn).map(|c| c.0);
    let critical = u.critical.unwrap_or(cur.critical).map(|c| c.0);
    let url = u.url.clone().unwrap_or(cur.url);
    with_tx!(db, |tx| {
        sqlx::query(
            "UPDATE accounts SET alert_warn = $1, alert_critical = $2, alert_url = $3, \
             alert_state = CASE WHEN $2 IS NOT NULL AND balance - held < $2 THEN 2 \
               WHEN $1 IS NOT NULL AND balance - held < $1 THEN 1 ELSE 0 END \
             WHERE id = $4",
        )
        .bind(warn)
        .bind(critical)
        .bind(url.as_deref())
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
    });
    get(db, account_id).await
}

/// Enqueues a sample `balance.warning` event (with the account's current figures) for
/// the alert URL: its delivery id (= the event id), or `None` without a URL.
pub async fn send_test(db: &Db, account_id: &str) -> Result<Option<String>, sqlx::Error> {
    let Some(s) = get(db, account_id).await? else {
        return Ok(None);
    };
    let Some(url) = s.url else {
        return Ok(None);
    };
    let id = new_id("evt");
    let now = now_ms();
    let body = serde_json::json!({
        "type": "balance.warning",
        "id": id,
        "createdAt": now,
        "test": true,
        "data": {
            "account": account_id,
            "available": s.available,
            "threshold": s.warn.or(s.critical).unwrap_or(Credits(0)),
        }
    })
    .to_string();
    with_tx!(db, |tx| {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, task_id, account_id, url, body, state, next_attempt_at, created_at) \
             VALUES ($1, NULL, $2, $3, $4, 'pending', $5, $5)",
        )
        .bind(&id)
        .bind(account_id)
        .bind(&url)
        .bind(&body)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    });
    Ok(Some(id))
}
