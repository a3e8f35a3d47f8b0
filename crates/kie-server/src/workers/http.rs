//! The internal worker API under `/internal/v1/worker`, for generation workers run by
//! the operator (see `docs/workers.md`). Authenticated with
//! `Authorization: Bearer <worker token>` (`--worker-token`), compared in constant
//! time; without a configured token every call answers 401.
//!
//! Unlike the public API these answers use real HTTP statuses (401, 404, 409, 422,
//! 500) with the same `{code, msg, data}` body, since workers are our own programs and
//! need no KIE.AI compatibility.
//!
//! * `POST /claim` `{"models":[…], "waitMs"?: 0..60000, "worker"?: name}` →
//!   `data`: the task (`taskId, model, input, param, createTime, deadline`) or null.
//! * `POST /tasks/{id}/files?name=N` body = the file (streamed; `Content-Type` kept)
//!   → `data: {fileId, url, size}`.
//! * `POST /tasks/{id}/complete` `{"costCredits"?, "resultObject"?}` → the record.
//! * `POST /tasks/{id}/fail` `{"failCode", "failMsg"}` → the record.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use kie_wire::Credits;
use serde::Deserialize;
use std::time::Duration;

use super::WorkerError;
use crate::auth::bearer_token;
use crate::state::AppState;
use crate::tasks::Task;

pub const PREFIX: &str = "/internal/v1/worker";

/// An answer of the worker API.
pub struct Answer(StatusCode, serde_json::Value);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (code, msg) = if self.0 == StatusCode::OK {
            (200, "success".to_string())
        } else {
            (
                i64::from(self.0.as_u16()),
                self.1.as_str().unwrap_or_default().to_string(),
            )
        };
        let data = if self.0 == StatusCode::OK {
            self.1
        } else {
            serde_json::Value::Null
        };
        (
            self.0,
            Json(serde_json::json!({"code": code, "msg": msg, "data": data})),
        )
            .into_response()
    }
}

fn ok(v: impl serde::Serialize) -> Answer {
    Answer(
        StatusCode::OK,
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
    )
}

fn err(status: StatusCode, msg: impl Into<String>) -> Answer {
    Answer(status, serde_json::Value::String(msg.into()))
}

impl From<WorkerError> for Answer {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::UnknownTask => err(StatusCode::NOT_FOUND, e.to_string()),
            WorkerError::AlreadyFinished | WorkerError::NotClaimed => {
                err(StatusCode::CONFLICT, e.to_string())
            }
            WorkerError::Invalid(m) => err(StatusCode::UNPROCESSABLE_ENTITY, m),
            WorkerError::Internal(detail) => {
                tracing::error!(error = %detail, "worker API request failed");
                err(StatusCode::INTERNAL_SERVER_ERROR, "Server error")
            }
        }
    }
}

/// A request carrying the configured worker token.
pub struct WorkerAuth;

impl FromRequestParts<AppState> for WorkerAuth {
    type Rejection = Answer;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Answer> {
        let Some(expected) = state.config.worker_token.as_ref().map(|t| t.expose()) else {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "worker API disabled: the server has no --worker-token",
            ));
        };
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .unwrap_or_default();
        use subtle::ConstantTimeEq;
        // Digests first: equal lengths, so the comparison leaks nothing about length.
        let a = sha2_digest(given);
        let b = sha2_digest(expected.as_bytes());
        if bool::from(a.ct_eq(&b)) && !given.is_empty() {
            Ok(WorkerAuth)
        } else {
            Err(err(StatusCode::UNAUTHORIZED, "invalid worker token"))
        }
    }
}

fn sha2_digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Parses a JSON body, naming the field on a type error.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Answer> {
    crate::http::json::parse_json(body).map_err(|e| err(StatusCode::UNPROCESSABLE_ENTITY, e.msg))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimRequest {
    models: Vec<String>,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    worker: Option<String>,
}

async fn claim(State(state): State<AppState>, _: WorkerAuth, body: Bytes) -> Answer {
    let req: ClaimRequest = match parse(&body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    if req.models.is_empty() || req.models.len() > 100 {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid field 'models': list 1 to 100 model names",
        );
    }
    let worker = req
        .worker
        .filter(|w| !w.is_empty() && w.len() <= 100)
        .unwrap_or_else(|| "external".into());
    match super::claim(
        &state,
        &req.models,
        Duration::from_millis(req.wait_ms),
        &worker,
    )
    .await
    {
        Ok(t) => ok(t),
        Err(e) => e.into(),
    }
}

#[derive(Deserialize)]
struct FileQuery {
    name: Option<String>,
}

async fn upload_file(
    State(state): State<AppState>,
    _: WorkerAuth,
    Path(task_id): Path<String>,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let Some(name) = q.name.filter(|n| !n.is_empty()) else {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid query parameter 'name': the file name is required",
        );
    };
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && *v != "application/octet-stream")
        .map(str::to_owned)
        .unwrap_or_else(|| {
            mime_guess::from_path(&name)
                .first_or_octet_stream()
                .to_string()
        });
    match super::upload_file(
        &state,
        &task_id,
        &name,
        &content_type,
        body.into_data_stream(),
    )
    .await
    {
        Ok(f) => ok(serde_json::json!({
            "fileId": f.id,
            "url": f.url(&state.config.public_url),
            "size": f.size,
        })),
        Err(e) => e.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompleteRequest {
    #[serde(default)]
    cost_credits: Option<Credits>,
    #[serde(default)]
    result_object: Option<serde_json::Value>,
}

/// What complete/fail answer: the task as recordInfo shows it (minus the balance).
fn task_view(t: &Task) -> serde_json::Value {
    serde_json::json!({
        "taskId": t.id,
        "state": t.state,
        "resultJson": t.result_json,
        "consumeCredits": Credits(t.consume_credits),
        "completeTime": t.completed_at,
    })
}

async fn complete(
    State(state): State<AppState>,
    _: WorkerAuth,
    Path(task_id): Path<String>,
    body: Bytes,
) -> Answer {
    // An empty body means "no cost, no object".
    let req: CompleteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteRequest {
            cost_credits: None,
            result_object: None,
        }
    } else {
        match parse(&body) {
            Ok(r) => r,
            Err(a) => return a,
        }
    };
    match super::complete(&state, &task_id, req.cost_credits, req.result_object).await {
        Ok(t) => ok(task_view(&t)),
        Err(e) => e.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FailRequest {
    fail_code: String,
    fail_msg: String,
}

async fn fail(
    State(state): State<AppState>,
    _: WorkerAuth,
    Path(task_id): Path<String>,
    body: Bytes,
) -> Answer {
    let req: FailRequest = match parse(&body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    if req.fail_code.len() > 64 || req.fail_msg.len() > 2000 {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "failCode (64) or failMsg (2000) too long",
        );
    }
    match super::fail(&state, &task_id, &req.fail_code, &req.fail_msg).await {
        Ok(t) => ok(task_view(&t)),
        Err(e) => e.into(),
    }
}

/// The worker API routes (merged into the app router, outside `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{PREFIX}/claim"), post(claim))
        .route(
            &format!("{PREFIX}/tasks/{{id}}/files"),
            // Result files have their own limit (`max_upload`), enforced while streaming.
            post(upload_file)
                .put(upload_file)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(&format!("{PREFIX}/tasks/{{id}}/complete"), post(complete))
        .route(&format!("{PREFIX}/tasks/{{id}}/fail"), post(fail))
}
