//! What an operator sees across accounts, and the operator API's credential (issue 16).
//!
//! The operator's console pages (`/console/admin/…`) and their JSON twins
//! (`/api/v1/admin/…`, `api::admin`) read through the same functions here: the account
//! search, the delivery backlog and the reachability of the database and the object
//! store.
//!
//! **Operator tokens** (`kieop_` + 40 base62 characters) authenticate the JSON API as
//! `Authorization: Bearer kieop_…`. `kie admin operator-token create` mints one and
//! prints it once; only its SHA-256 digest is stored. A token belongs to no account;
//! an API key (even a management key) is never an operator token, and an operator
//! token is never an API key. A revoked token is refused on its next request on every
//! node (no cache: the operator API is not a hot path). Its last use is written at most
//! once a minute.

use kie_wire::Credits;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use kie_wire::apikey;

use crate::blobs::Blobs;
use crate::ledger::{self, Applied, LedgerError};
use crate::store::{new_id, now_ms, Db};
use crate::{with_read, with_tx};

/// Longest operator-token name.
pub const MAX_TOKEN_NAME: usize = 100;
/// How long a reachability check may take before it counts as unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_millis(1500);

/// An operator token as listed (never the token itself).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorToken {
    pub id: String,
    #[schema(nullable)]
    pub name: Option<String>,
    /// `kieop_` + the first 8 characters: identifies the token, reveals nothing
    pub prefix: String,
    pub created_at: i64,
    /// Epoch ms, to the minute; null: never used
    #[schema(nullable)]
    pub last_used_at: Option<i64>,
    #[schema(nullable)]
    pub revoked_at: Option<i64>,
}

/// A new token: the only value that holds the token itself.
pub struct NewOperatorToken {
    pub token: String,
    pub info: OperatorToken,
}

impl std::fmt::Debug for NewOperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the token
        f.debug_struct("NewOperatorToken")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no operator token {0}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Mints an operator token named `name`.
pub async fn create_token(db: &Db, name: Option<&str>) -> Result<NewOperatorToken, TokenError> {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > MAX_TOKEN_NAME) {
        return Err(TokenError::Invalid(format!(
            "a token name has at most {MAX_TOKEN_NAME} characters"
        )));
    }
    let token = apikey::generate_operator_token();
    let info = OperatorToken {
        id: new_id("opt"),
        name: name.map(str::to_string),
        prefix: token[..apikey::OPERATOR_DISPLAY_LEN].to_string(),
        created_at: now_ms(),
        last_used_at: None,
        revoked_at: None,
    };
    with_tx!(db, |tx| {
        sqlx::query(
            "INSERT INTO operator_tokens (id, name, prefix, digest, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&info.id)
        .bind(&info.name)
        .bind(&info.prefix)
        .bind(apikey::digest(&token))
        .bind(info.created_at)
        .execute(&mut *tx)
        .await?;
    });
    Ok(NewOperatorToken { token, info })
}

const TOKEN_COLUMNS: &str = "id, name, prefix, created_at, last_used_at, revoked_at";

/// Every operator token, oldest first.
pub async fn list_tokens(db: &Db) -> Result<Vec<OperatorToken>, sqlx::Error> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM operator_tokens ORDER BY created_at, id");
    Ok(with_read!(db, |p| sqlx::query_as(&sql)
        .fetch_all(p)
        .await?))
}

/// Revokes the token `id_or_prefix` (its id or display prefix); revoking a revoked
/// token changes nothing.
pub async fn revoke_token(db: &Db, id_or_prefix: &str) -> Result<OperatorToken, TokenError> {
    let now = now_ms();
    let sql = format!(
        "UPDATE operator_tokens SET revoked_at = COALESCE(revoked_at, $1) \
         WHERE id = $2 OR prefix = $2 RETURNING {TOKEN_COLUMNS}"
    );
    let rows: Vec<OperatorToken> = with_tx!(db, |tx| {
        let rows: Vec<OperatorToken> = sqlx::query_as(&sql)
            .bind(now)
            .bind(id_or_prefix)
            .fetch_all(&mut *tx)
            .await?;
        if rows.len() > 1 {
            // a prefix shared by two tokens: nothing is revoked (the savepoint or
            // transaction rolls back with this early return)
            return Err(TokenError::Invalid(format!(
                "'{id_or_prefix}' matches several tokens; use the token id"
            )));
        }
        rows
    });
    rows.into_iter()
        .next()
        .ok_or_else(|| TokenError::Unknown(id_or_prefix.to_string()))
}

/// The live operator token `token`, or `None` (unknown, revoked, or not an operator
/// token at all: nothing is looked up then).
pub async fn authenticate(db: &Db, token: &str) -> Result<Option<OperatorToken>, sqlx::Error> {
    if !apikey::is_operator_token(token) {
        return Ok(None);
    }
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM operator_tokens WHERE digest = $1");
    let row: Option<OperatorToken> = with_read!(db, |p| sqlx::query_as(&sql)
        .bind(apikey::digest(token))
        .fetch_optional(p)
        .await?);
    let Some(t) = row.filter(|t| t.revoked_at.is_none()) else {
        return Ok(None);
    };
    let now = now_ms();
    if t.last_used_at.is_none_or(|used| now - used >= 60_000) {
        with_tx!(db, |tx| {
            sqlx::query("UPDATE operator_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&t.id)
                .execute(&mut *tx)
                .await?;
        });
    }
    Ok(Some(t))
}

/// An account as the operator lists it (balance and held in hundredths of a credit).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub balance: i64,
    pub held: i64,
}

/// Most rows of one account search.
pub const SEARCH_LIMIT: usize = 200;

/// Accounts whose name, id or email contains `q` (any case; empty: all), by name, at
/// most [`SEARCH_LIMIT`]. `%`, `_` and `\` in `q` match themselves.
pub async fn search_accounts(db: &Db, q: &str) -> Result<Vec<AccountRow>, sqlx::Error> {
    let needle = q.trim().to_lowercase();
    let pattern = format!(
        "%{}%",
        needle
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let sql = format!(
        "SELECT id, name, email, balance, held FROM accounts \
         WHERE $1 = '' OR LOWER(name) LIKE $2 ESCAPE '\\' OR LOWER(id) LIKE $2 ESCAPE '\\' \
            OR LOWER(COALESCE(email, '')) LIKE $2 ESCAPE '\\' \
         ORDER BY name LIMIT {SEARCH_LIMIT}"
    );
    Ok(with_read!(db, |p| sqlx::query_as(&sql)
        .bind(&needle)
        .bind(&pattern)
        .fetch_all(p)
        .await?))
}

/// Work waiting across all accounts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    /// Callback and alert deliveries not yet delivered nor given up
    pub pending_deliveries: i64,
    /// Accounts with at least one pending delivery
    pub accounts_waiting: i64,
    /// Deliveries given up in the last 24 hours
    pub failed_deliveries_24h: i64,
    /// Tasks waiting, queuing or generating
    pub open_tasks: i64,
    /// Id of the active link-signing key
    #[schema(nullable)]
    pub signing_key: Option<String>,
}

pub async fn backlog(db: &Db) -> Result<Backlog, sqlx::Error> {
    type Figures = (i64, i64, i64, i64, Option<String>);
    let (pending, accounts, failed, open, key): Figures = with_read!(db, |p| {
        sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'), \
                    (SELECT COUNT(DISTINCT account_id) FROM webhook_deliveries WHERE state = 'pending'), \
                    (SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'failed' AND finished_at >= $1), \
                    (SELECT COUNT(*) FROM tasks WHERE state IN ('waiting','queuing','generating')), \
                    (SELECT MAX(id) FROM signing_keys WHERE retired_at IS NULL)",
        )
        .bind(now_ms() - 86_400_000)
        .fetch_one(p)
        .await?
    });
    Ok(Backlog {
        pending_deliveries: pending,
        accounts_waiting: accounts,
        failed_deliveries_24h: failed,
        open_tasks: open,
        signing_key: key,
    })
}

/// One account's share of the delivery backlog.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountBacklog {
    pub account: String,
    pub name: String,
    /// Deliveries waiting for their next attempt
    pub pending: i64,
    /// When the oldest pending delivery was created (epoch ms)
    #[schema(nullable)]
    pub oldest_pending_at: Option<i64>,
    /// Deliveries given up in the last 24 hours
    pub failed_24h: i64,
}

/// Most accounts listed in the backlog by account.
pub const BACKLOG_ACCOUNTS: i64 = 20;

/// The accounts with the most pending deliveries (then the most given up in the last
/// 24 hours), at most [`BACKLOG_ACCOUNTS`]: whose receivers are down.
pub async fn backlog_by_account(db: &Db) -> Result<Vec<AccountBacklog>, sqlx::Error> {
    let sql = format!(
        "SELECT d.account_id AS account, a.name, \
                SUM(CASE WHEN d.state = 'pending' THEN 1 ELSE 0 END) AS pending, \
                MIN(CASE WHEN d.state = 'pending' THEN d.created_at END) AS oldest_pending_at, \
                SUM(CASE WHEN d.state = 'failed' THEN 1 ELSE 0 END) AS failed_24h \
         FROM webhook_deliveries d JOIN accounts a ON a.id = d.account_id \
         WHERE d.state = 'pending' OR (d.state = 'failed' AND d.finished_at >= $1) \
         GROUP BY d.account_id, a.name \
         ORDER BY pending DESC, failed_24h DESC, a.name LIMIT {BACKLOG_ACCOUNTS}"
    );
    Ok(with_read!(db, |p| sqlx::query_as(&sql)
        .bind(now_ms() - 86_400_000)
        .fetch_all(p)
        .await?))
}

/// Whether the database and the object store answer now (each within
/// [`PING_TIMEOUT`]), checked at the same time.
pub async fn reachable(db: &Db, blobs: &Blobs) -> (bool, bool) {
    tokio::join!(
        async {
            matches!(
                tokio::time::timeout(PING_TIMEOUT, db.ping()).await,
                Ok(Ok(()))
            )
        },
        async {
            matches!(
                tokio::time::timeout(PING_TIMEOUT, blobs.ping()).await,
                Ok(Ok(()))
            )
        }
    )
}

/// Grant or deduct.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CreditOp {
    Grant,
    Deduct,
}

/// Why an operator's credit change was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum CreditChangeError {
    /// `field` (camelCase, as in the API) is wrong.
    #[error("{field}: {msg}")]
    Invalid { field: &'static str, msg: String },
    #[error("unknown account")]
    UnknownAccount,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Grants or deducts `amount` on `account` (id or name) with a reason and the
/// operator's idempotency key, in one ledger transaction (the console's form and the
/// operator API both come here). Returns the account id and what was applied; the
/// same key again applies nothing and answers the first result.
pub async fn change_credits(
    db: &Db,
    account: &str,
    op: CreditOp,
    amount: Credits,
    reason: &str,
    idempotency_key: &str,
) -> Result<(String, Applied), CreditChangeError> {
    let invalid = |field, msg: &str| CreditChangeError::Invalid {
        field,
        msg: msg.to_string(),
    };
    if amount.0 <= 0 {
        return Err(invalid("amount", "must be positive"));
    }
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(invalid("reason", "1 to 500 characters"));
    }
    let key = idempotency_key.trim();
    if key.is_empty() || key.chars().count() > 200 {
        return Err(invalid("idempotencyKey", "1 to 200 characters"));
    }
    let acc = crate::accounts::find(db, account)
        .await?
        .ok_or(CreditChangeError::UnknownAccount)?;
    let key = ledger::user_key(Some(key));
    let applied = match op {
        CreditOp::Grant => ledger::grant(db, &acc.id, amount, Some(reason), &key).await,
        CreditOp::Deduct => ledger::deduct(db, &acc.id, amount, Some(reason), &key).await,
    };
    match applied {
        Err(LedgerError::IdempotencyConflict) => Err(invalid(
            "idempotencyKey",
            "already used for a different change",
        )),
        Err(LedgerError::UnknownAccount) => Err(CreditChangeError::UnknownAccount),
        r => Ok((acc.id, r?)),
    }
}
