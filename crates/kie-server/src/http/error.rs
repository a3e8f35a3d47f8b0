//! Errors as envelopes. Handlers return [`ApiError`]; the envelope layer (see
//! `http::pipeline`) turns its body code into the HTTP status the configured
//! `status_mode` asks for, and replaces internal details with a request id.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::borrow::Cow;

use kie_wire::codes;

/// The body code of an enveloped answer, read by the way out (`http::finish`). A
/// success (code 200, HTTP 200) needs none: without one the way out takes the HTTP
/// status as the code, the same answer and the same count ([`ApiOk`] sets none, so
/// its response carries no extension map to allocate).
#[derive(Debug, Clone, Copy)]
pub struct BodyCode {
    pub code: i64,
    /// The answer is about a body over the size limit (413 in mirror mode).
    pub too_large: bool,
}

/// Detail of an internal error, logged by the envelope layer with the request id and
/// never sent to the client.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

#[derive(Debug)]
pub struct ApiError {
    pub code: i64,
    pub msg: Cow<'static, str>,
    pub retry_after: Option<u64>,
    pub too_large: bool,
    /// File Upload API answers carry `"success": false`.
    pub upload: bool,
    /// Keep HTTP 200 in compat mode although the code is 429 (KIE.AI's catalog
    /// endpoints answer their 1 request/s limit that way).
    pub http_ok: bool,
    internal: Option<String>,
}

impl ApiError {
    pub fn new(code: i64, msg: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            code,
            msg: msg.into(),
            retry_after: None,
            too_large: false,
            upload: false,
            http_ok: false,
            internal: None,
        }
    }
    pub fn unauthorized() -> Self {
        Self::new(codes::UNAUTHORIZED, "You do not have access permissions")
    }
    pub fn insufficient_credits() -> Self {
        Self::new(codes::INSUFFICIENT_CREDITS, "Credits insufficient")
    }
    /// Code 433: the request would take the API key over one of its usage caps.
    pub fn key_cap_exceeded() -> Self {
        Self::new(codes::KEY_CAP_EXCEEDED, "Sub-key usage exceeds limit")
    }
    /// Code 401: the key may not be used from the client's address (the allowlist
    /// itself is never revealed).
    pub fn address_not_allowed() -> Self {
        Self::new(
            codes::UNAUTHORIZED,
            "This API key is not allowed from your IP address",
        )
    }
    pub fn not_found(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(codes::NOT_FOUND, msg)
    }
    pub fn validation(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(codes::VALIDATION, msg)
    }
    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(codes::RATE_LIMITED, "Rate limit exceeded");
        e.retry_after = Some(retry_after.max(1));
        e
    }
    pub fn maintenance() -> Self {
        Self::new(
            codes::MAINTENANCE,
            "Service unavailable: system maintenance",
        )
    }
    pub fn feature_disabled(feature: &str) -> Self {
        Self::new(
            codes::FEATURE_DISABLED,
            format!("Feature disabled: {feature}"),
        )
    }
    pub fn too_large(limit: usize) -> Self {
        let mut e = Self::new(
            codes::VALIDATION,
            format!("Request body exceeds the limit of {limit} bytes"),
        );
        e.too_large = true;
        e
    }
    /// An unexpected failure: the detail is logged with the request id, the client sees
    /// only "Server error" and that id.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let mut e = Self::new(codes::SERVER_ERROR, "Server error");
        e.internal = Some(detail.to_string());
        e
    }
    pub fn for_upload(mut self) -> Self {
        self.upload = true;
        self
    }
}

/// Whether `path` is the File Upload API's (`/api/file-…`). Answers made before a route
/// is matched (per-IP limit, maintenance, database health, body deadline) take their
/// envelope kind from the path; handlers declare theirs (`ApiError::for_upload`).
pub fn is_upload_path(path: &str) -> bool {
    path.starts_with("/api/file-")
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    code: i64,
    msg: &'a str,
    data: Option<()>,
}

/// Serialises an envelope with a null `data`.
pub fn error_body(code: i64, msg: &str, upload: bool) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        success: upload.then_some(false),
        code,
        msg,
        data: None,
    })
    .expect("serialisable")
}

pub fn json_response(body: Vec<u8>) -> Response {
    let len = content_length(body.len());
    // one header, set once (a `Vec<u8>` answer would set octet-stream first)
    let mut r = Response::new(axum::body::Body::from(body));
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // set here, axum's router leaves it (it would format and allocate one per answer)
    h.insert(axum::http::header::CONTENT_LENGTH, len);
    r
}

/// Bodies up to this length get their `Content-Length` from a table made once.
const STATIC_LENGTHS: usize = 1024;

/// A `Content-Length` value: for envelope-sized bodies a static one (no formatting, no
/// allocation; the table's 1,025 strings are made once and kept), else formatted.
fn content_length(n: usize) -> HeaderValue {
    static TABLE: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        (0..=STATIC_LENGTHS)
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    TABLE
        .get(n)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(error_body(self.code, &self.msg, self.upload));
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        r.extensions_mut().insert(BodyCode {
            code: self.code,
            too_large: self.too_large,
        });
        if let Some(d) = self.internal {
            r.extensions_mut().insert(InternalDetail(d));
        }
        if self.upload {
            r.extensions_mut().insert(UploadEnvelope);
        }
        if self.http_ok {
            r.extensions_mut().insert(KeepHttpOk);
        }
        r
    }
}

/// Marks an answer whose HTTP status stays 200 in compat mode whatever its code.
#[derive(Debug, Clone, Copy)]
pub struct KeepHttpOk;

/// Marks an answer of the File Upload API (its error envelope carries `success`).
#[derive(Debug, Clone, Copy)]
pub struct UploadEnvelope;

/// A success envelope `{"code":200,"msg":"success","data":…}`.
pub struct ApiOk<T>(pub T);

impl<T: Serialize> IntoResponse for ApiOk<T> {
    fn into_response(self) -> Response {
        // the constant head written as bytes, only `data` through serde
        const HEAD: &[u8] = br#"{"code":200,"msg":"success","data":"#;
        let mut body = Vec::with_capacity(HEAD.len() + 64);
        body.extend_from_slice(HEAD);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => {
                body.push(b'}');
                // code 200 and HTTP 200: no `BodyCode` needed (see there)
                json_response(body)
            }
            Err(e) => ApiError::internal(format!("serialising response: {e}")).into_response(),
        }
    }
}

pub type ApiResult<T> = Result<ApiOk<T>, ApiError>;
