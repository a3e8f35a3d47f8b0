//! The dispatcher: leases due deliveries from the outbox and makes one HTTP attempt
//! each, signing with both schemes when the account has a webhook key (and, during
//! a key roll's overlap, Standard Webhooks with the previous key as well).
//!
//! * Leasing is one conditional UPDATE (`locked_until` in the past → in the future),
//!   with `SKIP LOCKED` on PostgreSQL, so any number of nodes share the outbox and
//!   each attempt is made once. A lease outlives the attempt timeout; a node that
//!   dies mid-attempt leaves it to expire and another node (or the restarted one)
//!   retries.
//! * Woken at once when this process enqueues a callback; polls for the rest (other
//!   nodes' callbacks, retries coming due).
//! * 2xx = delivered, 410 = stopped, anything else (including a redirect, a timeout or
//!   a connection error) is retried per the schedule, waiting at least `Retry-After`.
//! * On shutdown no new attempt starts; attempts in flight finish and are recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::net_guard::{self, CheckError, Policy};
use crate::state::AppState;
use crate::store::{now_ms, Db, PollGate};
use crate::with_tx;

/// How many attempts one node runs at once.
const MAX_IN_FLIGHT: usize = 128;
/// How many deliveries one lease query takes.
const LEASE_BATCH: i64 = 64;
/// How often the outbox is polled when nothing wakes the dispatcher.
const POLL: Duration = Duration::from_millis(250);
/// Longest wait between lease attempts while the database is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Upper bound of a `Retry-After` we honour (longer answers are clamped).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A leased delivery.
#[derive(Debug, sqlx::FromRow)]
struct Leased {
    id: String,
    task_id: String,
    account_id: String,
    url: String,
    body: String,
    attempts: i64,
}

/// The outcome of one attempt.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    retry_after: Option<Duration>,
    refused: bool,
}

async fn lease_due(db: &Db, limit: i64, lease: Duration) -> Result<Vec<Leased>, sqlx::Error> {
    let now = now_ms();
    let lock = match db {
        Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        Db::Sqlite(_) => "",
    };
    let sql = format!(
        "UPDATE webhook_deliveries SET locked_until = $1, attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $2 \
           AND (locked_until IS NULL OR locked_until <= $2) ORDER BY next_attempt_at LIMIT $3{lock}) \
         AND state = 'pending' AND (locked_until IS NULL OR locked_until <= $2) \
         RETURNING id, COALESCE(task_id, id) AS task_id, account_id, url, body, attempts"
    );
    let until = now + lease.as_millis() as i64;
    Ok(with_tx!(db, |tx| sqlx::query_as::<_, Leased>(&sql)
        .bind(until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?))
}

/// When the earliest pending delivery comes due for a lease (its next attempt, or the
/// end of a lease still running), epoch ms; `i64::MAX` when none is pending.
async fn next_due(db: &Db) -> Result<i64, sqlx::Error> {
    let due: Option<i64> = crate::with_read!(db, |p| sqlx::query_scalar(
        "SELECT MIN(CASE WHEN locked_until IS NOT NULL AND locked_until > next_attempt_at \
           THEN locked_until ELSE next_attempt_at END) \
         FROM webhook_deliveries WHERE state = 'pending'"
    )
    .fetch_one(p)
    .await?);
    Ok(due.unwrap_or(i64::MAX))
}

/// A finished attempt waiting to be recorded.
struct Done {
    d: Leased,
    started_at: i64,
    duration_ms: i64,
    a: Attempt,
}

/// Records attempts and moves their deliveries on (delivered, stopped, failed,
/// refused, or pending with the next attempt time), releasing the leases — a batch in
/// one transaction, so a busy dispatcher pays one commit for many attempts.
async fn record(db: &Db, batch: &[Done], schedule: &[Duration]) -> Result<(), sqlx::Error> {
    let now = now_ms();
    with_tx!(db, |tx| {
        for Done {
            d,
            started_at,
            duration_ms,
            a,
        } in batch
        {
            let (state, next_at) = match a.status {
                _ if a.refused => ("refused", now),
                Some(s) if (200..300).contains(&s) => ("delivered", now),
                Some(410) => ("stopped", now),
                _ => match schedule.get(d.attempts as usize) {
                    Some(delay) => {
                        let wait = (*delay).max(a.retry_after.unwrap_or_default());
                        ("pending", now + wait.as_millis() as i64)
                    }
                    None => ("failed", now),
                },
            };
            let finished = (state != "pending").then_some(now);
            sqlx::query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status, error) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(&d.id)
            .bind(d.attempts)
            .bind(*started_at)
            .bind(*duration_ms)
            .bind(a.status.map(i64::from))
            .bind(a.error.as_deref())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, locked_until = NULL, \
                 last_status = $3, last_error = $4, finished_at = $5 WHERE id = $6 AND state = 'pending'",
            )
            .bind(state)
            .bind(next_at)
            .bind(a.status.map(i64::from))
            .bind(a.error.as_deref())
            .bind(finished)
            .bind(&d.id)
            .execute(&mut *tx)
            .await?;
        }
    });
    Ok(())
}

/// Writes finished attempts as they come, batching whatever arrived meanwhile. Ends
/// when every sender is gone (after the dispatcher's in-flight attempts finished).
///
/// While the database is unreachable a batch is retried with backoff for up to
/// `give_up` (less than the lease, so no other node re-attempts a delivery whose
/// outcome we still hold), or until shutdown; a batch given up is attempted again
/// when its leases expire.
async fn recorder(
    db: Db,
    mut rx: mpsc::UnboundedReceiver<Done>,
    schedule: Arc<Vec<Duration>>,
    give_up: Duration,
    stop: watch::Receiver<bool>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let t0 = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match record(&db, &batch, &schedule).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            attempts = batch.len(),
                            retries = failures,
                            "recorded webhook attempts after database errors"
                        );
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, attempts = batch.len(), "could not record webhook attempts; retrying");
                    }
                    if t0.elapsed() + backoff > give_up || (*stop.borrow() && failures > 1) {
                        // The leases expire and these deliveries are attempted again.
                        tracing::warn!(error = %e, attempts = batch.len(), "gave up recording webhook attempts; they will be retried");
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

fn parse_retry_after(h: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let s = h?.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = humantime::parse_rfc3339_weak(s)
        .ok()
        .or_else(|| httpdate(s))?;
    at.duration_since(std::time::SystemTime::now())
        .ok()
        .map(|d| d.min(MAX_RETRY_AFTER))
}

/// `Retry-After` as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(s: &str) -> Option<std::time::SystemTime> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let dt = time::PrimitiveDateTime::parse(s, &fmt).ok()?;
    let secs = dt.assume_utc().unix_timestamp();
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The shared client, made by the SSRF guard ([`net_guard::client`]): names resolve
/// through the guarded resolver (the connection goes only to checked addresses), no
/// proxies, no redirects (a redirect is a failed attempt, never followed), the
/// per-attempt timeout.
pub fn http_client(timeout: Duration, policy: Policy) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("kie-common/", env!("CARGO_PKG_VERSION")));
    net_guard::client(builder, policy).expect("HTTP client builds")
}

/// Makes one attempt: SSRF check, signing, POST.
async fn attempt(state: &AppState, client: &reqwest::Client, d: &Leased) -> Attempt {
    let cfg = &state.config;
    let fail = |error: String, refused: bool| Attempt {
        status: None,
        error: Some(error),
        retry_after: None,
        refused,
    };
    // Literal IPs are checked here (again: the policy may have changed since the task
    // was created); host names by the client's guarded resolver when connecting.
    if let Err(e) = Policy::from_config(cfg).check_raw(&d.url) {
        let msg = match e {
            CheckError::BadUrl => "callback URL must be http or https with a host".to_string(),
            CheckError::Refused(r) => format!("callback target refused: {r}"),
        };
        return fail(msg, true);
    }
    let now = now_ms();
    let keys = match crate::accounts::signing_keys(&state.db, &d.account_id, now).await {
        Ok(k) => k,
        Err(e) => return fail(format!("reading the webhook key: {e}"), false),
    };
    let ts = (now / 1000).to_string();
    let mut rb = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(kie_wire::webhook::HDR_STD_ID, &d.id)
        .header(kie_wire::webhook::HDR_STD_TIMESTAMP, &ts);
    if let Some(k) = &keys.current {
        // During a key roll's overlap, Standard Webhooks carries one signature per key
        // (space-separated, the new key's first), so receivers verifying with either
        // key accept the delivery; the KIE.AI header has room for one: the new key's.
        let mut std_sig = kie_wire::webhook::standard_signature(k, &d.id, &ts, d.body.as_bytes());
        if let Some(old) = &keys.previous {
            std_sig.push(' ');
            std_sig.push_str(&kie_wire::webhook::standard_signature(
                old,
                &d.id,
                &ts,
                d.body.as_bytes(),
            ));
        }
        rb = rb
            .header(kie_wire::webhook::HDR_KIE_TIMESTAMP, &ts)
            .header(
                kie_wire::webhook::HDR_KIE_SIGNATURE,
                kie_wire::webhook::kie_signature(k, &d.task_id, &ts),
            )
            .header(kie_wire::webhook::HDR_STD_SIGNATURE, std_sig);
    }
    match rb.body(d.body.clone()).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
            let error = if resp.status().is_redirection() {
                Some("redirect not followed".to_string())
            } else if !resp.status().is_success() {
                Some(format!("HTTP {status}"))
            } else {
                None
            };
            // Drain a little of the body so the connection can be reused; a receiver
            // that keeps streaming is not waited for beyond the timeout.
            let _ = tokio::time::timeout(cfg.webhook_timeout, resp.bytes()).await;
            Attempt {
                status: Some(status),
                error,
                retry_after,
                refused: false,
            }
        }
        Err(e) if net_guard::is_forbidden(&e).is_some() => {
            let r = net_guard::is_forbidden(&e).expect("checked");
            let refused = !matches!(r, net_guard::Refused::Unresolvable);
            fail(format!("callback target refused: {r}"), refused)
        }
        Err(e) if e.is_timeout() => fail(
            format!("timed out after {} ms", cfg.webhook_timeout.as_millis()),
            false,
        ),
        Err(e) if e.is_connect() => fail("connection failed".into(), false),
        Err(e) => fail(format!("request failed: {}", without_url(&e)), false),
    }
}

/// A reqwest error without the URL (callback URLs may carry receiver secrets).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<callback url>");
    }
    s
}

/// Runs the dispatcher until `stop` flips, then lets attempts in flight finish.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let shared = http_client(
        state.config.webhook_timeout,
        Policy::from_config(&state.config),
    );
    // A lease must outlive the attempt it covers, recording included.
    let lease = state.config.webhook_timeout * 2 + Duration::from_secs(30);
    let schedule: Arc<Vec<Duration>> = Arc::new(state.config.webhook_retry_schedule.clone());
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
    let recording = tokio::spawn(recorder(
        state.db.clone(),
        done_rx,
        schedule.clone(),
        lease - state.config.webhook_timeout - Duration::from_secs(5),
        stop.clone(),
    ));
    // Lease errors (database unreachable): logged once per outage, polled with backoff.
    let mut lease_failing = false;
    let mut backoff = POLL;
    // SQLite: no lease query while nothing was committed and nothing came due
    let mut gate = PollGate::default();
    loop {
        if *stop.borrow() {
            break;
        }
        while in_flight.try_join_next().is_some() {}
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len()) as i64;
        let enabled = !state.settings.current().is_disabled("callbacks");
        let mut leased = 0;
        let ticket = (enabled && room > 0)
            .then(|| gate.open(&state.db, now_ms()))
            .flatten();
        if let Some(ticket) = ticket {
            let found = lease_due(&state.db, room.min(LEASE_BATCH), lease).await;
            match &found {
                Ok(batch) if batch.is_empty() && PollGate::can_skip(&ticket) => {
                    match next_due(&state.db).await {
                        Ok(until) => gate.idle(ticket, until),
                        Err(_) => gate.busy(ticket),
                    }
                }
                _ => gate.busy(ticket),
            }
            match found {
                Ok(batch) => {
                    if lease_failing {
                        tracing::info!("webhook dispatcher: database reachable again, resuming");
                        lease_failing = false;
                        backoff = POLL;
                    }
                    leased = batch.len() as i64;
                    for d in batch {
                        let st = state.clone();
                        let client = shared.clone();
                        let done_tx = done_tx.clone();
                        in_flight.spawn(async move {
                            let started_at = now_ms();
                            let t0 = Instant::now();
                            let a = attempt(&st, &client, &d).await;
                            let ms = t0.elapsed().as_millis() as i64;
                            crate::metrics::record_webhook_attempt(a.status, ms);
                            tracing::debug!(delivery = %d.id, task_id = %d.task_id, status = ?a.status, error = ?a.error, "webhook attempt");
                            let _ = done_tx.send(Done { d, started_at, duration_ms: ms, a });
                        });
                    }
                }
                Err(e) => {
                    if !lease_failing {
                        tracing::warn!(error = %e, "could not lease webhook deliveries; retrying with backoff");
                        lease_failing = true;
                    } else {
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        if leased == room.min(LEASE_BATCH) && leased > 0 {
            continue; // there may be more due right now
        }
        let full = in_flight.len() >= MAX_IN_FLIGHT;
        tokio::select! {
            _ = state.jobs.webhooks.notified() => {}
            _ = tokio::time::sleep(if lease_failing { backoff } else { POLL }) => {}
            _ = stop.changed() => {}
            Some(_) = in_flight.join_next(), if full => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
    drop(done_tx);
    let _ = recording.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let h = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_retry_after(Some(&h("7"))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(Some(&h("soon"))), None);
        assert_eq!(
            parse_retry_after(Some(&h("Sun, 06 Nov 1994 08:49:37 GMT"))),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }
}
