//! Batch downloads that survive the usual trouble: expired links, cut connections,
//! a full disk, a second run over the same list.
//!
//! * Bytes go to `NAME.part`, which is renamed to `NAME` only once complete, so a final
//!   name never holds a partial file.
//! * The validator of the first answer (a strong `ETag`, else `Last-Modified`) is kept
//!   next to it in `NAME.part.meta`; a later attempt asks for the rest with `Range` +
//!   `If-Range`, and starts over when the server says the file changed (answers 200).
//!   A `.part` without its `.meta` cannot be proven to be the same file and is restarted.
//! * A link that answers 403 (temporary links expire) is replaced by a fresh one from
//!   `download-url` for the original URL, and the transfer continues.
//! * A file already present with the server's size is skipped (checked with `HEAD`).
//! * Chunks are written as they arrive: memory does not grow with the file size.
//! * Each file is flushed to stable storage (`fsync`) before its rename, so a final name
//!   holds the whole file even after a power loss; [`Downloader::fsync`]`(false)` skips
//!   that, as curl and aria2 do.
//! * File links get no API key: they may point at third-party storage.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::error::{redact_url, Error, Result};
use crate::Client;

/// One file to fetch: the URL as the user gave it and where it should end up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadItem {
    pub url: String,
    pub dest: PathBuf,
}

/// How a successful download went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadStatus {
    /// Fetched from the first byte.
    Downloaded,
    /// Continued from a `.part` left by an earlier attempt or run.
    Resumed,
    /// Already on disk with the server's size; nothing fetched.
    AlreadyComplete,
}

/// The outcome for one [`DownloadItem`].
#[derive(Debug)]
pub struct DownloadReport {
    pub url: String,
    pub path: PathBuf,
    /// Size of the complete file; after a failure, the bytes kept in `.part` for a resume.
    pub bytes: u64,
    pub result: Result<DownloadStatus>,
}

impl DownloadReport {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Progress of a batch, reported through [`Downloader::on_progress`].
#[derive(Debug, Clone)]
pub enum Progress {
    /// A transfer (re)starts at `offset` of `total` bytes (`None` when unknown). Sent
    /// again after a resume or restart, with the new offset.
    Started {
        index: usize,
        path: PathBuf,
        total: Option<u64>,
        offset: u64,
    },
    /// `bytes` more bytes were written.
    Advanced { index: usize, bytes: u64 },
    /// The file is done, well or not.
    Finished { index: usize, ok: bool },
}

type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Downloads batches of files with bounded concurrency.
///
/// ```
/// # use axum::{routing::get, Router};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let app = Router::new().route("/files/abc/hello.txt", get(|| async { "hello, world" }));
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let base = format!("http://{}", listener.local_addr()?);
/// # tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
/// # let dir = std::env::temp_dir().join(format!("kie-sdk-doc-{}", std::process::id()));
/// use kie_sdk::{download::plan_downloads, Client, Downloader};
///
/// let client = Client::builder().api_key("my-key").base_url(&base).build()?;
/// let urls = [format!("{base}/files/abc/hello.txt"), String::new(), format!("{base}/files/abc/hello.txt")];
/// // blank entries and duplicates are dropped; names come from the URLs
/// let items = plan_downloads(&urls, &dir);
/// assert_eq!(items.len(), 1);
///
/// let reports = Downloader::new(client).concurrency(4).download_all(&items).await;
/// assert!(reports.iter().all(|r| r.is_ok()));
/// assert_eq!(std::fs::read_to_string(dir.join("hello.txt"))?, "hello, world");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Downloader {
    client: Client,
    concurrency: usize,
    attempts: u32,
    max_link_refreshes: u32,
    fsync: bool,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("client", &self.client)
            .field("concurrency", &self.concurrency)
            .field("attempts", &self.attempts)
            .field("max_link_refreshes", &self.max_link_refreshes)
            .field("fsync", &self.fsync)
            .finish()
    }
}

impl Downloader {
    /// Four files at a time; per file as many attempts as the client's retry policy
    /// allows requests, and up to two fresh links.
    pub fn new(client: Client) -> Self {
        let attempts = client.retry_policy().max_retries + 1;
        Downloader {
            client,
            concurrency: 4,
            attempts,
            max_link_refreshes: 2,
            fsync: true,
            progress: None,
        }
    }

    /// How many files are transferred at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Attempts per file before giving up on a cut connection or a 5xx (at least 1).
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// How many times one file may ask for a fresh link after a 403.
    pub fn max_link_refreshes(mut self, n: u32) -> Self {
        self.max_link_refreshes = n;
        self
    }

    /// Whether every file is flushed to stable storage (`fsync`) before it is renamed
    /// into place, so that a final name holds the whole file even after a power loss.
    /// On by default; `false` leaves the flushing to the OS (as curl and aria2 do),
    /// which is faster when the disk is slower than the network.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Called from the downloading tasks on every [`Progress`] event; keep it quick.
    pub fn on_progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    fn emit(&self, p: Progress) {
        if let Some(f) = &self.progress {
            f(&p);
        }
    }

    /// Downloads every item, at most `concurrency` at a time. Reports come back in the
    /// order of `items`; one failure does not stop the others.
    pub async fn download_all(&self, items: &[DownloadItem]) -> Vec<DownloadReport> {
        // built into a Vec first: a lazily mapped stream of async blocks borrowing
        // `items` makes the whole future !Send (rust-lang/rust#102211)
        let jobs: Vec<_> = items
            .iter()
            .enumerate()
            .map(|(i, item)| async move { (i, self.download(i, item).await) })
            .collect();
        let mut reports: Vec<(usize, DownloadReport)> = futures::stream::iter(jobs)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        reports.sort_by_key(|(i, _)| *i);
        reports.into_iter().map(|(_, r)| r).collect()
    }

    /// Downloads one item; `index` only labels its [`Progress`] events.
    pub async fn download(&self, index: usize, item: &DownloadItem) -> DownloadReport {
        let mut job = Job {
            dl: self,
            index,
            item,
            link: item.url.clone(),
            refreshes: 0,
        };
        let result = job.run().await;
        let bytes = match &result {
            Ok((n, _)) => *n,
            Err(_) => tokio::fs::metadata(part_path(&item.dest))
                .await
                .map(|m| m.len())
                .unwrap_or(0),
        };
        self.emit(Progress::Finished {
            index,
            ok: result.is_ok(),
        });
        DownloadReport {
            url: item.url.clone(),
            path: item.dest.clone(),
            bytes,
            result: result.map(|(_, s)| s),
        }
    }
}

/// `NAME.part`: where bytes go until the file is complete.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// `NAME.part.meta`: the validator a resume must match.
pub fn meta_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part.meta");
    PathBuf::from(s)
}

#[derive(Serialize, Deserialize)]
struct PartMeta {
    /// Strong ETag or Last-Modified, sent back verbatim in `If-Range`.
    validator: String,
}

struct Job<'a> {
    dl: &'a Downloader,
    index: usize,
    item: &'a DownloadItem,
    /// What is fetched now: the URL given, then fresh links.
    link: String,
    refreshes: u32,
}

enum Answer {
    Retry,
    Done(u64, DownloadStatus),
}

impl Job<'_> {
    async fn run(&mut self) -> Result<(u64, DownloadStatus)> {
        let dest = &self.item.dest;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Error::io("cannot create directory", parent, e))?;
        }
        if let Ok(meta) = tokio::fs::metadata(dest).await {
            if meta.is_file() {
                // when the size cannot be learnt the file is fetched again and replaces
                // the old one atomically
                match self.remote_length().await {
                    Ok(Some(len)) if len == meta.len() => {
                        self.dl.emit(Progress::Started {
                            index: self.index,
                            path: dest.clone(),
                            total: Some(len),
                            offset: len,
                        });
                        return Ok((len, DownloadStatus::AlreadyComplete));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "size check failed; fetching again"),
                }
            }
        }
        let policy = self.dl.client.retry_policy().clone();
        let mut attempt = 0;
        loop {
            match self.transfer().await {
                Ok(done) => return Ok(done),
                Err(e) if attempt + 1 < self.dl.attempts && retryable(&e) => {
                    let delay = policy.backoff(attempt);
                    tracing::warn!(url = %redact_url(&self.item.url), error = %e, ?delay, "download interrupted; resuming");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Swaps the link for a fresh one after a 403.
    async fn refresh_link(&mut self) -> Result<()> {
        if self.refreshes >= self.dl.max_link_refreshes {
            return Err(Error::Http {
                status: 403,
                url: redact_url(&self.link),
            });
        }
        self.refreshes += 1;
        match self.dl.client.download_url(&self.item.url).await {
            Ok(link) => {
                tracing::info!(url = %redact_url(&self.item.url), "link refused; got a fresh one");
                self.link = link;
                Ok(())
            }
            Err(cause) => Err(Error::LinkExpired {
                cause: Box::new(cause),
            }),
        }
    }

    async fn remote_length(&mut self) -> Result<Option<u64>> {
        loop {
            let resp = self
                .dl
                .client
                .http()
                .head(&self.link)
                .send()
                .await
                .map_err(Error::transport)?;
            match resp.status() {
                s if s.is_success() => return Ok(header_u64(resp.headers(), &CONTENT_LENGTH)),
                StatusCode::FORBIDDEN => self.refresh_link().await?,
                _ => return Ok(None),
            }
        }
    }

    async fn resume_point(&self) -> Option<(u64, String)> {
        let part = part_path(&self.item.dest);
        let len = tokio::fs::metadata(&part)
            .await
            .ok()
            .filter(|m| m.is_file())?
            .len();
        if len == 0 {
            return None;
        }
        let meta = tokio::fs::read(meta_path(&self.item.dest)).await.ok()?;
        let meta: PartMeta = serde_json::from_slice(&meta).ok()?;
        Some((len, meta.validator))
    }

    async fn transfer(&mut self) -> Result<(u64, DownloadStatus)> {
        let mut resume = self.resume_point().await;
        loop {
            let mut rb = self.dl.client.http().get(&self.link);
            if let Some((offset, validator)) = &resume {
                rb = rb
                    .header(RANGE, format!("bytes={offset}-"))
                    .header(IF_RANGE, validator);
            }
            let resp = rb.send().await.map_err(Error::transport)?;
            let status = resp.status();
            let answer = match status {
                StatusCode::FORBIDDEN => {
                    self.refresh_link().await?;
                    Answer::Retry
                }
                StatusCode::RANGE_NOT_SATISFIABLE if resume.is_some() => {
                    // the .part is not a prefix of what is there now
                    resume = None;
                    Answer::Retry
                }
                StatusCode::PARTIAL_CONTENT => {
                    let offset = resume.as_ref().map_or(0, |(o, _)| *o);
                    match content_range(resp.headers()) {
                        Some((start, total)) if start == offset => {
                            let kind = if offset > 0 {
                                DownloadStatus::Resumed
                            } else {
                                DownloadStatus::Downloaded
                            };
                            self.write_body(resp, offset, Some(total), None, kind)
                                .await?
                        }
                        _ => {
                            if resume.is_none() {
                                return Err(Error::Http {
                                    status: 206,
                                    url: redact_url(&self.link),
                                });
                            }
                            resume = None;
                            Answer::Retry
                        }
                    }
                }
                StatusCode::OK => {
                    let total = header_u64(resp.headers(), &CONTENT_LENGTH);
                    let validator = validator_of(resp.headers());
                    self.write_body(resp, 0, total, Some(validator), DownloadStatus::Downloaded)
                        .await?
                }
                s => {
                    return Err(Error::Http {
                        status: s.as_u16(),
                        url: redact_url(&self.link),
                    })
                }
            };
            match answer {
                Answer::Done(n, kind) => return Ok((n, kind)),
                Answer::Retry => continue,
            }
        }
    }

    /// Streams the body into `.part` from `offset` on, then renames it into place.
    /// `validator` is `Some` for a fresh start (it replaces the `.meta`).
    async fn write_body(
        &self,
        mut resp: reqwest::Response,
        offset: u64,
        total: Option<u64>,
        validator: Option<Option<String>>,
        kind: DownloadStatus,
    ) -> Result<Answer> {
        let dest = &self.item.dest;
        let part = part_path(dest);
        let meta = meta_path(dest);
        let mut file = if offset == 0 {
            match validator.flatten() {
                Some(v) => {
                    let json =
                        serde_json::to_vec(&PartMeta { validator: v }).expect("plain struct");
                    tokio::fs::write(&meta, json)
                        .await
                        .map_err(|e| Error::io("cannot write", &meta, e))?;
                }
                // without a validator a later resume could splice two versions
                None => remove_if_exists(&meta).await?,
            }
            tokio::fs::File::create(&part)
                .await
                .map_err(|e| Error::io("cannot create", &part, e))?
        } else {
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&part)
                .await
                .map_err(|e| Error::io("cannot open", &part, e))?;
            // exactly the bytes the Range asked to continue from
            f.set_len(offset)
                .await
                .map_err(|e| Error::io("cannot resize", &part, e))?;
            let mut f = f;
            tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::End(0))
                .await
                .map_err(|e| Error::io("cannot seek", &part, e))?;
            f
        };
        self.dl.emit(Progress::Started {
            index: self.index,
            path: dest.clone(),
            total,
            offset,
        });

        let mut written = offset;
        let streamed: Result<()> = async {
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    // the connection closed before Content-Length bytes: say so plainly
                    Err(e) if total.is_some_and(|t| written < t) && !e.is_timeout() => {
                        tracing::debug!(error = %e, "body cut short");
                        return Err(Error::Incomplete {
                            received: written,
                            expected: total.unwrap_or_default(),
                        });
                    }
                    Err(e) => return Err(Error::transport(e)),
                };
                file.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io("cannot write", &part, e))?;
                written += chunk.len() as u64;
                self.dl.emit(Progress::Advanced {
                    index: self.index,
                    bytes: chunk.len() as u64,
                });
            }
            Ok(())
        }
        .await;
        // flush whatever arrived, also after an error: it is the resume point
        let flushed = file
            .flush()
            .await
            .map_err(|e| Error::io("cannot write", &part, e));
        streamed?;
        flushed?;
        if let Some(t) = total {
            if written != t {
                return Err(Error::Incomplete {
                    received: written,
                    expected: t,
                });
            }
        }
        if self.dl.fsync {
            file.sync_all()
                .await
                .map_err(|e| Error::io("cannot write", &part, e))?;
        }
        drop(file);
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| Error::io("cannot rename into", dest, e))?;
        remove_if_exists(&meta).await?;
        Ok(Answer::Done(written, kind))
    }
}

async fn remove_if_exists(p: &Path) -> Result<()> {
    match tokio::fs::remove_file(p).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("cannot remove", p, e)),
        _ => Ok(()),
    }
}

/// Worth another attempt: the connection broke, the body was cut, or the server had a
/// transient problem. Not: 404, a 403 that survived fresh links, local disk errors.
fn retryable(e: &Error) -> bool {
    match e {
        Error::Transport(_) | Error::Incomplete { .. } => true,
        Error::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
        _ => false,
    }
}

fn header_u64(h: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A validator usable in `If-Range`: a strong ETag (weak ones are not allowed there),
/// else `Last-Modified`.
fn validator_of(h: &HeaderMap) -> Option<String> {
    let etag = h.get(ETAG).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(e) = etag.filter(|e| e.starts_with('"')) {
        return Some(e.to_string());
    }
    h.get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL); `*` as total → END + 1.
fn content_range(h: &HeaderMap) -> Option<(u64, u64)> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => end + 1,
        t => t.parse().ok()?,
    };
    Some((start, total))
}

/// A safe local file name for a URL: its last path segment, percent-decoded once, with
/// separators, control characters and leading dots removed; `download` when nothing
/// usable is left.
pub fn file_name_from_url(url: &str) -> String {
    let seg = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.rfind(|s| !s.is_empty()).map(str::to_string))
        })
        .unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(&seg).decode_utf8_lossy();
    let mut name: String = decoded
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == ':' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    name = name.trim().trim_start_matches('.').to_string();
    // keep names within common file system limits (255 bytes), on a char boundary
    while name.len() > 200 {
        name.pop();
    }
    if name.is_empty() {
        "download".to_string()
    } else {
        name
    }
}

/// Turns a list of URLs into download items under `dir`: entries are trimmed, blank
/// ones dropped, duplicates kept once (first occurrence), and two URLs whose names
/// collide get `name-1.ext`, `name-2.ext`, … in list order.
pub fn plan_downloads<S: AsRef<str>>(urls: &[S], dir: &Path) -> Vec<DownloadItem> {
    let mut seen = HashSet::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut items = Vec::new();
    for u in urls {
        let u = u.as_ref().trim();
        if u.is_empty() || !seen.insert(u.to_string()) {
            continue;
        }
        let base = file_name_from_url(u);
        let mut name = base.clone();
        let mut n = 0;
        while taken.contains(&name) {
            n += 1;
            name = match base.rsplit_once('.') {
                Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
                _ => format!("{base}-{n}"),
            };
        }
        taken.insert(name.clone());
        items.push(DownloadItem {
            url: u.to_string(),
            dest: dir.join(name),
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls_are_safe() {
        assert_eq!(
            file_name_from_url("https://h/files/abc/x.png?sig=1"),
            "x.png"
        );
        assert_eq!(
            file_name_from_url("https://h/files/abc/caf%C3%A9%20au%20lait.png"),
            "café au lait.png"
        );
        assert_eq!(
            file_name_from_url("https://h/files/abc/..%2F..%2Fetc%2Fpasswd"),
            "_.._etc_passwd"
        );
        assert_eq!(file_name_from_url("https://h/files/abc/"), "abc");
        assert_eq!(file_name_from_url("https://h/"), "download");
        assert_eq!(file_name_from_url("https://h/.."), "download");
        assert_eq!(file_name_from_url("not a url"), "download");
    }

    #[test]
    fn plan_drops_blanks_and_duplicates_and_dedupes_names() {
        let urls = [
            "https://h/a/x.png",
            "",
            "  ",
            "https://h/b/x.png",
            "https://h/a/x.png ",
            "https://h/c/x.png",
            "https://h/d/README",
        ];
        let items = plan_downloads(&urls, Path::new("out"));
        let got: Vec<_> = items
            .iter()
            .map(|i| (i.url.as_str(), i.dest.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("https://h/a/x.png", "out/x.png"),
                ("https://h/b/x.png", "out/x-1.png"),
                ("https://h/c/x.png", "out/x-2.png"),
                ("https://h/d/README", "out/README"),
            ]
        );
    }

    #[test]
    fn content_range_parsing() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, "bytes 100-199/1000".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, 1000)));
        h.insert(CONTENT_RANGE, "bytes 100-199/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, 200)));
        h.insert(CONTENT_RANGE, "bytes */1000".parse().unwrap());
        assert_eq!(content_range(&h), None);
    }

    #[test]
    fn weak_etags_are_not_validators() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, "W/\"x\"".parse().unwrap());
        h.insert(
            LAST_MODIFIED,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            validator_of(&h).as_deref(),
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        );
        h.insert(ETAG, "\"abc\"".parse().unwrap());
        assert_eq!(validator_of(&h).as_deref(), Some("\"abc\""));
    }
}
