//! The credit ledger. All money logic lives here.
//!
//! Invariants (checked by tests under concurrency, on both backends):
//! * Entries are append-only; each has a unique idempotency key. Grants, deducts and
//!   adjustments look their key up first (a replay returns the earlier entry); holds,
//!   posts and voids do not need to: their keys derive from a fresh hold id or from the
//!   one `pending → posted|voided` transition, and the unique index still guards them.
//! * `accounts.balance` = sum of `ledger_entries.amount` and `accounts.held` = sum of
//!   `ledger_entries.held_delta`, because both change in the same transaction as the
//!   entry that explains them.
//! * `0 <= held <= balance` (so available = balance - held is never negative):
//!   enforced by the conditional UPDATE below and by CHECK constraints in the schema.
//! * A hold resolves exactly once: the `pending → posted|voided` UPDATE matches only a
//!   pending hold, in the same transaction as its entry.
//!
//! * Per-key usage caps (issue 15 item 5): a key's usage counters (`api_keys.used_total`,
//!   `hour_used` in UTC hour `hour_bucket`, `day_used` in UTC day `day_bucket`; buckets
//!   are `ms / 3_600_000` and `ms / 86_400_000` of the writing node's clock, fixed, not
//!   rolling, and only ever move forward) change in the same transaction as the ledger
//!   change that explains them, after the account row: a hold through a key adds its
//!   amount, a deduct through a key (priced links) adds its amount, a resolution gives
//!   back `amount - charged` (all of a void; nothing of a full post) to the buckets the
//!   hold was placed in, if they are still current. So `used_total` = Σ pending holds'
//!   amounts + Σ posted holds' charges + Σ deducts made through the key. The conditional
//!   UPDATE ([`KEY_USE`]; the rule itself is written once, in `key_use_set!` and
//!   `key_use_fits!`, and the give-back in `key_give_back_set!`) refuses a positive
//!   amount that would take any counter above its cap, and the caller then rolls the
//!   whole transaction back (code 433, nothing written). The PostgreSQL hold through a
//!   key (`pg_hold`: one statement that updates the account, then the key, then writes
//!   the entry and the hold only if the key's update matched) therefore always runs in
//!   a transaction, rolled back when the key refused; the SQLite hold (`sqlite_hold`)
//!   runs [`KEY_USE`] inside the hold's savepoint or transaction. Lock order on
//!   PostgreSQL is always accounts → api_keys (holds, deducts and resolutions alike).
//!   Under clock skew between nodes a hold stamped with an older bucket counts in the
//!   stored (newer) one, and its refund then finds its own bucket gone and is not
//!   given back to the hour/day counters: skew can only make a cap stricter, never
//!   let usage exceed it.
//!
//! * Low-balance alerts (issue 16): every ledger operation, on every path (the sqlx
//!   `apply_in_tx!`, the PostgreSQL hold and resolution statements, the SQLite
//!   rusqlite statements, any node), changes money with an `UPDATE accounts SET balance
//!   …, held …`. That UPDATE is the common place, so the check lives there, as the
//!   `accounts_balance_alert` trigger (migration 0007; `BEFORE UPDATE OF balance, held`
//!   on PostgreSQL, `AFTER UPDATE OF balance, held` on SQLite). It computes the level of
//!   the new available balance (2 below `alert_critical`, else 1 below `alert_warn`,
//!   else 0) and, when it differs from `accounts.alert_state`, compares-and-sets
//!   `alert_state` and — on a move up in level (`balance.warning` / `balance.critical`,
//!   only the level reached) or back to 0 (`balance.recovered`) — inserts one delivery
//!   without a task into `webhook_deliveries` for `alert_url`. It runs inside the
//!   balance change's own transaction (or savepoint) with the account row locked
//!   (PostgreSQL) or the single writer held (SQLite), so an event is enqueued exactly
//!   once per crossing, commits or rolls back with the change, and two nodes can never
//!   both see the same crossing. Setting thresholds (`alerts::set`) sets `alert_state`
//!   to the current level without an event.
//!
//! * Money once per backend (issue 14 item 3): a hold and a resolution have one
//!   PostgreSQL implementation (`pg_hold`, `pg_resolve`: one statement each) and one
//!   SQLite implementation (`sqlite_hold`, `sqlite_resolve`: rusqlite statements on the
//!   write connection, run by the group committer or, inside a sqlx transaction, on
//!   its borrowed handle through `store::sqlite_raw::with_raw`); grants, deducts and
//!   adjustments one implementation for both (`apply_in_tx!`). The paths in
//!   [`hold_via`] and [`resolve_with`] differ only in how the transaction around that
//!   one implementation is run. Idempotency keys are built here only
//!   (`hold_entry_key`, [`user_key`], [`initial_grant_key`],
//!   [`charge_download_link`]), and the charge clamp is computed in one place, the
//!   SQL of `resolve_hold_sql!` that both backends run.
//!
//! Entry kinds: `grant` (+), `deduct` (−), `adjust` (±) change the posted balance;
//! `hold` reserves credits (held +X, balance unchanged); `post` charges a hold (balance
//! −charged, held −X); `void` releases it (held −X).

use kie_wire::Credits;
use serde::Serialize;

use crate::store::{is_unique_violation, new_sorted_id, now_ms, Db, SqliteDb, TxConn};
use crate::with_tx;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("insufficient credits")]
    InsufficientCredits,
    /// The key's hourly, daily or total cap would be exceeded (code 433).
    #[error("sub-key usage exceeds limit")]
    CapExceeded,
    #[error("unknown account")]
    UnknownAccount,
    #[error("unknown hold")]
    UnknownHold,
    #[error("hold already resolved")]
    HoldResolved,
    #[error("idempotency key was already used for a different operation")]
    IdempotencyConflict,
    #[error("{0}")]
    Invalid(String),
    /// Refused by work done in the same transaction (see [`InSameTx`]); nothing was
    /// written.
    #[error("{0}")]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Db(crate::store::sqlite_raw::db_error(e))
    }
}

/// The result of one applied (or replayed) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub entry_id: String,
    pub balance: Credits,
    pub held: Credits,
    /// True when the idempotency key had been used before and nothing changed now.
    pub replayed: bool,
}

impl Applied {
    pub fn available(&self) -> Credits {
        Credits(self.balance.0 - self.held.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grant,
    Deduct,
    Adjust,
    Hold,
    Post,
    Void,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Deduct => "deduct",
            Kind::Adjust => "adjust",
            Kind::Hold => "hold",
            Kind::Post => "post",
            Kind::Void => "void",
        }
    }
}

/// One change to apply: its effect on the posted balance and on held credits.
struct Change<'a> {
    account_id: &'a str,
    kind: Kind,
    amount: i64,
    held_delta: i64,
    hold_id: Option<&'a str>,
    reason: Option<&'a str>,
    idempotency_key: &'a str,
    /// The API key the change is made through: counts against its caps.
    key_id: Option<&'a str>,
}

/// Applies `change` inside `tx`. On an idempotency key that already exists, returns the
/// earlier entry when it describes the same change, and a conflict otherwise.
macro_rules! apply_in_tx {
    ($tx:ident, $c:expr) => {{
        let c: &Change<'_> = $c;
        let prior: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT id, account_id, kind, amount FROM ledger_entries WHERE idempotency_key = $1",
        )
        .bind(c.idempotency_key)
        .fetch_optional(&mut *$tx)
        .await?;
        if let Some((id, acc, kind, amount)) = prior {
            if acc != c.account_id || kind != c.kind.as_str() || amount != c.amount {
                return Err(LedgerError::IdempotencyConflict);
            }
            let (balance, held): (i64, i64) =
                sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1")
                    .bind(c.account_id)
                    .fetch_one(&mut *$tx)
                    .await?;
            Applied { entry_id: id, balance: Credits(balance), held: Credits(held), replayed: true }
        } else {
            let row: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE accounts SET balance = balance + $1, held = held + $2 \
                 WHERE id = $3 AND held + $2 >= 0 AND balance + $1 >= held + $2 \
                 RETURNING balance, held",
            )
            .bind(c.amount)
            .bind(c.held_delta)
            .bind(c.account_id)
            .fetch_optional(&mut *$tx)
            .await?;
            let Some((balance, held)) = row else {
                let exists: Option<String> = sqlx::query_scalar("SELECT id FROM accounts WHERE id = $1")
                    .bind(c.account_id)
                    .fetch_optional(&mut *$tx)
                    .await?;
                return Err(if exists.is_some() {
                    LedgerError::InsufficientCredits
                } else {
                    LedgerError::UnknownAccount
                });
            };
            let now = now_ms();
            if let Some(key_id) = c.key_id {
                // Only charges (a negative amount) count against the key's caps.
                let (hour, day) = buckets(now);
                let used: Option<String> = sqlx::query_scalar(KEY_USE)
                    .bind((-c.amount).max(0))
                    .bind(hour)
                    .bind(day)
                    .bind(key_id)
                    .fetch_optional(&mut *$tx)
                    .await?;
                if used.is_none() {
                    // Returning drops the open transaction: the account update is undone.
                    return Err(LedgerError::CapExceeded);
                }
            }
            let entry_id = new_sorted_id("ent");
            sqlx::query(
                "INSERT INTO ledger_entries \
                 (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at, key_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&entry_id)
            .bind(c.account_id)
            .bind(c.kind.as_str())
            .bind(c.amount)
            .bind(c.held_delta)
            .bind(c.hold_id)
            .bind(c.reason)
            .bind(c.idempotency_key)
            .bind(now)
            .bind(c.key_id)
            .execute(&mut *$tx)
            .await?;
            Applied { entry_id, balance: Credits(balance), held: Credits(held), replayed: false }
        }
    }};
}

async fn apply_once(db: &Db, c: &Change<'_>) -> Result<Applied, LedgerError> {
    Ok(with_tx!(db, |tx| apply_in_tx!(tx, c)))
}

/// Applies one change in its own transaction. A concurrent writer of the same
/// idempotency key (possible on PostgreSQL) makes our insert fail; the retry then
/// finds its entry and replays it.
async fn apply(db: &Db, c: Change<'_>) -> Result<Applied, LedgerError> {
    match apply_once(db, &c).await {
        Err(LedgerError::Db(e)) if is_unique_violation(&e) => apply_once(db, &c).await,
        r => r,
    }
}

fn positive(what: &str, amount: Credits) -> Result<i64, LedgerError> {
    if amount.0 <= 0 {
        return Err(LedgerError::Invalid(format!(
            "{what} must be greater than 0"
        )));
    }
    Ok(amount.0)
}

/// A caller-chosen idempotency key, namespaced so it cannot collide with internal ones.
pub fn user_key(key: Option<&str>) -> String {
    match key {
        Some(k) => format!("user:{k}"),
        None => format!("auto:{}", new_sorted_id("op")),
    }
}

pub async fn grant(
    db: &Db,
    account_id: &str,
    amount: Credits,
    reason: Option<&str>,
    idempotency_key: &str,
) -> Result<Applied, LedgerError> {
    let a = positive("amount", amount)?;
    apply(
        db,
        Change {
            account_id,
            kind: Kind::Grant,
            amount: a,
            held_delta: 0,
            hold_id: None,
            reason,
            idempotency_key,
            key_id: None,
        },
    )
    .await
}

/// Takes credits out of the available balance; refused when that would go below zero.
pub async fn deduct(
    db: &Db,
    account_id: &str,
    amount: Credits,
    reason: Option<&str>,
    idempotency_key: &str,
) -> Result<Applied, LedgerError> {
    deduct_via(db, account_id, None, amount, reason, idempotency_key).await
}

/// [`deduct`] through an API key (`key_id`): the amount counts against the key's caps
/// in the same transaction ([`LedgerError::CapExceeded`]: nothing written).
pub async fn deduct_via(
    db: &Db,
    account_id: &str,
    key_id: Option<&str>,
    amount: Credits,
    reason: Option<&str>,
    idempotency_key: &str,
) -> Result<Applied, LedgerError> {
    let a = positive("amount", amount)?;
    apply(
        db,
        Change {
            account_id,
            kind: Kind::Deduct,
            amount: -a,
            held_delta: 0,
            hold_id: None,
            reason,
            idempotency_key,
            key_id,
        },
    )
    .await
}

/// One hour and one day in milliseconds: the fixed UTC buckets of the hourly and daily
/// caps.
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// The (hour, day) buckets of a time in epoch milliseconds.
pub fn buckets(now_ms: i64) -> (i64, i64) {
    (now_ms.div_euclid(HOUR_MS), now_ms.div_euclid(DAY_MS))
}

/// The cap rule, written once for every statement that counts usage against a key:
/// adds `$amt` (hundredths, >= 0) in hour bucket `$hour` and day bucket `$day`. A bucket
/// older than the stored one counts as the stored one (a node whose clock lags never
/// resets a newer bucket). `CASE` in place of `MAX`/`GREATEST`: the same text runs on
/// both backends.
macro_rules! key_use_set {
    ($amt:literal, $hour:literal, $day:literal) => {
        concat!(
            "used_total = used_total + ",
            $amt,
            ", ",
            "hour_used = (CASE WHEN hour_bucket >= ",
            $hour,
            " THEN hour_used ELSE 0 END) + ",
            $amt,
            ", ",
            "hour_bucket = CASE WHEN hour_bucket >= ",
            $hour,
            " THEN hour_bucket ELSE ",
            $hour,
            " END, ",
            "day_used = (CASE WHEN day_bucket >= ",
            $day,
            " THEN day_used ELSE 0 END) + ",
            $amt,
            ", ",
            "day_bucket = CASE WHEN day_bucket >= ",
            $day,
            " THEN day_bucket ELSE ",
            $day,
            " END"
        )
    };
}

/// … and the condition under which it applies: a positive amount must keep the total,
/// the current hour's and the current day's usage within their caps.
macro_rules! key_use_fits {
    ($amt:literal, $hour:literal, $day:literal) => {
        concat!(
            "(",
            $amt,
            " = 0 OR ((cap_total IS NULL OR used_total + ",
            $amt,
            " <= cap_total) ",
            "AND (cap_hourly IS NULL OR (CASE WHEN hour_bucket >= ",
            $hour,
            " THEN hour_used ELSE 0 END) + ",
            $amt,
            " <= cap_hourly) ",
            "AND (cap_daily IS NULL OR (CASE WHEN day_bucket >= ",
            $day,
            " THEN day_used ELSE 0 END) + ",
            $amt,
            " <= cap_daily)))"
        )
    };
}

/// The give-back rule, written once: `$back` returns to the key's total, and to its
/// hour and day usage when the hold was placed in the buckets still current (`$hour`,
/// `$day`); never below zero.
macro_rules! key_give_back_set {
    ($back:literal, $hour:literal, $day:literal) => {
        concat!(
            "used_total = CASE WHEN used_total >= ",
            $back,
            " THEN used_total - ",
            $back,
            " ELSE 0 END, ",
            "hour_used = CASE WHEN hour_bucket <> ",
            $hour,
            " THEN hour_used WHEN hour_used >= ",
            $back,
            " THEN hour_used - ",
            $back,
            " ELSE 0 END, ",
            "day_used = CASE WHEN day_bucket <> ",
            $day,
            " THEN day_used WHEN day_used >= ",
            $back,
            " THEN day_used - ",
            $back,
            " ELSE 0 END"
        )
    };
}

/// A hold's resolution, written once for both backends: moves a pending hold to `$1`
/// and charges `$2` clamped to the hold (never less than 0, never more than was
/// reserved) — the only place the charge clamp is computed. Matches only a pending
/// hold, so a hold resolves exactly once.
macro_rules! resolve_hold_sql {
    () => {
        "UPDATE holds SET state = $1, \
         charged = CASE WHEN $2 < 0 THEN 0 WHEN $2 > amount THEN amount ELSE $2 END, \
         resolved_at = $3 WHERE id = $4 AND state = 'pending' \
         RETURNING account_id, amount, charged, key_id, created_at"
    };
}

/// Counts `$1` (hundredths, >= 0) against key `$4` in hour bucket `$2` and day bucket
/// `$3`; matches no row (nothing changes) when a positive amount would take the total,
/// the current hour's or the current day's usage above its cap. Placeholders in
/// ascending order of first use, so the same text runs on PostgreSQL, sqlx-SQLite and
/// rusqlite.
pub const KEY_USE: &str = concat!(
    "UPDATE api_keys SET ",
    key_use_set!("$1", "$2", "$3"),
    " WHERE id = $4 AND ",
    key_use_fits!("$1", "$2", "$3"),
    " RETURNING id"
);

/// SQLite: gives `$1` back to key `$3`, for a hold created at `$2` (epoch ms).
const SQLITE_KEY_GIVE_BACK: &str = concat!(
    "UPDATE api_keys SET ",
    key_give_back_set!("$1", "($2 / 3600000)", "($2 / 86400000)"),
    " WHERE id = $3"
);

/// The idempotency key of a hold's entry (`hold:` + id) or of its resolution's
/// (`post:`/`void:` + id): derived from the fresh hold id, one per kind, so it needs no
/// lookup (the unique index still guards it). The only place such keys are built.
fn hold_entry_key(kind: Kind, hold_id: &str) -> String {
    format!("{}:{hold_id}", kind.as_str())
}

/// The idempotency key of an account's initial grant (one per account).
pub fn initial_grant_key(account_id: &str) -> String {
    format!("initial:{account_id}")
}

/// Charges a download link's `price` (`pricing.download_url`) to the account, through
/// `key_id` when given (counted against the key's caps). Every link request is its own
/// charge: a fresh idempotency key each time. A zero price charges nothing.
pub async fn charge_download_link(
    db: &Db,
    account_id: &str,
    key_id: Option<&str>,
    price: Credits,
) -> Result<Option<Applied>, LedgerError> {
    if price.0 <= 0 {
        return Ok(None);
    }
    let key = format!("download-url:{}", new_sorted_id("op"));
    deduct_via(db, account_id, key_id, price, Some("download link"), &key)
        .await
        .map(Some)
}

/// A signed correction; refused when it would take the available balance below zero.
pub async fn adjust(
    db: &Db,
    account_id: &str,
    amount: Credits,
    reason: Option<&str>,
    idempotency_key: &str,
) -> Result<Applied, LedgerError> {
    if amount.0 == 0 {
        return Err(LedgerError::Invalid("amount must not be 0".into()));
    }
    apply(
        db,
        Change {
            account_id,
            kind: Kind::Adjust,
            amount: amount.0,
            held_delta: 0,
            hold_id: None,
            reason,
            idempotency_key,
            key_id: None,
        },
    )
    .await
}

/// A reservation made by [`hold`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: String,
    pub applied: Applied,
}

/// What a hold or its resolution did, for work done in the same transaction.
#[derive(Debug)]
pub struct TxCtx<'a> {
    pub hold_id: &'a str,
    pub account_id: &'a str,
    /// What the resolution charged (0 for a hold or a void).
    pub charged: Credits,
    pub applied: &'a Applied,
}

/// Statements that must commit together with a hold or its resolution — the task a
/// hold pays for, the task's final state and its callback — so that money and the
/// record that explains it can never disagree. They run after the ledger change, with
/// the account row already locked (PostgreSQL) or the single writer held (SQLite);
/// an error rolls everything back.
#[async_trait::async_trait]
pub trait InSameTx: Sync {
    /// The writes, in the ledger change's transaction: on PostgreSQL always, on SQLite
    /// when [`InSameTx::sqlite_direct`] gives no synchronous statements.
    async fn run(&self, conn: TxConn<'_>, ctx: &TxCtx<'_>) -> Result<(), LedgerError>;

    /// True when there is nothing to write (lets PostgreSQL run a hold or resolution
    /// as one autocommit statement).
    fn is_alone(&self) -> bool {
        false
    }

    /// For a hold on SQLite: the same writes as synchronous statements, run right
    /// after the hold's own on the write connection, in the hold's savepoint or
    /// transaction (with group commit, in one go with other writers). When given they
    /// replace [`InSameTx::run`] on SQLite. `None` (the default): `run` is used.
    fn sqlite_direct(&self) -> Option<SqliteDirect> {
        None
    }
}

/// Writes that go with a hold, run on the SQLite write connection inside the hold's
/// savepoint or transaction (see [`InSameTx::sqlite_direct`]). An error undoes the
/// hold too.
pub type SqliteDirect =
    Box<dyn FnOnce(&rusqlite::Connection, &TxCtx<'_>) -> Result<(), LedgerError> + Send>;

/// Nothing else to write.
pub struct Alone;

#[async_trait::async_trait]
impl InSameTx for Alone {
    async fn run(&self, _conn: TxConn<'_>, _ctx: &TxCtx<'_>) -> Result<(), LedgerError> {
        Ok(())
    }

    fn is_alone(&self) -> bool {
        true
    }
}

/// Reserves `amount` of the available balance under a new hold id. A zero amount is
/// allowed (free models) and still records a hold that resolves exactly once.
pub async fn hold(
    db: &Db,
    account_id: &str,
    amount: Credits,
    reason: Option<&str>,
) -> Result<Hold, LedgerError> {
    hold_with(db, account_id, amount, reason, &Alone).await
}

/// A new hold's rows.
struct NewHold {
    hold_id: String,
    entry_id: String,
    idempotency_key: String,
    account_id: String,
    key_id: Option<String>,
    amount: i64,
    reason: Option<String>,
    now: i64,
}

impl NewHold {
    fn applied(&self, balance: i64, held: i64) -> Applied {
        Applied {
            entry_id: self.entry_id.clone(),
            balance: Credits(balance),
            held: Credits(held),
            replayed: false,
        }
    }
}

// ---- The hold, once per backend -------------------------------------------------

/// PostgreSQL: the hold's writes (account, the key's usage when through a key, entry,
/// hold row) as one statement — one round trip, and without a key one autocommit
/// transaction. `k` joins `a`, so the key row is locked after the account row. When
/// the key's cap refuses, `ok` is empty, the entry and the hold row are not written
/// and the last column is false: the caller must then roll the transaction back (the
/// account update did happen), so a hold through a key only runs in a transaction.
const PG_HOLD: &str = concat!(
    "WITH a AS ( \
       UPDATE accounts SET held = held + $1 \
       WHERE id = $2 AND held + $1 >= 0 AND balance >= held + $1 \
       RETURNING balance, held), \
     k AS (UPDATE api_keys SET ",
    key_use_set!("$1", "$9", "$10"),
    " FROM a WHERE api_keys.id = $8 AND ",
    key_use_fits!("$1", "$9", "$10"),
    " RETURNING api_keys.id), \
     ok AS (SELECT 1 FROM a WHERE CAST($8 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM k)), \
     e AS ( \
       INSERT INTO ledger_entries \
       (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
       SELECT $3, $2, 'hold', 0, $1, $4, $5, $6, $7 FROM ok), \
     h AS ( \
       INSERT INTO holds (id, account_id, amount, state, created_at, key_id) \
       SELECT $4, $2, $1, 'pending', $7, $8 FROM ok) \
     SELECT balance, held, EXISTS (SELECT 1 FROM ok) FROM a"
);

/// PostgreSQL: runs [`PG_HOLD`] on `c`, or says why it was refused.
async fn pg_hold(c: &mut sqlx::PgConnection, h: &NewHold) -> Result<Applied, LedgerError> {
    let (hour, day) = buckets(h.now);
    let row: Option<(i64, i64, bool)> = sqlx::query_as(PG_HOLD)
        .bind(h.amount)
        .bind(&h.account_id)
        .bind(&h.entry_id)
        .bind(&h.hold_id)
        .bind(&h.reason)
        .bind(&h.idempotency_key)
        .bind(h.now)
        .bind(&h.key_id)
        .bind(hour)
        .bind(day)
        .fetch_optional(&mut *c)
        .await?;
    match row {
        Some((balance, held, true)) => Ok(h.applied(balance, held)),
        // The cap refused after the account was updated: the caller's transaction
        // is dropped, so nothing is kept.
        Some((_, _, false)) => Err(LedgerError::CapExceeded),
        None => {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM accounts WHERE id = $1")
                    .bind(&h.account_id)
                    .fetch_optional(&mut *c)
                    .await?;
            Err(account_refusal(exists.is_some()))
        }
    }
}

/// SQLite (rusqlite on the write connection, inside the caller's savepoint or
/// transaction): the hold's writes, then `direct`'s; or why it was refused (then the
/// caller rolls back whatever was written).
fn sqlite_hold(
    c: &rusqlite::Connection,
    h: &NewHold,
    direct: Option<SqliteDirect>,
) -> Result<Applied, LedgerError> {
    use rusqlite::OptionalExtension;
    let row: Option<(i64, i64)> = c
        .prepare_cached(
            "UPDATE accounts SET held = held + ?1 \
             WHERE id = ?2 AND held + ?1 >= 0 AND balance >= held + ?1 \
             RETURNING balance, held",
        )?
        .query_row(rusqlite::params![h.amount, h.account_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((balance, held)) = row else {
        let exists = c
            .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
            .query_row([&h.account_id], |_| Ok(()))
            .optional()?;
        return Err(account_refusal(exists.is_some()));
    };
    c.prepare_cached(
        "INSERT INTO ledger_entries \
         (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
         VALUES (?1, ?2, 'hold', 0, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        h.entry_id,
        h.account_id,
        h.amount,
        h.hold_id,
        h.reason,
        h.idempotency_key,
        h.now
    ])?;
    c.prepare_cached(
        "INSERT INTO holds (id, account_id, amount, state, created_at, key_id) \
         VALUES (?1, ?2, ?3, 'pending', ?4, ?5)",
    )?
    .execute(rusqlite::params![
        h.hold_id,
        h.account_id,
        h.amount,
        h.now,
        h.key_id
    ])?;
    if let Some(key_id) = &h.key_id {
        let (hour, day) = buckets(h.now);
        let used = c
            .prepare_cached(KEY_USE)?
            .query_row(rusqlite::params![h.amount, hour, day, key_id], |_| Ok(()))
            .optional()?;
        if used.is_none() {
            return Err(LedgerError::CapExceeded);
        }
    }
    let applied = h.applied(balance, held);
    if let Some(also) = direct {
        let ctx = TxCtx {
            hold_id: &h.hold_id,
            account_id: &h.account_id,
            charged: Credits::ZERO,
            applied: &applied,
        };
        also(c, &ctx)?;
    }
    Ok(applied)
}

/// Why a conditional account update matched nothing.
fn account_refusal(exists: bool) -> LedgerError {
    if exists {
        LedgerError::InsufficientCredits
    } else {
        LedgerError::UnknownAccount
    }
}

/// [`hold`], plus `also` in the same transaction.
pub async fn hold_with(
    db: &Db,
    account_id: &str,
    amount: Credits,
    reason: Option<&str>,
    also: &dyn InSameTx,
) -> Result<Hold, LedgerError> {
    hold_via(db, account_id, None, amount, reason, also).await
}

/// [`hold_with`] through an API key (`key_id`): the amount counts against the key's
/// caps in the same transaction ([`LedgerError::CapExceeded`]: nothing written).
///
/// Each backend has one implementation ([`pg_hold`], [`sqlite_hold`]); what differs
/// between the paths below is only how the transaction around it is run.
pub async fn hold_via(
    db: &Db,
    account_id: &str,
    key_id: Option<&str>,
    amount: Credits,
    reason: Option<&str>,
    also: &dyn InSameTx,
) -> Result<Hold, LedgerError> {
    if amount.0 < 0 {
        return Err(LedgerError::Invalid(
            "hold amount must not be negative".into(),
        ));
    }
    let hold_id = new_sorted_id("hold");
    let h = NewHold {
        idempotency_key: hold_entry_key(Kind::Hold, &hold_id),
        hold_id: hold_id.clone(),
        entry_id: new_sorted_id("ent"),
        account_id: account_id.to_owned(),
        key_id: key_id.map(str::to_owned),
        amount: amount.0,
        reason: reason.map(str::to_owned),
        now: now_ms(),
    };
    // SQLite: `also`'s writes as statements, when it has them.
    let direct = match db {
        Db::Sqlite(_) if !also.is_alone() => also.sqlite_direct(),
        _ => None,
    };
    // `also`'s writes go through its asynchronous `run`.
    let via_run = !also.is_alone() && direct.is_none();
    let applied = match db {
        // Everything as SQLite statements: the group committer runs them in one go.
        Db::Sqlite(SqliteDb { group: Some(g), .. }) if !via_run => {
            g.run(move |c| sqlite_hold(c, &h, direct)).await?
        }
        // Nothing else to write and no key's caps to check: the one statement is the
        // transaction.
        Db::Postgres(pg) if also.is_alone() && key_id.is_none() => {
            let mut c = pg.pool.acquire().await?;
            let applied = pg_hold(&mut c, &h).await;
            // committed (one statement): this node's next read sees it
            pg.wrote();
            applied?
        }
        _ => with_tx!(db, |tx| {
            let applied = match TxConn::from(&mut *tx) {
                TxConn::Sqlite(c) => {
                    crate::store::sqlite_raw::with_raw(c, |rc| sqlite_hold(rc, &h, direct))
                        .await??
                }
                TxConn::Postgres(c) => pg_hold(c, &h).await?,
            };
            if via_run {
                let ctx = TxCtx {
                    hold_id: &hold_id,
                    account_id,
                    charged: Credits::ZERO,
                    applied: &applied,
                };
                also.run(TxConn::from(&mut *tx), &ctx).await?;
            }
            applied
        }),
    };
    Ok(Hold { hold_id, applied })
}

/// How a hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Charge this much (clamped to the hold: never more than was reserved).
    Post(Credits),
    Void,
}

/// Resolves a pending hold exactly once. Returns the applied entry and the amount
/// actually charged.
pub async fn resolve(
    db: &Db,
    hold_id: &str,
    how: Resolution,
    reason: Option<&str>,
) -> Result<(Applied, Credits), LedgerError> {
    resolve_with(db, hold_id, how, reason, &Alone).await
}

/// A resolution to write.
struct Resolve {
    hold_id: String,
    entry_id: String,
    idempotency_key: String,
    state: &'static str,
    kind: Kind,
    /// Requested charge (clamped to the hold by [`resolve_hold_sql`]); 0 for a void.
    charge: i64,
    reason: Option<String>,
    now: i64,
}

/// What a resolution did.
struct Resolved {
    applied: Applied,
    account_id: String,
    charged: i64,
}

impl Resolve {
    fn resolved(&self, balance: i64, held: i64, account_id: String, charged: i64) -> Resolved {
        Resolved {
            applied: Applied {
                entry_id: self.entry_id.clone(),
                balance: Credits(balance),
                held: Credits(held),
                replayed: false,
            },
            account_id,
            charged,
        }
    }
}

/// Why a pending-only update of a hold matched nothing.
fn hold_refusal(exists: bool) -> LedgerError {
    if exists {
        LedgerError::HoldResolved
    } else {
        LedgerError::UnknownHold
    }
}

// ---- The resolution, once per backend --------------------------------------------

/// PostgreSQL: a resolution's writes (hold state, account, the give-back to the key
/// the hold was placed through, entry) as one statement. `k` joins `a`, so the key row
/// is locked after the account row (the order of every hold and deduct too).
const PG_RESOLVE: &str = concat!(
    "WITH h AS (",
    resolve_hold_sql!(),
    "), \
     a AS ( \
       UPDATE accounts SET balance = accounts.balance - h.charged, held = accounts.held - h.amount \
       FROM h WHERE accounts.id = h.account_id \
       RETURNING accounts.balance, accounts.held), \
     k AS (UPDATE api_keys SET ",
    key_give_back_set!(
        "(h.amount - h.charged)",
        "(h.created_at / 3600000)",
        "(h.created_at / 86400000)"
    ),
    " FROM h, a WHERE api_keys.id = h.key_id AND h.amount > h.charged), \
     e AS ( \
       INSERT INTO ledger_entries \
       (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
       SELECT $5, h.account_id, $6, -h.charged, -h.amount, $4, $7, $8, $3 FROM h) \
     SELECT a.balance, a.held, h.account_id, h.charged FROM a, h"
);

/// PostgreSQL: runs [`PG_RESOLVE`] on `c`, or says why nothing was resolved.
async fn pg_resolve(c: &mut sqlx::PgConnection, r: &Resolve) -> Result<Resolved, LedgerError> {
    let row: Option<(i64, i64, String, i64)> = sqlx::query_as(PG_RESOLVE)
        .bind(r.state)
        .bind(r.charge)
        .bind(r.now)
        .bind(&r.hold_id)
        .bind(&r.entry_id)
        .bind(r.kind.as_str())
        .bind(&r.reason)
        .bind(&r.idempotency_key)
        .fetch_optional(&mut *c)
        .await?;
    match row {
        Some((balance, held, account_id, charged)) => {
            Ok(r.resolved(balance, held, account_id, charged))
        }
        None => {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM holds WHERE id = $1")
                    .bind(&r.hold_id)
                    .fetch_optional(&mut *c)
                    .await?;
            Err(hold_refusal(exists.is_some()))
        }
    }
}

/// SQLite (rusqlite on the write connection, inside the caller's savepoint or
/// transaction): a resolution's writes, or why nothing was resolved.
fn sqlite_resolve(c: &rusqlite::Connection, r: &Resolve) -> Result<Resolved, LedgerError> {
    use rusqlite::OptionalExtension;
    type HoldRow = (String, i64, i64, Option<String>, i64);
    let hold: Option<HoldRow> = c
        .prepare_cached(resolve_hold_sql!())?
        .query_row(
            rusqlite::params![r.state, r.charge, r.now, r.hold_id],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .optional()?;
    let Some((account_id, amount, charged, key_id, created_at)) = hold else {
        let exists = c
            .prepare_cached("SELECT 1 FROM holds WHERE id = ?1")?
            .query_row([&r.hold_id], |_| Ok(()))
            .optional()?;
        return Err(hold_refusal(exists.is_some()));
    };
    let (balance, held): (i64, i64) = c
        .prepare_cached(
            "UPDATE accounts SET balance = balance - ?1, held = held - ?2 WHERE id = ?3 \
             RETURNING balance, held",
        )?
        .query_row(rusqlite::params![charged, amount, account_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    if let Some(key_id) = key_id.filter(|_| amount > charged) {
        c.prepare_cached(SQLITE_KEY_GIVE_BACK)?
            .execute(rusqlite::params![amount - charged, created_at, key_id])?;
    }
    c.prepare_cached(
        "INSERT INTO ledger_entries \
         (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(rusqlite::params![
        r.entry_id,
        account_id,
        r.kind.as_str(),
        -charged,
        -amount,
        r.hold_id,
        r.reason,
        r.idempotency_key,
        r.now
    ])?;
    Ok(r.resolved(balance, held, account_id, charged))
}

/// [`resolve`], plus `also` in the same transaction (run only when this call is the
/// one that resolves the hold).
pub async fn resolve_with(
    db: &Db,
    hold_id: &str,
    how: Resolution,
    reason: Option<&str>,
    also: &dyn InSameTx,
) -> Result<(Applied, Credits), LedgerError> {
    let (state, kind, charge) = match how {
        Resolution::Post(c) => ("posted", Kind::Post, c.0),
        Resolution::Void => ("voided", Kind::Void, 0),
    };
    let r = Resolve {
        hold_id: hold_id.to_owned(),
        entry_id: new_sorted_id("ent"),
        idempotency_key: hold_entry_key(kind, hold_id),
        state,
        kind,
        charge,
        reason: reason.map(str::to_owned),
        now: now_ms(),
    };
    let done = match db {
        // Nothing else to write: the group committer runs the statements in one go.
        Db::Sqlite(SqliteDb { group: Some(g), .. }) if also.is_alone() => {
            g.run(move |c| sqlite_resolve(c, &r)).await?
        }
        // Nothing else to write: the one statement is the transaction.
        Db::Postgres(pg) if also.is_alone() => {
            let mut c = pg.pool.acquire().await?;
            let done = pg_resolve(&mut c, &r).await;
            // committed (one statement): this node's next read sees it
            pg.wrote();
            done?
        }
        _ => with_tx!(db, |tx| {
            let done = match TxConn::from(&mut *tx) {
                TxConn::Sqlite(c) => {
                    crate::store::sqlite_raw::with_raw(c, |rc| sqlite_resolve(rc, &r)).await??
                }
                TxConn::Postgres(c) => pg_resolve(c, &r).await?,
            };
            let ctx = TxCtx {
                hold_id,
                account_id: &done.account_id,
                charged: Credits(done.charged),
                applied: &done.applied,
            };
            also.run(TxConn::from(&mut *tx), &ctx).await?;
            done
        }),
    };
    Ok((done.applied, Credits(done.charged)))
}

/// Burn rate and projected exhaustion, the arithmetic of `kie monitor`: credits per
/// hour over a window in which `spent_hundredths` were spent, and the seconds until
/// `available` runs out at that rate (`None` when nothing was spent).
pub fn burn(spent_hundredths: i64, window_secs: f64, available: Credits) -> (f64, Option<f64>) {
    if spent_hundredths <= 0 || window_secs <= 0.0 {
        return (0.0, None);
    }
    let per_hour = spent_hundredths as f64 * 36.0 / window_secs;
    let left = available.0.max(0) as f64;
    (per_hour, Some(left * window_secs / spent_hundredths as f64))
}

/// Posted balance and held credits of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub balance: Credits,
    pub held: Credits,
}

impl Balance {
    pub fn available(&self) -> Credits {
        Credits(self.balance.0 - self.held.0)
    }
}

pub async fn balance(db: &Db, account_id: &str) -> Result<Option<Balance>, sqlx::Error> {
    let row: Option<(i64, i64)> = crate::with_read!(db, |p| {
        sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(p)
            .await?
    });
    Ok(row.map(|(b, h)| Balance {
        balance: Credits(b),
        held: Credits(h),
    }))
}

/// The available balance alone: the hot path of `GET /api/v1/chat/credit`.
pub async fn available(db: &Db, account_id: &str) -> Result<Option<Credits>, sqlx::Error> {
    Ok(db.available(account_id).await?.map(Credits))
}

/// A posted entry as `kie admin credits history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub entry_id: String,
    pub kind: String,
    pub amount: Credits,
    pub reason: Option<String>,
    pub created_at: i64,
}

/// Entries that changed the posted balance, oldest first; their amounts sum to it.
/// Holds and voids (which only move credits in and out of `held`) are not listed.
pub async fn history(db: &Db, account_id: &str) -> Result<Vec<Entry>, sqlx::Error> {
    let rows: Vec<(String, String, i64, Option<String>, i64)> = crate::with_read!(db, |p| {
        sqlx::query_as(
            "SELECT id, kind, amount, reason, created_at FROM ledger_entries \
             WHERE account_id = $1 AND kind IN ('grant','deduct','adjust','post') ORDER BY seq",
        )
        .bind(account_id)
        .fetch_all(p)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(|(entry_id, kind, amount, reason, created_at)| Entry {
            entry_id,
            kind,
            amount: Credits(amount),
            reason,
            created_at,
        })
        .collect())
}

/// Any ledger entry (holds and voids too), as the console's Usage page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerLine {
    pub seq: i64,
    pub entry_id: String,
    pub kind: String,
    pub amount: Credits,
    pub held_delta: Credits,
    pub reason: Option<String>,
    pub created_at: i64,
}

/// An account's entries, newest first, with `seq` below `before`, at most `limit`
/// (`ledger_entries_account` serves it in order).
pub async fn lines(
    db: &Db,
    account_id: &str,
    before: Option<i64>,
    since: Option<i64>,
    limit: i64,
) -> Result<Vec<LedgerLine>, sqlx::Error> {
    type Row = (i64, String, String, i64, i64, Option<String>, i64);
    let rows: Vec<Row> = crate::with_read!(db, |p| {
        sqlx::query_as(
            "SELECT seq, id, kind, amount, held_delta, reason, created_at FROM ledger_entries \
             WHERE account_id = $1 AND seq < $2 AND created_at >= $3 ORDER BY seq DESC LIMIT $4",
        )
        .bind(account_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(since.unwrap_or(i64::MIN))
        .bind(limit)
        .fetch_all(p)
        .await?
    });
    Ok(rows
        .into_iter()
        .map(
            |(seq, entry_id, kind, amount, held, reason, created_at)| LedgerLine {
                seq,
                entry_id,
                kind,
                amount: Credits(amount),
                held_delta: Credits(held),
                reason,
                created_at,
            },
        )
        .collect())
}

/// A day's spending is final this long after the day ended (entries carry the time of
/// their transaction; this leaves room for clocks of several nodes and slow commits).
const SETTLE_MS: i64 = 3_600_000;

/// Hundredths spent (posted decreases: task charges, deductions, negative
/// adjustments; only those have `amount < 0`) per UTC day in `[from_ms, to_ms)`:
/// `(days since the epoch, spent)`, days without spending left out.
async fn spent_between(
    db: &Db,
    account_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    Ok(crate::with_read!(db, |p| {
        sqlx::query_as(
            "SELECT CAST(created_at / 86400000 AS BIGINT) AS day, CAST(-SUM(amount) AS BIGINT) \
             FROM ledger_entries WHERE account_id = $1 AND created_at >= $2 AND created_at < $3 \
             AND amount < 0 GROUP BY day ORDER BY day",
        )
        .bind(account_id)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(p)
        .await?
    }))
}

/// Hundredths spent on each UTC day from `first_day` to `last_day` (days since the
/// epoch, inclusive), one entry per day. Settled days (see [`SETTLE_MS`]) are read
/// from `ledger_spent_days`, computed and kept there the first time; the others are
/// summed from the ledger each time.
pub async fn spent_per_day(
    db: &Db,
    account_id: &str,
    first_day: i64,
    last_day: i64,
    now_ms: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    // days before this one are settled
    let settled_end = ((now_ms - SETTLE_MS).div_euclid(DAY_MS)).clamp(first_day, last_day + 1);
    let mut out = vec![0i64; (last_day - first_day + 1).max(0) as usize];
    if settled_end > first_day {
        let kept: Vec<(i64, i64)> = crate::with_read!(db, |p| {
            sqlx::query_as(
                "SELECT day, spent FROM ledger_spent_days WHERE account_id = $1 \
                 AND day >= $2 AND day < $3",
            )
            .bind(account_id)
            .bind(first_day)
            .bind(settled_end)
            .fetch_all(p)
            .await?
        });
        let mut known = vec![false; (settled_end - first_day) as usize];
        for (day, spent) in &kept {
            known[(day - first_day) as usize] = true;
            out[(day - first_day) as usize] = *spent;
        }
        if let Some(gap) = known.iter().position(|k| !k) {
            let from = first_day + gap as i64;
            let sums = spent_between(db, account_id, from * DAY_MS, settled_end * DAY_MS).await?;
            let mut fresh = vec![0i64; (settled_end - from) as usize];
            for (day, spent) in sums {
                fresh[(day - from) as usize] = spent;
            }
            with_tx!(db, |tx| {
                for (k, spent) in fresh.iter().enumerate() {
                    let day = from + k as i64;
                    out[(day - first_day) as usize] = *spent;
                    sqlx::query(
                        "INSERT INTO ledger_spent_days (account_id, day, spent) VALUES ($1, $2, $3) \
                         ON CONFLICT (account_id, day) DO NOTHING",
                    )
                    .bind(account_id)
                    .bind(day)
                    .bind(*spent)
                    .execute(&mut *tx)
                    .await?;
                }
            });
        }
    }
    if settled_end <= last_day {
        let live = spent_between(
            db,
            account_id,
            settled_end * DAY_MS,
            (last_day + 1) * DAY_MS,
        )
        .await?;
        for (day, spent) in live {
            if (first_day..=last_day).contains(&day) {
                out[(day - first_day) as usize] = spent;
            }
        }
    }
    Ok(out)
}

/// Hundredths spent since `since_ms` (the burn rate's window).
pub async fn spent_since(db: &Db, account_id: &str, since_ms: i64) -> Result<i64, sqlx::Error> {
    let v: Option<i64> = crate::with_read!(db, |p| {
        sqlx::query_scalar(
            "SELECT CAST(-SUM(amount) AS BIGINT) FROM ledger_entries \
             WHERE account_id = $1 AND created_at >= $2 AND amount < 0",
        )
        .bind(account_id)
        .bind(since_ms)
        .fetch_one(p)
        .await?
    });
    Ok(v.unwrap_or(0))
}

/// Sums of all entries of an account, to check the invariants (tests, `kie admin`).
pub async fn entry_sums(db: &Db, account_id: &str) -> Result<(Credits, Credits), sqlx::Error> {
    let (a, h): (i64, i64) = crate::with_read!(db, |p| {
        sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT), CAST(COALESCE(SUM(held_delta), 0) AS BIGINT) FROM ledger_entries WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_one(p)
        .await?
    });
    Ok((Credits(a), Credits(h)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseUrl;
    use crate::store::OpenOptions;
    use std::path::PathBuf;

    async fn open(group_commit: bool) -> (Db, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "kie-ledger-{}-{}",
            std::process::id(),
            kie_wire::apikey::random_base62(8)
        ));
        let opts = OpenOptions {
            sqlite_group_commit: group_commit,
            ..Default::default()
        };
        let db = Db::open(&DatabaseUrl::Sqlite(dir.join("l.db")), &opts)
            .await
            .unwrap();
        (db, dir)
    }

    async fn check_sums(db: &Db, acc: &str) -> Balance {
        let b = balance(db, acc).await.unwrap().unwrap();
        assert_eq!(entry_sums(db, acc).await.unwrap(), (b.balance, b.held));
        b
    }

    async fn keys_of(db: &Db, hold_id: &str) -> Vec<String> {
        crate::with_read!(db, |p| sqlx::query_scalar(
            "SELECT idempotency_key FROM ledger_entries WHERE hold_id = $1 ORDER BY seq"
        )
        .bind(hold_id)
        .fetch_all(p)
        .await
        .unwrap())
    }

    /// 64 concurrent holds on one account that pays for 10: exactly 10 are taken, on
    /// the group commit's direct path and on one transaction per hold alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_holds_take_exactly_what_the_balance_allows() {
        for group_commit in [true, false] {
            let (db, dir) = open(group_commit).await;
            let acc = crate::accounts::create(&db, "a", Some(Credits(1000)))
                .await
                .unwrap()
                .id;
            let mut all = Vec::new();
            for _ in 0..64 {
                let (db, acc) = (db.clone(), acc.clone());
                all.push(tokio::spawn(async move {
                    hold(&db, &acc, Credits(100), Some("r")).await
                }));
            }
            let (mut held, mut refused) = (Vec::new(), 0);
            for h in all {
                match h.await.unwrap() {
                    Ok(h) => held.push(h),
                    Err(LedgerError::InsufficientCredits) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(
                (held.len(), refused),
                (10, 54),
                "group commit {group_commit}"
            );
            let b = check_sums(&db, &acc).await;
            assert_eq!((b.balance, b.held), (Credits(1000), Credits(1000)));
            // Every acknowledged hold is readable at once, and pending.
            for h in &held {
                assert!(h.applied.held.0 <= 1000 && !h.applied.replayed);
                assert_eq!(
                    keys_of(&db, &h.hold_id).await,
                    [format!("hold:{}", h.hold_id)]
                );
            }
            db.close().await;
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    async fn key_usage(db: &Db, key_id: &str) -> (i64, i64, i64) {
        crate::with_read!(db, |p| sqlx::query_as(
            "SELECT used_total, hour_used, day_used FROM api_keys WHERE id = $1"
        )
        .bind(key_id)
        .fetch_one(p)
        .await
        .unwrap())
    }

    /// 32 concurrent holds through a key whose cap allows 7 of them: exactly 7 are
    /// taken and nothing of the others is written, whether the hold runs in the group
    /// commit's batch or in a transaction of its own (its extra writes as SQLite
    /// statements or through `run`); a void gives its amount back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_holds_through_a_key_respect_its_caps() {
        for group_commit in [true, false] {
            for which in ["hourly", "daily", "total"] {
                let (db, dir) = open(group_commit).await;
                let acc = crate::accounts::create(&db, "a", Some(Credits(100_000)))
                    .await
                    .unwrap()
                    .id;
                let mut caps = crate::accounts::Caps::default();
                let cap = Some(Credits(700));
                match which {
                    "hourly" => caps.hourly = cap,
                    "daily" => caps.daily = cap,
                    _ => caps.total = cap,
                }
                let opts = crate::accounts::KeyOptions {
                    caps,
                    ..Default::default()
                };
                let key = crate::accounts::create_key_with(&db, &acc, None, None, &opts)
                    .await
                    .unwrap()
                    .id;
                // Extra writes as SQLite statements: in the group commit's batch.
                struct Nothing;
                #[async_trait::async_trait]
                impl InSameTx for Nothing {
                    async fn run(&self, _: TxConn<'_>, _: &TxCtx<'_>) -> Result<(), LedgerError> {
                        Ok(())
                    }
                    fn sqlite_direct(&self) -> Option<SqliteDirect> {
                        Some(Box::new(|_, _| Ok(())))
                    }
                }
                // Extra writes through `run`: a transaction (savepoint) of its own.
                struct NoDirect;
                #[async_trait::async_trait]
                impl InSameTx for NoDirect {
                    async fn run(&self, _: TxConn<'_>, _: &TxCtx<'_>) -> Result<(), LedgerError> {
                        Ok(())
                    }
                }
                let mut all = Vec::new();
                for i in 0..32 {
                    let (db, acc, key) = (db.clone(), acc.clone(), key.clone());
                    all.push(tokio::spawn(async move {
                        let also: &dyn InSameTx = match i % 3 {
                            0 => &Nothing,
                            1 => &NoDirect,
                            _ => &Alone,
                        };
                        hold_via(&db, &acc, Some(&key), Credits(100), None, also).await
                    }));
                }
                let (mut held, mut refused) = (Vec::new(), 0);
                for h in all {
                    match h.await.unwrap() {
                        Ok(h) => held.push(h),
                        Err(LedgerError::CapExceeded) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                let ctx = format!("group commit {group_commit}, {which}");
                assert_eq!((held.len(), refused), (7, 25), "{ctx}");
                let b = check_sums(&db, &acc).await;
                assert_eq!(
                    (b.balance, b.held),
                    (Credits(100_000), Credits(700)),
                    "{ctx}"
                );
                assert_eq!(key_usage(&db, &key).await, (700, 700, 700), "{ctx}");
                let holds: i64 = crate::with_read!(&db, |p| sqlx::query_scalar(
                    "SELECT COUNT(*) FROM holds WHERE key_id = $1"
                )
                .bind(&key)
                .fetch_one(p)
                .await
                .unwrap());
                assert_eq!(holds, 7, "{ctx}");
                // A void gives the amount back; a post keeps it counted.
                resolve(&db, &held[0].hold_id, Resolution::Void, None)
                    .await
                    .unwrap();
                resolve(&db, &held[1].hold_id, Resolution::Post(Credits(40)), None)
                    .await
                    .unwrap();
                assert_eq!(key_usage(&db, &key).await, (540, 540, 540), "{ctx}");
                // Room for one more hold of 100 now, not two.
                hold_via(&db, &acc, Some(&key), Credits(100), None, &Alone)
                    .await
                    .unwrap();
                assert!(matches!(
                    hold_via(&db, &acc, Some(&key), Credits(100), None, &Nothing).await,
                    Err(LedgerError::CapExceeded)
                ));
                // A zero-amount hold is never refused by a cap.
                hold_via(&db, &acc, Some(&key), Credits(0), None, &Alone)
                    .await
                    .unwrap();
                // Deducts through the key count too, and are refused the same way.
                deduct_via(&db, &acc, Some(&key), Credits(60), None, "d1")
                    .await
                    .unwrap();
                assert!(matches!(
                    deduct_via(&db, &acc, Some(&key), Credits(1), None, "d2").await,
                    Err(LedgerError::CapExceeded)
                ));
                assert_eq!(key_usage(&db, &key).await, (700, 700, 700), "{ctx}");
                let b = check_sums(&db, &acc).await;
                assert_eq!(
                    (b.balance, b.held),
                    (Credits(100_000 - 40 - 60), Credits(600)),
                    "{ctx}"
                );
                db.close().await;
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Holds and resolutions, and each refusal, the same on both SQLite paths.
    #[tokio::test]
    async fn holds_and_resolutions() {
        for group_commit in [true, false] {
            let (db, dir) = open(group_commit).await;
            let acc = crate::accounts::create(&db, "a", Some(Credits(1000)))
                .await
                .unwrap()
                .id;
            let h = hold(&db, &acc, Credits(300), Some("task")).await.unwrap();
            assert_eq!(
                (h.applied.balance, h.applied.held),
                (Credits(1000), Credits(300))
            );
            let (a, charged) = resolve(&db, &h.hold_id, Resolution::Post(Credits(500)), None)
                .await
                .unwrap();
            // Clamped to the hold.
            assert_eq!(
                (a.balance, a.held, charged),
                (Credits(700), Credits(0), Credits(300))
            );
            assert_eq!(
                keys_of(&db, &h.hold_id).await,
                [format!("hold:{}", h.hold_id), format!("post:{}", h.hold_id)]
            );
            assert!(matches!(
                resolve(&db, &h.hold_id, Resolution::Void, None).await,
                Err(LedgerError::HoldResolved)
            ));
            let v = hold(&db, &acc, Credits(0), None).await.unwrap();
            let (a, charged) = resolve(&db, &v.hold_id, Resolution::Void, None)
                .await
                .unwrap();
            assert_eq!(
                (a.balance, a.held, charged),
                (Credits(700), Credits(0), Credits(0))
            );
            assert!(matches!(
                resolve(&db, "hold_nope", Resolution::Void, None).await,
                Err(LedgerError::UnknownHold)
            ));
            assert!(matches!(
                hold(&db, "acc_nope", Credits(1), None).await,
                Err(LedgerError::UnknownAccount)
            ));
            assert!(matches!(
                hold(&db, &acc, Credits(701), None).await,
                Err(LedgerError::InsufficientCredits)
            ));
            let b = check_sums(&db, &acc).await;
            assert_eq!((b.balance, b.held), (Credits(700), Credits(0)));
            db.close().await;
            // Durable: a new process sees the same.
            let db2 = Db::open(
                &DatabaseUrl::Sqlite(dir.join("l.db")),
                &OpenOptions::default(),
            )
            .await
            .unwrap();
            let b = check_sums(&db2, &acc).await;
            assert_eq!((b.balance, b.held), (Credits(700), Credits(0)));
            db2.close().await;
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
