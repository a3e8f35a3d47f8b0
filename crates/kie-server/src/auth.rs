//! API key authentication and the per-key request rate limit.
//!
//! `Authorization: Bearer <key>`: scheme case-insensitive, surrounding whitespace
//! tolerated. A key with a bad shape or checksum is refused without touching the
//! database. Known keys are cached for `auth_cache_ttl` (2 s by default), so a
//! revocation or roll made on any node is enforced everywhere within that time;
//! expiry is checked against the clock on every request. A key's IP allowlist and
//! management scope are part of the cached record, so a change made by `kie admin key
//! update` (any process, any node) applies within the same TTL; its usage caps are not
//! cached at all (they are read by the transaction of every charge, see `ledger`).
//!
//! The allowlist is checked against the TCP peer address of the connection (the same
//! address the per-IP rate limit uses; there is no trusted-proxy setting). A key used
//! from elsewhere gets code 401 with a message that says the address is not allowed,
//! never the list.
//!
//! The cache is keyed by a 128-bit fingerprint of the presented key under a random
//! per-process key (one SipHash-1-3 with a 128-bit output), not by the key itself (no plaintext key
//! stays in memory after its request) and not by its SHA-256 digest (a hit costs no
//! SHA-256: that was a sixth of a credit request, see BENCHMARKS.md). Forging a
//! fingerprint collision would take ~2^64 online guesses against an unknown key; a miss
//! falls back to the digest lookup in the database.
//!
//! "Last used" (issue 16) costs no write per request: the first use of a key in a
//! minute is noted in memory ([`LastUsed`]), and [`Authenticator::flush_last_used`]
//! writes what changed in one transaction every few seconds (and at shutdown).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use siphasher::sip128::SipHasher13;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kie_wire::apikey;

use crate::accounts::{self, KeyAuth};
use crate::http::{ApiError, RequestCtx};
use crate::ratelimit::KeyedLimiter;
use crate::store::{now_ms, Db};
use axum::extract::FromRef;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: Arc<str>,
    pub key_id: Arc<str>,
    pub key_prefix: Arc<str>,
    /// The key has the management scope (`kie admin key create --manage`): management
    /// endpoints require it (issue 16).
    pub manage: bool,
}

/// Extracts the key from an `Authorization` header value (its bytes: a key is ASCII,
/// and anything else is refused by the key's shape check, `apikey::is_well_formed`, so
/// the value is never checked as text first).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let v = value.trim_ascii();
    // "bearer" (any case), then ASCII whitespace: no search through the token
    let scheme = v.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !v.get(6)?.is_ascii_whitespace() {
        return None;
    }
    let token = v[6..].trim_ascii();
    // A header value holds no line breaks (hyper refuses them), so a space or a tab is
    // the only whitespace left to find inside (a vectorised search).
    (!token.is_empty() && memchr::memchr2(b' ', b'\t', token).is_none()).then_some(token)
}

/// Bound of the auth cache. Only keys found in the database enter it (a client's
/// made-up keys never do), each for `ttl`; housekeeping drops expired entries, and an
/// insert into a full cache empties it first (the next requests read the database).
pub const CACHE_MAX: usize = 100_000;
/// Bound of the per-key limiter's state (see `ratelimit`): keys are those found in the
/// database, so this is only reached by a deployment with that many busy keys.
pub const LIMITER_MAX: usize = 100_000;

/// How often a key's use is noted: its first use in each minute.
pub const LAST_USED_GRANULARITY_MS: i64 = 60_000;
/// Bound of the keys whose last use is held in memory (see [`LastUsed`]).
pub const LAST_USED_MAX: usize = 100_000;
/// How often noted uses are written to the database.
pub const LAST_USED_FLUSH: Duration = Duration::from_secs(5);

/// Uses of keys not yet written: key id → (last noted use, last written use). Key ids
/// come from the database (a key was found), so a fast hasher (foldhash) is safe here.
#[derive(Default)]
struct LastUsed(RwLock<HashMap<Arc<str>, (AtomicI64, AtomicI64), foldhash::fast::RandomState>>);

impl LastUsed {
    /// Notes a use at `now`: an atomic load under a read lock, unless the key's last
    /// noted use is a minute old (a store) or it is new here (a write lock).
    fn note(&self, key_id: &Arc<str>, now: i64) {
        if let Some((used, _)) = self.0.read().expect("last used").get(key_id) {
            if now - used.load(Ordering::Relaxed) >= LAST_USED_GRANULARITY_MS {
                used.store(now, Ordering::Relaxed);
            }
            return;
        }
        let mut m = self.0.write().expect("last used");
        if m.len() >= LAST_USED_MAX && !m.contains_key(key_id) {
            // bounded: forget the written ones; still full (that many keys first used
            // within one flush interval): this use is not noted
            m.retain(|_, (u, w)| u.load(Ordering::Relaxed) > w.load(Ordering::Relaxed));
            if m.len() >= LAST_USED_MAX {
                return;
            }
        }
        m.entry(key_id.clone())
            .or_insert_with(|| (AtomicI64::new(now), AtomicI64::new(0)));
    }

    /// Forgets keys written and not used for two minutes (a later use notes them again).
    fn prune(&self, now: i64) {
        let stale = |(u, w): &(AtomicI64, AtomicI64)| {
            let used = u.load(Ordering::Relaxed);
            used <= w.load(Ordering::Relaxed) && now - used > 2 * LAST_USED_GRANULARITY_MS
        };
        if self.0.read().expect("last used").values().any(stale) {
            self.0.write().expect("last used").retain(|_, e| !stale(e));
        }
    }

    fn len(&self) -> usize {
        self.0.read().expect("last used").len()
    }

    /// The uses noted since the last write, marked as written.
    fn take(&self) -> Vec<(Arc<str>, i64)> {
        let m = self.0.read().expect("last used");
        m.iter()
            .filter_map(|(k, (u, w))| {
                let used = u.load(Ordering::Relaxed);
                (used > w.swap(used, Ordering::Relaxed)).then(|| (k.clone(), used))
            })
            .collect()
    }

    /// A write failed: these uses are written next time.
    fn unmark(&self, uses: &[(Arc<str>, i64)]) {
        let m = self.0.read().expect("last used");
        for (k, _) in uses {
            if let Some((_, w)) = m.get(k) {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
}

pub struct Authenticator {
    last_used: LastUsed,
    db: Db,
    ttl: Duration,
    /// fingerprint → key; the fingerprint is already a keyed hash (a SipHash key
    /// drawn per process), so the map hashes it with foldhash
    cache: RwLock<HashMap<u128, (Instant, KeyAuth), foldhash::fast::RandomState>>,
    /// The per-process random key of the fingerprint.
    fingerprint: SipHasher13,
    limiter: Option<KeyedLimiter<Arc<str>>>,
}

impl Authenticator {
    pub fn new(db: Db, ttl: Duration, per_key_per_second: u32) -> Self {
        // burst: one second's worth
        let limiter = KeyedLimiter::new(per_key_per_second, LIMITER_MAX);
        Authenticator {
            last_used: LastUsed::default(),
            db,
            ttl,
            cache: RwLock::default(),
            fingerprint: {
                use rand::RngCore;
                let mut rng = rand::rngs::OsRng;
                SipHasher13::new_with_keys(rng.next_u64(), rng.next_u64())
            },
            limiter,
        }
    }

    fn fingerprint(&self, token: &[u8]) -> u128 {
        self.fingerprint.hash(token).as_u128()
    }

    async fn lookup(&self, token: &[u8]) -> Result<Option<KeyAuth>, ApiError> {
        let fp = self.fingerprint(token);
        if let Some((at, k)) = self.cache.read().expect("auth cache").get(&fp) {
            if at.elapsed() < self.ttl {
                return Ok(Some(k.clone()));
            }
        }
        let Some(token) = std::str::from_utf8(token)
            .ok()
            .filter(|t| apikey::is_well_formed(t))
        else {
            return Ok(None);
        };
        let found = accounts::key_by_digest(&self.db, &apikey::digest(token)).await?;
        let mut cache = self.cache.write().expect("auth cache");
        match &found {
            Some(k) => {
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(fp, (Instant::now(), k.clone()));
            }
            None => {
                cache.remove(&fp);
            }
        }
        Ok(found)
    }

    /// Authenticates an `Authorization` header value from client address `peer`
    /// (checked against the key's allowlist; `None`: unknown, refused by any
    /// allowlist) and applies the rate limit.
    pub async fn authenticate(
        &self,
        header: Option<&[u8]>,
        peer: Option<IpAddr>,
    ) -> Result<Caller, ApiError> {
        let token = header
            .and_then(bearer_token)
            .ok_or_else(ApiError::unauthorized)?;
        // Only well-formed keys are ever cached (checked before the database lookup).
        let k = self
            .lookup(token)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        let now = now_ms();
        if !k.is_valid_at(now) {
            return Err(ApiError::unauthorized());
        }
        if !k.allows(peer) {
            return Err(ApiError::address_not_allowed());
        }
        if let Some(l) = &self.limiter {
            if let Err(wait) = l.check(&k.key_id) {
                return Err(ApiError::rate_limited(
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                ));
            }
        }
        self.last_used.note(&k.key_id, now);
        Ok(Caller {
            account_id: k.account_id,
            key_id: k.key_id,
            key_prefix: k.prefix,
            manage: k.manage,
        })
    }

    /// Writes the key uses noted since the last call (one transaction); on an error
    /// they are kept for the next one.
    pub async fn flush_last_used(&self) -> Result<usize, sqlx::Error> {
        let uses = self.last_used.take();
        if let Err(e) = accounts::record_last_used(&self.db, &uses).await {
            self.last_used.unmark(&uses);
            return Err(e);
        }
        self.last_used.prune(now_ms());
        Ok(uses.len())
    }

    /// Keys whose last use is held in memory now (bound: [`LAST_USED_MAX`]).
    pub fn last_used_len(&self) -> usize {
        self.last_used.len()
    }

    /// Entries of the auth cache now (bound: [`CACHE_MAX`]).
    pub fn cache_len(&self) -> usize {
        self.cache.read().expect("auth cache").len()
    }

    /// Keys the per-key limiter remembers now (bound: [`LIMITER_MAX`] + a little).
    pub fn limiter_len(&self) -> usize {
        self.limiter.as_ref().map_or(0, KeyedLimiter::len)
    }

    /// Drops limiter state of idle keys (called periodically).
    pub fn housekeeping(&self) {
        if let Some(l) = &self.limiter {
            l.housekeeping();
        }
        let ttl = self.ttl;
        self.cache
            .write()
            .expect("auth cache")
            .retain(|_, (at, _)| at.elapsed() < ttl);
    }
}

/// Any state that hands out the authenticator (the server's `AppState` does).
impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .map(axum::http::HeaderValue::as_bytes);
        let ctx = parts.extensions.get::<Arc<RequestCtx>>();
        let peer = ctx.and_then(|c| c.peer);
        let caller = Arc::<Authenticator>::from_ref(state)
            .authenticate(header, peer)
            .await?;
        if let Some(ctx) = ctx {
            let _ = ctx
                .caller
                .set((caller.account_id.clone(), caller.key_prefix.clone()));
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    /// The management scope reaches `Caller`; the allowlist refuses other and unknown
    /// addresses without naming itself; an update made elsewhere applies once the
    /// cached record expires (polled, never a fixed wait).
    #[tokio::test]
    async fn scope_allowlist_and_cache_expiry() {
        use super::*;
        use crate::accounts::{self, KeyOptions, KeyUpdate};
        use crate::config::DatabaseUrl;
        use crate::store::OpenOptions;
        let dir = std::env::temp_dir().join(format!(
            "kie-auth-{}-{}",
            std::process::id(),
            apikey::random_base62(8)
        ));
        let db = Db::open(
            &DatabaseUrl::Sqlite(dir.join("a.db")),
            &OpenOptions::default(),
        )
        .await
        .unwrap();
        let acc = accounts::create(&db, "a", None).await.unwrap().id;
        let opts = KeyOptions {
            manage: true,
            allow_ips: crate::ipallow::parse_list(&["127.0.0.0/8"]).unwrap(),
            ..Default::default()
        };
        let k = accounts::create_key_with(&db, &acc, None, None, &opts)
            .await
            .unwrap();
        let plain = accounts::create_key(&db, &acc, None, None).await.unwrap();
        let auth = Authenticator::new(db.clone(), Duration::from_millis(300), 0);
        let header = format!("Bearer {}", k.key);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let c = auth
            .authenticate(Some(header.as_bytes()), Some(local))
            .await
            .unwrap();
        assert!(c.manage);
        let c = auth
            .authenticate(Some(format!("Bearer {}", plain.key).as_bytes()), None)
            .await
            .unwrap();
        assert!(!c.manage, "no scope by default; no allowlist: any address");
        for peer in [Some("10.0.0.1".parse().unwrap()), None] {
            let e = auth
                .authenticate(Some(header.as_bytes()), peer)
                .await
                .unwrap_err();
            assert_eq!(e.code, 401);
            assert!(
                e.msg.contains("not allowed") && !e.msg.contains("127."),
                "{}",
                e.msg
            );
        }
        let u = KeyUpdate {
            allow_ips: Some(crate::ipallow::parse_list(&["10.0.0.0/8"]).unwrap()),
            manage: Some(false),
            ..Default::default()
        };
        accounts::update_key(&db, &k.id, &u).await.unwrap();
        let start = Instant::now();
        loop {
            match auth
                .authenticate(Some(header.as_bytes()), Some(local))
                .await
            {
                Err(e) => {
                    assert_eq!(e.code, 401);
                    break;
                }
                Ok(_) => assert!(start.elapsed() < Duration::from_secs(5), "still cached"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = auth
            .authenticate(Some(header.as_bytes()), Some("10.1.1.1".parse().unwrap()))
            .await
            .unwrap();
        assert!(!c.manage);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bearer_parsing_is_lenient_about_case_and_space() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"  BEARER    abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer\tabc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b""), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"abc"), None);
    }
}
