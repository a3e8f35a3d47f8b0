//! What the console's Callbacks page does, for scripts and `kie callbacks` (issue 16):
//!
//! * `POST /api/v1/account/callbacks/{id}/redeliver` — one more attempt of a finished
//!   delivery; `POST /api/v1/account/callbacks/replay` — every failed delivery since a
//!   time, once. They only send the account's own deliveries again, to the URLs they
//!   already had, so any key of the account may use them (like the listing).
//! * `GET /api/v1/account/callbacks/key` and `POST /api/v1/account/callbacks/key/roll`
//!   — the webhook HMAC key, and its roll with an overlap during which the previous key
//!   signs too. The key verifies callbacks: a management key only (code 401 otherwise).
//!
//! During a roll's overlap, callbacks carry two Standard Webhooks signatures in
//! `webhook-signature` (`v1,<new> v1,<old>`, space-separated, as that spec rotates
//! keys), so a receiver verifying with either key accepts them; the KIE.AI scheme's
//! `X-Webhook-Signature` has room for one signature and is made with the new key.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::accounts::{self, AccountError};
use crate::auth::Caller;
use crate::http::json::{parse_json, require_json_content_type};
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::state::AppState;
use crate::webhooks;

/// Default overlap of a webhook key roll.
pub const DEFAULT_GRACE: &str = "24h";
/// Longest overlap of a webhook key roll.
pub const MAX_GRACE_MS: i64 = 30 * 24 * 3600 * 1000;

fn require_manage(caller: &Caller) -> Result<(), ApiError> {
    if caller.manage {
        Ok(())
    } else {
        Err(super::keys::management_key_required())
    }
}

fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::UnknownAccount(_) => ApiError::not_found("Account not found"),
        AccountError::Db(e) => e.into(),
        e => ApiError::internal(e),
    }
}

/// A JSON body that may be left out (then the defaults).
fn optional_json<T: for<'de> Deserialize<'de> + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    require_json_content_type(headers)?;
    parse_json(body)
}

/// A grace period (`0`, `90s`, `24h`, `7d`) in milliseconds, at most 30 days.
pub fn grace_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let ms = if s == "0" {
        0
    } else {
        humantime::parse_duration(s)
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
            .map_err(|e| format!("{e} (use e.g. 0, 1h, 24h, 7d)"))?
    };
    if ms > MAX_GRACE_MS {
        return Err("at most 30 days".into());
    }
    Ok(ms)
}

/// `{"account","key","previousValidUntil"}`
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookKeyInfo {
    pub account: String,
    /// The webhook HMAC key (`whsec_…`); null when none is set (callbacks unsigned)
    #[schema(nullable)]
    pub key: Option<String>,
    /// Until when (epoch ms) the key replaced by the last roll still signs callbacks
    /// too; null outside an overlap
    #[schema(nullable)]
    pub previous_valid_until: Option<i64>,
}

impl From<accounts::WebhookKey> for WebhookKeyInfo {
    fn from(k: accounts::WebhookKey) -> Self {
        WebhookKeyInfo {
            account: k.account,
            key: k.key,
            previous_valid_until: k.previous_until,
        }
    }
}

/// `{"code": 200, "msg": "success", "data": key}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct WebhookKeyEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<WebhookKeyInfo>,
}

/// Rolling the webhook key.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollWebhookKeyRequest {
    /// How long the previous key keeps signing next to the new one (`0`, `1h`, `7d`;
    /// default 24h, at most 30d)
    pub grace: Option<String>,
}

/// The account's webhook HMAC key.
#[utoipa::path(
    get,
    path = "/api/v1/account/callbacks/key",
    tag = "account",
    responses((status = 200, description = "Envelope; data = {account, key, previousValidUntil}. Codes: 200, 401 (no management key), 455, 500", body = WebhookKeyEnvelope))
)]
pub async fn get_webhook_key(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<WebhookKeyInfo> {
    require_manage(&caller)?;
    let k = accounts::webhook_key(&state.db, &caller.account_id)
        .await
        .map_err(account_error)?;
    Ok(ApiOk(k.into()))
}

/// Replaces the webhook key with a new one (generates the first one when there is
/// none). For `grace`, the previous key signs callbacks too: Standard Webhooks
/// `webhook-signature` carries `v1,<new> v1,<old>`; the KIE.AI `X-Webhook-Signature`
/// is made with the new key.
#[utoipa::path(
    post,
    path = "/api/v1/account/callbacks/key/roll",
    tag = "account",
    request_body(content = RollWebhookKeyRequest, description = "Optional"),
    responses((status = 200, description = "Envelope; data = the new key with the end of the overlap. Codes: 200, 401 (no management key), 422 (bad grace), 455, 500", body = WebhookKeyEnvelope))
)]
pub async fn roll_webhook_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<WebhookKeyInfo> {
    require_manage(&caller)?;
    let req: RollWebhookKeyRequest = optional_json(&headers, &body)?;
    let grace = grace_ms(req.grace.as_deref().unwrap_or(DEFAULT_GRACE))
        .map_err(|e| ApiError::validation(format!("Invalid field 'grace': {e}")))?;
    let k = accounts::roll_webhook_key(&state.db, &caller.account_id, grace)
        .await
        .map_err(account_error)?;
    tracing::info!(by = %caller.key_id, account = %caller.account_id, grace_ms = grace, "api: webhook key rolled");
    Ok(ApiOk(k.into()))
}

/// `{"id","status"}` of a delivery queued again.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redelivered {
    pub id: String,
    /// `pending`: an attempt is due now
    pub status: String,
}

/// `{"code": 200, "msg": "success", "data": {"id","status"}}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RedeliveredEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Redelivered>,
}

/// Sends one of the account's finished deliveries (delivered, failed, stopped,
/// refused) again: one more attempt now, same `webhook-id` and body.
#[utoipa::path(
    post,
    path = "/api/v1/account/callbacks/{id}/redeliver",
    tag = "account",
    params(("id" = String, Path, description = "Delivery id (the webhook-id)")),
    responses((status = 200, description = "Envelope; data = {id, status: pending}. Codes: 200, 401, 404 (no such finished delivery of this account), 422 (still pending), 455, 500", body = RedeliveredEnvelope))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Redelivered> {
    if webhooks::redeliver(&state.db, &caller.account_id, &id).await? {
        state.jobs.webhooks.notify_waiters();
        tracing::info!(by = %caller.key_id, delivery = %id, "api: redelivery");
        return Ok(ApiOk(Redelivered {
            id,
            status: "pending".into(),
        }));
    }
    match webhooks::delivery_state(&state.db, &caller.account_id, &id).await? {
        Some(s) if s == "pending" => Err(ApiError::validation(
            "Invalid parameter 'id': the delivery is still pending (an attempt is due)",
        )),
        _ => Err(ApiError::not_found("Delivery not found")),
    }
}

/// `POST /api/v1/account/callbacks/replay`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ReplayRequest {
    /// Failed deliveries created at or after this time: epoch milliseconds, a date
    /// (`2026-11-29`, midnight UTC) or an RFC 3339 time
    #[schema(value_type = Object)]
    pub since: serde_json::Value,
}

/// `{"count"}`
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// How many failed deliveries were queued again
    pub count: u64,
}

/// `{"code": 200, "msg": "success", "data": {"count"}}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ReplayedEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Replayed>,
}

/// `since` as epoch ms: a number, or a date / RFC 3339 time.
pub fn parse_since(v: Option<&serde_json::Value>) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::validation(
            "Invalid field 'since': epoch milliseconds, a date (2026-11-29) or an RFC 3339 time",
        )
    };
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().filter(|t| *t >= 0).ok_or_else(bad),
        Some(serde_json::Value::String(s)) => {
            let s = s.trim();
            if let Ok(n) = s.parse::<i64>() {
                return if n >= 0 { Ok(n) } else { Err(bad()) };
            }
            let t = if s.len() == 10 {
                humantime::parse_rfc3339_weak(&format!("{s} 00:00:00"))
            } else {
                humantime::parse_rfc3339(s).or_else(|_| humantime::parse_rfc3339_weak(s))
            }
            .map_err(|_| bad())?;
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Sends every delivery of the account that failed (retries exhausted) and was created
/// since `since` again, once each.
#[utoipa::path(
    post,
    path = "/api/v1/account/callbacks/replay",
    tag = "account",
    request_body = ReplayRequest,
    responses((status = 200, description = "Envelope; data = {count}. Codes: 200, 401, 422 (bad since), 455, 500", body = ReplayedEnvelope))
)]
pub async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Replayed> {
    require_json_content_type(&headers)?;
    let v: serde_json::Value = parse_json(&body)?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::validation(
            "Invalid body: a JSON object is required",
        ));
    };
    if let Some(k) = obj.keys().find(|k| k.as_str() != "since") {
        return Err(ApiError::validation(format!(
            "Invalid field '{k}': unknown"
        )));
    }
    let since = parse_since(obj.get("since"))?;
    let count = webhooks::replay_failed(&state.db, &caller.account_id, since).await?;
    if count > 0 {
        state.jobs.webhooks.notify_waiters();
    }
    tracing::info!(by = %caller.key_id, replayed = count, "api: replay of failed deliveries");
    Ok(ApiOk(Replayed { count }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn since_forms() {
        assert_eq!(parse_since(Some(&json!(1000))).unwrap(), 1000);
        assert_eq!(parse_since(Some(&json!("1970-01-02"))).unwrap(), 86_400_000);
        assert_eq!(
            parse_since(Some(&json!("1970-01-01T00:00:01Z"))).unwrap(),
            1000
        );
        assert!(parse_since(Some(&json!("yesterday"))).is_err());
        assert!(parse_since(Some(&json!(-1))).is_err());
        assert!(parse_since(None).is_err());
    }

    #[test]
    fn graces() {
        assert_eq!(grace_ms("0").unwrap(), 0);
        assert_eq!(grace_ms("24h").unwrap(), 86_400_000);
        assert!(grace_ms("31d").is_err());
        assert!(grace_ms("soon").is_err());
    }
}
