//! The operator API (issue 16): `/api/v1/admin/…`, the JSON twin of the operator's
//! console pages — accounts (search, create, one account with its keys, grant or
//! deduct credits), invites, maintenance and feature switches, signing-key rotation,
//! and health with the delivery backlog.
//!
//! Every endpoint needs `Authorization: Bearer kieop_…`, an operator token minted by
//! `kie admin operator-token create` (see `operator`). Anything else — no header, an
//! API key (even a management key), a revoked token — gets code 401 before anything
//! is looked up. These endpoints keep answering in maintenance mode (the guard lets
//! `/api/v1/admin/` through), so an operator can turn it off again through the API.
//! Every change is logged with the token's id, never the token.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use kie_wire::{codes, Credits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::accounts::{self, AccountError, KeyInfo};
use crate::auth::bearer_token;
use crate::console::users::{self, UserError};
use crate::http::json::ApiJson;
use crate::http::{ApiError, ApiOk, ApiResult, RequestCtx};
use crate::ledger::{self, LedgerError};
use crate::operator::{self, AccountBacklog, AccountRow, Backlog, CreditChangeError, CreditOp};
use crate::settings::{self, SwitchError};
use crate::state::AppState;

/// An authenticated operator token.
pub struct OperatorCaller {
    pub token_id: String,
}

/// Code 401 for anything but a live operator token.
pub fn operator_token_required() -> ApiError {
    ApiError::new(
        codes::UNAUTHORIZED,
        "An operator token is needed: Authorization: Bearer kieop_… (kie admin operator-token create)",
    )
}

impl FromRequestParts<AppState> for OperatorCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .and_then(|t| std::str::from_utf8(t).ok())
            .ok_or_else(operator_token_required)?;
        let t = operator::authenticate(&state.db, token)
            .await?
            .ok_or_else(operator_token_required)?;
        if let Some(ctx) = parts.extensions.get::<Arc<RequestCtx>>() {
            let _ = ctx.caller.set((Arc::from("operator"), Arc::from(t.prefix)));
        }
        Ok(OperatorCaller { token_id: t.id })
    }
}

/// An account as the operator sees it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminAccount {
    pub id: String,
    pub name: String,
    /// The account holder's email address (the default of an invite)
    #[schema(nullable)]
    pub email: Option<String>,
    #[schema(value_type = f64)]
    pub balance: Credits,
    #[schema(value_type = f64)]
    pub held: Credits,
    /// balance − held
    #[schema(value_type = f64)]
    pub available: Credits,
}

impl From<AccountRow> for AdminAccount {
    fn from(r: AccountRow) -> Self {
        AdminAccount {
            id: r.id,
            name: r.name,
            email: r.email,
            balance: Credits(r.balance),
            held: Credits(r.held),
            available: Credits(r.balance - r.held),
        }
    }
}

/// One account with its keys (never the keys themselves).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminAccountDetail {
    pub account: AdminAccount,
    #[schema(value_type = Vec<crate::api::keys::KeySummary>)]
    pub keys: Vec<KeyInfo>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Part of a name, id or email address (any case); absent or empty: all accounts
    pub q: Option<String>,
}

/// `{"code": 200, "msg": "success", "data": [account, …]}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AccountsEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<Vec<AdminAccount>>,
}

/// `{"code": 200, "msg": "success", "data": account}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AccountEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<AdminAccount>,
}

/// `{"code": 200, "msg": "success", "data": {account, keys}}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AccountDetailEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<AdminAccountDetail>,
}

/// Accounts whose name, id or email contains `q`, by name (at most 200).
#[utoipa::path(
    get,
    path = "/api/v1/admin/accounts",
    tag = "admin",
    security(("operator" = [])),
    params(SearchParams),
    responses((status = 200, description = "Envelope; data = accounts. Codes: 200, 401 (no operator token), 500", body = AccountsEnvelope))
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    _op: OperatorCaller,
    Query(p): Query<SearchParams>,
) -> ApiResult<Vec<AdminAccount>> {
    let rows = operator::search_accounts(&state.db, p.q.as_deref().unwrap_or_default()).await?;
    Ok(ApiOk(rows.into_iter().map(AdminAccount::from).collect()))
}

/// A new account.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// 1 to 200 characters, unique
    pub name: String,
    /// The account holder's email address
    pub email: Option<String>,
    /// Starting credits (at most 2 decimals)
    #[schema(value_type = Option<f64>)]
    pub credits: Option<Credits>,
}

fn account_error(e: AccountError) -> ApiError {
    match e {
        AccountError::UnknownAccount(_) => ApiError::not_found("Account not found"),
        AccountError::Db(e) => e.into(),
        AccountError::Ledger(LedgerError::Db(e)) => e.into(),
        e @ (AccountError::Invalid(_) | AccountError::NameTaken(_)) => {
            ApiError::validation(e.to_string())
        }
        e => ApiError::internal(e),
    }
}

fn user_error(e: UserError) -> ApiError {
    match e {
        UserError::Db(e) => e.into(),
        UserError::UnknownAccount(_) => ApiError::not_found("Account not found"),
        e => ApiError::validation(e.to_string()),
    }
}

async fn admin_account(state: &AppState, id: &str) -> Result<AdminAccount, ApiError> {
    let acc = accounts::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("Account not found"))?;
    let bal = ledger::balance(&state.db, &acc.id)
        .await?
        .ok_or_else(|| ApiError::not_found("Account not found"))?;
    Ok(AdminAccount {
        email: users::account_email(&state.db, &acc.id).await?,
        id: acc.id,
        name: acc.name,
        balance: bal.balance,
        held: bal.held,
        available: bal.available(),
    })
}

/// Creates an account, with its holder's email address and starting credits if given.
#[utoipa::path(
    post,
    path = "/api/v1/admin/accounts",
    tag = "admin",
    security(("operator" = [])),
    request_body = CreateAccountRequest,
    responses((status = 200, description = "Envelope; data = the new account. Codes: 200, 401 (no operator token), 422 (names the problem: a taken name, a bad email or amount), 500", body = AccountEnvelope))
)]
pub async fn create_account(
    State(state): State<AppState>,
    op: OperatorCaller,
    ApiJson(req): ApiJson<CreateAccountRequest>,
) -> ApiResult<AdminAccount> {
    // everything is checked before anything is written, and written in one insert
    let email = match req.email.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => Some(users::normalize_email(e).map_err(user_error)?),
        _ => None,
    };
    if req.credits.is_some_and(|c| c.0 < 0) {
        return Err(ApiError::validation(
            "Invalid field 'credits': must not be negative",
        ));
    }
    let a = accounts::create_with_email(&state.db, &req.name, email.as_deref(), req.credits)
        .await
        .map_err(account_error)?;
    tracing::info!(operator_token = %op.token_id, account = %a.id, "admin api: account created");
    Ok(ApiOk(admin_account(&state, &a.id).await?))
}

/// One account (by id or name) with its API keys.
#[utoipa::path(
    get,
    path = "/api/v1/admin/accounts/{id}",
    tag = "admin",
    security(("operator" = [])),
    params(("id" = String, Path, description = "Account id or name")),
    responses((status = 200, description = "Envelope; data = {account, keys}. Codes: 200, 401 (no operator token), 404, 500", body = AccountDetailEnvelope))
)]
pub async fn get_account(
    State(state): State<AppState>,
    _op: OperatorCaller,
    Path(id): Path<String>,
) -> ApiResult<AdminAccountDetail> {
    let account = admin_account(&state, &id).await?;
    let keys = accounts::list_keys(&state.db, Some(&account.id))
        .await
        .map_err(account_error)?;
    Ok(ApiOk(AdminAccountDetail { account, keys }))
}

/// A change of an account's credits.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreditsRequest {
    pub op: CreditOp,
    /// Positive, at most 2 decimals
    #[schema(value_type = f64)]
    pub amount: Credits,
    /// Why (1 to 500 characters); recorded in the ledger
    pub reason: String,
    /// 1 to 200 characters: the same key again changes nothing and answers the first
    /// result with `replayed: true`
    pub idempotency_key: String,
}

/// What a credit change did.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditsResult {
    pub account: String,
    /// The ledger entry
    pub entry_id: String,
    #[schema(value_type = f64)]
    pub balance: Credits,
    #[schema(value_type = f64)]
    pub held: Credits,
    #[schema(value_type = f64)]
    pub available: Credits,
    /// The idempotency key had been used: nothing changed now
    pub replayed: bool,
}

/// `{"code": 200, "msg": "success", "data": result}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreditsEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<CreditsResult>,
}

/// Grants or deducts credits, with a reason and an idempotency key (one ledger
/// transaction). A deduction beyond the available balance is refused (code 402) and
/// changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/admin/accounts/{id}/credits",
    tag = "admin",
    security(("operator" = [])),
    params(("id" = String, Path, description = "Account id or name")),
    request_body = CreditsRequest,
    responses((status = 200, description = "Envelope; data = the balance after. Codes: 200, 401 (no operator token), 402 (deduction beyond the available balance), 404, 422 (names the field; also an idempotency key used for a different change), 500", body = CreditsEnvelope))
)]
pub async fn change_credits(
    State(state): State<AppState>,
    op: OperatorCaller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreditsRequest>,
) -> ApiResult<CreditsResult> {
    let r = operator::change_credits(
        &state.db,
        &id,
        req.op,
        req.amount,
        &req.reason,
        &req.idempotency_key,
    )
    .await;
    let (account, applied) = match r {
        Ok(done) => done,
        Err(CreditChangeError::Invalid { field, msg }) => {
            return Err(ApiError::validation(format!(
                "Invalid field '{field}': {msg}"
            )))
        }
        Err(CreditChangeError::UnknownAccount) => {
            return Err(ApiError::not_found("Account not found"))
        }
        Err(CreditChangeError::Ledger(LedgerError::InsufficientCredits)) => {
            return Err(ApiError::insufficient_credits())
        }
        Err(CreditChangeError::Ledger(LedgerError::Invalid(m))) => {
            return Err(ApiError::validation(m))
        }
        Err(CreditChangeError::Db(e) | CreditChangeError::Ledger(LedgerError::Db(e))) => {
            return Err(e.into())
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    if !applied.replayed {
        tracing::info!(operator_token = %op.token_id, %account, op = ?req.op, amount = %req.amount, "admin api: credits changed");
    }
    Ok(ApiOk(CreditsResult {
        account,
        available: applied.available(),
        entry_id: applied.entry_id,
        balance: applied.balance,
        held: applied.held,
        replayed: applied.replayed,
    }))
}

/// An invite to the console.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InviteRequest {
    /// The account (id or name) the person will see; or `operator: true`
    pub account: Option<String>,
    /// Invite an operator (needs `email`)
    #[serde(default)]
    pub operator: bool,
    /// The person's email address, their sign-in name (default: the account's email)
    pub email: Option<String>,
}

/// A one-time URL where the person sets a password and is signed in.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InviteCreated {
    /// Usable once, until `expiresAt`; a secret: hand it to the person only
    pub url: String,
    /// RFC 3339
    pub expires_at: String,
    pub email: String,
    /// account or operator
    pub role: String,
}

/// `{"code": 200, "msg": "success", "data": invite}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct InviteEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<InviteCreated>,
}

/// Invites an account holder (`account`) or an operator (`operator: true`) to the
/// console: the answer's one-time URL is valid 24 hours.
#[utoipa::path(
    post,
    path = "/api/v1/admin/invites",
    tag = "admin",
    security(("operator" = [])),
    request_body = InviteRequest,
    responses((status = 200, description = "Envelope; data = the invite URL. Codes: 200, 401 (no operator token), 404 (no such account), 422, 500", body = InviteEnvelope))
)]
pub async fn create_invite(
    State(state): State<AppState>,
    op: OperatorCaller,
    ApiJson(req): ApiJson<InviteRequest>,
) -> ApiResult<InviteCreated> {
    let email = req
        .email
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let account = match (req.operator, req.account.as_deref()) {
        (true, Some(_)) => {
            return Err(ApiError::validation(
                "Invalid request body: give either 'account' or 'operator': true",
            ))
        }
        (false, None) => {
            return Err(ApiError::validation(
                "Invalid request body: 'account' or 'operator': true is required",
            ))
        }
        (_, account) => account,
    };
    let inv = match users::invite(&state.db, email, account).await {
        Err(UserError::NoEmail) if req.operator => {
            return Err(ApiError::validation(
                "Invalid field 'email': required for an operator",
            ))
        }
        Err(UserError::NoEmail) => {
            return Err(ApiError::validation(
                "Invalid field 'email': the account has no email address, give one",
            ))
        }
        r => r.map_err(user_error)?,
    };
    tracing::info!(operator_token = %op.token_id, user = %inv.user.id, "admin api: invite created");
    Ok(ApiOk(InviteCreated {
        url: crate::console::admin::invite_url(&state.config.public_url, &inv.token),
        expires_at: inv.expires_rfc3339(),
        email: inv.user.email,
        role: inv.user.role.as_str().to_string(),
    }))
}

/// A feature switch.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureState {
    pub name: String,
    /// What it guards
    pub endpoints: String,
    pub enabled: bool,
}

/// The switches and the link-signing key.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSettings {
    /// While on, every /api request but these answers code 455
    pub maintenance: bool,
    pub features: Vec<FeatureState>,
    /// Id of the active link-signing key
    #[schema(nullable)]
    pub signing_key: Option<String>,
}

/// `{"code": 200, "msg": "success", "data": settings}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SettingsEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<AdminSettings>,
}

async fn admin_settings(state: &AppState) -> Result<AdminSettings, ApiError> {
    // from the database, not this node's snapshot: a switch just flipped shows
    let snap = settings::load(&state.db).await?;
    let backlog = operator::backlog(&state.db).await?;
    Ok(AdminSettings {
        maintenance: snap.maintenance,
        features: settings::FEATURES
            .iter()
            .map(|(name, what)| FeatureState {
                name: name.to_string(),
                endpoints: what.to_string(),
                enabled: !snap.is_disabled(name),
            })
            .collect(),
        signing_key: backlog.signing_key,
    })
}

/// Maintenance mode, the feature switches and the active link-signing key.
#[utoipa::path(
    get,
    path = "/api/v1/admin/settings",
    tag = "admin",
    security(("operator" = [])),
    responses((status = 200, description = "Envelope; data = settings. Codes: 200, 401 (no operator token), 500", body = SettingsEnvelope))
)]
pub async fn get_settings(
    State(state): State<AppState>,
    _op: OperatorCaller,
) -> ApiResult<AdminSettings> {
    Ok(ApiOk(admin_settings(&state).await?))
}

/// Switch changes; absent ones stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsUpdate {
    pub maintenance: Option<bool>,
    /// Feature name → enabled
    #[serde(default)]
    pub features: BTreeMap<String, bool>,
}

/// Turns maintenance mode and features on or off, all in one transaction; every node
/// applies the change within a second.
#[utoipa::path(
    post,
    path = "/api/v1/admin/settings",
    tag = "admin",
    security(("operator" = [])),
    request_body = SettingsUpdate,
    responses((status = 200, description = "Envelope; data = settings after. Codes: 200, 401 (no operator token), 422 (an unknown feature: nothing changed), 500", body = SettingsEnvelope))
)]
pub async fn update_settings(
    State(state): State<AppState>,
    op: OperatorCaller,
    ApiJson(req): ApiJson<SettingsUpdate>,
) -> ApiResult<AdminSettings> {
    let features: Vec<(String, bool)> = req.features.into_iter().collect();
    match settings::switch(&state.db, req.maintenance, &features).await {
        Ok(()) => {}
        Err(SwitchError::Db(e)) => return Err(e.into()),
        Err(e @ SwitchError::UnknownFeature(_)) => {
            return Err(ApiError::validation(format!(
                "Invalid field 'features': {e}"
            )))
        }
    }
    tracing::info!(operator_token = %op.token_id, maintenance = ?req.maintenance, features = ?features, "admin api: settings changed");
    Ok(ApiOk(admin_settings(&state).await?))
}

/// What a signing-key rotation did.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationResult {
    /// The new active key id
    pub signing_key: String,
    /// Key ids retired now (their links stay valid until they expire)
    pub retired: Vec<String>,
}

/// `{"code": 200, "msg": "success", "data": rotation}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RotationEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<RotationResult>,
}

/// Adds a new link-signing key and retires the active one (its links stay valid until
/// they expire), in one transaction.
#[utoipa::path(
    post,
    path = "/api/v1/admin/signing-key/rotate",
    tag = "admin",
    security(("operator" = [])),
    responses((status = 200, description = "Envelope; data = the new key id and the retired ones. Codes: 200, 401 (no operator token), 500", body = RotationEnvelope))
)]
pub async fn rotate_signing_key(
    State(state): State<AppState>,
    op: OperatorCaller,
) -> ApiResult<RotationResult> {
    let r = crate::files::links::rotate(&state.db).await?;
    tracing::info!(operator_token = %op.token_id, signing_key = %r.id, "admin api: signing key rotated");
    Ok(ApiOk(RotationResult {
        signing_key: r.id,
        retired: r.retired,
    }))
}

/// Reachability of one dependency.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    /// Which one (sqlite or postgres; the store's URL without credentials)
    pub describe: String,
    pub reachable: bool,
}

/// Requests this node answered over the last minute.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestRates {
    pub window_secs: f64,
    pub requests: u64,
    /// Answers with codes 400–499
    pub client_errors: u64,
    /// Answers with codes 500 and above
    pub server_errors: u64,
    pub requests_per_sec: f64,
    pub client_errors_per_sec: f64,
    pub server_errors_per_sec: f64,
}

/// The node's health: what `/readyz` checks, the work waiting, request rates.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminHealth {
    /// Database and object store both reachable
    pub ready: bool,
    pub database: Dependency,
    pub object_store: Dependency,
    pub backlog: Backlog,
    /// The accounts with the most pending (then failed) deliveries, at most 20
    pub backlog_by_account: Vec<AccountBacklog>,
    pub rates: RequestRates,
}

/// `{"code": 200, "msg": "success", "data": health}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct HealthEnvelope {
    pub code: i64,
    pub msg: String,
    #[schema(nullable)]
    pub data: Option<AdminHealth>,
}

/// The answering node's health: readiness, the delivery and task backlog across
/// accounts, and request and error rates over the last minute (each node counts its
/// own requests).
#[utoipa::path(
    get,
    path = "/api/v1/admin/health",
    tag = "admin",
    security(("operator" = [])),
    responses((status = 200, description = "Envelope; data = health. Codes: 200, 401 (no operator token), 500", body = HealthEnvelope))
)]
pub async fn health(State(state): State<AppState>, _op: OperatorCaller) -> ApiResult<AdminHealth> {
    let (backlog, by_account, (db_ok, store_ok)) = tokio::join!(
        operator::backlog(&state.db),
        operator::backlog_by_account(&state.db),
        operator::reachable(&state.db, &state.blobs)
    );
    let r = crate::metrics::rates();
    Ok(ApiOk(AdminHealth {
        ready: db_ok && store_ok,
        database: Dependency {
            describe: state.db.backend().to_string(),
            reachable: db_ok,
        },
        object_store: Dependency {
            describe: state.blobs.describe(),
            reachable: store_ok,
        },
        backlog: backlog?,
        backlog_by_account: by_account?,
        rates: RequestRates {
            requests_per_sec: r.requests_per_sec(),
            client_errors_per_sec: r.client_errors_per_sec(),
            server_errors_per_sec: r.server_errors_per_sec(),
            window_secs: r.window_secs,
            requests: r.requests,
            client_errors: r.client_errors,
            server_errors: r.server_errors,
        },
    }))
}
