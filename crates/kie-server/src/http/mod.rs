//! HTTP plumbing shared by every endpoint: request ids, the envelope/status-mode layer,
//! request logs and metrics, the JSON body extractor, and the 404/405 answers.

pub mod error;
pub mod guard;
pub mod json;
pub mod pipeline;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use error::{error_body, BodyCode, InternalDetail, UploadEnvelope};
pub use error::{ApiError, ApiOk, ApiResult};

use crate::config::{Config, StatusMode};
use kie_wire::codes;

pub const REQUEST_ID: &str = "x-request-id";
/// [`REQUEST_ID`] as a header name (no parsing per request).
pub static REQUEST_ID_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static(REQUEST_ID);

/// Per-request facts gathered on the way in and logged on the way out.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub id: String,
    /// The client's address (the TCP peer; `None`: not known, e.g. a request built
    /// in-process without one), for the per-IP limit and key allowlists.
    pub peer: Option<std::net::IpAddr>,
    pub route: OnceLock<MatchedPath>,
    /// (account id, key prefix) once the caller is authenticated.
    pub caller: OnceLock<(Arc<str>, Arc<str>)>,
}

/// An incoming request id is echoed when it is short and plain; otherwise a new one.
/// One that looks like a credential (a client sending its API key by mistake) is
/// replaced too: request ids are logged.
pub fn request_id_from(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
                && kie_wire::secrets::scan(s).is_empty()
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: `req_` + 16 base62 characters, 5 drawn once per process from
/// the OS RNG and 11 encoding a scrambled per-process counter (a bijection of the
/// counter, so ids never repeat within a process). Ids are not secrets; this costs a
/// few nanoseconds instead of a `getrandom` call per request.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<(String, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (prefix, key) = PREFIX.get_or_init(|| {
        use rand::RngCore;
        (
            kie_wire::apikey::random_base62(5),
            rand::rngs::OsRng.next_u64(),
        )
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 finaliser over (n + key): invertible, so distinct n give distinct ids
    let mut z = n.wrapping_add(*key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let tail = kie_wire::apikey::base62_fixed::<11>(z); // 62^11 > 2^64
    let mut id = String::with_capacity(4 + 5 + 11);
    id.push_str("req_");
    id.push_str(prefix);
    id.push_str(std::str::from_utf8(&tail).expect("ascii"));
    id
}

/// The HTTP status for an enveloped answer under `mode` (SPEC §2).
pub fn http_status(mode: StatusMode, code: i64, too_large: bool) -> StatusCode {
    if code == codes::RATE_LIMITED {
        return StatusCode::TOO_MANY_REQUESTS;
    }
    match mode {
        StatusMode::Compat => StatusCode::OK,
        StatusMode::Mirror => {
            if too_large {
                return StatusCode::PAYLOAD_TOO_LARGE;
            }
            match code {
                codes::MAINTENANCE => StatusCode::SERVICE_UNAVAILABLE,
                codes::FEATURE_DISABLED => StatusCode::NOT_IMPLEMENTED,
                c => StatusCode::from_u16(c as u16).unwrap_or(StatusCode::OK),
            }
        }
    }
}

/// The way out of every request (`pipeline`): envelopes for answers produced outside
/// the handlers, internal details replaced by the request id, the status mode, the
/// `x-request-id` header, metrics and the request log line.
pub fn finish(
    config: &Config,
    ctx: &RequestCtx,
    method: &Method,
    path: &str,
    route: &str,
    mut resp: Response,
    started: Instant,
) -> Response {
    let is_api = path.starts_with("/api/");

    // Answers the router or a tower layer produced without an envelope.
    if is_api && resp.extensions().get::<BodyCode>().is_none() {
        let (code, msg, too_large) = match resp.status() {
            StatusCode::METHOD_NOT_ALLOWED => (
                codes::METHOD_NOT_ALLOWED,
                "Method not allowed".to_string(),
                false,
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                codes::VALIDATION,
                format!(
                    "Request body exceeds the limit of {} bytes",
                    config.max_body
                ),
                true,
            ),
            StatusCode::NOT_FOUND => (codes::NOT_FOUND, "Not found".into(), false),
            _ => (0, String::new(), false),
        };
        if code != 0 {
            let allow = resp.headers().get(header::ALLOW).cloned();
            resp = error::json_response(error_body(code, &msg, false));
            if let Some(a) = allow {
                resp.headers_mut().insert(header::ALLOW, a);
            }
            resp.extensions_mut().insert(BodyCode { code, too_large });
        }
    }

    let body_code = resp.extensions().get::<BodyCode>().copied();
    if let Some(bc) = body_code {
        if let Some(InternalDetail(detail)) = resp.extensions().get::<InternalDetail>().cloned() {
            tracing::error!(request_id = %ctx.id, %method, path = %path, error = %detail, "request failed");
            let upload = resp.extensions().get::<UploadEnvelope>().is_some();
            let msg = format!("Server error (request id {})", ctx.id);
            resp = error::json_response(error_body(codes::SERVER_ERROR, &msg, upload));
            resp.extensions_mut().insert(bc);
        }
        let keep_ok = config.status_mode == StatusMode::Compat
            && resp.extensions().get::<error::KeepHttpOk>().is_some();
        *resp.status_mut() = if keep_ok {
            StatusCode::OK
        } else {
            http_status(config.status_mode, bc.code, bc.too_large)
        };
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER.clone(), v);
    }

    let elapsed = started.elapsed();
    let code = body_code
        .map(|b| b.code)
        .unwrap_or(resp.status().as_u16() as i64);
    crate::metrics::record_request(method, route, code, elapsed);
    let (account, key_prefix) = ctx
        .caller
        .get()
        .map(|(a, p)| (&**a, &**p))
        .unwrap_or(("-", "-"));
    // The path is logged without its query string: download links carry their
    // signature there; anything in it that looks like a credential is redacted (only
    // when the line is written: tracing evaluates fields after its level check).
    macro_rules! request_log {
        ($level:expr) => {
            tracing::event!(
                $level,
                request_id = %ctx.id,
                %method,
                path = %kie_wire::secrets::redact(loggable_path(path)),
                route,
                status = resp.status().as_u16(),
                code,
                account,
                key_prefix,
                latency_us = elapsed.as_micros() as u64,
                "request"
            )
        };
    }
    match request_log_level(method, path, resp.status(), code, elapsed) {
        tracing::Level::WARN => request_log!(tracing::Level::WARN),
        tracing::Level::INFO => request_log!(tracing::Level::INFO),
        _ => request_log!(tracing::Level::DEBUG),
    }
    resp
}

/// The path as request logs show it: a console invite's one-time token is a
/// credential, so its path is logged without it.
pub fn loggable_path(path: &str) -> &str {
    if path.starts_with("/console/invite/") {
        "/console/invite/[redacted]"
    } else {
        path
    }
}

/// Requests slower than this are logged at WARN.
pub const SLOW_REQUEST: Duration = Duration::from_secs(1);
/// Successful reads faster than this are logged at DEBUG (see [`request_log_level`]).
pub const QUIET_UNDER: Duration = Duration::from_millis(100);

/// The level of a request's log line. Every failure (HTTP status ≥ 400 or body code
/// ≠ 200), every write (any other POST, PUT, DELETE …) and every slow request is
/// logged at INFO, slow API requests (≥ [`SLOW_REQUEST`]) at WARN. Successful fast
/// reads — API GETs, health/metrics endpoints, file downloads (`/links/…`,
/// `/files/…`) and link requests (`POST /api/v1/common/download-url`, which changes
/// nothing but, when priced, the ledger, whose entry records it) — are logged at DEBUG:
/// they are the bulk of the traffic and already counted in `kie_http_requests_total`,
/// so the INFO log stays the useful record and costs nothing on the hottest paths.
/// `KIE_LOG=debug` shows them all.
pub fn request_log_level(
    method: &Method,
    path: &str,
    status: StatusCode,
    code: i64,
    elapsed: Duration,
) -> tracing::Level {
    // Uploads (their body is read in the handler) and the worker long-poll
    // (`/internal/…`) are slow by nature: INFO.
    if elapsed >= SLOW_REQUEST && path.starts_with("/api/") && !error::is_upload_path(path) {
        return tracing::Level::WARN;
    }
    let read = match *method {
        Method::GET | Method::HEAD => {
            path.starts_with("/api/")
                || path.starts_with("/links/")
                || path.starts_with("/files/")
                || matches!(path, "/healthz" | "/readyz" | "/metrics")
        }
        Method::POST => path == "/api/v1/common/download-url",
        _ => false,
    };
    if read
        && status.as_u16() < 400
        // API answers carry their own code (200 = success); file answers (200, 206,
        // 304) are counted by their HTTP status
        && (code == codes::SUCCESS || code == i64::from(status.as_u16()))
        && elapsed < QUIET_UNDER
    {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    }
}

/// Fallback for unknown paths: the envelope with code 404.
pub async fn unknown_endpoint(method: Method) -> Response {
    if method == Method::HEAD {
        return ApiError::not_found("Not found").into_response();
    }
    ApiError::not_found("Unknown endpoint").into_response()
}

/// An empty body (used for non-API 405s).
pub fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

/// The body code of a request whose body did not arrive in time.
pub const REQUEST_TIMEOUT: i64 = 408;

/// The answer to a request whose body did not arrive within `timeout`: code 408 and
/// `Connection: close`.
pub fn body_timed_out(timeout: Duration, upload: bool) -> Response {
    tracing::info!(
        timeout_ms = timeout.as_millis() as u64,
        "request body not received in time; closing the connection"
    );
    let mut e = ApiError::new(
        REQUEST_TIMEOUT,
        format!(
            "Request body not received within {} s",
            timeout.as_secs_f64()
        ),
    );
    e.upload = upload;
    let mut r = e.into_response();
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn request_ids_are_distinct_and_plain() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("req_"));
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_eq!(a[..9], b[..9], "same process prefix");
    }

    #[test]
    fn request_log_levels() {
        let fast = Duration::from_millis(2);
        let ok = StatusCode::OK;
        let lvl = request_log_level;
        assert_eq!(
            lvl(&Method::GET, "/api/v1/chat/credit", ok, 200, fast),
            Level::DEBUG
        );
        assert_eq!(lvl(&Method::GET, "/healthz", ok, 200, fast), Level::DEBUG);
        // failures, writes, downloads and slow requests stay visible
        assert_eq!(
            lvl(&Method::GET, "/api/v1/chat/credit", ok, 401, fast),
            Level::INFO
        );
        assert_eq!(
            lvl(
                &Method::GET,
                "/api/v1/chat/credit",
                StatusCode::UNAUTHORIZED,
                401,
                fast
            ),
            Level::INFO
        );
        assert_eq!(
            lvl(&Method::POST, "/api/v1/common/download-url", ok, 200, fast),
            Level::DEBUG
        );
        assert_eq!(
            lvl(&Method::POST, "/api/v1/common/download-url", ok, 404, fast),
            Level::INFO
        );
        assert_eq!(
            lvl(&Method::POST, "/api/v1/jobs/createTask", ok, 200, fast),
            Level::INFO
        );
        assert_eq!(lvl(&Method::GET, "/links/x/y", ok, 200, fast), Level::DEBUG);
        assert_eq!(
            lvl(
                &Method::GET,
                "/links/x/y",
                StatusCode::PARTIAL_CONTENT,
                206,
                fast
            ),
            Level::DEBUG
        );
        assert_eq!(
            lvl(&Method::GET, "/links/x/y", StatusCode::FORBIDDEN, 403, fast),
            Level::INFO
        );
        assert_eq!(
            lvl(&Method::DELETE, "/api/v1/chat/credit", ok, 200, fast),
            Level::INFO
        );
        assert_eq!(
            lvl(
                &Method::GET,
                "/api/v1/chat/credit",
                ok,
                200,
                Duration::from_millis(150)
            ),
            Level::INFO
        );
        assert_eq!(
            lvl(&Method::GET, "/api/v1/chat/credit", ok, 200, SLOW_REQUEST),
            Level::WARN
        );
    }
}
