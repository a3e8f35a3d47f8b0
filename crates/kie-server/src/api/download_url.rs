//! `POST /api/v1/common/download-url`: a temporary download link for one of the
//! caller's files, named by its file URL (or by an earlier link of this deployment).

use axum::extract::State;
use serde::Deserialize;
use url::Url;

use crate::auth::Caller;
use crate::blobs::BlobKind;
use crate::config::host_key;
use crate::files::{self, links, serve::parse_id_and_name, FileRecord};
use crate::http::json::ApiJson;
use crate::http::{ApiError, ApiOk, ApiResult};
use crate::ledger::{self, LedgerError};
use crate::state::AppState;
use crate::store::now_ms;

/// The request body. `url` is read as any JSON value so that a missing, empty or
/// non-string value each get their own message.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct DownloadUrlRequest {
    /// A generated file URL (`{public_url}/files/{id}/{name}`) or an earlier link
    #[schema(value_type = String)]
    pub url: Option<serde_json::Value>,
}

const NOT_FOUND: &str = "File not found";

/// Where a URL of ours points: the file id and decoded name, or nothing.
pub fn locate(public_url: &Url, u: &Url) -> Option<(String, String)> {
    // `url` has already resolved dot segments, including %2e forms; what is left is
    // the still percent-encoded path, which parse_id_and_name decodes exactly once.
    let prefix = public_url.path().trim_end_matches('/');
    let path = u.path();
    let path = path.strip_prefix(prefix).unwrap_or(path);
    let rest = path
        .strip_prefix("/files/")
        .or_else(|| path.strip_prefix("/links/"))?;
    parse_id_and_name(rest).map(|(id, name)| (id.to_string(), name))
}

/// Checks the URL and finds the caller's live file it names.
pub async fn resolve_file_url(
    state: &AppState,
    account_id: &str,
    raw: &str,
) -> Result<FileRecord, ApiError> {
    let u = Url::parse(raw.trim())
        .map_err(|_| ApiError::validation("Invalid URL: 'url' is not a valid URL"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(ApiError::validation(
            "Invalid URL: only http and https URLs are supported",
        ));
    }
    if let BlobKind::S3 { .. } = state.blobs.kind {
        // an earlier link: a presigned URL of our bucket
        if let Some(key) = state.blobs.key_of_store_url(&u).await {
            let id = key.split_once('/').map(|(_, id)| id).unwrap_or_default();
            return match state.db.file_recent(id).await? {
                Some(f)
                    if f.account_id == account_id
                        && f.storage_key == key
                        && files::is_live(&f, now_ms()) =>
                {
                    Ok(f)
                }
                _ => Err(ApiError::not_found(NOT_FOUND)),
            };
        }
    }
    if u.host_str().is_none() || !state.config.file_hosts.contains(&host_key(&u)) {
        return Err(ApiError::validation(
            "Invalid URL: external file URLs are not supported",
        ));
    }
    let (id, name) = locate(&state.config.public_url, &u).ok_or(ApiError::not_found(NOT_FOUND))?;
    // One answer for "no such file", "not yours", "expired" and "deleted".
    let rec = state.db.file_recent(&id).await?;
    match rec {
        Some(f) if f.account_id == account_id && f.name == name && files::is_live(&f, now_ms()) => {
            Ok(f)
        }
        _ => Err(ApiError::not_found(NOT_FOUND)),
    }
}

/// A fresh temporary link for `f`: signed by this server (local store) or presigned
/// by the object store (S3).
pub async fn issue_download_link(state: &AppState, f: &FileRecord) -> Result<String, ApiError> {
    let ttl = state.config.link_ttl;
    match state.blobs.kind {
        BlobKind::Local(_) => {
            let key = links::active_key(&state.db).await?;
            Ok(links::sign(
                &state.config.public_url,
                &key,
                &f.id,
                &f.name,
                links::expiry_for(ttl),
            ))
        }
        BlobKind::S3 { .. } => match state
            .blobs
            .presigned(
                http::Method::GET,
                &f.storage_key,
                ttl,
                &crate::blobs::ResponseOverrides {
                    content_type: Some(&f.content_type),
                    content_disposition: Some(&crate::files::serve::content_disposition(
                        "attachment",
                        &f.name,
                    )),
                },
            )
            .await
        {
            Ok(Some(u)) => Ok(u.to_string()),
            Ok(None) => Err(ApiError::internal("S3 store without a signer")),
            Err(e) => Err(ApiError::internal(e)),
        },
    }
}

/// A temporary download link (valid `link_ttl`, no API key needed) for a file of the
/// caller's account, named by its file URL. Optionally priced (`pricing.download_url`).
#[utoipa::path(
    post,
    path = "/api/v1/common/download-url",
    tag = "common",
    request_body = DownloadUrlRequest,
    responses((status = 200, description = "Envelope; data = the temporary link (a URL string). Codes: 401, 402, 433 (the key's usage cap), 404 (no such file of yours, or expired), 422 (missing/invalid/external URL), 455, 505", body = crate::openapi::LinkEnvelope))
)]
pub async fn download_url(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> ApiResult<String> {
    let raw = match body.get("url") {
        None | Some(serde_json::Value::Null) => {
            return Err(ApiError::validation("Missing required parameter: url"))
        }
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::validation("Missing required parameter: url"))
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ApiError::validation(
                "Invalid field 'url': expected a string",
            ))
        }
    };
    let f = resolve_file_url(&state, &caller.account_id, &raw).await?;
    let link = issue_download_link(&state, &f).await?;
    charge_link(&state, &caller.account_id, Some(&caller.key_id)).await?;
    Ok(ApiOk(link))
}

/// Charges a link's price (`pricing.download_url`, 0 by default) to the account: the
/// API endpoint (through the caller's key, which counts it against the key's caps)
/// and the console's "Get link" (no key) both pay it.
pub async fn charge_link(
    state: &AppState,
    account_id: &str,
    key_id: Option<&str>,
) -> Result<(), ApiError> {
    let price = state.config.price_download_url;
    match ledger::charge_download_link(&state.db, account_id, key_id, price).await {
        Ok(_) => Ok(()),
        Err(LedgerError::InsufficientCredits) => Err(ApiError::insufficient_credits()),
        Err(LedgerError::CapExceeded) => Err(ApiError::key_cap_exceeded()),
        Err(LedgerError::UnknownAccount) => Err(ApiError::unauthorized()),
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::locate;
    use url::Url;

    #[test]
    fn locating_file_urls() {
        let base = Url::parse("http://h:8080/").unwrap();
        let id = "A".repeat(32);
        let u = Url::parse(&format!("http://H:8080/files/{id}/a%20b.png?x=1#f")).unwrap();
        assert_eq!(locate(&base, &u), Some((id.clone(), "a b.png".into())));
        let u = Url::parse(&format!("http://h:8080/links/{id}/x?e=1&k=k&s=s")).unwrap();
        assert_eq!(locate(&base, &u), Some((id.clone(), "x".into())));
        for bad in [
            format!("http://h:8080/files/{id}/../../etc/passwd"),
            format!("http://h:8080/files/{id}/%2e%2e"),
            format!("http://h:8080/files/{id}/a%2Fb"),
            format!("http://h:8080/files/{id}/a%5Cb"),
            format!("http://h:8080/files/{id}/a%00"),
            format!("http://h:8080/files/{id}"),
            format!("http://h:8080/other/{id}/x"),
        ] {
            assert_eq!(locate(&base, &Url::parse(&bad).unwrap()), None, "{bad}");
        }
        let prefixed = Url::parse("https://h/kie/").unwrap();
        let u = Url::parse(&format!("https://h/kie/files/{id}/x")).unwrap();
        assert_eq!(locate(&prefixed, &u), Some((id, "x".into())));
    }
}
