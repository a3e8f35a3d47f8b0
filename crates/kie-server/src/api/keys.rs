//! Key management for the caller's own account (issue 16): `GET/POST
//! /api/v1/account/keys`, `POST /api/v1/account/keys/{id}/revoke|roll|update`. What
//! the console's API keys page does, for scripts and `kie keys`.
//!
//! Every endpoint needs a key with the management scope (`kie admin key create
//! --manage`, or the console's **Management key** checkbox): any other key gets code
//! 401, before anything is looked up, so a leaked task key can neither mint nor list
//! keys. A key id of another account is answered exactly like an unknown one (404).
//! The functions are those of `kie admin key …` (`accounts`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use kie_wire::{codes, Credits};
use serde::{Deserialize, Deserializer, Serialize};

use crate::accounts::{self, AccountError, Caps, KeyInfo, KeyOptions, KeyUpdate, NewKey};
use crate::auth::Caller;
use crate::http::json::{parse_json, require_json_content_type, ApiJson};
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::ipallow;
use crate::state::AppState;
use crate::store::now_ms;

/// Longest key name (as in the console).
pub const MAX_NAME: usize = 100;
/// Most CIDR blocks in one allowlist.
pub const MAX_ALLOW: usize = 100;

/// Code 401 for a key without the management scope.
pub fn management_key_required() -> ApiError {
    ApiError::new(
        codes::UNAUTHORIZED,
        "A management key is needed: this endpoint requires an API key with the management scope",
    )
}

fn require_manage(caller: &Caller) -> Result<(), ApiError> {
    if caller.manage {
        Ok(())
    } else {
        Err(management_key_required())
    }
}

fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::UnknownKey(_) | AccountError::UnknownAccount(_) => {
            ApiError::not_found("Key not found")
        }
        AccountError::Invalid(m) => ApiError::validation(m),
        AccountError::Db(e) => e.into(),
        e => ApiError::internal(e),
    }
}

/// The caller's key `id` (by id or display prefix), or 404 — also for a key of another
/// account, which is never looked at.
async fn own_key(state: &AppState, caller: &Caller, id: &str) -> Result<KeyInfo, ApiError> {
    let keys = accounts::list_keys(&state.db, Some(&caller.account_id))
        .await
        .map_err(account_error)?;
    let mut found = keys.into_iter().filter(|k| k.id == id || k.prefix == id);
    match (found.next(), found.next()) {
        (Some(k), None) => Ok(k),
        (Some(_), Some(_)) => Err(ApiError::validation(format!(
            "Invalid parameter 'id': '{id}' matches several keys; use the key id"
        ))),
        _ => Err(ApiError::not_found("Key not found")),
    }
}

/// Usage caps in credits; `null` or absent: no cap.
#[derive(Deserialize, Serialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapsBody {
    #[schema(value_type = Option<f64>, nullable)]
    #[serde(default)]
    pub hourly: Option<Credits>,
    #[schema(value_type = Option<f64>, nullable)]
    #[serde(default)]
    pub daily: Option<Credits>,
    #[schema(value_type = Option<f64>, nullable)]
    #[serde(default)]
    pub total: Option<Credits>,
}

/// Cap changes: an absent cap stays as it is, `null` removes it.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapsUpdate {
    #[schema(value_type = Option<f64>, nullable)]
    #[serde(default, deserialize_with = "present")]
    pub hourly: Option<Option<Credits>>,
    #[schema(value_type = Option<f64>, nullable)]
    #[serde(default, deserialize_with = "present")]
    pub daily: Option<Option<Credits>>,
    #[schema(value_type = Option<f64>, nullable)]
    #[serde(default, deserialize_with = "present")]
    pub total: Option<Option<Credits>>,
}

/// A present field (even `null`) is `Some`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A new key.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Up to 100 characters
    pub name: Option<String>,
    /// Expiry time (epoch milliseconds); or `expires`
    pub expires_at: Option<i64>,
    /// Expiry as a duration from now (`90d`, `12h`); or `expiresAt`
    pub expires: Option<String>,
    #[serde(default)]
    pub caps: CapsBody,
    /// CIDR blocks (or addresses) the key may be used from; empty: any
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// The management scope
    #[serde(default)]
    pub manage: bool,
}

/// Changes to a key; absent fields stay as they are.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateKeyRequest {
    pub caps: Option<CapsUpdate>,
    /// Replaces the allowlist; `[]`: any address
    pub allow_ips: Option<Vec<String>>,
    /// Gives or takes the management scope
    pub manage: Option<bool>,
}

/// Rolling a key.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollKeyRequest {
    /// How long the old key keeps working (`0`, `1h`, `7d`; default 0: revoked now)
    pub grace: Option<String>,
    /// A name for the new key (default: the old key's)
    pub name: Option<String>,
}

/// A key as listed (never the key itself).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct KeySummary {
    pub id: String,
    pub prefix: String,
    pub account: String,
    #[schema(nullable)]
    pub name: Option<String>,
    pub created_at: i64,
    #[schema(nullable)]
    pub expires_at: Option<i64>,
    #[schema(nullable)]
    pub revoked_at: Option<i64>,
    /// active, expired or revoked
    pub status: String,
    pub caps: CapsBody,
    pub allow_ips: Vec<String>,
    pub manage: bool,
    /// Credits charged this UTC hour, this UTC day, in total: `{"hourly","daily","total"}`
    #[schema(value_type = Object)]
    pub usage: serde_json::Value,
    /// When the key was last used (epoch ms, to the minute: the first use in each
    /// minute is recorded, written within a few seconds); null: never
    #[schema(nullable)]
    pub last_used_at: Option<i64>,
}

/// A new key: the only answer that contains the key itself.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    pub id: String,
    /// The API key: shown once, store it now
    pub key: String,
    pub prefix: String,
    pub account: String,
    #[schema(nullable)]
    pub name: Option<String>,
    #[schema(nullable)]
    pub expires_at: Option<i64>,
    #[schema(value_type = CapsBody)]
    pub caps: Caps,
    pub allow_ips: Vec<String>,
    pub manage: bool,
}

impl CreatedKey {
    fn new(k: NewKey, name: Option<String>, expires_at: Option<i64>) -> Self {
        CreatedKey {
            id: k.id,
            key: k.key,
            prefix: k.prefix,
            account: k.account,
            name,
            expires_at,
            caps: k.caps,
            allow_ips: k.allow_ips,
            manage: k.manage,
        }
    }
}

/// `{"code": 200, "msg": "success", "data": [key, …]}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct KeysEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Vec<KeySummary>>,
}

/// `{"code": 200, "msg": "success", "data": key}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct KeyEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<KeySummary>,
}

/// `{"code": 200, "msg": "success", "data": new key}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreatedKeyEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<CreatedKey>,
}

fn check_name(name: Option<&str>, field: &str) -> Result<Option<String>, ApiError> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(n) if n.chars().count() > MAX_NAME => Err(ApiError::validation(format!(
            "Invalid field '{field}': at most {MAX_NAME} characters"
        ))),
        Some(n) => Ok(Some(n.to_string())),
    }
}

fn check_cap(c: Option<Credits>, field: &str) -> Result<Option<Credits>, ApiError> {
    match c {
        Some(c) if c.0 < 0 => Err(ApiError::validation(format!(
            "Invalid field '{field}': a cap must not be negative"
        ))),
        c => Ok(c),
    }
}

fn check_allow(list: &[String]) -> Result<Vec<ipallow::Cidr>, ApiError> {
    if list.len() > MAX_ALLOW {
        return Err(ApiError::validation(format!(
            "Invalid field 'allowIps': at most {MAX_ALLOW} entries"
        )));
    }
    ipallow::parse_list(list)
        .map_err(|e| ApiError::validation(format!("Invalid field 'allowIps': {e}")))
}

fn duration_ms(field: &str, s: &str) -> Result<i64, ApiError> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .map_err(|e| {
            ApiError::validation(format!(
                "Invalid field '{field}': {e} (use e.g. 90s, 20m, 3d)"
            ))
        })
}

/// The account's keys (never the keys themselves), oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/account/keys",
    tag = "keys",
    responses((status = 200, description = "Envelope; data = keys with caps, usage, allowlist and scope. Codes: 200, 401 (no management key), 455, 500", body = KeysEnvelope))
)]
pub async fn list_keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Vec<KeyInfo>> {
    require_manage(&caller)?;
    let keys = accounts::list_keys(&state.db, Some(&caller.account_id))
        .await
        .map_err(account_error)?;
    Ok(ApiOk(keys))
}

/// Creates a key for the account; the answer is the only place the key is ever shown.
#[utoipa::path(
    post,
    path = "/api/v1/account/keys",
    tag = "keys",
    request_body = CreateKeyRequest,
    responses((status = 200, description = "Envelope; data = the new key (shown once). Codes: 200, 401 (no management key), 422 (names the field), 455, 500", body = CreatedKeyEnvelope))
)]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<CreatedKey> {
    require_manage(&caller)?;
    let req: CreateKeyRequest = optional_json(&headers, &body)?;
    let name = check_name(req.name.as_deref(), "name")?;
    let now = now_ms();
    let expires_at = match (req.expires_at, req.expires.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "Invalid field 'expires': give either 'expires' or 'expiresAt'",
            ))
        }
        (Some(t), None) if t <= now => {
            return Err(ApiError::validation(
                "Invalid field 'expiresAt': must be in the future (epoch milliseconds)",
            ))
        }
        (Some(t), None) => Some(t),
        (None, Some(d)) => match duration_ms("expires", d)? {
            0 => {
                return Err(ApiError::validation(
                    "Invalid field 'expires': must be longer than 0",
                ))
            }
            ms => Some(now.saturating_add(ms)),
        },
        (None, None) => None,
    };
    let opts = KeyOptions {
        caps: Caps {
            hourly: check_cap(req.caps.hourly, "caps.hourly")?,
            daily: check_cap(req.caps.daily, "caps.daily")?,
            total: check_cap(req.caps.total, "caps.total")?,
        },
        allow_ips: check_allow(&req.allow_ips)?,
        manage: req.manage,
    };
    let k = accounts::create_key_with(
        &state.db,
        &caller.account_id,
        name.as_deref(),
        expires_at,
        &opts,
    )
    .await
    .map_err(account_error)?;
    tracing::info!(by = %caller.key_id, key = %k.id, prefix = %k.prefix, "api: key created");
    Ok(ApiOk(CreatedKey::new(k, name, expires_at)))
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

/// Revokes one of the account's keys now (running servers refuse it within their auth
/// cache TTL, 2 s by default). Revoking a revoked key changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/account/keys/{id}/revoke",
    tag = "keys",
    params(("id" = String, Path, description = "Key id (or display prefix)")),
    responses((status = 200, description = "Envelope; data = the key. Codes: 200, 401 (no management key), 404 (no such key of this account), 455, 500", body = KeyEnvelope))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<KeyInfo> {
    require_manage(&caller)?;
    let k = own_key(&state, &caller, &id).await?;
    let k = accounts::revoke_key(&state.db, &k.id)
        .await
        .map_err(account_error)?;
    tracing::info!(by = %caller.key_id, key = %k.id, "api: key revoked");
    Ok(ApiOk(k))
}

/// Replaces one of the account's active keys: a new key (same caps, allowlist and
/// scope) now, the old one valid for `grace` more.
#[utoipa::path(
    post,
    path = "/api/v1/account/keys/{id}/roll",
    tag = "keys",
    params(("id" = String, Path, description = "Key id (or display prefix)")),
    request_body(content = RollKeyRequest, description = "Optional"),
    responses((status = 200, description = "Envelope; data = the new key (shown once). Codes: 200, 401 (no management key), 404, 422 (bad grace, key not active), 455, 500", body = CreatedKeyEnvelope))
)]
pub async fn roll_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<CreatedKey> {
    require_manage(&caller)?;
    let req: RollKeyRequest = optional_json(&headers, &body)?;
    let grace_ms = match req.grace.as_deref() {
        Some(g) => duration_ms("grace", g)?,
        None => 0,
    };
    let name = check_name(req.name.as_deref(), "name")?;
    let old = own_key(&state, &caller, &id).await?;
    if old.status != "active" {
        return Err(ApiError::validation(format!(
            "Invalid parameter 'id': key {} is {}; only an active key can be rolled",
            old.id, old.status
        )));
    }
    let k = accounts::roll_key(&state.db, &old.id, grace_ms, name.as_deref())
        .await
        .map_err(account_error)?;
    tracing::info!(by = %caller.key_id, old = %old.id, new = %k.id, grace_ms, "api: key rolled");
    let name = name.or(old.name);
    Ok(ApiOk(CreatedKey::new(k, name, None)))
}

/// Changes one of the account's keys: caps (`null` removes one), allowlist, scope.
#[utoipa::path(
    post,
    path = "/api/v1/account/keys/{id}/update",
    tag = "keys",
    params(("id" = String, Path, description = "Key id (or display prefix)")),
    request_body = UpdateKeyRequest,
    responses((status = 200, description = "Envelope; data = the key. Codes: 200, 401 (no management key), 404, 422 (names the field), 455, 500", body = KeyEnvelope))
)]
pub async fn update_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateKeyRequest>,
) -> ApiResult<KeyInfo> {
    require_manage(&caller)?;
    let caps = req.caps.unwrap_or_default();
    let cap = |c: Option<Option<Credits>>, f: &str| -> Result<Option<Option<Credits>>, ApiError> {
        match c {
            Some(v) => Ok(Some(check_cap(v, f)?)),
            None => Ok(None),
        }
    };
    let u = KeyUpdate {
        hourly: cap(caps.hourly, "caps.hourly")?,
        daily: cap(caps.daily, "caps.daily")?,
        total: cap(caps.total, "caps.total")?,
        allow_ips: req.allow_ips.as_deref().map(check_allow).transpose()?,
        manage: req.manage,
    };
    if u.is_empty() {
        return Err(ApiError::validation(
            "Invalid request body: nothing to change (give 'caps', 'allowIps' or 'manage')",
        ));
    }
    let k = own_key(&state, &caller, &id).await?;
    let k = accounts::update_key(&state.db, &k.id, &u)
        .await
        .map_err(account_error)?;
    tracing::info!(by = %caller.key_id, key = %k.id, "api: key updated");
    Ok(ApiOk(k))
}
