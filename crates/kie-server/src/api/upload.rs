//! The File Upload API (SPEC §5): multipart stream, base64 and URL uploads. Uploads
//! are free and kept `retention_uploads` (3 days by default); the same `fileName` in
//! the same `uploadPath` replaces the earlier file.
//!
//! Every answer carries `"success"`. These routes have no framework body limit: the
//! file bytes are capped by `max_upload` while they stream into the store (nothing is
//! kept when the cap is hit), the base64 JSON body by what `max_upload` needs in base64.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::auth::Caller;
use crate::blobs::BlobError;
use crate::files::{self, FileError, FileKind, FileRecord, NewFile, StoredBytes};
use crate::http::error::{json_response, BodyCode};
use crate::http::json::{is_json_content_type, parse_json};
use crate::http::{ApiError, RequestCtx};
use crate::net_guard::{self, FetchError};
use crate::state::AppState;
use kie_wire::codes;

const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Text fields of a multipart upload (`uploadPath`, `fileName`) are short.
const MAX_TEXT_FIELD: usize = 4096;
const MAX_PARTS: usize = 16;

/// `{"success": true, "code": 200, "msg": "File uploaded successfully", "data": {…}}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadEnvelope {
    pub success: bool,
    /// 200 on success; 401, 422, 455, 505 otherwise
    pub code: i64,
    pub msg: String,
    /// Null on error
    #[schema(nullable)]
    pub data: Option<UploadedFile>,
}

/// `data` of a successful upload: both shapes KIE.AI documents (`filePath`,
/// `uploadedAt` … and `fileId`, `originalName`, `uploadPath`, `uploadTime` …).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadedFile {
    /// The stored file's id (the `{id}` of its file URL)
    pub file_id: String,
    pub file_name: String,
    /// The name the client sent the file under (multipart file name, the last segment
    /// of `fileUrl`), else `fileName`
    pub original_name: String,
    /// `uploadPath/fileName`
    pub file_path: String,
    /// The file URL (same as `fileUrl`)
    pub download_url: String,
    pub file_url: String,
    pub file_size: i64,
    pub mime_type: String,
    /// The `uploadPath` given (a directory, without the file name)
    pub upload_path: String,
    /// ISO-8601 UTC with milliseconds
    pub uploaded_at: String,
    /// Same as `uploadedAt`
    pub upload_time: String,
    /// When the file is deleted (ISO-8601 UTC with milliseconds)
    pub expires_at: String,
}

/// `{"success": true, "code": 200, "msg": "File uploaded successfully", "data": …}`
pub struct UploadOk(pub UploadedFile);

impl IntoResponse for UploadOk {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "success": true,
            "code": codes::SUCCESS,
            "msg": "File uploaded successfully",
            "data": self.0,
        });
        let mut r = json_response(body.to_string().into_bytes());
        r.extensions_mut().insert(BodyCode {
            code: codes::SUCCESS,
            too_large: false,
        });
        r
    }
}

type UploadResult = Result<UploadOk, ApiError>;

fn iso_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

fn missing(field: &str) -> ApiError {
    ApiError::validation(format!("Missing required parameter: {field}"))
}

fn too_large(limit: u64) -> ApiError {
    let mut e = ApiError::validation(format!("File exceeds the upload limit of {limit} bytes"));
    e.too_large = true;
    e
}

/// `uploadPath`: relative (no leading or trailing `/`), no empty, `.` or `..`
/// segments, letters, digits and `-_.~@+=` only, at most 512 bytes.
pub fn validate_upload_path(p: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::validation(format!(
            "Invalid parameter: uploadPath {why}"
        )))
    };
    if p.len() > 512 {
        return bad("is longer than 512 bytes");
    }
    if p.starts_with('/') || p.ends_with('/') {
        return bad("must not start or end with '/'");
    }
    for seg in p.split('/') {
        if seg.is_empty() {
            return bad("must not contain empty segments ('//')");
        }
        if seg == "." || seg == ".." {
            return bad("must not contain '.' or '..' segments");
        }
        if !seg
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.~@+=".contains(c))
        {
            return bad("may contain only letters, digits, '/' and -_.~@+=");
        }
    }
    Ok(())
}

/// A MIME type safe to store and send back in `Content-Type`.
fn clean_mime(m: &str) -> Option<String> {
    let m = m.split(';').next()?.trim().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let (t, sub) = m.split_once('/')?;
    (token(t) && token(sub)).then_some(m)
}

fn guess_mime(name: &str) -> String {
    mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// The given MIME type unless it says nothing (`application/octet-stream`), else a
/// guess from the file name.
fn pick_mime(given: Option<&str>, name: &str) -> String {
    match given.and_then(clean_mime) {
        Some(m) if m != "application/octet-stream" => m,
        _ => guess_mime(name),
    }
}

fn generated_name(mime: Option<&str>) -> String {
    let ext = mime
        .and_then(mime_guess::get_mime_extensions_str)
        .and_then(|e| e.first())
        .copied()
        .unwrap_or("bin");
    format!("upload-{}.{ext}", kie_wire::apikey::random_base62(10))
}

fn file_error(e: FileError, limit: u64) -> ApiError {
    match e {
        FileError::Blob(BlobError::TooLarge { .. }) => too_large(limit),
        FileError::Blob(BlobError::Body(_)) => {
            ApiError::validation("The upload was interrupted or malformed")
        }
        FileError::Invalid(_) => ApiError::validation(
            "Invalid parameter: fileName must be 1 to 255 bytes without '/', '\\' or control characters",
        ),
        other => ApiError::internal(other),
    }
}

/// Authenticates like the `Caller` extractor, with the upload API's error envelope.
// Takes the parts, not the request: a borrowed request (its body is not Sync) would
// make the handler's future not Send.
async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    ext: &axum::http::Extensions,
) -> Result<Caller, ApiError> {
    let header = headers.get(AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    let ctx = ext.get::<Arc<RequestCtx>>().cloned();
    let peer = ctx.as_ref().and_then(|c| c.peer);
    let c = state.auth.authenticate(header.as_deref(), peer).await?;
    if let Some(ctx) = ctx {
        let _ = ctx.caller.set((c.account_id.clone(), c.key_prefix.clone()));
    }
    Ok(c)
}

/// Checks the name and path, then records stored bytes as an upload of `caller`.
async fn finish(
    state: &AppState,
    caller: &Caller,
    upload_path: Option<String>,
    file_name: String,
    original_name: Option<String>,
    mime: String,
    stored: StoredBytes,
) -> UploadResult {
    let checked = match upload_path {
        None => Err(missing("uploadPath")),
        Some(p) => validate_upload_path(&p)
            .and_then(|_| {
                files::validate_file_name(&file_name)
                    .map_err(|e| file_error(e, state.config.max_upload))
            })
            .map(|_| p),
    };
    let upload_path = match checked {
        Ok(p) => p,
        Err(e) => {
            files::discard(&state.blobs, stored).await;
            return Err(e);
        }
    };
    let file_path = format!("{upload_path}/{file_name}");
    let f = NewFile {
        account_id: &caller.account_id,
        name: &file_name,
        content_type: &mime,
        kind: FileKind::Upload,
        upload_path: Some(&file_path),
        task_id: None,
        retention: state.config.retention_uploads,
        max_size: state.config.max_upload,
    };
    let rec = files::record(&state.db, &state.blobs, &f, stored)
        .await
        .map_err(|e| file_error(e, state.config.max_upload))?;
    let original_name = original_name.unwrap_or_else(|| rec.name.clone());
    Ok(UploadOk(uploaded(
        state,
        &rec,
        upload_path,
        file_path,
        original_name,
    )))
}

fn uploaded(
    state: &AppState,
    rec: &FileRecord,
    upload_path: String,
    file_path: String,
    original_name: String,
) -> UploadedFile {
    let url = rec.url(&state.config.public_url);
    let uploaded_at = iso_ms(rec.created_at);
    UploadedFile {
        file_id: rec.id.clone(),
        file_name: rec.name.clone(),
        original_name,
        upload_path,
        upload_time: uploaded_at.clone(),
        file_path,
        download_url: url.clone(),
        file_url: url,
        file_size: rec.size,
        mime_type: rec.content_type.clone(),
        uploaded_at,
        expires_at: iso_ms(rec.expires_at),
    }
}

/// Reads a JSON body of at most `limit` bytes; `over` is the answer when it is larger.
async fn read_json_body(
    req: Request,
    limit: usize,
    over: impl FnOnce() -> ApiError,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    if !is_json_content_type(req.headers().get(CONTENT_TYPE)) {
        return Err(ApiError::validation(
            "Content-Type must be application/json",
        ));
    }
    match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(over()),
        Err(_) => Err(ApiError::validation("Could not read the request body")),
    }
}

fn text_field(v: Option<&serde_json::Value>, name: &str) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::validation(format!(
            "Invalid field '{name}': expected a string"
        ))),
    }
}

// ---------------------------------------------------------------- stream upload

/// Multipart upload: `file` (the bytes), `uploadPath`, optional `fileName` (default:
/// the part's file name). Streamed into the store; at most `max_upload` bytes.
#[utoipa::path(
    post,
    path = "/api/file-stream-upload",
    tag = "upload",
    request_body(content_type = "multipart/form-data", description = "fields: file (binary), uploadPath, fileName?"),
    responses((status = 200, description = "Upload envelope with success; codes 401, 422 (missing/invalid field, too large), 455, 505", body = UploadEnvelope))
)]
pub async fn file_stream_upload(State(state): State<AppState>, req: Request) -> Response {
    stream_upload(state, req)
        .await
        .map_err(ApiError::for_upload)
        .into_response()
}

async fn stream_upload(state: AppState, req: Request) -> UploadResult {
    let caller = authenticate(&state, req.headers(), req.extensions()).await?;
    let limit = state.config.max_upload;
    let mut mp = Multipart::from_request(req, &state).await.map_err(|_| {
        ApiError::validation("Content-Type must be multipart/form-data with a boundary")
    })?;
    let mut sink = BlobSink {
        blobs: &state.blobs,
        limit,
    };
    let mut form = UploadForm::default();
    if let Err(e) = read_upload_form(&mut mp, &mut sink, &mut form).await {
        if let Some(f) = form.file {
            files::discard(&state.blobs, f.stored).await;
        }
        return Err(e);
    }
    let Some(file) = form.file else {
        return Err(if form.upload_path.is_none() {
            ApiError::validation("Missing required parameters: file, uploadPath")
        } else {
            missing("file")
        });
    };
    let part_name = file.part_name.filter(|n| !n.is_empty());
    let file_name = form
        .file_name
        .or(part_name.clone())
        .unwrap_or_else(|| generated_name(file.part_mime.as_deref()));
    let mime = pick_mime(file.part_mime.as_deref(), &file_name);
    finish(
        &state,
        &caller,
        form.upload_path,
        file_name,
        part_name,
        mime,
        file.stored,
    )
    .await
}

/// Where the `file` part of a multipart upload goes (the blob store in the server, an
/// in-memory buffer in the fuzz target).
pub trait PartSink {
    type Stored: Send;
    fn store<'a>(
        &'a mut self,
        field: axum::extract::multipart::Field<'a>,
    ) -> impl std::future::Future<Output = Result<Self::Stored, ApiError>> + Send + 'a;
}

struct BlobSink<'s> {
    blobs: &'s crate::blobs::Blobs,
    limit: u64,
}

impl PartSink for BlobSink<'_> {
    type Stored = StoredBytes;
    async fn store<'a>(
        &'a mut self,
        field: axum::extract::multipart::Field<'a>,
    ) -> Result<StoredBytes, ApiError> {
        files::put_bytes(self.blobs, Box::pin(field), self.limit)
            .await
            .map_err(|e| file_error(e, self.limit))
    }
}

/// The `file` part of a multipart upload, once stored.
#[derive(Debug)]
pub struct FilePart<S> {
    pub stored: S,
    /// The part's file name, without any directory a browser may have sent.
    pub part_name: Option<String>,
    pub part_mime: Option<String>,
}

/// What a multipart upload carried. Non-empty text fields only.
#[derive(Debug)]
pub struct UploadForm<S> {
    pub upload_path: Option<String>,
    pub file_name: Option<String>,
    pub file: Option<FilePart<S>>,
}

impl<S> Default for UploadForm<S> {
    fn default() -> Self {
        UploadForm {
            upload_path: None,
            file_name: None,
            file: None,
        }
    }
}

/// The part's file name without directories (browsers on Windows may send a full path).
pub fn part_file_name(n: &str) -> String {
    n.rsplit(['/', '\\']).next().unwrap_or_default().to_string()
}

/// Reads the fields of a multipart upload into `form`, the `file` part through
/// `sink`. On error, `form.file` may hold stored bytes the caller must discard.
pub async fn read_upload_form<K: PartSink>(
    mp: &mut Multipart,
    sink: &mut K,
    form: &mut UploadForm<K::Stored>,
) -> Result<(), ApiError> {
    let malformed = || ApiError::validation("Malformed multipart body");
    let mut parts = 0;
    while let Some(mut field) = mp.next_field().await.map_err(|_| malformed())? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ApiError::validation(format!(
                "Too many multipart fields (at most {MAX_PARTS})"
            )));
        }
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                if form.file.is_some() {
                    return Err(ApiError::validation("Only one 'file' part is allowed"));
                }
                let part_name = field.file_name().map(part_file_name);
                let part_mime = field.content_type().map(str::to_string);
                let stored = sink.store(field).await?;
                form.file = Some(FilePart {
                    stored,
                    part_name,
                    part_mime,
                });
            }
            "uploadPath" | "fileName" => {
                let mut buf = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|_| malformed())? {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > MAX_TEXT_FIELD {
                        return Err(ApiError::validation(format!(
                            "Field '{name}' is longer than {MAX_TEXT_FIELD} bytes"
                        )));
                    }
                }
                let v = String::from_utf8(buf).map_err(|_| {
                    ApiError::validation(format!("Field '{name}' is not valid UTF-8"))
                })?;
                let v = Some(v).filter(|s| !s.is_empty());
                if name == "uploadPath" {
                    form.upload_path = v;
                } else {
                    form.file_name = v;
                }
            }
            // unknown fields are ignored, like unknown JSON fields
            _ => while field.chunk().await.map_err(|_| malformed())?.is_some() {},
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- base64 upload

/// `{"base64Data", "uploadPath", "fileName"?}`
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Base64UploadRequest<'a> {
    /// Plain base64 or a data URL (`data:image/png;base64,…`)
    #[serde(borrow)]
    #[schema(value_type = String)]
    pub base64_data: Option<Cow<'a, str>>,
    #[schema(value_type = String)]
    pub upload_path: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub file_name: Option<serde_json::Value>,
}

/// Splits a `data:<mime>;base64,<data>` URL; plain base64 passes through.
pub fn split_data_url(s: &str) -> Result<(Option<&str>, &str), ApiError> {
    let Some(rest) = s.strip_prefix("data:") else {
        return Ok((None, s));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| ApiError::validation("Invalid parameter: base64Data data URL has no ','"))?;
    let mut it = meta.split(';');
    let mime = it.next().filter(|m| !m.is_empty());
    if !it.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(ApiError::validation(
            "Invalid parameter: base64Data data URL must be base64-encoded (';base64,')",
        ));
    }
    Ok((mime, data))
}

/// Decodes base64 (standard or URL-safe alphabet, padding optional, whitespace
/// ignored) as a stream of chunks, so the decoded file never sits in memory whole.
fn decode_stream(data: &str) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin + '_ {
    decode_stream_chunked(data, 256 * 1024)
}

/// [`decode_stream`] with `in_chunk` input characters per chunk (rounded down to a
/// multiple of 4, at least 4). Every chunk size gives the same answer.
pub fn decode_stream_chunked(
    data: &str,
    in_chunk: usize,
) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin + '_ {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    let cfg = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = data.contains(['-', '_']);
    let engine = if url_safe {
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg)
    } else {
        GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
    };
    let clean: Cow<'_, [u8]> = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(data.bytes().filter(|b| !b.is_ascii_whitespace()).collect())
    } else {
        Cow::Borrowed(data.as_bytes())
    };
    // 4 input characters → 3 bytes: chunks of a multiple of 4 decode independently.
    let in_chunk = (in_chunk / 4).max(1) * 4;
    let mut pos = 0;
    futures::stream::poll_fn(move |_| {
        if pos >= clean.len() {
            return std::task::Poll::Ready(None);
        }
        let end = (pos + in_chunk).min(clean.len());
        // padding ends the data: in a chunk that is not the last it would let
        // "QQ==QQ==" through, which a single decode refuses
        let r = if end < clean.len() && clean[pos..end].contains(&b'=') {
            Err("invalid base64".to_string())
        } else {
            engine
                .decode(&clean[pos..end])
                .map(Bytes::from)
                .map_err(|_| "invalid base64".to_string())
        };
        pos = end;
        std::task::Poll::Ready(Some(r))
    })
}

/// Base64 upload (plain or `data:<mime>;base64,` form). At most `max_upload` decoded
/// bytes.
#[utoipa::path(
    post,
    path = "/api/file-base64-upload",
    tag = "upload",
    request_body = Base64UploadRequest,
    responses((status = 200, description = "Upload envelope with success; codes 401, 422 (missing/invalid field, invalid base64, too large), 455, 505", body = UploadEnvelope))
)]
pub async fn file_base64_upload(State(state): State<AppState>, req: Request) -> Response {
    base64_upload(state, req)
        .await
        .map_err(ApiError::for_upload)
        .into_response()
}

async fn base64_upload(state: AppState, req: Request) -> UploadResult {
    let caller = authenticate(&state, req.headers(), req.extensions()).await?;
    let limit = state.config.max_upload;
    // base64 is 4/3 of the bytes; room for the JSON around it and a data URL prefix
    let body_limit = (limit as usize / 3 + 1) * 4 + 64 * 1024;
    let bytes = read_json_body(req, body_limit, || too_large(limit)).await?;
    let body: Base64UploadRequest<'_> = parse_json(&bytes)?;
    let data = body
        .base64_data
        .as_deref()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| missing("base64Data"))?;
    let upload_path = text_field(body.upload_path.as_ref(), "uploadPath")?;
    let file_name = text_field(body.file_name.as_ref(), "fileName")?;
    // cheap checks before any byte is written
    let upload_path = upload_path.ok_or_else(|| missing("uploadPath"))?;
    validate_upload_path(&upload_path)?;
    let (mime, payload) = split_data_url(data)?;
    if payload.len() / 4 * 3 > limit as usize + 3 {
        return Err(too_large(limit));
    }
    if payload.trim().is_empty() {
        return Err(missing("base64Data"));
    }
    let file_name = file_name.unwrap_or_else(|| generated_name(mime));
    files::validate_file_name(&file_name).map_err(|e| file_error(e, limit))?;
    let mime = pick_mime(mime, &file_name);
    let stored = files::put_bytes(&state.blobs, decode_stream(payload), limit)
        .await
        .map_err(|e| match e {
            FileError::Blob(BlobError::Body(_)) => {
                ApiError::validation("Invalid parameter: base64Data is not valid base64")
            }
            e => file_error(e, limit),
        })?;
    finish(
        &state,
        &caller,
        Some(upload_path),
        file_name,
        None,
        mime,
        stored,
    )
    .await
}

// ---------------------------------------------------------------- URL upload

/// `{"fileUrl", "uploadPath", "fileName"?}`
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlUploadRequest {
    #[schema(value_type = String)]
    pub file_url: Option<serde_json::Value>,
    #[schema(value_type = String)]
    pub upload_path: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub file_name: Option<serde_json::Value>,
}

/// The last path segment of a URL, decoded, when it is a usable file name.
pub fn name_from_url(u: &url::Url) -> Option<String> {
    let seg = u.path_segments()?.next_back()?;
    let name = percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .ok()?
        .into_owned();
    files::validate_file_name(&name).ok().map(|_| name)
}

/// URL upload: the server fetches `fileUrl` (30 s timeout, at most `max_upload`
/// bytes, at most 5 redirects) through the SSRF guard.
#[utoipa::path(
    post,
    path = "/api/file-url-upload",
    tag = "upload",
    request_body = UrlUploadRequest,
    responses((status = 200, description = "Upload envelope with success; codes 401, 422 (missing/invalid field, refused or failed fetch, too large), 455, 505", body = UploadEnvelope))
)]
pub async fn file_url_upload(State(state): State<AppState>, req: Request) -> Response {
    url_upload(state, req)
        .await
        .map_err(ApiError::for_upload)
        .into_response()
}

async fn url_upload(state: AppState, req: Request) -> UploadResult {
    let caller = authenticate(&state, req.headers(), req.extensions()).await?;
    let limit = state.config.max_upload;
    let max_body = state.config.max_body;
    let bytes = read_json_body(req, max_body, || ApiError::too_large(max_body)).await?;
    let body: UrlUploadRequest = parse_json(&bytes)?;
    let file_url = text_field(body.file_url.as_ref(), "fileUrl")?;
    let upload_path = text_field(body.upload_path.as_ref(), "uploadPath")?;
    let file_name = text_field(body.file_name.as_ref(), "fileName")?;
    let (file_url, upload_path) = match (file_url, upload_path) {
        (None, None) => {
            return Err(ApiError::validation(
                "Missing required parameters: fileUrl, uploadPath",
            ))
        }
        (None, _) => return Err(missing("fileUrl")),
        (_, None) => return Err(missing("uploadPath")),
        (Some(u), Some(p)) => (u, p),
    };
    validate_upload_path(&upload_path)?;
    let url = url::Url::parse(file_url.trim())
        .map_err(|_| ApiError::validation("Invalid parameter: fileUrl is not a valid URL"))?;
    if let Some(n) = &file_name {
        files::validate_file_name(n).map_err(|e| file_error(e, limit))?;
    }
    let fetched = tokio::time::timeout(FETCH_TIMEOUT, async {
        let resp = net_guard::get(
            &state.files.fetch_client,
            &state.files.fetch_policy,
            url.clone(),
            FETCH_TIMEOUT,
        )
        .await
        .map_err(fetch_error)?;
        if !resp.status().is_success() {
            return Err(ApiError::validation(format!(
                "fileUrl could not be fetched: the server answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let final_url = resp.url().clone();
        let mime = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let stored = files::put_bytes(&state.blobs, resp.bytes_stream(), limit)
            .await
            .map_err(|e| match e {
                FileError::Blob(BlobError::Body(_)) => {
                    ApiError::validation("fileUrl could not be fetched: the transfer failed")
                }
                e => file_error(e, limit),
            })?;
        Ok((stored, mime, final_url))
    })
    .await
    .map_err(|_| ApiError::validation("fileUrl could not be fetched: timed out after 30 s"))??;
    let (stored, mime, final_url) = fetched;
    let url_name = name_from_url(&final_url);
    let file_name = file_name
        .or_else(|| url_name.clone())
        .unwrap_or_else(|| generated_name(mime.as_deref().and_then(clean_mime).as_deref()));
    let mime = pick_mime(mime.as_deref(), &file_name);
    finish(
        &state,
        &caller,
        Some(upload_path),
        file_name,
        url_name,
        mime,
        stored,
    )
    .await
}

fn fetch_error(e: FetchError) -> ApiError {
    match e {
        FetchError::Refused(r) => ApiError::validation(format!("fileUrl is not allowed: {r}")),
        FetchError::Timeout => {
            ApiError::validation("fileUrl could not be fetched: timed out after 30 s")
        }
        // the transport detail may describe our network: keep it in the log
        FetchError::Transport(detail) => {
            tracing::info!(error = %detail, "URL upload fetch failed");
            ApiError::validation("fileUrl could not be fetched: connection failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_paths() {
        for ok in ["images", "images/user-uploads", "a.b/c_d/e~f", "ünï/2024"] {
            assert!(validate_upload_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "a/../b", "..", ".", "a/./b", "a b", "a\\b", "a%2e",
        ] {
            assert!(validate_upload_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn data_urls_and_mime() {
        assert_eq!(
            split_data_url("data:image/png;base64,AAAA").unwrap(),
            (Some("image/png"), "AAAA")
        );
        assert_eq!(split_data_url("AAAA").unwrap(), (None, "AAAA"));
        assert!(split_data_url("data:text/plain,hello").is_err());
        assert_eq!(
            pick_mime(Some("image/png; charset=x"), "a.bin"),
            "image/png"
        );
        assert_eq!(
            pick_mime(Some("application/octet-stream"), "a.png"),
            "image/png"
        );
        assert_eq!(pick_mime(Some("bad\r\nx"), "a.txt"), "text/plain");
        assert_eq!(iso_ms(1735732800000), "2025-01-01T12:00:00.000Z");
    }

    #[tokio::test]
    async fn base64_streams_in_chunks() {
        use futures::StreamExt;
        let raw: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let enc = base64::engine::general_purpose::STANDARD.encode(&raw);
        let mut out = Vec::new();
        let mut s = decode_stream(&enc);
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        assert_eq!(out, raw);
        let mut s = decode_stream("AAA*");
        assert!(s.next().await.unwrap().is_err());
        let mut s = decode_stream("aGk");
        assert_eq!(&s.next().await.unwrap().unwrap()[..], b"hi");
    }
}
