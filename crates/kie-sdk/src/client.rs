//! The API client: one pooled HTTP client, configuration, retries and the typed calls.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use kie_wire::task::{CreateTaskData, CreateTaskRequest, RecordInfo};
use kie_wire::Credits;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{decode_envelope, Error, Result};
use crate::RetryPolicy;

/// Base URL used when neither the builder nor `KIE_BASE_URL` sets one.
pub const DEFAULT_BASE_URL: &str = "https://api.kie.ai";
/// Environment variable holding the API key.
pub const ENV_API_KEY: &str = "KIE_API_KEY";
/// Environment variable holding the base URL.
pub const ENV_BASE_URL: &str = "KIE_BASE_URL";

/// API answers are small JSON documents; anything bigger is not one of ours.
const MAX_API_BODY: usize = 8 * 1024 * 1024;

/// A KIE.AI (or `kie serve`) API client. Cheap to clone: clones share one connection pool.
///
/// ```
/// # use axum::{routing::get, Json, Router};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), kie_sdk::Error> {
/// # // A stand-in for https://api.kie.ai answering like the real one.
/// # let app = Router::new().route("/api/v1/chat/credit",
/// #     get(|| async { Json(serde_json::json!({"code": 200, "msg": "success", "data": 87.42})) }));
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// # let base_url = format!("http://{}", listener.local_addr().unwrap());
/// # tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
/// use kie_sdk::{Client, Credits};
///
/// let client = Client::builder().api_key("my-key").base_url(&base_url).build()?;
/// assert_eq!(client.credits().await?, Credits::from_hundredths(8742));
/// // the key never shows in Debug output
/// assert!(!format!("{client:?}").contains("my-key"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    upload_base_url: Url,
    api_key: Option<String>,
    retry: RetryPolicy,
    request_timeout: Option<Duration>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url.as_str())
            .field("upload_base_url", &self.inner.upload_base_url.as_str())
            .field(
                "api_key",
                &self.inner.api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("retry", &self.inner.retry)
            .finish()
    }
}

/// Configures a [`Client`]. Values set here win over the environment.
#[derive(Clone)]
pub struct ClientBuilder {
    api_key: Option<String>,
    base_url: Option<String>,
    upload_base_url: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    request_timeout: Option<Duration>,
    retry: RetryPolicy,
    user_agent: String,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("upload_base_url", &self.upload_base_url)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            api_key: None,
            base_url: None,
            upload_base_url: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            request_timeout: Some(Duration::from_secs(120)),
            retry: RetryPolicy::default(),
            user_agent: concat!("kie-sdk/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl ClientBuilder {
    /// Takes `KIE_API_KEY` and `KIE_BASE_URL` from the environment when set (and not
    /// empty); values set on the builder before or after still win.
    pub fn from_env(mut self) -> Self {
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        if self.api_key.is_none() {
            self.api_key = var(ENV_API_KEY);
        }
        if self.base_url.is_none() {
            self.base_url = var(ENV_BASE_URL);
        }
        self
    }

    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// `https://api.kie.ai` by default; may carry a path prefix (`http://host/kie`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Where the File Upload API lives, when not at the base URL (KIE.AI serves uploads
    /// from a separate host).
    pub fn upload_base_url(mut self, url: impl Into<String>) -> Self {
        self.upload_base_url = Some(url.into());
        self
    }

    /// Time allowed to establish a connection (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Longest silence allowed while reading an answer (default 60 s). Applies to
    /// downloads too, which have no overall limit.
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }

    /// Overall limit of one API request (not of downloads or uploads; default 120 s).
    pub fn request_timeout(mut self, d: Option<Duration>) -> Self {
        self.request_timeout = d;
        self
    }

    pub fn retry_policy(mut self, p: RetryPolicy) -> Self {
        self.retry = p;
        self
    }

    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    pub fn build(self) -> Result<Client> {
        let base_url = parse_base(self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL))?;
        let upload_base_url = match &self.upload_base_url {
            Some(u) => parse_base(u)?,
            None => base_url.clone(),
        };
        if let Some(k) = &self.api_key {
            // a key with a newline would be rejected by the HTTP layer with a message
            // that could echo it; refuse it here without showing it
            if k.trim().is_empty() || k.chars().any(|c| c.is_control()) {
                return Err(Error::Config(
                    "the API key is empty or contains control characters".into(),
                ));
            }
        }
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(self.user_agent)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base_url,
                upload_base_url,
                api_key: self.api_key.map(|k| k.trim().to_string()),
                retry: self.retry,
                request_timeout: self.request_timeout,
            }),
        })
    }
}

fn parse_base(s: &str) -> Result<Url> {
    let u = Url::parse(s.trim())
        .map_err(|e| Error::Config(format!("base URL {s:?} is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(Error::Config(format!(
            "base URL {s:?} must be an http(s) URL with a host"
        )));
    }
    Ok(u)
}

/// `data` of a File Upload API answer (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadedFile {
    pub file_name: String,
    pub file_path: String,
    pub download_url: String,
    pub file_url: String,
    pub file_size: u64,
    pub mime_type: String,
    pub uploaded_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// How [`Client::wait_task`] polls.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// Give up after this long (default 10 minutes).
    pub timeout: Duration,
    /// First pause between polls (default 1 s), growing by half each time…
    pub initial_interval: Duration,
    /// …up to this (default 15 s).
    pub max_interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            timeout: Duration::from_secs(600),
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(15),
        }
    }
}

/// `recordInfo` as found in the wild: KIE.AI leaves out `creditsConsumed` and
/// `remainedCredits` (see `fixtures/kie-wire.json`), which `kie_wire::task::RecordInfo`
/// requires. Types stay strict — a wrong type is an error, not a silent default, so a
/// caller never polls forever on a record it cannot read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRecordInfo {
    task_id: String,
    #[serde(default)]
    model: String,
    state: String,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    result_json: Option<String>,
    #[serde(default)]
    fail_code: Option<String>,
    #[serde(default)]
    fail_msg: Option<String>,
    #[serde(default)]
    cost_time: Option<i64>,
    #[serde(default)]
    create_time: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    #[serde(default)]
    complete_time: Option<i64>,
    #[serde(default)]
    consume_credits: Option<Credits>,
    #[serde(default)]
    credits_consumed: Option<Credits>,
    #[serde(default)]
    remained_credits: Option<Credits>,
}

impl From<WireRecordInfo> for RecordInfo {
    fn from(w: WireRecordInfo) -> Self {
        let consumed = w.consume_credits.or(w.credits_consumed).unwrap_or_default();
        RecordInfo {
            task_id: w.task_id,
            model: w.model,
            state: w.state,
            param: w.param.unwrap_or_default(),
            result_json: w.result_json.unwrap_or_default(),
            fail_code: w.fail_code.unwrap_or_default(),
            fail_msg: w.fail_msg.unwrap_or_default(),
            cost_time: w.cost_time,
            create_time: w.create_time,
            update_time: w.update_time,
            complete_time: w.complete_time,
            consume_credits: consumed,
            credits_consumed: w.credits_consumed.unwrap_or(consumed),
            remained_credits: w.remained_credits.unwrap_or_default(),
        }
    }
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client configured from `KIE_API_KEY` and `KIE_BASE_URL`.
    pub fn from_env() -> Result<Client> {
        ClientBuilder::default().from_env().build()
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The shared pooled HTTP client (used by the downloader for file links, which
    /// get no API key).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    fn endpoint(base: &Url, path: &str) -> String {
        format!("{}{}", base.as_str().trim_end_matches('/'), path)
    }

    fn key(&self) -> Result<&str> {
        self.inner.api_key.as_deref().ok_or_else(|| {
            Error::Config(format!(
                "no API key: set {ENV_API_KEY} or pass one (--api-key)"
            ))
        })
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder> {
        let rb = rb.bearer_auth(self.key()?);
        Ok(match self.inner.request_timeout {
            Some(t) => rb.timeout(t),
            None => rb,
        })
    }

    /// Sends the request `make` builds (once per attempt), retrying per the policy.
    async fn execute<T, F, Fut>(&self, what: &str, idempotent: bool, mut make: F) -> Result<T>
    where
        T: DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<reqwest::RequestBuilder>>,
    {
        let mut attempt = 0;
        loop {
            let result = async {
                let resp = make().await?.send().await.map_err(Error::transport)?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = read_limited(resp, MAX_API_BODY).await?;
                decode_envelope::<T>(status, &headers, &body)
            }
            .await;
            match result {
                Ok(v) => return Ok(v),
                Err(err) => match self.inner.retry.delay_for(&err, attempt, idempotent) {
                    Some(delay) => {
                        tracing::warn!(%what, attempt = attempt + 1, ?delay, error = %err, "retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(err),
                },
            }
        }
    }

    /// A GET of an enveloped answer, retried per the policy.
    pub(crate) async fn get_enveloped<T: DeserializeOwned>(
        &self,
        what: &str,
        url: Url,
    ) -> Result<T> {
        self.execute(what, true, || async {
            self.authed(self.inner.http.get(url.clone()))
        })
        .await
    }

    /// A POST of a JSON body with an enveloped answer; retried per the policy only when
    /// `idempotent`.
    pub(crate) async fn post_enveloped<T: DeserializeOwned>(
        &self,
        what: &str,
        url: Url,
        idempotent: bool,
        body: &serde_json::Value,
    ) -> Result<T> {
        self.execute(what, idempotent, || async {
            self.authed(self.inner.http.post(url.clone()).json(body))
        })
        .await
    }

    /// The account's available balance (`GET /api/v1/chat/credit`).
    pub async fn credits(&self) -> Result<Credits> {
        let url = Self::endpoint(&self.inner.base_url, "/api/v1/chat/credit");
        self.execute("credits", true, || async {
            self.authed(self.inner.http.get(&url))
        })
        .await
    }

    /// A temporary download link for a generated file URL
    /// (`POST /api/v1/common/download-url`). A link of the same deployment gives a fresh one.
    pub async fn download_url(&self, file_url: &str) -> Result<String> {
        let url = Self::endpoint(&self.inner.base_url, "/api/v1/common/download-url");
        let body = serde_json::json!({ "url": file_url });
        // repeating it is harmless (a second link), so it is retried like a GET
        let link: String = self
            .execute("download-url", true, || async {
                self.authed(self.inner.http.post(&url).json(&body))
            })
            .await?;
        // a proxy or a misbehaving server can put anything in `data`; only a URL is a link
        match Url::parse(link.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                Ok(link.trim().to_string())
            }
            _ => {
                let shown: String = link.chars().take(80).collect();
                Err(Error::Decode(format!(
                    "unexpected `data`: the link {shown:?} is not an http(s) URL"
                )))
            }
        }
    }

    /// Starts a task (`POST /api/v1/jobs/createTask`) and returns its id. Not retried
    /// once the request may have reached the server (see [`RetryPolicy`]).
    pub async fn create_task(&self, req: &CreateTaskRequest) -> Result<String> {
        let url = Self::endpoint(&self.inner.base_url, "/api/v1/jobs/createTask");
        let data: CreateTaskData = self
            .execute("createTask", false, || async {
                self.authed(self.inner.http.post(&url).json(req))
            })
            .await?;
        Ok(data.task_id)
    }

    /// A task's record (`GET /api/v1/jobs/recordInfo?taskId=`).
    pub async fn record_info(&self, task_id: &str) -> Result<RecordInfo> {
        let mut url = Url::parse(&Self::endpoint(
            &self.inner.base_url,
            "/api/v1/jobs/recordInfo",
        ))
        .map_err(|e| Error::Config(e.to_string()))?;
        url.query_pairs_mut().append_pair("taskId", task_id);
        let w: WireRecordInfo = self
            .execute("recordInfo", true, || async {
                self.authed(self.inner.http.get(url.clone()))
            })
            .await?;
        Ok(w.into())
    }

    /// Polls a task until it succeeds or fails, pausing longer between polls as it
    /// goes. Returns the final record whatever the outcome (check `state`); errors only
    /// when the record cannot be read or on timeout. Transient errors that outlast the
    /// retry policy do not end the wait: polling goes on until the timeout.
    pub async fn wait_task(&self, task_id: &str, opts: &WaitOptions) -> Result<RecordInfo> {
        let start = Instant::now();
        let mut interval = opts.initial_interval;
        let mut last_state = String::from("unknown");
        loop {
            match self.record_info(task_id).await {
                Ok(rec) if rec.is_finished() => return Ok(rec),
                Ok(rec) => last_state = rec.state,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(%task_id, error = %e, "polling the task failed; will poll again")
                }
                Err(e) => return Err(e),
            }
            let elapsed = start.elapsed();
            if elapsed >= opts.timeout {
                return Err(Error::TaskTimeout {
                    task_id: task_id.to_string(),
                    timeout: opts.timeout,
                    state: last_state,
                });
            }
            // the last poll lands on the deadline rather than past it
            tokio::time::sleep(interval.min(opts.timeout - elapsed)).await;
            interval = (interval + interval / 2).min(opts.max_interval);
        }
    }

    /// Uploads a local file with `POST /api/file-stream-upload`, streaming it from disk
    /// (memory stays flat whatever its size). `file_name` defaults to the file's name.
    /// Retried like a GET: the same name in the same path replaces the earlier upload.
    pub async fn upload_file(
        &self,
        path: &Path,
        upload_path: &str,
        file_name: Option<&str>,
    ) -> Result<UploadedFile> {
        let name = match file_name {
            Some(n) => n.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| Error::Config(format!("{} has no file name", path.display())))?,
        };
        let mime = mime_guess::from_path(&name)
            .first_or_octet_stream()
            .to_string();
        let url = Self::endpoint(&self.inner.upload_base_url, "/api/file-stream-upload");
        self.execute("file-stream-upload", true, || async {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::io("cannot open", path, e))?;
            let len = file
                .metadata()
                .await
                .map_err(|e| Error::io("cannot read", path, e))?
                .len();
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let part = reqwest::multipart::Part::stream_with_length(body, len)
                .file_name(name.clone())
                .mime_str(&mime)
                .map_err(|e| Error::Config(e.to_string()))?;
            let form = reqwest::multipart::Form::new()
                .part("file", part)
                .text("uploadPath", upload_path.to_string())
                .text("fileName", name.clone());
            let rb = self
                .inner
                .http
                .post(&url)
                .bearer_auth(self.key()?)
                .multipart(form);
            Ok(rb)
        })
        .await
    }

    /// Uploads bytes with `POST /api/file-base64-upload` (for small files: the body is
    /// a third larger than the file and held in memory).
    pub async fn upload_base64(
        &self,
        bytes: &[u8],
        upload_path: &str,
        file_name: Option<&str>,
    ) -> Result<UploadedFile> {
        let url = Self::endpoint(&self.inner.upload_base_url, "/api/file-base64-upload");
        let mut body = serde_json::json!({
            "base64Data": base64::engine::general_purpose::STANDARD.encode(bytes),
            "uploadPath": upload_path,
        });
        if let Some(n) = file_name {
            body["fileName"] = n.into();
        }
        self.execute("file-base64-upload", true, || async {
            self.authed(self.inner.http.post(&url).json(&body))
        })
        .await
    }

    /// Has the server fetch a file from a URL (`POST /api/file-url-upload`).
    pub async fn upload_url(
        &self,
        file_url: &str,
        upload_path: &str,
        file_name: Option<&str>,
    ) -> Result<UploadedFile> {
        let url = Self::endpoint(&self.inner.upload_base_url, "/api/file-url-upload");
        let mut body = serde_json::json!({ "fileUrl": file_url, "uploadPath": upload_path });
        if let Some(n) = file_name {
            body["fileName"] = n.into();
        }
        self.execute("file-url-upload", true, || async {
            self.authed(self.inner.http.post(&url).json(&body))
        })
        .await
    }
}

/// Errors worth polling through: the next poll may well work.
fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Transport(_)
            | Error::Server { .. }
            | Error::RateLimited { .. }
            | Error::Maintenance { .. }
    ) || matches!(e, Error::UnexpectedResponse { status, .. } if *status >= 500)
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Error::transport)? {
        if body.len() + chunk.len() > limit {
            return Err(Error::Decode(format!("answer larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
