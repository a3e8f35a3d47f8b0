//! Guards every request passes before its handler, in `http::pipeline`: maintenance
//! for `/api/...` but the operator API ([`api_refusal`]), and quick answers while the
//! database is down ([`db_watch`]); and the one a route declares in the route table,
//! its feature switch ([`FeatureSwitch`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

use super::ApiError;
use crate::settings::LiveSettings;
use crate::state::AppState;
use crate::store::health::DbHealth;

/// Maintenance (455) for `/api/...` but the operator API, before auth: the refusal
/// for `path`, if any.
pub fn api_refusal(state: &AppState, path: &str) -> Option<Response> {
    // the operator API keeps answering in maintenance: it is how maintenance ends
    if !path.starts_with("/api/") || path.starts_with("/api/v1/admin/") {
        return None;
    }
    if !state.settings.current().maintenance {
        return None;
    }
    let mut e = ApiError::maintenance();
    e.upload = super::error::is_upload_path(path);
    Some(e.into_response())
}

/// A route's feature switch (`settings::FEATURES`), declared next to the route in the
/// route table (`api::routes`), checked by the route's layer
/// ([`super::pipeline::RouteLabel`]): while the operator has the feature disabled the
/// route answers 505 before its extractors (so before auth and body).
#[derive(Clone)]
pub struct FeatureSwitch {
    settings: LiveSettings,
    feature: &'static str,
    upload: bool,
}

impl FeatureSwitch {
    /// Guards the routes it is declared on with `feature`.
    pub fn new(settings: &LiveSettings, feature: &'static str) -> Self {
        debug_assert!(
            crate::settings::FEATURES.iter().any(|(f, _)| *f == feature),
            "unknown feature {feature}"
        );
        FeatureSwitch {
            settings: settings.clone(),
            feature,
            upload: false,
        }
    }

    /// The refusal in the File Upload API's envelope (with `"success": false`).
    pub fn upload(mut self) -> Self {
        self.upload = true;
        self
    }

    /// The 505 answer while the feature is off.
    pub fn refusal(&self) -> Option<Response> {
        if !self.settings.current().is_disabled(self.feature) {
            return None;
        }
        let mut e = ApiError::feature_disabled(self.feature);
        e.upload = self.upload;
        Some(e.into_response())
    }
}

/// How a request is watched for a database outage (see [`db_watch`]).
pub enum DbWatch {
    /// File serving may answer from its caches while the database is down: it gets a
    /// moment (500 ms) after the outage is noticed, never the full connection wait.
    Files(DbHealth),
    /// API and worker requests: answered at once while the database is known to be
    /// down, and as soon as it goes down while they wait (for a connection, or for a
    /// query on a stalled database): code 500 with a request id, never a hang.
    /// Dropping a handler mid-transaction rolls the transaction back.
    Api { health: DbHealth, upload: bool },
}

/// The watch for a request on `path`; `None` when there is nothing to watch (an
/// embedded database is never "down"; pages and operational endpoints).
pub fn db_watch(state: &AppState, path: &str) -> Option<DbWatch> {
    if !state.db.can_go_down() {
        return None;
    }
    let health = state.db_health.clone();
    if path.starts_with("/links/") || path.starts_with("/files/") {
        Some(DbWatch::Files(health))
    } else if path.starts_with("/api/") || path.starts_with("/internal/") {
        let upload = super::error::is_upload_path(path);
        Some(DbWatch::Api { health, upload })
    } else {
        None
    }
}

impl DbWatch {
    /// Runs `handler` under this watch.
    pub async fn run<F>(self, handler: F) -> Response
    where
        F: Future<Output = Result<Response, Infallible>>,
    {
        let answered = |r: Result<Response, Infallible>| match r {
            Ok(r) => r,
            Err(never) => match never {},
        };
        match self {
            DbWatch::Files(health) => {
                let mut down = health.subscribe();
                tokio::select! {
                    r = handler => answered(r),
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
                }
            }
            DbWatch::Api { health, upload } => {
                let unreachable = move || {
                    let mut e = ApiError::internal("database unreachable");
                    e.upload = upload;
                    e.into_response()
                };
                let mut down = health.subscribe();
                if *down.borrow_and_update() {
                    return unreachable();
                }
                tokio::select! {
                    r = handler => answered(r),
                    Ok(_) = down.wait_for(|d| *d) => unreachable(),
                }
            }
        }
    }
}
