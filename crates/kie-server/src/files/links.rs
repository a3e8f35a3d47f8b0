//! Temporary download links for the local store, signed with a key ring kept in the
//! database (`signing_keys`), so every node signs and verifies alike.
//!
//! Link format: `{public_url}/links/{file_id}/{file_name}?e={expiry}&k={key_id}&s={sig}`
//! where `expiry` is Unix seconds and `sig` is base64url (no padding) of
//! HMAC-SHA256(key, "kie-link-v1\n{key_id}\n{file_id}\n{expiry}\n{file_name}").
//! The MAC covers the file id and expiry (SPEC §3) and also the key id and the file
//! name, so that flipping any byte of the link's path or query invalidates it. The
//! signature travels in the query string, which the request log drops.
//!
//! Rotation (`kie admin signing-key rotate`) retires the active keys and adds a new
//! one; retired keys still verify (links signed with them stay valid until they
//! expire, at most `MAX_LINK_TTL` later), they just never sign again.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

pub use crate::store::records::SigningKey;
use crate::store::records::{decode_secret, file_url};
use crate::store::{now_ms, Db};
use crate::{with_read, with_tx};

fn new_key_material() -> (String, String) {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    (
        format!("k{}", kie_wire::apikey::random_base62(10)),
        URL_SAFE_NO_PAD.encode(secret),
    )
}

/// The newest active key, creating the first one if the ring is empty.
///
/// Read through [`Db::active_signing_key`].
pub async fn active_key(db: &Db) -> Result<SigningKey, sqlx::Error> {
    if let Some(k) = db.active_signing_key().await? {
        return Ok(k);
    }
    // Empty ring (first start): create a key unless a concurrent node just did.
    let (id, secret) = new_key_material();
    let created: Option<(String, String)> = with_tx!(db, |tx| {
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT id, secret FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, id LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if existing.is_none() {
            sqlx::query("INSERT INTO signing_keys (id, secret, created_at) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(&secret)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        existing
    });
    let (id, secret) = created.unwrap_or((id, secret));
    Ok(decode_secret(id, &secret).expect("generated key material decodes"))
}

/// What a rotation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotation {
    /// The new active key id.
    pub id: String,
    /// Key ids retired now (they keep verifying links until those expire).
    pub retired: Vec<String>,
}

/// Adds a new active key and retires the previous ones, in one transaction.
pub async fn rotate(db: &Db) -> Result<Rotation, sqlx::Error> {
    let (id, secret) = new_key_material();
    let now = now_ms();
    let retired: Vec<String> = with_tx!(db, |tx| {
        let old: Vec<String> =
            sqlx::query_scalar("SELECT id FROM signing_keys WHERE retired_at IS NULL ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO signing_keys (id, secret, created_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(&secret)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        old
    });
    Ok(Rotation { id, retired })
}

/// Verification keys by id, cached: a key's secret never changes, so an entry never
/// goes stale. Unknown ids are looked up once in the database (another node may have
/// rotated) and then remembered as unknown for a short while, so a flood of forged
/// key ids cannot turn into a flood of queries. Bound: [`KEY_CACHE_MAX`] entries in
/// each map (the unknown ids are the client's choice); an insert into a full map
/// empties it first.
#[derive(Clone, Default)]
pub struct KeyCache {
    known: Arc<RwLock<HashMap<String, SigningKey>>>,
    unknown: Arc<RwLock<HashMap<String, std::time::Instant>>>,
}

const UNKNOWN_TTL: Duration = Duration::from_secs(2);
pub const KEY_CACHE_MAX: usize = 10_000;

impl KeyCache {
    /// (known keys, remembered unknown ids) now.
    pub fn lens(&self) -> (usize, usize) {
        (
            self.known.read().expect("key cache").len(),
            self.unknown.read().expect("key cache").len(),
        )
    }

    pub async fn get(&self, db: &Db, id: &str) -> Result<Option<SigningKey>, sqlx::Error> {
        if let Some(k) = self.known.read().expect("key cache").get(id) {
            return Ok(Some(k.clone()));
        }
        if let Some(at) = self.unknown.read().expect("key cache").get(id) {
            if at.elapsed() < UNKNOWN_TTL {
                return Ok(None);
            }
        }
        let row: Option<(String, String, Option<i64>)> = with_read!(db, |p| sqlx::query_as(
            "SELECT id, secret, retired_at FROM signing_keys WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await?);
        // A key retired longer ago than the longest link lifetime can sign no valid link.
        let max_ttl_ms = crate::config::MAX_LINK_TTL.as_millis() as i64;
        let key = row
            .filter(|(_, _, retired)| !matches!(retired, Some(r) if *r + max_ttl_ms <= now_ms()))
            .and_then(|(id, s, _)| decode_secret(id, &s));
        match &key {
            Some(k) => {
                let mut m = self.known.write().expect("key cache");
                if m.len() >= KEY_CACHE_MAX {
                    m.clear();
                }
                m.insert(k.id.clone(), k.clone());
            }
            None => {
                let mut m = self.unknown.write().expect("key cache");
                if m.len() >= KEY_CACHE_MAX {
                    m.clear();
                }
                m.insert(id.to_string(), std::time::Instant::now());
            }
        }
        Ok(key)
    }
}

fn mac(key: &SigningKey, file_id: &str, expiry: i64, name: &str) -> [u8; 32] {
    let mut m = key.prepared.clone();
    // "kie-link-v1\n{key_id}\n{file_id}\n{expiry}\n{name}", fed in parts (no allocation)
    let mut digits = [0u8; 24];
    let mut n = expiry.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if expiry < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    for part in [
        b"kie-link-v1\n".as_slice(),
        key.id.as_bytes(),
        b"\n",
        file_id.as_bytes(),
        b"\n",
        &digits[at..],
        b"\n",
        name.as_bytes(),
    ] {
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time check of a link signature (`s`, base64url) for these fields.
pub fn check_signature(
    key: &SigningKey,
    file_id: &str,
    expiry: i64,
    name: &str,
    sig: &str,
) -> bool {
    let mut given = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(sig, &mut given) {
        Ok(32) => bool::from(mac(key, file_id, expiry, name).ct_eq(&given)),
        _ => false,
    }
}

/// The link for `file_id`/`name`, valid until `expiry` (Unix seconds).
pub fn sign(
    public_url: &url::Url,
    key: &SigningKey,
    file_id: &str,
    name: &str,
    expiry: i64,
) -> String {
    let sig = URL_SAFE_NO_PAD.encode(mac(key, file_id, expiry, name));
    let base = file_url(public_url, file_id, name);
    // file_url gives {base}/files/{id}/{name}; links live under /links/
    let path_start = public_url.as_str().trim_end_matches('/').len();
    format!(
        "{}/links{}?e={expiry}&k={}&s={sig}",
        &base[..path_start],
        &base[path_start + "/files".len()..],
        key.id
    )
}

/// Expiry (Unix seconds) of a link issued now with `ttl`, rounded up so a link never
/// lives shorter than `ttl`.
pub fn expiry_for(ttl: Duration) -> i64 {
    (now_ms() + ttl.as_millis() as i64 + 999) / 1000
}

/// Why a link was refused (answered with HTTP 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefused {
    #[error("malformed link")]
    Malformed,
    #[error("invalid link signature")]
    BadSignature,
    #[error("link expired")]
    Expired,
}

/// The query parameters of a link.
#[derive(Debug, Default)]
pub struct LinkQuery<'a> {
    pub expiry: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub sig: Option<&'a str>,
}

/// Reads `e`, `k` and `s` from a raw query string; a repeated parameter makes the link
/// malformed (there is exactly one way to spell a valid link).
pub fn parse_query(q: Option<&str>) -> Result<LinkQuery<'_>, LinkRefused> {
    let mut out = LinkQuery::default();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or(LinkRefused::Malformed)?;
        let slot = match k {
            "e" => &mut out.expiry,
            "k" => &mut out.key_id,
            "s" => &mut out.sig,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(LinkRefused::Malformed);
        }
    }
    Ok(out)
}

/// A link's query, checked for shape: canonical expiry, key id syntax, decodable
/// signature. Still unverified.
#[derive(Debug)]
pub struct ParsedLink<'a> {
    pub expiry: i64,
    pub key_id: &'a str,
    sig: Vec<u8>,
}

/// The pure first half of [`verify`]: the query's shape, no key needed.
pub fn parse_link<'a>(q: &LinkQuery<'a>) -> Result<ParsedLink<'a>, LinkRefused> {
    let (Some(e), Some(k), Some(s)) = (q.expiry, q.key_id, q.sig) else {
        return Err(LinkRefused::Malformed);
    };
    // canonical decimal only: "+5" or "05" would be another spelling of the same link
    let expiry: i64 = match e.parse() {
        Ok(v) if e.bytes().all(|b| b.is_ascii_digit()) && !e.starts_with('0') => v,
        _ => return Err(LinkRefused::Malformed),
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(s) else {
        return Err(LinkRefused::BadSignature);
    };
    if k.is_empty() || k.len() > 32 || !k.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(LinkRefused::BadSignature);
    }
    Ok(ParsedLink {
        expiry,
        key_id: k,
        sig,
    })
}

/// The pure second half of [`verify`]: the signature (constant-time) and the expiry
/// against `now_ms`, with `key` the key named by `link.key_id`.
pub fn check_link(
    key: &SigningKey,
    file_id: &str,
    name: &str,
    link: &ParsedLink<'_>,
    now_ms: i64,
) -> Result<(), LinkRefused> {
    let expected = mac(key, file_id, link.expiry, name);
    if link.sig.len() != expected.len() || !bool::from(expected.ct_eq(&link.sig[..])) {
        return Err(LinkRefused::BadSignature);
    }
    // checked after the signature, so an expired answer is only given for real links
    if link.expiry.saturating_mul(1000) <= now_ms {
        return Err(LinkRefused::Expired);
    }
    Ok(())
}

/// Verifies a link's signature (constant-time) and expiry. `name` is the decoded file
/// name from the link's path.
pub async fn verify(
    db: &Db,
    cache: &KeyCache,
    file_id: &str,
    name: &str,
    q: &LinkQuery<'_>,
) -> Result<Result<(), LinkRefused>, sqlx::Error> {
    let link = match parse_link(q) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let Some(key) = cache.get(db, link.key_id).await? else {
        return Ok(Err(LinkRefused::BadSignature));
    };
    Ok(check_link(&key, file_id, name, &link, now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::HmacSha256;

    #[test]
    fn link_shape_and_mac_binding() {
        let key = SigningKey::from_secret("kTEST", &[7u8; 32]).unwrap();
        let base = url::Url::parse("http://h:1/").unwrap();
        let l = sign(&base, &key, "abc", "a b.png", 1700000000);
        assert!(
            l.starts_with("http://h:1/links/abc/a%20b.png?e=1700000000&k=kTEST&s="),
            "{l}"
        );
        let base = url::Url::parse("https://h/prefix/").unwrap();
        let l = sign(&base, &key, "abc", "x", 5);
        assert!(
            l.starts_with("https://h/prefix/links/abc/x?e=5&k=kTEST&s="),
            "{l}"
        );
        let mut m = HmacSha256::new_from_slice(&[7u8; 32]).unwrap();
        m.update(b"kie-link-v1\nkTEST\nabc\n1700000000\na b.png");
        let want: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(mac(&key, "abc", 1700000000, "a b.png"), want);
        let sig = URL_SAFE_NO_PAD.encode(want);
        assert!(check_signature(&key, "abc", 1700000000, "a b.png", &sig));
        assert!(!check_signature(&key, "abc", 1700000001, "a b.png", &sig));
        assert!(!check_signature(
            &key,
            "abc",
            1700000000,
            "a b.png",
            &sig[..42]
        ));
        assert_ne!(mac(&key, "abc", 5, "x"), mac(&key, "abd", 5, "x"));
        assert_ne!(mac(&key, "abc", 5, "x"), mac(&key, "abc", 6, "x"));
        assert_ne!(mac(&key, "abc", 5, "x"), mac(&key, "abc", 5, "y"));
        assert!(format!("{key:?}").contains("kTEST"));
        assert!(!format!("{key:?}").contains('7'));
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("e=1&k=a&s=b&x=y")).unwrap();
        assert_eq!(
            (q.expiry, q.key_id, q.sig),
            (Some("1"), Some("a"), Some("b"))
        );
        assert_eq!(
            parse_query(Some("e=1&e=2")).unwrap_err(),
            LinkRefused::Malformed
        );
        assert!(parse_query(None).unwrap().sig.is_none());
    }
}
