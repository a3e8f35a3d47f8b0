//! Typed errors. API errors come from the body `code`, whatever the HTTP status, because
//! KIE.AI answers most errors with HTTP 200 (`compat` mode) while `kie serve` in `mirror`
//! mode uses the matching status: reading the body is the only rule that fits both.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use kie_wire::{codes, Envelope};
use serde::de::DeserializeOwned;

/// Result alias of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to the API or downloading files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Body code 401: missing, unknown, revoked or expired API key.
    #[error("unauthorized: {msg}")]
    Unauthorized { msg: String },
    /// Body code 402: the available balance does not cover the price.
    #[error("insufficient credits: {msg}")]
    InsufficientCredits { msg: String },
    /// Body code 433: the API key's usage cap (hourly, daily or total, set on the key)
    /// would be exceeded; the request changed nothing.
    #[error("key usage cap reached: {msg}")]
    KeyCapExceeded { msg: String },
    /// Body code 422 (or 400 from the upload API): the request is wrong.
    #[error("invalid request: {msg}")]
    Validation { msg: String },
    /// Body code 404: unknown task, file or endpoint.
    #[error("not found: {msg}")]
    NotFound { msg: String },
    /// Body code 429; `retry_after` from the `Retry-After` header when sent.
    #[error("rate limited{}: {msg}", RetryAfter(*.retry_after))]
    RateLimited {
        retry_after: Option<Duration>,
        msg: String,
    },
    /// Body code 455: the service is under maintenance.
    #[error("service under maintenance: {msg}")]
    Maintenance { msg: String },
    /// Body code 505: the operator disabled this feature.
    #[error("feature disabled: {msg}")]
    FeatureDisabled { msg: String },
    /// Body code 500 (or another 5xx): `request_id` from `X-Request-Id` or the message,
    /// to quote when reporting the problem.
    #[error("server error{}: {msg}", RequestId(.request_id.as_deref()))]
    Server {
        request_id: Option<String>,
        msg: String,
    },
    /// Any other body code (405, a future code, …).
    #[error("API error {code}: {msg}")]
    Api { code: i64, msg: String },
    /// The answer is not a KIE API envelope: a proxy page, a CDN block, a plain-text error.
    #[error("unexpected answer (HTTP {status}, not the API's JSON): {snippet}{}", hint(.snippet))]
    UnexpectedResponse { status: u16, snippet: String },
    /// The envelope said success but `data` does not have the documented shape.
    #[error("invalid response: {0}")]
    Decode(String),
    /// Connection refused, DNS failure, TLS failure, timeout, connection cut mid-body.
    #[error("transport error: {}", Chain(.0))]
    Transport(#[source] reqwest::Error),
    /// Bad client configuration (missing API key, malformed base URL, …).
    #[error("configuration: {0}")]
    Config(String),
    /// `wait_task` gave up.
    #[error("task {task_id} did not finish within {} (last state: {state})", Secs(*.timeout))]
    TaskTimeout {
        task_id: String,
        timeout: Duration,
        state: String,
    },
    /// A file download answered an HTTP status other than 200/206 (URL without its query,
    /// which may hold a signature).
    #[error("HTTP {status} from {url}")]
    Http { status: u16, url: String },
    /// A file link answered 403 (expired or refused) and no fresh link could be had.
    #[error("link refused (HTTP 403, expired?) and no fresh link could be had: {cause}")]
    LinkExpired { cause: Box<Error> },
    /// The transfer ended before the announced length; the `.part` file is kept.
    #[error("transfer incomplete: received {received} of {expected} bytes")]
    Incomplete { received: u64, expected: u64 },
    /// The disk (or quota) is full.
    #[error("disk full while writing {}", .path.display())]
    DiskFull { path: PathBuf },
    /// Any other local I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

struct RetryAfter(Option<Duration>);
impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, " (retry after {}s)", d.as_secs()),
            None => Ok(()),
        }
    }
}

struct RequestId<'a>(Option<&'a str>);
impl fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (request id {id})"),
            None => Ok(()),
        }
    }
}

struct Secs(Duration);
impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// reqwest's own message is often just "error sending request"; the cause is in the
/// source chain ("Connection refused"), which a one-line CLI error needs.
struct Chain<'a>(&'a reqwest::Error);
impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = std::error::Error::source(self.0);
        let mut last = String::new();
        while let Some(e) = src {
            let s = e.to_string();
            // hyper and the OS error often repeat one another verbatim
            if s != last {
                write!(f, ": {s}")?;
            }
            last = s;
            src = e.source();
        }
        Ok(())
    }
}

fn hint(snippet: &str) -> &'static str {
    if snippet.starts_with("error code: 10") {
        " (blocked by Cloudflare before reaching the API: check the network, proxy or client IP)"
    } else {
        ""
    }
}

impl Error {
    /// The body code behind an API error, if this is one.
    pub fn code(&self) -> Option<i64> {
        Some(match self {
            Error::Unauthorized { .. } => codes::UNAUTHORIZED,
            Error::InsufficientCredits { .. } => codes::INSUFFICIENT_CREDITS,
            Error::KeyCapExceeded { .. } => codes::KEY_CAP_EXCEEDED,
            Error::Validation { .. } => codes::VALIDATION,
            Error::NotFound { .. } => codes::NOT_FOUND,
            Error::RateLimited { .. } => codes::RATE_LIMITED,
            Error::Maintenance { .. } => codes::MAINTENANCE,
            Error::FeatureDisabled { .. } => codes::FEATURE_DISABLED,
            Error::Server { .. } => codes::SERVER_ERROR,
            Error::Api { code, .. } => *code,
            _ => return None,
        })
    }

    pub(crate) fn transport(e: reqwest::Error) -> Self {
        // URLs of file links carry signatures in the query; never let them into messages.
        Error::Transport(e.without_url())
    }

    pub(crate) fn io(
        context: impl Into<String>,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        // ENOSPC (28) / EDQUOT (122 on Linux, 69 on macOS): reported as "disk full" so a
        // batch download says what to fix instead of a bare errno.
        const ENOSPC: i32 = 28;
        #[cfg(target_os = "linux")]
        const EDQUOT: i32 = 122;
        #[cfg(not(target_os = "linux"))]
        const EDQUOT: i32 = 69;
        match source.raw_os_error() {
            Some(ENOSPC) | Some(EDQUOT) => Error::DiskFull {
                path: path.to_path_buf(),
            },
            _ => Error::Io {
                context: format!("{} {}", context.into(), path.display()),
                source,
            },
        }
    }
}

/// A URL as it may appear in messages: without query and fragment (signatures, tokens).
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_string(),
    }
}

/// The request id of a failed request: the `X-Request-Id` header, else one quoted in the
/// message (`"... (request id: 7f3a...)"`, `request_id=...`, `requestId: ...`).
pub(crate) fn request_id(headers: &HeaderMap, msg: &str) -> Option<String> {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v.to_string());
        }
    }
    let lower = msg.to_ascii_lowercase();
    for marker in ["request id", "request_id", "requestid", "request-id"] {
        if let Some(pos) = lower.find(marker) {
            let rest = &msg[pos + marker.len()..];
            let rest = rest.trim_start_matches([' ', ':', '=', '#', '"', '\'']);
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if !id.is_empty() {
                return Some(id);
            }
        }
    }
    None
}

/// Seconds of a `Retry-After` header (the delta-seconds form; KIE.AI and kie serve send it).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Turns an API answer into `data` or a typed error, reading the body `code` first and
/// the HTTP status only when there is no envelope.
pub(crate) fn decode_envelope<T: DeserializeOwned>(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T> {
    let env: Envelope<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(env) => env,
        Err(_) => return Err(unexpected(status, body)),
    };
    let msg = env.msg;
    match env.code {
        codes::SUCCESS => serde_json::from_value(env.data.unwrap_or(serde_json::Value::Null))
            .map_err(|e| Error::Decode(format!("unexpected `data`: {e}"))),
        codes::UNAUTHORIZED => Err(Error::Unauthorized { msg }),
        codes::INSUFFICIENT_CREDITS => Err(Error::InsufficientCredits { msg }),
        codes::KEY_CAP_EXCEEDED => Err(Error::KeyCapExceeded { msg }),
        // the File Upload API reports missing parameters as 400
        400 | codes::VALIDATION => Err(Error::Validation { msg }),
        codes::NOT_FOUND => Err(Error::NotFound { msg }),
        codes::RATE_LIMITED => Err(Error::RateLimited {
            retry_after: retry_after(headers),
            msg,
        }),
        codes::MAINTENANCE => Err(Error::Maintenance { msg }),
        codes::FEATURE_DISABLED => Err(Error::FeatureDisabled { msg }),
        c if (500..600).contains(&c) => Err(Error::Server {
            request_id: request_id(headers, &msg),
            msg,
        }),
        code => Err(Error::Api { code, msg }),
    }
}

fn unexpected(status: StatusCode, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    // one line, printable, short: this ends up in a terminal
    let mut snippet: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(160)
        .collect();
    if snippet.is_empty() {
        snippet = "(empty body)".into();
    }
    Error::UnexpectedResponse {
        status: status.as_u16(),
        snippet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn request_id_from_header_then_message() {
        assert_eq!(
            request_id(&hm(&[("x-request-id", "abc-1")]), "x").as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            request_id(&HeaderMap::new(), "Server error (request id: 7f3a_b9)").as_deref(),
            Some("7f3a_b9")
        );
        assert_eq!(
            request_id(&HeaderMap::new(), "requestId=q1").as_deref(),
            Some("q1")
        );
        assert_eq!(request_id(&HeaderMap::new(), "Server error"), None);
    }

    #[test]
    fn cloudflare_text_is_explained() {
        let e = decode_envelope::<serde_json::Value>(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            b"error code: 1010",
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::UnexpectedResponse { status: 403, snippet } if snippet == "error code: 1010")
        );
        assert!(e.to_string().contains("Cloudflare"), "{e}");
    }

    #[test]
    fn redacts_query() {
        assert_eq!(
            redact_url("https://h/x.png?sig=secret#f"),
            "https://h/x.png"
        );
        assert_eq!(redact_url("not a url?sig=1"), "not a url");
    }
}
