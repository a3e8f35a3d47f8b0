//! Stored files and their public URLs: `{public_url}/files/{file_id}/{file_name}`.
//!
//! A file's bytes are written to the object store first and its record inserted after,
//! so a record never points at missing bytes; bytes whose record never got written are
//! orphans the sweeper removes.
//!
//! * `links` — signed temporary download links and the signing key ring
//! * `serve` — serving bytes: links (attachment) and public file URLs (inline)
//! * `sweep` — the retention sweeper (expired files, orphan bytes)

pub mod links;
pub mod serve;
pub mod sweep;

use bytes::Bytes;
use futures::Stream;
use std::time::Duration;

use crate::blobs::{BlobError, Blobs};
pub use crate::store::records::{file_url, FileRecord};
use crate::store::records::{to_record, FileRow};
use crate::store::{now_ms, Db};
use crate::{with_read, with_tx};

/// Per-server state of the files capability, shared by handlers.
pub struct FilesState {
    /// Verification keys of download links, by key id.
    pub keys: links::KeyCache,
    /// The SSRF policy for URL uploads.
    pub fetch_policy: crate::net_guard::Policy,
    /// The guarded client for URL uploads (no redirects, guarded DNS, no proxy).
    pub fetch_client: reqwest::Client,
}

impl FilesState {
    pub fn new(config: &crate::config::Config) -> reqwest::Result<FilesState> {
        let policy = crate::net_guard::Policy::new(
            config.allow_private_targets,
            config.allowed_private_targets.clone(),
        );
        let builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("kie-common/", env!("CARGO_PKG_VERSION")));
        Ok(FilesState {
            keys: links::KeyCache::default(),
            fetch_client: crate::net_guard::client(builder, policy.clone())?,
            fetch_policy: policy,
        })
    }
}

/// Why a file exists; decides its retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Produced by a task (kept `retention_generated`, 14 days by default).
    Generated,
    /// Uploaded through the File Upload API (kept `retention_uploads`, 3 days).
    Upload,
    /// Added by an operator with `kie admin file add` (kept like generated files).
    Admin,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Generated => "generated",
            FileKind::Upload => "upload",
            FileKind::Admin => "admin",
        }
    }
}

impl FileRecord {
    /// The file's public URL under `public_url`.
    pub fn url(&self, public_url: &url::Url) -> String {
        file_url(public_url, &self.id, &self.name)
    }

    /// Strong ETag: the content digest.
    pub fn etag(&self) -> String {
        format!("\"{}\"", &self.sha256)
    }
}

/// A new file id: 32 base62 characters (~190 bits) of OS randomness.
pub fn new_file_id() -> String {
    kie_wire::apikey::random_base62(32)
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What to store.
pub struct NewFile<'a> {
    pub account_id: &'a str,
    pub name: &'a str,
    pub content_type: &'a str,
    pub kind: FileKind,
    pub upload_path: Option<&'a str>,
    pub task_id: Option<&'a str>,
    pub retention: Duration,
    pub max_size: u64,
}

/// A file name safe to store and to put in a URL path segment: no separators, no
/// control characters, not empty, at most 255 bytes.
pub fn validate_file_name(name: &str) -> Result<(), FileError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(FileError::Invalid(format!(
            "invalid file name '{}'",
            name.escape_default()
        )));
    }
    Ok(())
}

/// Bytes written to the store for a file that has no record yet (see [`put_bytes`]).
#[derive(Debug)]
pub struct StoredBytes {
    pub id: String,
    pub storage_key: String,
    pub size: u64,
    pub sha256: String,
}

/// Streams a body into the store under a fresh file id, refusing more than
/// `max_size` bytes (nothing is visible then). The first half of [`create`], for
/// callers that learn the file's name only after its bytes (multipart uploads whose
/// `file` part comes first): pass the result to [`record`], or [`discard`] it.
pub async fn put_bytes<S, E>(
    blobs: &Blobs,
    body: S,
    max_size: u64,
) -> Result<StoredBytes, FileError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let id = new_file_id();
    // The id alone keys the bytes: names never reach the store's paths.
    let storage_key = format!("{}/{}", &id[..2], id);
    let written = blobs.put_stream(&storage_key, body, max_size).await?;
    Ok(StoredBytes {
        id,
        storage_key,
        size: written.size,
        sha256: written.sha256,
    })
}

/// Removes bytes that will not get a record.
pub async fn discard(blobs: &Blobs, stored: StoredBytes) {
    if let Err(e) = blobs.delete(&stored.storage_key).await {
        tracing::warn!(error = %e, "could not delete unrecorded bytes; the sweeper will remove them");
    }
}

/// Streams a new file into the store and records it. For uploads with an
/// `upload_path`, an existing file at the same path of the same account is replaced
/// (its record marked deleted and its bytes removed) in the same transaction.
pub async fn create<S, E>(
    db: &Db,
    blobs: &Blobs,
    f: NewFile<'_>,
    body: S,
) -> Result<FileRecord, FileError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    validate_file_name(f.name)?;
    let stored = put_bytes(blobs, body, f.max_size).await?;
    record(db, blobs, &f, stored).await
}

/// Records bytes stored by [`put_bytes`] as the file `f` (the second half of
/// [`create`]). On failure the bytes are deleted.
pub async fn record(
    db: &Db,
    blobs: &Blobs,
    f: &NewFile<'_>,
    stored: StoredBytes,
) -> Result<FileRecord, FileError> {
    if let Err(e) = validate_file_name(f.name) {
        discard(blobs, stored).await;
        return Err(e);
    }
    let StoredBytes {
        id,
        storage_key,
        size,
        sha256,
    } = stored;
    let now = now_ms();
    let expires_at = now + f.retention.as_millis().min(i64::MAX as u128 / 2) as i64;
    let mut replaced: Vec<String> = Vec::new();
    let insert = async {
        with_tx!(db, |tx| {
            if let Some(p) = f.upload_path {
                let old: Vec<(String, String)> = sqlx::query_as(
                    "SELECT id, storage_key FROM files WHERE account_id = $1 AND upload_path = $2 AND deleted_at IS NULL",
                )
                .bind(f.account_id)
                .bind(p)
                .fetch_all(&mut *tx)
                .await?;
                for (old_id, key) in old {
                    sqlx::query("UPDATE files SET deleted_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(&old_id)
                        .execute(&mut *tx)
                        .await?;
                    replaced.push(key);
                }
            }
            sqlx::query(
                "INSERT INTO files (id, account_id, name, content_type, size, sha256, kind, upload_path, task_id, \
                 storage_key, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&id)
            .bind(f.account_id)
            .bind(f.name)
            .bind(f.content_type)
            .bind(size as i64)
            .bind(&sha256)
            .bind(f.kind.as_str())
            .bind(f.upload_path)
            .bind(f.task_id)
            .bind(&storage_key)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        });
        Ok::<(), sqlx::Error>(())
    };
    if let Err(e) = insert.await {
        // the record was not written: the bytes must not stay behind
        let _ = blobs.delete(&storage_key).await;
        return Err(e.into());
    }
    for key in replaced {
        if let Err(e) = blobs.delete(&key).await {
            tracing::warn!(error = %e, "could not delete replaced file bytes; the sweeper will retry");
        }
    }
    Ok(FileRecord {
        id,
        account_id: f.account_id.to_string(),
        name: f.name.to_string(),
        content_type: f.content_type.to_string(),
        size: size as i64,
        sha256,
        kind: f.kind.as_str().to_string(),
        upload_path: f.upload_path.map(str::to_string),
        task_id: f.task_id.map(str::to_string),
        storage_key,
        created_at: now,
        expires_at,
        deleted_at: None,
    })
}

const FILE_COLUMNS: &str =
    "id, account_id, name, content_type, size, sha256, kind, upload_path, task_id, \
                            storage_key, created_at, expires_at, deleted_at";

/// A file record by id (deleted or not: callers decide what a deleted file means);
/// see [`Db::file`].
pub async fn get(db: &Db, id: &str) -> Result<Option<FileRecord>, sqlx::Error> {
    db.file(id).await
}

/// Files of a task, in creation order.
pub async fn of_task(db: &Db, task_id: &str) -> Result<Vec<FileRecord>, sqlx::Error> {
    let sql =
        format!("SELECT {FILE_COLUMNS} FROM files WHERE task_id = $1 ORDER BY created_at, id");
    let rows: Vec<FileRow> = with_read!(db, |p| sqlx::query_as(&sql)
        .bind(task_id)
        .fetch_all(p)
        .await?);
    Ok(rows.into_iter().map(to_record).collect())
}

/// Live files of an account, newest first, older than the `before` cursor
/// (`(created_at, id)` of the last row of the previous page): the console's Files page.
pub async fn of_account(
    db: &Db,
    account_id: &str,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<FileRecord>, sqlx::Error> {
    let (t, id) = before.unwrap_or((i64::MAX, String::new()));
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM files WHERE account_id = $1 AND deleted_at IS NULL \
         AND expires_at > $2 AND (created_at < $3 OR (created_at = $3 AND id < $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    );
    let rows: Vec<FileRow> = with_read!(db, |p| sqlx::query_as(&sql)
        .bind(account_id)
        .bind(crate::store::now_ms())
        .bind(t)
        .bind(&id)
        .bind(limit)
        .fetch_all(p)
        .await?);
    Ok(rows.into_iter().map(to_record).collect())
}

/// True when the record names live bytes: not deleted and not past retention.
pub fn is_live(f: &FileRecord, now: i64) -> bool {
    f.deleted_at.is_none() && f.expires_at > now
}
