//! The hottest routes, answered without the router and its middleware stack.
//!
//! `GET /api/v1/chat/credit`, `POST /api/v1/common/download-url` and the file bytes
//! behind links and file URLs (`GET`/`HEAD /links/…`, `/files/…`) are most of the
//! traffic (monitors polling balances, batch jobs fetching thousands of links). Through
//! the router each request passes six `from_fn` layers (each boxing a future and
//! cloning the state), route matching with its extension map, a boxed request body and
//! `tower::oneshot`; for the credit read that was about half of its instructions (see
//! BENCHMARKS.md). Here the connection's service picks these routes out by method and
//! path and runs **the same handlers** with the same checks in the same order:
//!
//! 1. request id (`x-request-id`), as the envelope layer;
//! 2. the per-IP rate limit (`ratelimit::IpLimiter::check`);
//! 3. maintenance and disabled features (`http::guard::api_refusal`);
//! 4. the handler itself (`api::credit::get_credit`, `api::download_url::download_url`,
//!    `files::serve::serve_link` / `serve_public_url`) with its extractors
//!    (`Caller`, the JSON body: content type, size, body deadline, parse);
//! 5. the way out shared with the envelope layer (`http::finish`): envelope for answers
//!    without one, status mode, metrics under the route's label, request log.
//!
//! Only on SQLite (where `db_guard` has nothing to do: an embedded database is never
//! "down"); PostgreSQL deployments, and any request not matched here exactly (a POST
//! without `Content-Length` or with a body over the limit, `HEAD` of the credit
//! endpoint, …), take the router. Every test of these endpoints runs through this path
//! on SQLite and through the router on PostgreSQL.

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::json::{parse_json, require_json_content_type, ApiJson};
use super::{finish, request_id_from, ApiError, ApiOk, RequestCtx};
use crate::auth::Caller;
use crate::state::AppState;

/// A route served here. Labels are the router's (`MatchedPath`), so metrics do not
/// change with the path a request took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Credit,
    DownloadUrl,
    Link,
    PublicFile,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Credit => "/api/v1/chat/credit",
            Route::DownloadUrl => "/api/v1/common/download-url",
            Route::Link => "/links/{*rest}",
            Route::PublicFile => "/files/{*rest}",
        }
    }
}

/// Whether this module answers `req` (`None`: the router does).
pub fn route_of<B>(state: &AppState, req: &http::Request<B>) -> Option<Route> {
    // SQLite only (PostgreSQL deployments take the router for every route)
    state.db.fast()?;
    let path = req.uri().path();
    let file_route = || {
        if path.len() > "/links/".len() && path.starts_with("/links/") {
            Some(Route::Link)
        } else if path.len() > "/files/".len() && path.starts_with("/files/") {
            Some(Route::PublicFile)
        } else {
            None
        }
    };
    match *req.method() {
        Method::GET if path == "/api/v1/chat/credit" => Some(Route::Credit),
        Method::GET | Method::HEAD => file_route(),
        Method::POST if path == "/api/v1/common/download-url" => {
            // A declared length within the limit: the body cannot outgrow it (hyper
            // enforces Content-Length). Anything else goes through the router's limit.
            let len: usize = req
                .headers()
                .get(header::CONTENT_LENGTH)?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            (len <= state.config.max_body).then_some(Route::DownloadUrl)
        }
        _ => None,
    }
}

/// Answers `req`, which [`route_of`] picked for `route`.
pub async fn serve<B>(
    state: &AppState,
    route: Route,
    req: http::Request<B>,
    peer: SocketAddr,
) -> Response
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let started = Instant::now();
    let ctx = Arc::new(RequestCtx {
        id: request_id_from(req.headers()),
        ..Default::default()
    });
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    // a cheap clone (shared bytes)
    let uri = parts.uri.clone();
    // Only the credit read is kept inline; the others (larger futures) are boxed so
    // that the connection's future, which hyper moves on every request, stays small.
    let resp = match refusal(state, parts.uri.path(), peer) {
        Some(refused) => refused,
        None if route == Route::Credit => credit(state, &ctx, parts, peer).await,
        None => Box::pin(answer(state, route, &ctx, parts, body, peer)).await,
    };
    // A success answer of `credit` carries no `BodyCode` extension (an allocation):
    // a 200 answer without one on that route is its success envelope.
    let known = (route == Route::Credit
        && resp.status() == http::StatusCode::OK
        && resp.extensions().is_empty())
    .then_some(super::error::BodyCode {
        code: kie_wire::codes::SUCCESS,
        too_large: false,
    });
    finish(
        &state.config,
        &ctx,
        &method,
        uri.path(),
        route.label(),
        resp,
        known,
        started,
    )
}

/// The per-IP limit, then maintenance and disabled features (the router's order).
fn refusal(state: &AppState, path: &str, peer: SocketAddr) -> Option<Response> {
    if let Some(limiter) = &state.ip_limiter {
        if let Some(refused) = limiter.check(peer.ip(), path) {
            return Some(refused);
        }
    }
    crate::http::guard::api_refusal(state, path)
}

/// `GET /api/v1/chat/credit`: the handler of the router, with the caller authenticated
/// directly (no extension map) and the envelope written straight into the body.
async fn credit(
    state: &AppState,
    ctx: &RequestCtx,
    parts: http::request::Parts,
    peer: SocketAddr,
) -> Response {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match state.auth.authenticate(header, Some(peer.ip())).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let _ = ctx
        .caller
        .set((caller.account_id.clone(), caller.key_prefix.clone()));
    match crate::api::credit::get_credit(State(state.clone()), caller).await {
        Ok(ApiOk(credits)) => {
            let mut body = Vec::with_capacity(64);
            body.extend_from_slice(br#"{"code":200,"msg":"success","data":"#);
            if serde_json::to_writer(&mut body, &credits).is_err() {
                return ApiError::internal("serialising the balance").into_response();
            }
            body.push(b'}');
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn answer<B>(
    state: &AppState,
    route: Route,
    ctx: &Arc<RequestCtx>,
    mut parts: http::request::Parts,
    body: B,
    peer: SocketAddr,
) -> Response
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    parts.extensions.insert(ctx.clone());
    parts.extensions.insert(ConnectInfo(peer));
    match route {
        Route::Credit => credit(state, ctx, parts, peer).await,
        Route::DownloadUrl => {
            // Extractor order of the handler: the caller, then the JSON body.
            let caller = match Caller::from_request_parts(&mut parts, state).await {
                Ok(c) => c,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = require_json_content_type(&parts.headers) {
                return e.into_response();
            }
            let timeout = state.config.request_body_timeout;
            let bytes = match tokio::time::timeout(timeout, body.collect()).await {
                Err(_) => return crate::http::body_timed_out(timeout, false),
                Ok(Err(_)) => {
                    return ApiError::validation("Could not read the request body").into_response()
                }
                Ok(Ok(collected)) => collected.to_bytes(),
            };
            let value: serde_json::Value = match parse_json(&bytes) {
                Ok(v) => v,
                Err(e) => return e.into_response(),
            };
            crate::api::download_url::download_url(State(state.clone()), caller, ApiJson(value))
                .await
                .into_response()
        }
        Route::Link => {
            crate::files::serve::serve_link(
                State(state.clone()),
                Request::from_parts(parts, Body::empty()),
            )
            .await
        }
        Route::PublicFile => {
            crate::files::serve::serve_public_url(
                State(state.clone()),
                Request::from_parts(parts, Body::empty()),
            )
            .await
        }
    }
}
