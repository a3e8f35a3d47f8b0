//! People who sign in to the console, their invites, sessions and failed sign-ins.
//!
//! * Passwords: argon2id PHC strings (the `argon2` crate's defaults: m = 19 MiB, t = 2,
//!   p = 1), hashed and verified on the blocking pool.
//! * Invites and sessions: 32 random base62 characters from the OS RNG, shown once;
//!   only their SHA-256 digest is stored, so a database dump signs nobody in.
//! * Sessions live in the database (every node sees them, sign-out ends them
//!   everywhere) with an idle and an absolute expiry. Each carries the CSRF token its
//!   forms must send back.
//! * Sign-in lockout: [`MAX_FAILURES`] failures for one email address within
//!   [`LOCKOUT`] lock that address for [`LOCKOUT`], on every node (the count is a row).

use sha2::{Digest, Sha256};
use std::time::Duration;

use crate::store::{is_unique_violation, new_id, now_ms, Db};
use crate::{with_read, with_tx};

/// Lifetime of an invite link.
pub const INVITE_TTL: Duration = Duration::from_secs(24 * 3600);
/// A session unused this long ends.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);
/// A session ends this long after sign-in, used or not.
pub const SESSION_ABSOLUTE: Duration = Duration::from_secs(7 * 24 * 3600);
/// `last_seen_at` is written at most this often (reads stay reads).
const TOUCH_EVERY_MS: i64 = 60_000;
/// Failed sign-ins that lock an address, and how long the lock (and the count) lasts.
pub const MAX_FAILURES: i64 = 5;
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Password length bounds (bytes): long enough to matter, short enough to hash cheaply.
pub const MIN_PASSWORD: usize = 10;
pub const MAX_PASSWORD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown account '{0}'")]
    UnknownAccount(String),
    #[error("'{0}' already belongs to another console user")]
    EmailTaken(String),
    /// No address given, and none to default to (an operator, or an account without
    /// a contact address).
    #[error("an email address is needed")]
    NoEmail,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Account,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Account => "account",
            Role::Operator => "operator",
        }
    }
}

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub role: Role,
    /// The account an account holder sees (`None` for operators).
    pub account_id: Option<String>,
}

/// A session found by its cookie.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf: String,
    pub token_digest: String,
}

/// A random token (32 base62 characters, ~190 bits).
pub fn new_token() -> String {
    kie_wire::apikey::random_base62(32)
}

pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Lower-cased and trimmed; a plausible address (one `@`, something on each side).
pub fn normalize_email(email: &str) -> Result<String, UserError> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split('@').count() == 2
        && e.split('@').all(|p| !p.is_empty())
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(UserError::Invalid(format!(
            "'{}' is not an email address",
            email.trim()
        )))
    }
}

/// Checks a new password: length bounds and both entries equal.
pub fn check_new_password(password: &str, confirm: &str) -> Result<(), String> {
    if password != confirm {
        return Err("The two passwords differ.".into());
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "The password must have at least {MIN_PASSWORD} characters."
        ));
    }
    if password.len() > MAX_PASSWORD {
        return Err(format!(
            "The password must have at most {MAX_PASSWORD} bytes."
        ));
    }
    Ok(())
}

/// An argon2id hash (PHC string) of `password`, computed on the blocking pool.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
    })
    .await?
}

/// Whether `password` matches `phc` (`None`: no password set; a dummy hash is checked
/// so the answer takes as long as for a real user).
pub async fn verify_password(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = DUMMY.get_or_init(|| {
            use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
            argon2::Argon2::default()
                .hash_password(b"no such user", &SaltString::generate(&mut OsRng))
                .map(|h| h.to_string())
                .unwrap_or_default()
        });
        let real = phc.is_some();
        let s = phc.unwrap_or_else(|| dummy.clone());
        let ok = PasswordHash::new(&s)
            .map(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && real
    })
    .await
    .unwrap_or(false)
}

type UserRow = (String, String, String, Option<String>);

fn to_user((id, email, role, account_id): UserRow) -> User {
    User {
        id,
        email,
        role: if role == "operator" {
            Role::Operator
        } else {
            Role::Account
        },
        account_id,
    }
}

/// An invite: the one-time URL's token and its expiry (epoch ms).
#[derive(Clone)]
pub struct Invite {
    pub token: String,
    pub expires_at: i64,
    pub user: User,
}

impl Invite {
    /// When the invite expires, as RFC 3339 (what `kie admin console invite --json` and
    /// the operator API print).
    pub fn expires_rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.expires_at.max(0) as u64),
        )
        .to_string()
    }
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the token itself
        f.debug_struct("Invite")
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Invites a person: creates the console user for `email` if needed (an account holder
/// of `account`, or an operator when `account` is `None`) and a one-time token valid
/// [`INVITE_TTL`]. Inviting an existing user again lets them set a new password.
/// Without `email`, an account holder's invite goes to the account's contact address
/// ([`UserError::NoEmail`] when it has none, and always for an operator).
pub async fn invite(
    db: &Db,
    email: Option<&str>,
    account: Option<&str>,
) -> Result<Invite, UserError> {
    let (role, account_id) = match account {
        Some(a) => {
            let acc = crate::accounts::find(db, a)
                .await?
                .ok_or_else(|| UserError::UnknownAccount(a.into()))?;
            (Role::Account, Some(acc.id))
        }
        None => (Role::Operator, None),
    };
    let email = match (email, &account_id) {
        (Some(e), _) => normalize_email(e)?,
        (None, Some(id)) => account_email(db, id).await?.ok_or(UserError::NoEmail)?,
        (None, None) => return Err(UserError::NoEmail),
    };
    let existing = user_by_email(db, &email).await?;
    let user = match existing {
        Some(u) if u.role == role && u.account_id == account_id => u,
        Some(_) => return Err(UserError::EmailTaken(email)),
        None => {
            let id = new_id("usr");
            let now = now_ms();
            let r = with_tx!(db, |tx| {
                sqlx::query(
                    "INSERT INTO console_users (id, email, role, account_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&id)
                .bind(&email)
                .bind(role.as_str())
                .bind(&account_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map(|_| ())
            });
            match r {
                Err(e) if is_unique_violation(&e) => return Err(UserError::EmailTaken(email)),
                r => r?,
            }
            User {
                id,
                email,
                role,
                account_id,
            }
        }
    };
    let token = new_token();
    let now = now_ms();
    let expires_at = now + INVITE_TTL.as_millis() as i64;
    with_tx!(db, |tx| {
        sqlx::query(
            "INSERT INTO console_invites (token_digest, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_digest(&token))
        .bind(&user.id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
    });
    Ok(Invite {
        token,
        expires_at,
        user,
    })
}

async fn user_by_email(db: &Db, email: &str) -> Result<Option<User>, sqlx::Error> {
    let row: Option<UserRow> = with_read!(db, |p| sqlx::query_as(
        "SELECT id, email, role, account_id FROM console_users WHERE email = $1"
    )
    .bind(email)
    .fetch_optional(p)
    .await?);
    Ok(row.map(to_user))
}

/// The user of an unused, unexpired invite.
pub async fn invite_user(db: &Db, token: &str) -> Result<Option<User>, sqlx::Error> {
    let row: Option<UserRow> = with_read!(db, |p| sqlx::query_as(
        "SELECT u.id, u.email, u.role, u.account_id FROM console_invites i \
         JOIN console_users u ON u.id = i.user_id \
         WHERE i.token_digest = $1 AND i.used_at IS NULL AND i.expires_at > $2"
    )
    .bind(token_digest(token))
    .bind(now_ms())
    .fetch_optional(p)
    .await?);
    Ok(row.map(to_user))
}

/// Uses an invite: sets the user's password (an already hashed one) and marks the
/// invite used, in one transaction; `None` when the invite was used or expired
/// meanwhile. The user's other sessions end (a reset password signs everyone out).
pub async fn redeem_invite(
    db: &Db,
    token: &str,
    password_hash: &str,
) -> Result<Option<User>, sqlx::Error> {
    let Some(user) = invite_user(db, token).await? else {
        return Ok(None);
    };
    let now = now_ms();
    let used = with_tx!(db, |tx| {
        let n = sqlx::query(
            "UPDATE console_invites SET used_at = $1 \
             WHERE token_digest = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(token_digest(token))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query("UPDATE console_users SET password_hash = $1 WHERE id = $2")
                .bind(password_hash)
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
            // the address is not locked for someone who just proved the invite
            sqlx::query("DELETE FROM console_login_failures WHERE email = $1")
                .bind(&user.email)
                .execute(&mut *tx)
                .await?;
        }
        n == 1
    });
    Ok(used.then_some(user))
}

/// What a sign-in attempt gives.
#[derive(Debug)]
pub enum SignIn {
    Ok(User),
    Wrong,
    /// Too many failures: locked for this many more seconds.
    Locked(u64),
}

/// Checks an email and password, counting failures per address (see the module docs).
pub async fn sign_in(db: &Db, email: &str, password: &str) -> Result<SignIn, sqlx::Error> {
    let email = email.trim().to_lowercase();
    let now = now_ms();
    if let Some(wait) = locked_for(db, &email, now).await? {
        return Ok(SignIn::Locked(wait));
    }
    type Row = (String, String, String, Option<String>, Option<String>);
    let row: Option<Row> = with_read!(db, |p| sqlx::query_as(
        "SELECT id, email, role, account_id, password_hash FROM console_users WHERE email = $1"
    )
    .bind(&email)
    .fetch_optional(p)
    .await?);
    let (user, phc) = match row {
        Some((id, e, role, acc, phc)) => (Some(to_user((id, e, role, acc))), phc),
        None => (None, None),
    };
    if verify_password(password.to_string(), phc).await {
        if let Some(u) = user {
            with_tx!(db, |tx| {
                sqlx::query("DELETE FROM console_login_failures WHERE email = $1")
                    .bind(&email)
                    .execute(&mut *tx)
                    .await?;
            });
            return Ok(SignIn::Ok(u));
        }
    }
    record_failure(db, &email, now).await?;
    Ok(match locked_for(db, &email, now).await? {
        Some(wait) => SignIn::Locked(wait),
        None => SignIn::Wrong,
    })
}

/// Seconds an address stays locked, if it is.
async fn locked_for(db: &Db, email: &str, now: i64) -> Result<Option<u64>, sqlx::Error> {
    let until: Option<Option<i64>> = with_read!(db, |p| sqlx::query_scalar(
        "SELECT locked_until FROM console_login_failures WHERE email = $1"
    )
    .bind(email)
    .fetch_optional(p)
    .await?);
    Ok(until
        .flatten()
        .filter(|u| *u > now)
        .map(|u| ((u - now) as u64).div_ceil(1000)))
}

/// Counts one failure; the count restarts when its first failure is older than
/// [`LOCKOUT`]; reaching [`MAX_FAILURES`] locks the address for [`LOCKOUT`].
async fn record_failure(db: &Db, email: &str, now: i64) -> Result<(), sqlx::Error> {
    let window = LOCKOUT.as_millis() as i64;
    with_tx!(db, |tx| {
        sqlx::query(
            "INSERT INTO console_login_failures (email, failures, first_at) VALUES ($1, 1, $2) \
             ON CONFLICT (email) DO UPDATE SET \
               failures = CASE WHEN console_login_failures.first_at <= $2 - $3 THEN 1 \
                               ELSE console_login_failures.failures + 1 END, \
               first_at = CASE WHEN console_login_failures.first_at <= $2 - $3 THEN $2 \
                               ELSE console_login_failures.first_at END",
        )
        .bind(email)
        .bind(now)
        .bind(window)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE console_login_failures SET locked_until = $2 + $3, failures = 0, first_at = $2 \
             WHERE email = $1 AND failures >= $4",
        )
        .bind(email)
        .bind(now)
        .bind(window)
        .bind(MAX_FAILURES)
        .execute(&mut *tx)
        .await?;
    });
    Ok(())
}

/// A new session for `user`: returns the cookie token (shown once, never stored).
pub async fn create_session(db: &Db, user: &User) -> Result<String, sqlx::Error> {
    let token = new_token();
    let now = now_ms();
    with_tx!(db, |tx| {
        // expired sessions of anyone go when someone signs in: the table stays small
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(now)
            .bind(now - SESSION_IDLE.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_digest, user_id, csrf, created_at, last_seen_at, expires_at) \
             VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(token_digest(&token))
        .bind(&user.id)
        .bind(new_token())
        .bind(now)
        .bind(now + SESSION_ABSOLUTE.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
    });
    Ok(token)
}

/// The live session of a cookie token (idle and absolute expiry checked), touching its
/// last use at most once a minute.
pub async fn session(db: &Db, token: &str) -> Result<Option<Session>, sqlx::Error> {
    let digest = token_digest(token);
    let now = now_ms();
    type Row = (String, String, String, Option<String>, String, i64);
    let row: Option<Row> = with_read!(db, |p| {
        sqlx::query_as(
        "SELECT u.id, u.email, u.role, u.account_id, s.csrf, s.last_seen_at FROM console_sessions s \
         JOIN console_users u ON u.id = s.user_id \
         WHERE s.token_digest = $1 AND s.expires_at > $2 AND s.last_seen_at > $3"
    )
    .bind(&digest)
    .bind(now)
    .bind(now - SESSION_IDLE.as_millis() as i64)
    .fetch_optional(p)
    .await?
    });
    let Some((id, email, role, account_id, csrf, last_seen)) = row else {
        return Ok(None);
    };
    if now - last_seen >= TOUCH_EVERY_MS {
        with_tx!(db, |tx| {
            sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE token_digest = $2")
                .bind(now)
                .bind(&digest)
                .execute(&mut *tx)
                .await?;
        });
    }
    Ok(Some(Session {
        user: to_user((id, email, role, account_id)),
        csrf,
        token_digest: digest,
    }))
}

/// Ends a session (sign-out): the row goes, so no node accepts the cookie again.
pub async fn end_session(db: &Db, token_digest: &str) -> Result<(), sqlx::Error> {
    with_tx!(db, |tx| {
        sqlx::query("DELETE FROM console_sessions WHERE token_digest = $1")
            .bind(token_digest)
            .execute(&mut *tx)
            .await?;
    });
    Ok(())
}

/// An account's contact address, if one was given.
pub async fn account_email(db: &Db, account_id: &str) -> Result<Option<String>, sqlx::Error> {
    let e: Option<Option<String>> = with_read!(db, |p| sqlx::query_scalar(
        "SELECT email FROM accounts WHERE id = $1"
    )
    .bind(account_id)
    .fetch_optional(p)
    .await?);
    Ok(e.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in ["", "ann", "@x", "a@", "a@b@c", "a b@c"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_passwords() {
        assert!(check_new_password("correct horse", "correct horse").is_ok());
        assert!(check_new_password("correct horse", "correct house").is_err());
        assert!(check_new_password("short", "short").is_err());
    }

    #[tokio::test]
    async fn password_hashes_are_argon2id_and_verify() {
        let h = hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong horse".into(), Some(h)).await);
        assert!(!verify_password("anything".into(), None).await);
    }
}
