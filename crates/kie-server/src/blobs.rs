//! The object-store boundary: where file bytes live. A local directory (embedded
//! default) or an S3-compatible bucket, both through the `object_store` crate, which
//! streams in both directions. Writes go to a temporary object and become visible
//! only when complete (local: temp file + rename; S3: multipart completion).

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, WriteMultipart};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("invalid storage URL: {0}")]
    Config(String),
}

/// Where bytes are kept.
#[derive(Clone, Debug)]
pub enum BlobKind {
    /// A local directory: links are served by this server.
    Local(std::path::PathBuf),
    /// An S3 bucket: links are the store's presigned URLs.
    S3 { bucket: String, prefix: String },
}

#[derive(Clone)]
pub struct Blobs {
    pub kind: BlobKind,
    pub store: Arc<dyn ObjectStore>,
    /// Makes presigned GET URLs (S3); `None` for the local store, whose links this
    /// server signs and serves itself.
    pub signer: Option<Arc<dyn object_store::signer::Signer>>,
}

/// What a completed write produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

impl Blobs {
    /// Opens `file://DIR` (created if missing). `s3://` is added by the scale-out work.
    pub fn open(url: &str) -> Result<Blobs, BlobError> {
        if let Some(dir) = url.strip_prefix("file://") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir)
                .map_err(|e| BlobError::Config(format!("{}: {e}", dir.display())))?;
            let store = LocalFileSystem::new_with_prefix(&dir)?;
            return Ok(Blobs {
                kind: BlobKind::Local(dir),
                store: Arc::new(store),
                signer: None,
            });
        }
        Err(BlobError::Config(format!(
            "unsupported storage '{url}': use file://DIR"
        )))
    }

    /// Streams `body` into `key`, hashing as it goes, refusing more than `limit` bytes.
    /// Nothing becomes visible under `key` unless the whole body arrived.
    pub async fn put_stream<S, E>(
        &self,
        key: &str,
        mut body: S,
        limit: u64,
    ) -> Result<Written, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use sha2::{Digest, Sha256};
        let path = ObjPath::from(key);
        let upload = self.store.put_multipart(&path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(BlobError::Body(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                let _ = w.abort().await;
                return Err(BlobError::TooLarge { limit });
            }
            hasher.update(&chunk);
            // bounded buffering: wait when too many parts are in flight
            w.wait_for_capacity(4).await?;
            w.write(&chunk);
        }
        w.finish().await?;
        Ok(Written {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<Written, BlobError> {
        let len = bytes.len() as u64;
        self.put_stream(
            key,
            futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]),
            len,
        )
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The absolute path of a key in the local store (for zero-copy serving).
    pub fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        match &self.kind {
            BlobKind::Local(dir) => Some(dir.join(key)),
            BlobKind::S3 { .. } => None,
        }
    }

    /// A presigned GET URL valid for `ttl`, when the store makes them (S3).
    pub async fn presigned_get(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<url::Url>, BlobError> {
        match &self.signer {
            Some(s) => Ok(Some(
                s.signed_url(http::Method::GET, &ObjPath::from(key), ttl)
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// Every stored object as (key, last modified in Unix ms). Objects still being
    /// written are not listed (local: staged under another name; S3: incomplete
    /// multipart uploads are not objects).
    pub fn list_all(
        &self,
    ) -> futures::stream::BoxStream<'static, Result<(String, i64), BlobError>> {
        self.store
            .list(None)
            .map(|r| {
                r.map(|m| (m.location.to_string(), m.last_modified.timestamp_millis()))
                    .map_err(BlobError::from)
            })
            .boxed()
    }

    /// Readiness: the store answers a listing.
    pub async fn ping(&self) -> Result<(), BlobError> {
        let mut l = self.store.list(None);
        match l.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
        }
    }
}
