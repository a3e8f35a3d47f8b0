//! Guards every request passes before its handler: maintenance and disabled features
//! for `/api/...` but the operator API ([`api_guard`]), and quick answers while the database is down
//! ([`db_guard`]). Both read the shared state; `hot` uses [`api_refusal`] for the
//! routes it serves.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tokio::sync::watch;

use super::ApiError;
use crate::state::AppState;

/// Which feature switch guards a path (see `settings::FEATURES`).
fn feature_of(path: &str) -> Option<&'static str> {
    if path == "/api/v1/chat/credit" {
        Some("credits")
    } else if path == "/api/v1/common/download-url" {
        Some("download-url")
    } else if path.starts_with("/api/file-") {
        Some("file-upload")
    } else if path.starts_with("/api/v1/jobs/") {
        Some("jobs")
    } else {
        None
    }
}

/// Maintenance (455) and disabled features (505) for `/api/...`, before auth.
pub async fn api_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(refused) = api_refusal(&state, req.uri().path()) {
        return refused;
    }
    next.run(req).await
}

/// The answer of [`api_guard`] for `path`, if it refuses it.
pub fn api_refusal(state: &AppState, path: &str) -> Option<Response> {
    // the operator API keeps answering in maintenance: it is how maintenance ends
    if !path.starts_with("/api/") || path.starts_with("/api/v1/admin/") {
        return None;
    }
    let s = state.settings.current();
    let err = if s.maintenance {
        Some(ApiError::maintenance())
    } else {
        feature_of(path)
            .filter(|f| s.is_disabled(f))
            .map(ApiError::feature_disabled)
    };
    err.map(|mut e| {
        e.upload = path.starts_with("/api/file-");
        e.into_response()
    })
}

/// Answers API and worker requests at once while the database is known to be down,
/// and answers requests already waiting (for a connection, or for a query on a stalled
/// database) as soon as it goes down: code 500 with a request id, never a hang.
/// Dropping a handler mid-transaction rolls the transaction back.
pub async fn db_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/links/") || path.starts_with("/files/") {
        // File serving may answer from its caches while the database is down: give it
        // a moment, never the full connection wait.
        let mut down = state.db_health.subscribe();
        return tokio::select! {
            r = next.run(req) => r,
            Ok(()) = async {
                down.wait_for(|d| *d).await.map(|_| ())?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<(), watch::error::RecvError>(())
            } => {
                tracing::error!("serving a file failed: database unreachable");
                let body = r#"{"code":500,"msg":"server error","data":null}"#;
                let mut r = (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
                let h = r.headers_mut();
                h.insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                );
                h.insert(
                    axum::http::header::CACHE_CONTROL,
                    axum::http::HeaderValue::from_static("no-store"),
                );
                r
            }
        };
    }
    if !(path.starts_with("/api/") || path.starts_with("/internal/")) {
        return next.run(req).await;
    }
    let upload = path.starts_with("/api/file-");
    let unreachable = move || {
        let mut e = ApiError::internal("database unreachable");
        e.upload = upload;
        e.into_response()
    };
    let mut down = state.db_health.subscribe();
    if *down.borrow_and_update() {
        return unreachable();
    }
    tokio::select! {
        r = next.run(req) => r,
        Ok(_) = down.wait_for(|d| *d) => unreachable(),
    }
}
