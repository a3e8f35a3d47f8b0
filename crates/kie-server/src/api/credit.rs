//! `GET /api/v1/chat/credit`: the caller's available balance.

use axum::extract::State;
use kie_wire::Credits;

use crate::auth::Caller;
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::ledger;
use crate::state::AppState;

/// The account's available balance (posted balance minus credits held by running
/// tasks), as a number: `100` when whole, `10.98` otherwise.
#[utoipa::path(
    get,
    path = "/api/v1/chat/credit",
    tag = "common",
    responses((status = 200, description = "Envelope; data = available credits", body = crate::openapi::CreditEnvelope))
)]
pub async fn get_credit(State(state): State<AppState>, caller: Caller) -> ApiResult<Credits> {
    // SQLite: a direct read on this thread (no cache: a fresh read transaction that
    // sees every acknowledged change); the pool path if that fails or on PostgreSQL.
    let fast = state
        .fast
        .as_ref()
        .and_then(|f| f.available(&caller.account_id));
    let available = match fast {
        Some(v) => v.map(Credits),
        None => ledger::available(&state.db, &caller.account_id).await?,
    }
    // The key exists but its account does not: treat like an unknown key.
    .ok_or_else(ApiError::unauthorized)?;
    Ok(ApiOk(available))
}
