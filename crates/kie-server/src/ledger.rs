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
//! Entry kinds: `grant` (+), `deduct` (−), `adjust` (±) change the posted balance;
//! `hold` reserves credits (held +X, balance unchanged); `post` charges a hold (balance
//! −charged, held −X); `void` releases it (held −X).

use kie_wire::Credits;
use serde::Serialize;

use crate::store::{is_unique_violation, new_id, now_ms, Db, SqliteDb, TxConn};
use crate::with_tx;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("insufficient credits")]
    InsufficientCredits,
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
        LedgerError::Db(crate::store::group::db_error(e))
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
            let entry_id = new_id("ent");
            sqlx::query(
                "INSERT INTO ledger_entries \
                 (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&entry_id)
            .bind(c.account_id)
            .bind(c.kind.as_str())
            .bind(c.amount)
            .bind(c.held_delta)
            .bind(c.hold_id)
            .bind(c.reason)
            .bind(c.idempotency_key)
            .bind(now_ms())
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
        None => format!("auto:{}", new_id("op")),
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
        },
    )
    .await
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
    async fn run(&self, conn: TxConn<'_>, ctx: &TxCtx<'_>) -> Result<(), LedgerError>;

    /// True when there is nothing to write (lets PostgreSQL run a hold or resolution
    /// as one autocommit statement).
    fn is_alone(&self) -> bool {
        false
    }

    /// The same writes as [`InSameTx::run`] as synchronous SQLite statements, for the
    /// group commit's direct path ([`crate::store::group::Group::run`]: the hold and
    /// these statements run in one go with other writers, in one savepoint). `None`
    /// (the default): the hold takes the statement-by-statement path.
    fn sqlite_direct(&self) -> Option<SqliteDirect> {
        None
    }
}

/// Writes that go with a hold, run on the SQLite write connection inside the hold's
/// savepoint (see [`InSameTx::sqlite_direct`]). An error undoes the hold too.
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
struct NewHold<'a> {
    hold_id: &'a str,
    account_id: &'a str,
    amount: i64,
    reason: Option<&'a str>,
    now: i64,
}

/// PostgreSQL: the hold's three writes (account, entry, hold row) as one statement —
/// one round trip, and in autocommit mode one transaction.
const PG_HOLD: &str = "WITH a AS ( \
       UPDATE accounts SET held = held + $1 \
       WHERE id = $2 AND held + $1 >= 0 AND balance >= held + $1 \
       RETURNING balance, held), \
     e AS ( \
       INSERT INTO ledger_entries \
       (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
       SELECT $3, $2, 'hold', 0, $1, $4, $5, $6, $7 FROM a), \
     h AS ( \
       INSERT INTO holds (id, account_id, amount, state, created_at) \
       SELECT $4, $2, $1, 'pending', $7 FROM a) \
     SELECT balance, held FROM a";

macro_rules! pg_hold_query {
    ($h:expr, $entry_id:expr, $idem:expr) => {
        sqlx::query_as::<_, (i64, i64)>(PG_HOLD)
            .bind($h.amount)
            .bind($h.account_id)
            .bind($entry_id)
            .bind($h.hold_id)
            .bind($h.reason)
            .bind($idem)
            .bind($h.now)
    };
}

/// Why a conditional account update matched nothing.
async fn refusal(db: &Db, account_id: &str) -> LedgerError {
    let exists: Result<Option<i64>, sqlx::Error> = crate::with_read!(db, |p| {
        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(p)
            .await
    });
    match exists {
        Ok(Some(_)) => LedgerError::InsufficientCredits,
        Ok(None) => LedgerError::UnknownAccount,
        Err(e) => LedgerError::Db(e),
    }
}

/// Writes a hold inside an open transaction. `None`: the account is unknown or its
/// available balance is too small (nothing was written). The hold's idempotency key
/// derives from its fresh id, so it cannot have been used: no lookup, the unique index
/// still guards it.
/// A hold's statements on SQLite, shared by the sqlx path and the group commit's
/// direct path: take the amount if the balance allows (no row: refused) …
const SQLITE_HOLD_UPDATE: &str = "UPDATE accounts SET held = held + ?1 \
     WHERE id = ?2 AND held + ?1 >= 0 AND balance >= held + ?1 \
     RETURNING balance, held";
/// … and record the pending hold.
const SQLITE_HOLD_INSERT: &str = "INSERT INTO holds (id, account_id, amount, state, created_at) \
     VALUES (?1, ?2, ?3, 'pending', ?4)";

async fn hold_in(conn: TxConn<'_>, h: &NewHold<'_>) -> Result<Option<Applied>, sqlx::Error> {
    let entry_id = new_id("ent");
    let idem = format!("hold:{}", h.hold_id);
    let row = match conn {
        TxConn::Postgres(c) => {
            pg_hold_query!(h, &entry_id, &idem)
                .fetch_optional(&mut *c)
                .await?
        }
        TxConn::Sqlite(c) => {
            let row: Option<(i64, i64)> = sqlx::query_as(SQLITE_HOLD_UPDATE)
                .bind(h.amount)
                .bind(h.account_id)
                .fetch_optional(&mut *c)
                .await?;
            if row.is_some() {
                sqlx::query(
                    "INSERT INTO ledger_entries \
                     (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
                     VALUES ($1, $2, 'hold', 0, $3, $4, $5, $6, $7)",
                )
                .bind(&entry_id)
                .bind(h.account_id)
                .bind(h.amount)
                .bind(h.hold_id)
                .bind(h.reason)
                .bind(&idem)
                .bind(h.now)
                .execute(&mut *c)
                .await?;
                sqlx::query(SQLITE_HOLD_INSERT)
                    .bind(h.hold_id)
                    .bind(h.account_id)
                    .bind(h.amount)
                    .bind(h.now)
                    .execute(&mut *c)
                    .await?;
            }
            row
        }
    };
    Ok(row.map(|(balance, held)| Applied {
        entry_id,
        balance: Credits(balance),
        held: Credits(held),
        replayed: false,
    }))
}

/// A new hold's rows, owned (for [`crate::store::group::Group::run`]).
struct OwnedHold {
    hold_id: String,
    account_id: String,
    amount: i64,
    reason: Option<String>,
    now: i64,
}

/// SQLite, on the group commit's write connection: the hold's three writes, or why
/// it was refused (then nothing was written).
fn sqlite_hold(c: &rusqlite::Connection, h: &OwnedHold) -> Result<Applied, LedgerError> {
    use rusqlite::OptionalExtension;
    let row: Option<(i64, i64)> = c
        .prepare_cached(SQLITE_HOLD_UPDATE)?
        .query_row(rusqlite::params![h.amount, h.account_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((balance, held)) = row else {
        return Err(sqlite_refusal(c, &h.account_id)?);
    };
    let entry_id = new_id("ent");
    c.prepare_cached(
        "INSERT INTO ledger_entries \
         (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
         VALUES (?1, ?2, 'hold', 0, ?3, ?4, ?5, 'hold:' || ?4, ?6)",
    )?
    .execute(rusqlite::params![
        entry_id,
        h.account_id,
        h.amount,
        h.hold_id,
        h.reason,
        h.now
    ])?;
    c.prepare_cached(SQLITE_HOLD_INSERT)?
        .execute(rusqlite::params![h.hold_id, h.account_id, h.amount, h.now])?;
    Ok(Applied {
        entry_id,
        balance: Credits(balance),
        held: Credits(held),
        replayed: false,
    })
}

/// Why a conditional account update matched nothing (SQLite, inside the batch).
fn sqlite_refusal(c: &rusqlite::Connection, account_id: &str) -> rusqlite::Result<LedgerError> {
    use rusqlite::OptionalExtension;
    let exists = c
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .query_row([account_id], |_| Ok(()))
        .optional()?;
    Ok(match exists {
        Some(()) => LedgerError::InsufficientCredits,
        None => LedgerError::UnknownAccount,
    })
}

/// [`hold`], plus `also` in the same transaction.
pub async fn hold_with(
    db: &Db,
    account_id: &str,
    amount: Credits,
    reason: Option<&str>,
    also: &dyn InSameTx,
) -> Result<Hold, LedgerError> {
    if amount.0 < 0 {
        return Err(LedgerError::Invalid(
            "hold amount must not be negative".into(),
        ));
    }
    let hold_id = new_id("hold");
    let h = NewHold {
        hold_id: &hold_id,
        account_id,
        amount: amount.0,
        reason,
        now: now_ms(),
    };
    let direct = match db {
        Db::Sqlite(SqliteDb { group: Some(_), .. }) if !also.is_alone() => also.sqlite_direct(),
        _ => None,
    };
    let applied = match db {
        // Nothing else to write, or its writes as SQLite statements: the group
        // committer runs them in one go.
        Db::Sqlite(SqliteDb { group: Some(g), .. }) if also.is_alone() || direct.is_some() => {
            let h = OwnedHold {
                hold_id: hold_id.clone(),
                account_id: account_id.to_owned(),
                amount: amount.0,
                reason: reason.map(str::to_owned),
                now: h.now,
            };
            let applied = g
                .run(move |c| {
                    let applied = sqlite_hold(c, &h)?;
                    if let Some(also) = direct {
                        let ctx = TxCtx {
                            hold_id: &h.hold_id,
                            account_id: &h.account_id,
                            charged: Credits::ZERO,
                            applied: &applied,
                        };
                        also(c, &ctx)?;
                    }
                    Ok::<_, LedgerError>(applied)
                })
                .await?;
            return Ok(Hold { hold_id, applied });
        }
        // Nothing else to write: the one statement is the transaction.
        Db::Postgres(p) if also.is_alone() => {
            let entry_id = new_id("ent");
            let idem = format!("hold:{hold_id}");
            pg_hold_query!(h, &entry_id, &idem)
                .fetch_optional(p)
                .await?
                .map(|(balance, held)| Applied {
                    entry_id,
                    balance: Credits(balance),
                    held: Credits(held),
                    replayed: false,
                })
        }
        _ => with_tx!(db, |tx| {
            match hold_in(TxConn::from(&mut *tx), &h).await? {
                Some(applied) => {
                    let ctx = TxCtx {
                        hold_id: &hold_id,
                        account_id,
                        charged: Credits::ZERO,
                        applied: &applied,
                    };
                    also.run(TxConn::from(&mut *tx), &ctx).await?;
                    Some(applied)
                }
                None => None,
            }
        }),
    };
    match applied {
        Some(applied) => Ok(Hold { hold_id, applied }),
        None => Err(refusal(db, account_id).await),
    }
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

/// PostgreSQL: a resolution's three writes (hold state, account, entry) as one
/// statement. Matches only a pending hold, so it resolves exactly once.
const PG_RESOLVE: &str = "WITH h AS ( \
       UPDATE holds SET state = $1, \
         charged = CASE WHEN $2 < 0 THEN 0 WHEN $2 > amount THEN amount ELSE $2 END, \
         resolved_at = $3 \
       WHERE id = $4 AND state = 'pending' \
       RETURNING account_id, amount, charged), \
     a AS ( \
       UPDATE accounts SET balance = accounts.balance - h.charged, held = accounts.held - h.amount \
       FROM h WHERE accounts.id = h.account_id \
       RETURNING accounts.balance, accounts.held), \
     e AS ( \
       INSERT INTO ledger_entries \
       (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
       SELECT $5, h.account_id, $6, -h.charged, -h.amount, $4, $7, $8, $3 FROM h) \
     SELECT a.balance, a.held, h.account_id, h.charged FROM a, h";

/// A resolution to write.
struct Resolve<'a> {
    hold_id: &'a str,
    state: &'static str,
    kind: Kind,
    /// Requested charge (clamped to the hold in SQL); 0 for a void.
    charge: i64,
    reason: Option<&'a str>,
    now: i64,
}

/// What a resolution did.
struct Resolved {
    applied: Applied,
    account_id: String,
    charged: i64,
}

macro_rules! pg_resolve_query {
    ($r:expr, $entry_id:expr, $idem:expr) => {
        sqlx::query_as::<_, (i64, i64, String, i64)>(PG_RESOLVE)
            .bind($r.state)
            .bind($r.charge)
            .bind($r.now)
            .bind($r.hold_id)
            .bind($entry_id)
            .bind($r.kind.as_str())
            .bind($r.reason)
            .bind($idem)
    };
}

fn resolved(entry_id: String, row: (i64, i64, String, i64)) -> Resolved {
    let (balance, held, account_id, charged) = row;
    Resolved {
        applied: Applied {
            entry_id,
            balance: Credits(balance),
            held: Credits(held),
            replayed: false,
        },
        account_id,
        charged,
    }
}

/// Why a pending-only update of a hold matched nothing.
fn hold_refusal(exists: Option<i64>) -> LedgerError {
    match exists {
        Some(_) => LedgerError::HoldResolved,
        None => LedgerError::UnknownHold,
    }
}

/// Resolves a pending hold inside an open transaction. The entry's idempotency key
/// (`post:`/`void:` + hold id) can only be written by the one call that moves the hold
/// out of `pending`, so it needs no lookup; the unique index still guards it.
async fn resolve_in(conn: TxConn<'_>, r: &Resolve<'_>) -> Result<Resolved, LedgerError> {
    let entry_id = new_id("ent");
    let idem = format!("{}:{}", r.kind.as_str(), r.hold_id);
    let exists_sql = "SELECT CAST(1 AS BIGINT) FROM holds WHERE id = $1";
    match conn {
        TxConn::Postgres(c) => {
            let row = pg_resolve_query!(r, &entry_id, &idem)
                .fetch_optional(&mut *c)
                .await?;
            match row {
                Some(row) => Ok(resolved(entry_id, row)),
                None => Err(hold_refusal(
                    sqlx::query_scalar(exists_sql)
                        .bind(r.hold_id)
                        .fetch_optional(&mut *c)
                        .await?,
                )),
            }
        }
        TxConn::Sqlite(c) => {
            let hold: Option<(String, i64, i64)> = sqlx::query_as(
                "UPDATE holds SET state = $1, \
                 charged = CASE WHEN $2 < 0 THEN 0 WHEN $2 > amount THEN amount ELSE $2 END, \
                 resolved_at = $3 WHERE id = $4 AND state = 'pending' \
                 RETURNING account_id, amount, charged",
            )
            .bind(r.state)
            .bind(r.charge)
            .bind(r.now)
            .bind(r.hold_id)
            .fetch_optional(&mut *c)
            .await?;
            let Some((account_id, amount, charged)) = hold else {
                return Err(hold_refusal(
                    sqlx::query_scalar(exists_sql)
                        .bind(r.hold_id)
                        .fetch_optional(&mut *c)
                        .await?,
                ));
            };
            let (balance, held): (i64, i64) = sqlx::query_as(
                "UPDATE accounts SET balance = balance - $1, held = held - $2 WHERE id = $3 \
                 RETURNING balance, held",
            )
            .bind(charged)
            .bind(amount)
            .bind(&account_id)
            .fetch_one(&mut *c)
            .await?;
            sqlx::query(
                "INSERT INTO ledger_entries \
                 (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&entry_id)
            .bind(&account_id)
            .bind(r.kind.as_str())
            .bind(-charged)
            .bind(-amount)
            .bind(r.hold_id)
            .bind(r.reason)
            .bind(&idem)
            .bind(r.now)
            .execute(&mut *c)
            .await?;
            Ok(resolved(entry_id, (balance, held, account_id, charged)))
        }
    }
}

/// A resolution to write, owned (for [`crate::store::group::Group::run`]).
struct OwnedResolve {
    hold_id: String,
    state: &'static str,
    kind: Kind,
    charge: i64,
    reason: Option<String>,
    now: i64,
}

/// SQLite, on the group commit's write connection: a resolution's three writes (the
/// same statements as [`resolve_in`]), or why it was refused (nothing written).
fn sqlite_resolve(c: &rusqlite::Connection, r: &OwnedResolve) -> Result<Resolved, LedgerError> {
    use rusqlite::OptionalExtension;
    let hold: Option<(String, i64, i64)> = c
        .prepare_cached(
            "UPDATE holds SET state = ?1, \
             charged = CASE WHEN ?2 < 0 THEN 0 WHEN ?2 > amount THEN amount ELSE ?2 END, \
             resolved_at = ?3 WHERE id = ?4 AND state = 'pending' \
             RETURNING account_id, amount, charged",
        )?
        .query_row(
            rusqlite::params![r.state, r.charge, r.now, r.hold_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((account_id, amount, charged)) = hold else {
        let exists = c
            .prepare_cached("SELECT 1 FROM holds WHERE id = ?1")?
            .query_row([&r.hold_id], |_| Ok(1))
            .optional()?;
        return Err(hold_refusal(exists));
    };
    let (balance, held): (i64, i64) = c
        .prepare_cached(
            "UPDATE accounts SET balance = balance - ?1, held = held - ?2 WHERE id = ?3 \
             RETURNING balance, held",
        )?
        .query_row(rusqlite::params![charged, amount, account_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    let entry_id = new_id("ent");
    c.prepare_cached(
        "INSERT INTO ledger_entries \
         (id, account_id, kind, amount, held_delta, hold_id, reason, idempotency_key, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?3 || ':' || ?6, ?8)",
    )?
    .execute(rusqlite::params![
        entry_id,
        account_id,
        r.kind.as_str(),
        -charged,
        -amount,
        r.hold_id,
        r.reason,
        r.now
    ])?;
    Ok(resolved(entry_id, (balance, held, account_id, charged)))
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
        hold_id,
        state,
        kind,
        charge,
        reason,
        now: now_ms(),
    };
    let done = match db {
        // Nothing else to write: the group committer runs the statements in one go.
        Db::Sqlite(SqliteDb { group: Some(g), .. }) if also.is_alone() => {
            let r = OwnedResolve {
                hold_id: hold_id.to_owned(),
                state,
                kind,
                charge,
                reason: reason.map(str::to_owned),
                now: r.now,
            };
            g.run(move |c| sqlite_resolve(c, &r)).await?
        }
        // Nothing else to write: the one statement is the transaction.
        Db::Postgres(p) if also.is_alone() => {
            let entry_id = new_id("ent");
            let idem = format!("{}:{hold_id}", kind.as_str());
            match pg_resolve_query!(r, &entry_id, &idem)
                .fetch_optional(p)
                .await?
            {
                Some(row) => resolved(entry_id, row),
                None => {
                    return Err(hold_refusal(
                        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM holds WHERE id = $1")
                            .bind(hold_id)
                            .fetch_optional(p)
                            .await?,
                    ))
                }
            }
        }
        _ => with_tx!(db, |tx| {
            let done = resolve_in(TxConn::from(&mut *tx), &r).await?;
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
    let row: Option<i64> = crate::with_read!(db, |p| {
        sqlx::query_scalar("SELECT balance - held FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(p)
            .await?
    });
    Ok(row.map(Credits))
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

const DAY_MS: i64 = 86_400_000;
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
