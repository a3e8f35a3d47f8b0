//! Webhook callback signatures, both schemes the server sends (SPEC §6):
//!
//! * KIE.AI: `X-Webhook-Timestamp: <unix s>`, `X-Webhook-Signature:
//!   base64(HMAC-SHA256(key string bytes, taskId + "." + timestamp))`.
//! * Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp`, `webhook-signature:
//!   v1,<base64(HMAC-SHA256(base64-decoded whsec_ part, id.timestamp.body))>`.
//!
//! Verification is constant-time and checks the timestamp against a tolerance; replay
//! protection by `webhook-id` needs memory and lives in the SDK.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const KEY_PREFIX: &str = "whsec_";
/// Default timestamp tolerance, both ways.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

pub const HDR_KIE_TIMESTAMP: &str = "x-webhook-timestamp";
pub const HDR_KIE_SIGNATURE: &str = "x-webhook-signature";
pub const HDR_STD_ID: &str = "webhook-id";
pub const HDR_STD_TIMESTAMP: &str = "webhook-timestamp";
pub const HDR_STD_SIGNATURE: &str = "webhook-signature";

/// Makes a new `whsec_` key from 32 bytes of OS randomness.
pub fn generate_key() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    format!("{KEY_PREFIX}{}", B64.encode(b))
}

/// The secret bytes the Standard Webhooks scheme keys its HMAC with: the base64-decoded
/// part after `whsec_` (a key without the prefix is decoded whole; one that is not
/// base64 is used as raw bytes, as the reference libraries do).
pub fn standard_secret(key: &str) -> Vec<u8> {
    let part = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    B64.decode(part)
        .unwrap_or_else(|_| part.as_bytes().to_vec())
}

fn hmac_b64(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    B64.encode(mac.finalize().into_bytes())
}

/// KIE.AI scheme signature for `taskId.timestamp`, keyed with the key string's bytes.
pub fn kie_signature(key: &str, task_id: &str, timestamp: &str) -> String {
    hmac_b64(
        key.as_bytes(),
        &[task_id.as_bytes(), b".", timestamp.as_bytes()],
    )
}

/// Standard Webhooks signature header value (`v1,<base64>`).
pub fn standard_signature(key: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let sig = hmac_b64(
        &standard_secret(key),
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!("v1,{sig}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("timestamp outside the tolerance")]
    TimestampOutOfRange,
    #[error("body is not a callback JSON object")]
    BadBody,
    #[error("task id missing from the body")]
    MissingTaskId,
    #[error("task ids in the body disagree")]
    TaskIdMismatch,
    #[error("signature does not match")]
    BadSignature,
    #[error("webhook-id already seen (replay)")]
    Replay,
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn check_timestamp(timestamp: &str, now: i64, tolerance: i64) -> Result<i64, VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    // abs_diff: extreme timestamps must not overflow
    if now.abs_diff(ts) > tolerance.max(0) as u64 {
        return Err(VerifyError::TimestampOutOfRange);
    }
    Ok(ts)
}

/// Reads the task id from `taskId`, `data.taskId` and `data.task_id`: every one
/// present must agree, and at least one must be present.
pub fn task_id_of(body: &[u8]) -> Result<String, VerifyError> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| VerifyError::BadBody)?;
    if !v.is_object() {
        return Err(VerifyError::BadBody);
    }
    let candidates = [
        v.get("taskId"),
        v.pointer("/data/taskId"),
        v.pointer("/data/task_id"),
    ];
    let mut found: Option<&str> = None;
    for c in candidates.into_iter().flatten() {
        if c.is_null() {
            continue;
        }
        let s = c.as_str().ok_or(VerifyError::TaskIdMismatch)?;
        match found {
            None => found = Some(s),
            Some(prev) if prev == s => {}
            Some(_) => return Err(VerifyError::TaskIdMismatch),
        }
    }
    found.map(str::to_owned).ok_or(VerifyError::MissingTaskId)
}

/// Verifies a KIE.AI-scheme delivery: the signature over the task id (read from the body
/// with the agreement rule) and the timestamp. Returns the task id.
pub fn verify_kie(
    key: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<String, VerifyError> {
    check_timestamp(timestamp, now, tolerance)?;
    let task_id = task_id_of(body)?;
    verify_kie_for_task(key, &task_id, timestamp, signature)?;
    Ok(task_id)
}

/// Verifies a KIE.AI-scheme signature when the task id is already known (no body).
pub fn verify_kie_for_task(
    key: &str,
    task_id: &str,
    timestamp: &str,
    signature: &str,
) -> Result<(), VerifyError> {
    let expected = kie_signature(key, task_id, timestamp.trim());
    if ct_eq(&expected, signature.trim()) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// Verifies a Standard Webhooks delivery. `signature_header` may hold several
/// space-separated `v1,<sig>` entries (key rotation); any match passes.
pub fn verify_standard(
    key: &str,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    check_timestamp(timestamp, now, tolerance)?;
    let expected = standard_signature(key, id, timestamp.trim(), body);
    let mut ok = false;
    for candidate in signature_header.split_whitespace() {
        // no early exit: every candidate is compared
        ok |= ct_eq(&expected, candidate);
    }
    if ok {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const TASK: &str = "ee9c2715375b7837f8bb51d641ff5863";

    #[test]
    fn generated_keys_decode_to_32_bytes() {
        let k = generate_key();
        assert!(k.starts_with("whsec_"));
        assert_eq!(standard_secret(&k).len(), 32);
    }

    #[test]
    fn kie_signature_round_trip_and_negatives() {
        let sig = kie_signature(KEY, TASK, "1769670760");
        let body = format!(r#"{{"taskId":"{TASK}","data":{{"task_id":"{TASK}"}}}}"#);
        assert_eq!(
            verify_kie(KEY, "1769670760", &sig, body.as_bytes(), 1769670760, 300),
            Ok(TASK.to_string())
        );
        assert_eq!(
            verify_kie(
                KEY,
                "1769670760",
                &sig,
                body.as_bytes(),
                1769670760 + 301,
                300
            ),
            Err(VerifyError::TimestampOutOfRange)
        );
        let other = r#"{"taskId":"a","data":{"taskId":"b"}}"#;
        assert_eq!(
            verify_kie(KEY, "1769670760", &sig, other.as_bytes(), 1769670760, 300),
            Err(VerifyError::TaskIdMismatch)
        );
        assert_eq!(
            verify_kie(KEY, "1769670761", &sig, body.as_bytes(), 1769670760, 300),
            Err(VerifyError::BadSignature)
        );
    }
}
