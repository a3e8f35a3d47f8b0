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
    // What a read may see on each backend is the store's business (`Db::available`).
    let available = ledger::available(&state.db, &caller.account_id)
        .await?
        // The key exists but its account does not: treat like an unknown key.
        .ok_or_else(ApiError::unauthorized)?;
    Ok(ApiOk(available))
}
