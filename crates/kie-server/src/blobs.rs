//! The object-store boundary: where file bytes live. A local directory (embedded
//! default) or an S3-compatible bucket, both through the `object_store` crate, which
//! streams in both directions. Writes go to a temporary object and become visible
//! only when complete (local: temp file + rename; S3: a single PUT, or multipart
//! completion for bodies larger than one part).
//!
//! S3 (`s3://bucket/prefix`): credentials and region come from the usual AWS
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …, read by
//! `AmazonS3Builder::from_env`); `--s3-endpoint` overrides the endpoint for
//! S3-compatible stores. Every key lives under the prefix. Download links are SigV4
//! presigned GET URLs made by `object_store`'s signer, carrying
//! `response-content-type`/`response-content-disposition` under the signature; the
//! store then sends them as the response headers.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("{0}")]
    Config(String),
}

/// Where bytes are kept.
#[derive(Clone, Debug)]
pub enum BlobKind {
    /// A local directory: links are served by this server.
    Local(std::path::PathBuf),
    /// An S3 bucket: links are the store's presigned URLs.
    S3 {
        bucket: String,
        prefix: String,
        /// The endpoint, for messages (no credentials in it).
        endpoint: String,
    },
}

/// How S3 requests name the bucket.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum S3Addressing {
    /// `https://endpoint/bucket/key` (works with every S3-compatible store)
    #[default]
    Path,
    /// `https://bucket.endpoint/key` (AWS's preferred form)
    Virtual,
}

/// S3 settings besides the AWS variables (`--s3-endpoint`, `--s3-addressing`).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible store; overrides `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    pub addressing: S3Addressing,
}

#[derive(Clone)]
pub struct Blobs {
    pub kind: BlobKind,
    /// The store, rooted at the prefix: keys are relative to it.
    pub store: Arc<dyn ObjectStore>,
    /// Makes presigned URLs (S3), rooted at the prefix like `store`; `None` for the
    /// local store, whose links this server signs and serves itself.
    pub signer: Option<Arc<dyn Signer>>,
}

/// Response headers a presigned URL asks the store to send.
#[derive(Debug, Clone, Default)]
pub struct ResponseOverrides<'a> {
    pub content_type: Option<&'a str>,
    pub content_disposition: Option<&'a str>,
}

/// What a completed write produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

impl Blobs {
    /// Opens `file://DIR` (created if missing) or `s3://bucket/prefix` with default
    /// S3 options (the AWS variables only).
    pub fn open(url: &str) -> Result<Blobs, BlobError> {
        Self::open_with(url, &S3Options::default())
    }

    /// Opens `file://DIR` (created if missing) or `s3://bucket/prefix`. Opening S3
    /// makes no request; [`Blobs::ping`] checks that the bucket answers.
    pub fn open_with(url: &str, s3: &S3Options) -> Result<Blobs, BlobError> {
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
        if let Some(rest) = url.strip_prefix("s3://") {
            return Self::open_s3(rest, s3);
        }
        Err(BlobError::Config(format!(
            "unsupported storage '{url}': use file://DIR or s3://bucket/prefix"
        )))
    }

    fn open_s3(rest: &str, opts: &S3Options) -> Result<Blobs, BlobError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() || rest.contains(['?', '#']) {
            return Err(BlobError::Config(format!(
                "invalid storage 's3://{rest}': use s3://bucket/prefix"
            )));
        }
        let prefix_path = ObjPath::parse(prefix).map_err(|_| {
            BlobError::Config(format!(
                "invalid prefix '{prefix}' in storage 's3://{rest}'"
            ))
        })?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(opts.addressing == S3Addressing::Virtual)
            .with_retry(object_store::RetryConfig {
                backoff: Default::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            })
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            );
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e.clone());
        }
        let mut endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
        if let (Some(e), S3Addressing::Virtual) = (&endpoint, opts.addressing) {
            // object_store takes a virtual-hosted endpoint with the bucket in it
            let v = virtual_endpoint(e, bucket);
            b = b.with_endpoint(v.clone());
            endpoint = Some(v);
        }
        if let Some(e) = &endpoint {
            let u = url::Url::parse(e)
                .map_err(|err| BlobError::Config(format!("invalid S3 endpoint '{e}': {err}")))?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(BlobError::Config(format!(
                    "invalid S3 endpoint '{e}': use http(s)://HOST[:PORT]"
                )));
            }
            // Plain HTTP is fine to a store on this machine; elsewhere it needs an
            // explicit AWS_ALLOW_HTTP=true.
            if u.scheme() == "http" {
                let allowed = b
                    .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                if is_loopback(&u) {
                    b = b.with_allow_http(true);
                } else if !allowed {
                    return Err(BlobError::Config(format!(
                        "S3 endpoint '{e}' is plain http to another host: use https, or set AWS_ALLOW_HTTP=true"
                    )));
                }
            }
        }
        let endpoint_shown = match endpoint.as_deref().map(url::Url::parse) {
            Some(Ok(mut u)) => {
                // never show credentials someone put in the URL
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.as_str().trim_end_matches('/').to_string()
            }
            _ => {
                let region = b
                    .get_config_value(&AmazonS3ConfigKey::Region)
                    .unwrap_or_else(|| "us-east-1".into());
                format!("AWS S3 ({region})")
            }
        };
        tls_crypto();
        let s3: AmazonS3 = b.build()?;
        let (store, signer): (Arc<dyn ObjectStore>, Arc<dyn Signer>) = if prefix.is_empty() {
            let s3 = Arc::new(s3);
            (s3.clone(), s3)
        } else {
            let p = Arc::new(PrefixStore::new(s3, prefix_path));
            (p.clone(), p)
        };
        Ok(Blobs {
            kind: BlobKind::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                endpoint: endpoint_shown,
            },
            store,
            signer: Some(signer),
        })
    }

    /// One line naming the store for operators (never credentials).
    pub fn describe(&self) -> String {
        match &self.kind {
            BlobKind::Local(dir) => format!("file://{}", dir.display()),
            BlobKind::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// The start-up check: the store answers within `limit`. The error is one line
    /// for the operator, saying what is wrong in words (never credentials).
    pub async fn check(&self, limit: Duration) -> Result<(), String> {
        let r = match tokio::time::timeout(limit, self.ping()).await {
            Ok(r) => r,
            Err(_) => return Err(format!("no answer within {}s", limit.as_secs())),
        };
        let Err(e) = r else { return Ok(()) };
        let BlobKind::S3 {
            bucket, endpoint, ..
        } = &self.kind
        else {
            return Err(one_line(&e.to_string()));
        };
        let text = e.to_string();
        let why = if text.contains("NoSuchBucket") {
            format!("bucket '{bucket}' does not exist at {endpoint}")
        } else if [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403 Forbidden",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            format!("access to bucket '{bucket}' at {endpoint} was denied: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION")
        } else if text.contains("error sending request") || text.contains("timed out") {
            format!("the S3 endpoint {endpoint} is not reachable")
        } else {
            // the store's own words, shortened
            let detail: String = one_line(&text).chars().take(300).collect();
            format!("bucket '{bucket}' at {endpoint} does not answer: {detail}")
        };
        Err(why)
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
        const PART: usize = 8 * 1024 * 1024;
        let path = ObjPath::from(key);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        // Bodies up to one part go up in one PUT (one request instead of three on S3);
        // larger ones stream as a multipart upload, at most a few parts in memory.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0usize;
        let mut ended = false;
        while head_len < PART {
            match body.next().await {
                None => {
                    ended = true;
                    break;
                }
                Some(Err(e)) => return Err(BlobError::Body(e.to_string())),
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(BlobError::TooLarge { limit });
                    }
                    hasher.update(&chunk);
                    head_len += chunk.len();
                    head.push(chunk);
                }
            }
        }
        if ended {
            let payload: PutPayload = head.into_iter().collect();
            self.store.put(&path, payload).await?;
            return Ok(Written {
                size,
                sha256: hex::encode(hasher.finalize()),
            });
        }
        let upload = self.store.put_multipart(&path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        for chunk in head {
            w.write(&chunk);
        }
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
        ttl: Duration,
    ) -> Result<Option<url::Url>, BlobError> {
        self.presigned(http::Method::GET, key, ttl, &ResponseOverrides::default())
            .await
    }

    /// A presigned URL for `method` (GET or HEAD) valid for `ttl` that makes the store
    /// answer with the given response headers, when the store makes them (S3).
    pub async fn presigned(
        &self,
        method: http::Method,
        key: &str,
        ttl: Duration,
        overrides: &ResponseOverrides<'_>,
    ) -> Result<Option<url::Url>, BlobError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let query = [
            ("response-content-type", overrides.content_type),
            (
                "response-content-disposition",
                overrides.content_disposition,
            ),
        ];
        let opts = SignedUrlOptions::new()
            .with_query(query.into_iter().filter_map(|(k, v)| Some((k, v?))));
        Ok(Some(
            signer
                .signed_url_opts(method, &ObjPath::from(key), ttl, &opts)
                .await?,
        ))
    }

    /// The storage key (`{id[..2]}/{id}`) of the object a URL of this store names — a
    /// presigned link of ours, whatever its query — if it is one (S3 only).
    pub async fn key_of_store_url(&self, u: &url::Url) -> Option<String> {
        let signer = self.signer.as_ref()?;
        let mut segs = u.path_segments()?.rev();
        let (id, two) = (segs.next()?, segs.next()?);
        let ours = id.len() == 32
            && id.bytes().all(|b| b.is_ascii_alphanumeric())
            && two.len() == 2
            && id.starts_with(two);
        if !ours {
            return None;
        }
        let key = format!("{two}/{id}");
        let mut want = signer
            .signed_url(
                http::Method::GET,
                &ObjPath::from(key.as_str()),
                Duration::from_secs(60),
            )
            .await
            .ok()?;
        want.set_query(None);
        let mut got = u.clone();
        got.set_query(None);
        got.set_fragment(None);
        (want == got).then_some(key)
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

    /// Readiness: the store answers a listing. On S3 this lists a key range that
    /// holds nothing (one cheap request that fails if the bucket is missing,
    /// unreachable or not ours).
    pub async fn ping(&self) -> Result<(), BlobError> {
        match &self.kind {
            BlobKind::S3 { .. } => {
                let probe = ObjPath::from(".kie-ready");
                self.store.list_with_delimiter(Some(&probe)).await?;
                Ok(())
            }
            BlobKind::Local(dir) => match tokio::fs::metadata(dir).await {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(BlobError::Config(format!(
                    "{} is not a directory",
                    dir.display()
                ))),
                Err(e) => Err(BlobError::Config(format!("{}: {e}", dir.display()))),
            },
        }
    }
}

/// `https://host:port` → `https://bucket.host:port` (unchanged if the host already
/// starts with the bucket).
fn virtual_endpoint(endpoint: &str, bucket: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut u) => {
            let host = u.host_str().unwrap_or_default().to_string();
            if !host.starts_with(&format!("{bucket}."))
                && u.set_host(Some(&format!("{bucket}.{host}"))).is_err()
            {
                return endpoint.to_string();
            }
            u.as_str().trim_end_matches('/').to_string()
        }
        Err(_) => endpoint.to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// The crypto rustls uses for object_store's HTTPS client (reqwest 0.13 built without
/// a provider of its own): ring, as for every other TLS client of this process. Installed
/// once, before the first S3 store is built; a provider installed earlier stays.
fn tls_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosted_endpoints_carry_the_bucket() {
        assert_eq!(
            virtual_endpoint("https://s3.example.net", "b"),
            "https://b.s3.example.net"
        );
        assert_eq!(
            virtual_endpoint("http://localhost:9000/", "b"),
            "http://b.localhost:9000"
        );
        assert_eq!(
            virtual_endpoint("https://b.s3.example.net", "b"),
            "https://b.s3.example.net"
        );
    }

    #[test]
    fn s3_urls_are_checked() {
        for bad in ["s3://", "s3:///p", "s3://b/p?x=1"] {
            assert!(Blobs::open(bad).is_err(), "{bad}");
        }
        let opts = S3Options {
            endpoint: Some("ftp://127.0.0.1:9".into()),
            ..Default::default()
        };
        assert!(Blobs::open_with("s3://b/p", &opts).is_err());
    }
}
