//! Low-balance alerts of the caller's own account (issue 16): `GET/POST
//! /api/v1/account/alerts`, `POST /api/v1/account/alerts/test`. What the console's
//! Alerts page does, for scripts and `kie alerts`. Management scope only (code 401
//! otherwise), like the key endpoints.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use kie_wire::Credits;
use serde::Serialize;

use crate::alerts::{self, AlertSettings, AlertUpdate};
use crate::auth::Caller;
use crate::http::json::{parse_json, require_json_content_type};
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::net_guard::{CheckError, Policy};
use crate::state::AppState;

/// Longest accepted alert URL.
pub const MAX_URL: usize = 2048;

fn require_manage(caller: &Caller) -> Result<(), ApiError> {
    if caller.manage {
        Ok(())
    } else {
        Err(super::keys::management_key_required())
    }
}

/// `{"code": 200, "msg": "success", "data": settings}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AlertsEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<AlertSettings>,
}

/// `POST /api/v1/account/alerts`: absent fields stay as they are, `null` clears one.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SetAlertsRequest {
    /// Warning threshold in credits (>= 0, at most two decimals), or null.
    pub warn: Option<f64>,
    /// Critical threshold in credits (>= 0, at most two decimals), or null.
    pub critical: Option<f64>,
    /// Where events are POSTed (http or https; the callback SSRF policy applies), or null.
    pub url: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSent {
    pub event_id: String,
}

fn threshold(v: &serde_json::Value, field: &str) -> Result<Option<Credits>, ApiError> {
    let bad = || {
        ApiError::validation(format!(
            "Invalid field '{field}': a number of credits >= 0 with at most two decimals, or null"
        ))
    };
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => {
            let c = Credits::from_json_number(n).map_err(|_| bad())?;
            if c.0 < 0 {
                return Err(bad());
            }
            Ok(Some(c))
        }
        serde_json::Value::String(s) => {
            let c: Credits = s.parse().map_err(|_| bad())?;
            if c.0 < 0 {
                return Err(bad());
            }
            Ok(Some(c))
        }
        _ => Err(bad()),
    }
}

/// Checks an alert URL against the callback policy.
pub fn check_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    if url.len() > MAX_URL {
        return Err(ApiError::validation(format!(
            "Invalid field 'url': longer than {MAX_URL} characters"
        )));
    }
    match Policy::from_config(&state.config).check_raw(url) {
        Ok(_) => Ok(url.to_string()),
        Err(CheckError::Refused(_)) => Err(ApiError::validation(
            "Invalid field 'url': the target address is not allowed (loopback, private or link-local)",
        )),
        Err(_) => Err(ApiError::validation(
            "Invalid field 'url': must be an http or https URL",
        )),
    }
}

/// Parses and validates a settings change (shared with the console).
pub fn parse_update(
    state: &AppState,
    v: &serde_json::Value,
    cur: &AlertSettings,
) -> Result<AlertUpdate, ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::validation(
            "Invalid body: a JSON object is required",
        ));
    };
    let mut u = AlertUpdate::default();
    if let Some(w) = obj.get("warn") {
        u.warn = Some(threshold(w, "warn")?);
    }
    if let Some(c) = obj.get("critical") {
        u.critical = Some(threshold(c, "critical")?);
    }
    match obj.get("url") {
        None => {}
        Some(serde_json::Value::Null) => u.url = Some(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => u.url = Some(None),
        Some(serde_json::Value::String(s)) => u.url = Some(Some(check_url(state, s)?)),
        Some(_) => {
            return Err(ApiError::validation(
                "Invalid field 'url': a string or null is required",
            ))
        }
    }
    let warn = u.warn.unwrap_or(cur.warn);
    let critical = u.critical.unwrap_or(cur.critical);
    if let (Some(w), Some(c)) = (warn, critical) {
        if c.0 > w.0 {
            return Err(ApiError::validation(
                "Invalid field 'critical': must not be above the warning threshold",
            ));
        }
    }
    Ok(u)
}

async fn current(state: &AppState, caller: &Caller) -> Result<AlertSettings, ApiError> {
    alerts::get(&state.db, &caller.account_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Account not found"))
}

/// The account's alert thresholds, URL and current state.
#[utoipa::path(
    get,
    path = "/api/v1/account/alerts",
    tag = "alerts",
    responses((status = 200, description = "Envelope; data = thresholds (credits), url, state (ok|warning|critical), available. Codes: 200, 401 (no management key), 455, 500", body = AlertsEnvelope))
)]
pub async fn get_alerts(State(state): State<AppState>, caller: Caller) -> ApiResult<AlertSettings> {
    require_manage(&caller)?;
    Ok(ApiOk(current(&state, &caller).await?))
}

/// Sets thresholds and the alert URL. Events (`balance.warning`, `balance.critical`,
/// `balance.recovered`) are sent when a later balance change crosses a threshold.
#[utoipa::path(
    post,
    path = "/api/v1/account/alerts",
    tag = "alerts",
    request_body = SetAlertsRequest,
    responses((status = 200, description = "Envelope; data = the settings now. Codes: 200, 401 (no management key), 422 (names the field), 455, 500", body = AlertsEnvelope))
)]
pub async fn set_alerts(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<AlertSettings> {
    require_manage(&caller)?;
    require_json_content_type(&headers)?;
    let v: serde_json::Value = parse_json(&body)?;
    let cur = current(&state, &caller).await?;
    let u = parse_update(&state, &v, &cur)?;
    let s = alerts::set(&state.db, &caller.account_id, &u)
        .await?
        .ok_or_else(|| ApiError::not_found("Account not found"))?;
    tracing::info!(by = %caller.key_id, account = %caller.account_id, "api: alerts set");
    Ok(ApiOk(s))
}

/// Enqueues a sample event (`balance.warning` with `"test": true`) for the alert URL.
#[utoipa::path(
    post,
    path = "/api/v1/account/alerts/test",
    tag = "alerts",
    responses((status = 200, description = "Envelope; data = {eventId}. Codes: 200, 401 (no management key), 422 (no alert URL set), 455, 500"))
)]
pub async fn test_alert(State(state): State<AppState>, caller: Caller) -> ApiResult<TestSent> {
    require_manage(&caller)?;
    match alerts::send_test(&state.db, &caller.account_id).await? {
        Some(event_id) => {
            state.jobs.webhooks.notify_waiters();
            Ok(ApiOk(TestSent { event_id }))
        }
        None => Err(ApiError::validation(
            "Invalid field 'url': no alert URL is set",
        )),
    }
}
