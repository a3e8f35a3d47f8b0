//! The rows the store reads on the hot paths, and their queries: file records and link
//! signing keys. No I/O here: `files` and `files::links` (above) and the SQLite
//! fast reader (`store::fastread`, beside) share these definitions, so neither has to
//! import the other.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRecord {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub kind: String,
    pub upload_path: Option<String>,
    pub task_id: Option<String>,
    pub storage_key: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub deleted_at: Option<i64>,
}

/// `get`'s query (also run directly by `store::fastread`); the columns of FILE_COLUMNS.
pub(crate) const GET_BY_ID_SQL: &str = "SELECT id, account_id, name, content_type, size, sha256, \
     kind, upload_path, task_id, storage_key, created_at, expires_at, deleted_at \
     FROM files WHERE id = $1";

pub(crate) type FileRow = (
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
    i64,
    Option<i64>,
);

pub(crate) fn to_record(r: FileRow) -> FileRecord {
    FileRecord {
        id: r.0,
        account_id: r.1,
        name: r.2,
        content_type: r.3,
        size: r.4,
        sha256: r.5,
        kind: r.6,
        upload_path: r.7,
        task_id: r.8,
        storage_key: r.9,
        created_at: r.10,
        expires_at: r.11,
        deleted_at: r.12,
    }
}

/// A signing key: its id is public (it is in every link), its secret is not.
#[derive(Clone)]
pub struct SigningKey {
    pub id: String,
    /// HMAC-SHA256 keyed with the secret, its key schedule done once (a link costs the
    /// message's compressions only); as secret as the key itself.
    pub(crate) prepared: HmacSha256,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the secret
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

pub(crate) fn decode_secret(id: String, secret: &str) -> Option<SigningKey> {
    let bytes = URL_SAFE_NO_PAD.decode(secret).ok()?;
    SigningKey::from_secret(&id, &bytes)
}

impl SigningKey {
    /// A key from raw secret bytes (at least 32). For tests and fuzzing; the server
    /// only reads keys from the key ring.
    pub fn from_secret(id: &str, secret: &[u8]) -> Option<SigningKey> {
        (secret.len() >= 32).then(|| SigningKey {
            id: id.to_string(),
            prepared: HmacSha256::new_from_slice(secret).expect("HMAC takes any key length"),
        })
    }
}

/// `active_key`'s read (also run directly by `store::fastread`).
pub(crate) const ACTIVE_KEY_SQL: &str =
    "SELECT id, secret FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, id LIMIT 1";

/// `{public_url}/files/{id}/{percent-encoded name}`.
pub fn file_url(public_url: &url::Url, id: &str, name: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let base = public_url.as_str().trim_end_matches('/');
    format!("{base}/files/{id}/{}", utf8_percent_encode(name, KEEP))
}
