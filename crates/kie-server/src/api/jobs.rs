//! The Jobs API: `POST /api/v1/jobs/createTask` and `GET /api/v1/jobs/recordInfo`.

use axum::extract::{Query, State};
use kie_wire::task::{CreateTaskData, CreateTaskRequest, RecordInfo};
use serde::Deserialize;

use crate::auth::Caller;
use crate::config::ModelKind;
use crate::http::json::ApiJson;
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::net_guard::{CheckError, Policy};
use crate::state::AppState;
use crate::tasks::{self, CreateError, NewTask};

/// Longest accepted `callBackUrl`.
const MAX_CALLBACK_URL: usize = 2048;

/// Validates the request; returns the callback URL to store (an empty string counts as
/// none, as some clients send it).
fn validate(state: &AppState, req: &CreateTaskRequest) -> Result<Option<String>, ApiError> {
    let model = state.config.models.get(&req.model).ok_or_else(|| {
        ApiError::validation(format!(
            "Invalid field 'model': unknown model '{}'",
            req.model.escape_default()
        ))
    })?;
    let Some(input) = req.input.as_object() else {
        return Err(ApiError::validation(
            "Invalid field 'input': must be a JSON object",
        ));
    };
    if let Some(spec) = &model.spec {
        // A KIE.AI model: its own fields, as KIE.AI checks them.
        spec.validate(input).map_err(ApiError::validation)?;
    } else if model.kind != ModelKind::External {
        // The built-in `demo/*` models need a prompt.
        match input.get("prompt") {
            Some(serde_json::Value::String(p)) if !p.trim().is_empty() => {}
            _ => {
                return Err(ApiError::validation(
                    "Invalid field 'input.prompt': a non-empty string is required",
                ))
            }
        }
    }
    let url = req.call_back_url.as_deref().map(str::trim).unwrap_or("");
    if url.is_empty() {
        return Ok(None);
    }
    if url.len() > MAX_CALLBACK_URL {
        return Err(ApiError::validation(format!(
            "Invalid field 'callBackUrl': longer than {MAX_CALLBACK_URL} characters"
        )));
    }
    match Policy::from_config(&state.config).check_raw(url) {
        Ok(_) => Ok(Some(url.to_string())),
        Err(CheckError::Refused(_)) => Err(ApiError::validation(
            "Invalid field 'callBackUrl': the target address is not allowed (loopback, private or link-local)",
        )),
        Err(_) => Err(ApiError::validation(
            "Invalid field 'callBackUrl': must be an http or https URL",
        )),
    }
}

/// Creates a generation task. The model's price is held from the available balance
/// until the task finishes (charged on success, released on failure or timeout).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/createTask",
    tag = "jobs",
    request_body = crate::openapi::CreateTaskBody,
    responses((status = 200, description = "Envelope; data = {taskId}. Codes: 200, 401 (also: key not allowed from this address), 402 (insufficient credits), 433 (the key's usage cap would be exceeded), 422 (unknown model, input not an object or not valid for the model — the message names the field, bad callBackUrl), 429 (creation limit, HTTP 429 with Retry-After), 455, 500, 505", body = crate::openapi::CreateTaskEnvelope))
)]
pub async fn create_task(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTaskRequest>,
) -> ApiResult<CreateTaskData> {
    let callback_url = validate(&state, &req)?;
    let model = &state.config.models[&req.model];
    let stored = CreateTaskRequest {
        model: req.model.clone(),
        input: req.input,
        call_back_url: callback_url.clone(),
    };
    let param = serde_json::to_string(&stored).map_err(ApiError::internal)?;
    let new = NewTask {
        account_id: &caller.account_id,
        key_id: Some(&caller.key_id),
        model,
        param,
        callback_url,
        timeout: state.config.task_timeout,
        rate: Some((state.config.task_rate, state.config.task_rate_window)),
    };
    match tasks::create(&state.db, &new).await {
        Ok(task_id) => {
            state.jobs.tasks.notify_waiters();
            Ok(ApiOk(CreateTaskData { task_id }))
        }
        Err(CreateError::InsufficientCredits) => Err(ApiError::insufficient_credits()),
        Err(CreateError::CapExceeded) => Err(ApiError::key_cap_exceeded()),
        Err(CreateError::RateLimited { retry_after }) => {
            let mut e = ApiError::rate_limited(retry_after);
            e.msg = format!(
                "Task creation limit exceeded: at most {} per {} s; retry in {retry_after} s",
                state.config.task_rate,
                state.config.task_rate_window.as_secs()
            )
            .into();
            Err(e)
        }
        Err(CreateError::UnknownAccount) => Err(ApiError::unauthorized()),
        Err(CreateError::Internal(e)) => Err(ApiError::internal(e)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct RecordInfoQuery {
    /// The id createTask returned
    task_id: Option<String>,
}

/// A task's state and, once finished, its result or failure.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/recordInfo",
    tag = "jobs",
    params(RecordInfoQuery),
    responses((status = 200, description = "Envelope; data = the task record. Codes: 200, 401, 404 (unknown task or another account's), 422 (taskId missing), 455, 500, 505", body = crate::openapi::RecordInfoEnvelope))
)]
pub async fn record_info(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<RecordInfoQuery>,
) -> ApiResult<RecordInfo> {
    let task_id = q.task_id.unwrap_or_default();
    let task_id = task_id.trim();
    if task_id.is_empty() {
        return Err(ApiError::validation(
            "Invalid query parameter 'taskId': required",
        ));
    }
    let valid = task_id.len() <= 128
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(ApiError::not_found("Task not found"));
    }
    let task = tasks::get_for_account(&state.db, &caller.account_id, task_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Task not found"))?;
    let available = crate::ledger::available(&state.db, &caller.account_id)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    Ok(ApiOk(task.record_info(available)))
}
