//! `ApiJson<T>`: a JSON body extractor whose rejections are envelopes that name the
//! problem (content type, size limit, syntax, or the field with a wrong type).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::{Deserialize, DeserializeOwned};

use super::ApiError;
use crate::config::Config;
use axum::extract::FromRef;
use std::sync::Arc;

pub struct ApiJson<T>(pub T);

pub fn is_json_content_type(v: Option<&axum::http::HeaderValue>) -> bool {
    let Some(v) = v.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = v
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Refuses a body that is not declared as JSON.
pub fn require_json_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if is_json_content_type(headers.get(CONTENT_TYPE)) {
        Ok(())
    } else {
        Err(ApiError::validation(
            "Content-Type must be application/json",
        ))
    }
}

/// Parses `bytes` as `T`, naming the offending field on a type error.
pub fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::validation(
            "Request body is empty: a JSON object is required",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof => {
                ApiError::validation(format!("Malformed JSON body: {inner}"))
            }
            _ if path == "." || path.is_empty() => {
                ApiError::validation(format!("Invalid request body: {}", strip_position(&inner)))
            }
            _ => ApiError::validation(format!(
                "Invalid field '{path}': {}",
                strip_position(&inner)
            )),
        }
    })
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Any state that hands out the configuration (the body limit comes from it).
impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
    Arc<Config>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_json_content_type(req.headers())?;
        let limit = Arc::<Config>::from_ref(state).max_body;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::validation("Could not read the request body")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}
