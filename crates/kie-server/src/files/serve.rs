//! Serving file bytes over HTTP: temporary links (`/links/…`, attachment) and, when
//! `public_result_urls` is on, the file URLs themselves (`/files/…`, inline).
//!
//! These are raw file endpoints, not API calls: errors are real HTTP statuses (403 for
//! a tampered, truncated or expired link or disabled public URLs, 404 for a file that is
//! gone) whatever the status mode, with a short JSON body
//! `{"code": 403, "msg": "link expired", "data": null}` for clients that read it.
//!
//! Bytes are streamed from disk in 32 KiB chunks (memory stays flat in file size).
//! Ranges: one byte range (`a-b`, `a-`, `-n`) → 206; unsatisfiable → 416 with
//! `Content-Range: bytes */SIZE`; several ranges → the whole file with 200 (allowed by
//! RFC 9110, which lets a server ignore Range); a syntactically invalid Range is
//! ignored as well.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::links::{self, LinkRefused};
use super::{is_live, FileRecord};
use crate::state::AppState;
use crate::store::now_ms;

const CHUNK: usize = 32 * 1024;
/// Bodies up to this size are read in one go (bounded memory: at most this per request).
const SMALL: u64 = 64 * 1024;

/// The routes that serve bytes (not part of the documented `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/links/{*rest}", get(serve_link))
        .route("/files/{*rest}", get(serve_public_url))
}

fn plain_error(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "msg": msg, "data": null});
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn gone() -> Response {
    plain_error(StatusCode::NOT_FOUND, "file not found")
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "serving a file failed");
    plain_error(StatusCode::INTERNAL_SERVER_ERROR, "server error")
}

/// A file id as `new_file_id` makes them: 32 ASCII alphanumerics.
pub fn is_file_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits a raw (still percent-encoded) `{id}/{name}` tail and decodes the name exactly
/// once. Refuses anything that could mean another path once decoded: separators
/// (`/`, `\`, also encoded), NUL and control characters, `.` and `..`, invalid UTF-8.
pub fn parse_id_and_name(raw: &str) -> Option<(&str, String)> {
    let (id, enc_name) = raw.split_once('/')?;
    if !is_file_id(id) || enc_name.is_empty() || enc_name.contains('/') {
        return None;
    }
    let name = percent_encoding::percent_decode_str(enc_name)
        .decode_utf8()
        .ok()?
        .into_owned();
    super::validate_file_name(&name).ok()?;
    Some((id, name))
}

/// A file's record: on SQLite a direct read, cached only until the next commit (a
/// deleted or swept file answers 404 at once); on PostgreSQL this node's cache (see
/// `Db::file_recent`).
async fn record(state: &AppState, id: &str) -> Result<Option<FileRecord>, sqlx::Error> {
    state.db.file_recent(id).await
}

/// GET/HEAD `/links/{id}/{name}?e=…&k=…&s=…`: a signed temporary link.
pub(crate) async fn serve_link(State(state): State<AppState>, req: Request) -> Response {
    let raw = req.uri().path().strip_prefix("/links/").unwrap_or_default();
    let Some((id, name)) = parse_id_and_name(raw) else {
        return plain_error(StatusCode::FORBIDDEN, &LinkRefused::Malformed.to_string());
    };
    let q = match links::parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return plain_error(StatusCode::FORBIDDEN, &e.to_string()),
    };
    match links::verify(&state.db, &state.files.keys, id, &name, &q).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return plain_error(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e) => return internal(e),
    }
    let rec = match record(&state, id).await {
        Ok(Some(r)) if is_live(&r, now_ms()) && r.name == name => r,
        Ok(_) => return gone(),
        Err(e) => return internal(e),
    };
    serve(
        &state,
        &rec,
        req.method(),
        req.headers(),
        Disposition::Attachment,
    )
    .await
}

/// GET/HEAD `/files/{id}/{name}`: the file URL itself, when public result URLs are on.
pub(crate) async fn serve_public_url(State(state): State<AppState>, req: Request) -> Response {
    if !state.config.public_result_urls
        || state.settings.current().is_disabled("public-result-urls")
    {
        return plain_error(
            StatusCode::FORBIDDEN,
            "public file URLs are disabled: request a temporary link with POST /api/v1/common/download-url",
        );
    }
    let raw = req.uri().path().strip_prefix("/files/").unwrap_or_default();
    let Some((id, name)) = parse_id_and_name(raw) else {
        return gone();
    };
    let rec = match record(&state, id).await {
        Ok(Some(r)) if is_live(&r, now_ms()) && r.name == name => r,
        Ok(_) => return gone(),
        Err(e) => return internal(e),
    };
    serve(
        &state,
        &rec,
        req.method(),
        req.headers(),
        Disposition::Inline,
    )
    .await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Attachment,
    Inline,
}

/// `attachment; filename="ascii fallback"; filename*=UTF-8''percent-encoded` (RFC 6266
/// with RFC 8187 for the non-ASCII form).
pub fn content_disposition(kind: &str, name: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"
    const ATTR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{kind}; filename=\"{fallback}\"; filename*=UTF-8''{}",
        utf8_percent_encode(name, ATTR)
    )
}

/// A parsed `Range` header.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// No usable Range: serve the whole file.
    Whole,
    /// One satisfiable range, inclusive bounds.
    Part(u64, u64),
    Unsatisfiable,
}

/// Interprets a `Range` header against a file of `size` bytes.
pub fn parse_range(h: Option<&str>, size: u64) -> RangeReq {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReq::Whole;
    };
    if spec.contains(',') {
        return RangeReq::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // suffix range: the last n bytes
        let Some(n) = num(b) else {
            return RangeReq::Whole;
        };
        if n == 0 || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(size.saturating_sub(n), size - 1);
    }
    let Some(start) = num(a) else {
        return RangeReq::Whole;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return RangeReq::Whole,
        }
    };
    if start >= size {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(start, end.min(size - 1))
}

fn etag_matches_weak(list: &str, etag: &str) -> bool {
    let bare = etag.trim_start_matches("W/");
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == bare)
}

fn read_small(path: &std::path::Path, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start))?;
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

async fn serve(
    state: &AppState,
    rec: &FileRecord,
    method: &Method,
    req_headers: &HeaderMap,
    disposition: Disposition,
) -> Response {
    let Some(path) = state.blobs.local_path(&rec.storage_key) else {
        // S3: the store serves bytes itself through a presigned URL (short-lived: it is
        // followed at once), with this answer's Content-Type and Content-Disposition.
        let kind = match disposition {
            Disposition::Attachment => "attachment",
            Disposition::Inline => "inline",
        };
        let method = if method == Method::HEAD {
            Method::HEAD
        } else {
            Method::GET
        };
        return match state
            .blobs
            .presigned(
                method,
                &rec.storage_key,
                state.config.link_ttl.min(Duration::from_secs(300)),
                &crate::blobs::ResponseOverrides {
                    content_type: Some(&rec.content_type),
                    content_disposition: Some(&content_disposition(kind, &rec.name)),
                },
            )
            .await
        {
            Ok(Some(u)) => (
                StatusCode::FOUND,
                [
                    (header::LOCATION, u.to_string()),
                    (header::CACHE_CONTROL, "no-store".into()),
                ],
            )
                .into_response(),
            Ok(None) => gone(),
            Err(e) => internal(e),
        };
    };
    let size = rec.size.max(0) as u64;
    let etag = rec.etag();
    let modified = UNIX_EPOCH + Duration::from_secs((rec.created_at.max(0) / 1000) as u64);
    let last_modified = httpdate::fmt_http_date(modified);

    let mut h = HeaderMap::new();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(&mut h, header::ETAG, &etag);
    set(&mut h, header::LAST_MODIFIED, &last_modified);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-transform"),
    );

    // Conditional GET: If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
    let inm = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let not_modified = match inm {
        Some(list) => etag_matches_weak(list, &etag),
        None => req_headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| modified <= since),
    };
    if not_modified {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }

    set(&mut h, header::CONTENT_TYPE, &rec.content_type);
    let kind = match disposition {
        Disposition::Attachment => "attachment",
        Disposition::Inline => "inline",
    };
    set(
        &mut h,
        header::CONTENT_DISPOSITION,
        &content_disposition(kind, &rec.name),
    );
    // User content on our origin: never sniffed into something executable, and
    // sandboxed if a browser renders it (an uploaded HTML file must not run as us).
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox",
        ),
    );

    let range_header = req_headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // If-Range: the range applies only while the validator still matches (strong
    // comparison for ETags; an exact date for Last-Modified).
    let if_range_ok = match req_headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(v) if v.starts_with('"') || v.starts_with("W/") => v == etag,
        Some(v) => httpdate::parse_http_date(v).is_ok_and(|d| d == modified),
    };
    let range = if if_range_ok {
        parse_range(range_header, size)
    } else {
        RangeReq::Whole
    };
    let (status, start, len) = match range {
        RangeReq::Whole => (StatusCode::OK, 0, size),
        RangeReq::Part(a, b) => {
            set(
                &mut h,
                header::CONTENT_RANGE,
                &format!("bytes {a}-{b}/{size}"),
            );
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        RangeReq::Unsatisfiable => {
            set(&mut h, header::CONTENT_RANGE, &format!("bytes */{size}"));
            h.remove(header::CONTENT_TYPE);
            h.remove(header::CONTENT_DISPOSITION);
            return (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response();
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));

    if *method != Method::HEAD && len <= SMALL {
        // Small files are read right here, on the runtime thread (open + read + close,
        // a few microseconds from the page cache), as nginx does from its event loop:
        // a hop to the blocking pool costs more than the read. Bounded: at most SMALL
        // bytes per request. A file the sweeper removed answers 404 at once.
        return match read_small(&path, start, len) {
            Ok(buf) if buf.len() as u64 == len => (status, h, Body::from(buf)).into_response(),
            Ok(_) => internal("stored file is shorter than its record"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone(),
            Err(e) => internal(e),
        };
    }
    // Opened even for HEAD, so HEAD answers 404 exactly when GET would.
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return gone(),
        Err(e) => return internal(e),
    };
    if *method == Method::HEAD {
        return (status, h).into_response();
    }
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            return internal(e);
        }
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), CHUNK);
    (status, h, Body::from_stream(stream)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-0"), 10), Part(0, 0));
        assert_eq!(parse_range(Some("bytes=2-"), 10), Part(2, 9));
        assert_eq!(parse_range(Some("bytes=2-100"), 10), Part(2, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Whole);
    }

    #[test]
    fn disposition_is_ascii_safe() {
        assert_eq!(
            content_disposition("attachment", "a b.png"),
            "attachment; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"
        );
        assert_eq!(
            content_disposition("inline", "naïve \"x\".txt"),
            "inline; filename=\"na_ve _x_.txt\"; filename*=UTF-8''na%C3%AFve%20%22x%22.txt"
        );
    }

    #[test]
    fn id_and_name_parsing_refuses_traversal() {
        let id = "a".repeat(32);
        assert_eq!(
            parse_id_and_name(&format!("{id}/x%20y.png")),
            Some((id.as_str(), "x y.png".to_string()))
        );
        for bad in [
            format!("{id}/.."),
            format!("{id}/%2e%2e"),
            format!("{id}/a%2Fb"),
            format!("{id}/a%5Cb"),
            format!("{id}/a%00b"),
            format!("{id}/a/b"),
            format!("{id}/"),
            format!("{id}/%ff"),
            "short/x".to_string(),
            id.clone(),
        ] {
            assert_eq!(parse_id_and_name(&bad), None, "{bad}");
        }
        // decoded once: %252e stays the literal name "%2e"
        assert_eq!(
            parse_id_and_name(&format!("{id}/%252e%252e")).map(|x| x.1),
            Some("%2e%2e".to_string())
        );
    }
}
