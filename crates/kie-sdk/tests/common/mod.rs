//! A local stand-in for the API and its file links, on `127.0.0.1:0`.
//!
//! * API routes answer scripted [`Reply`]s (the recorded KIE.AI shapes of
//!   `fixtures/kie-wire.json`); the last reply of a script repeats.
//! * `/files/NAME` and `/links/TOKEN/NAME` serve files with real `Range`, `ETag`,
//!   `Last-Modified` and `If-Range` semantics; `/links/expired/...` answers 403, and
//!   `download-url` hands out fresh valid links.
//! * A file can be set to cut its next transfers mid-body.
//! * Every request is recorded; file GETs can be held at a barrier to measure the
//!   client's concurrency.
//!
//! Shared by the CLI tests through `#[path]`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

pub fn fixtures() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/kie-wire.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    })
}

pub fn webhook_vectors() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/webhook-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            headers: vec![],
            content_type: "application/json".into(),
            body: v.to_string().into_bytes(),
        }
    }

    pub fn ok(data: Value) -> Reply {
        Reply::json(200, json!({"code": 200, "msg": "success", "data": data}))
    }

    /// A recorded shape from `fixtures/kie-wire.json`, with its HTTP status and headers.
    pub fn fixture(name: &str) -> Reply {
        let f = &fixtures()[name];
        assert!(f.is_object(), "no fixture {name}");
        let status = f["http"].as_u64().unwrap_or(200) as u16;
        let headers = f["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        match f.get("raw") {
            Some(raw) => Reply {
                status,
                headers,
                content_type: f["content_type"].as_str().unwrap_or("text/plain").into(),
                body: raw.as_str().unwrap().as_bytes().to_vec(),
            },
            None => Reply {
                headers,
                ..Reply::json(status, f["body"].clone())
            },
        }
    }

    /// The same answer as `kie serve --status-mode mirror` would send it.
    pub fn mirrored(mut self) -> Reply {
        if let Ok(v) = serde_json::from_slice::<Value>(&self.body) {
            self.status = match v["code"].as_u64().unwrap_or(200) {
                455 => 503,
                505 => 501,
                c => c as u16,
            };
        }
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn into_response(self) -> Response {
        let mut b = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, self.content_type);
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.body(Body::from(self.body)).unwrap()
    }
}

/// A request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    /// The body (for multipart uploads: the fields as a JSON object).
    pub body: Bytes,
    pub status: u16,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct MockFile {
    pub data: Vec<u8>,
    pub etag: String,
    pub last_modified: String,
    /// How many of the next GETs are cut after `cut_at` bytes of their body.
    pub cut_next: usize,
    pub cut_at: usize,
}

#[derive(Default)]
pub struct MockState {
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    seen: Mutex<Vec<Seen>>,
    files: Mutex<HashMap<String, MockFile>>,
    links: Mutex<HashSet<String>>,
    link_counter: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    barrier: Mutex<Option<Arc<tokio::sync::Barrier>>>,
    posted: Mutex<Vec<Value>>,
    base: OnceLock<String>,
}

pub struct Mock {
    pub base: String,
    pub state: Arc<MockState>,
}

impl Mock {
    pub async fn start() -> Mock {
        let state = Arc::new(MockState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        state.base.set(base.clone()).unwrap();
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Mock { base, state }
    }

    /// Answers for `METHOD PATH`, in order; the last one repeats.
    pub fn script(&self, method: &str, path: &str, replies: Vec<Reply>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(format!("{method} {path}"), replies.into());
    }

    /// Serves `data` at `/files/NAME` (and at links); returns the file URL.
    pub fn add_file(&self, name: &str, data: Vec<u8>) -> String {
        let etag = format!("\"etag-{}-{}\"", name, data.len());
        self.state.files.lock().unwrap().insert(
            name.to_string(),
            MockFile {
                data,
                etag,
                last_modified: "Wed, 21 Oct 2015 07:28:00 GMT".into(),
                cut_next: 0,
                cut_at: 0,
            },
        );
        format!("{}/files/{name}", self.base)
    }

    pub fn etag(&self, name: &str) -> String {
        self.state.files.lock().unwrap()[name].etag.clone()
    }

    /// Cuts the next `times` GETs of NAME after `at` body bytes.
    pub fn cut(&self, name: &str, times: usize, at: usize) {
        let mut files = self.state.files.lock().unwrap();
        let f = files.get_mut(name).unwrap();
        f.cut_next = times;
        f.cut_at = at;
    }

    /// A link to NAME that answers 403, as an expired temporary link does.
    pub fn expired_link(&self, name: &str) -> String {
        format!("{}/links/expired/{name}", self.base)
    }

    /// Holds every file GET until `n` of them are in flight together.
    pub fn hold_file_gets_in_groups_of(&self, n: usize) {
        *self.state.barrier.lock().unwrap() = Some(Arc::new(tokio::sync::Barrier::new(n)));
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests of METHOD to PATH.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests(method, path).len()
    }

    /// JSON bodies POSTed to `/alerts`.
    pub fn posted(&self) -> Vec<Value> {
        self.state.posted.lock().unwrap().clone()
    }
}

async fn handle(State(st): State<Arc<MockState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let headers = req.headers().clone();
    let body = if path == "/api/file-stream-upload" {
        multipart_fields(req).await
    } else {
        axum::body::to_bytes(req.into_body(), 64 << 20)
            .await
            .unwrap()
    };
    let resp = route(&st, &method, &path, &headers, &body).await;
    st.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path,
        query,
        headers,
        body,
        status: resp.status().as_u16(),
    });
    resp
}

async fn multipart_fields(req: Request) -> Bytes {
    let mut mp = Multipart::from_request(req, &()).await.unwrap();
    let mut fields = serde_json::Map::new();
    while let Some(f) = mp.next_field().await.unwrap() {
        let name = f.name().unwrap_or_default().to_string();
        let file_name = f.file_name().map(str::to_string);
        let text = String::from_utf8_lossy(&f.bytes().await.unwrap()).into_owned();
        fields.insert(name.clone(), json!(text));
        if let Some(fname) = file_name {
            fields.insert(format!("{name}.filename"), json!(fname));
        }
    }
    Bytes::from(Value::Object(fields).to_string())
}

async fn route(
    st: &MockState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let key = format!("{method} {path}");
    let scripted = {
        let mut scripts = st.scripts.lock().unwrap();
        scripts.get_mut(&key).map(|q| {
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q[0].clone()
            }
        })
    };
    if let Some(r) = scripted {
        return r.into_response();
    }
    if let Some(name) = path.strip_prefix("/files/") {
        return serve_file(st, method, headers, name).await;
    }
    if let Some(rest) = path.strip_prefix("/links/") {
        let (token, name) = rest.split_once('/').unwrap_or((rest, ""));
        if !st.links.lock().unwrap().contains(token) {
            return Response::builder()
                .status(403)
                .body(Body::from("link expired"))
                .unwrap();
        }
        return serve_file(st, method, headers, name).await;
    }
    match (method.as_str(), path) {
        ("POST", "/alerts") => {
            st.posted
                .lock()
                .unwrap()
                .push(serde_json::from_slice(body).unwrap());
            Response::new(Body::from("ok"))
        }
        ("POST", "/api/v1/common/download-url") => {
            let v: Value = serde_json::from_slice(body).unwrap();
            let url = v["url"].as_str().unwrap();
            let name = url.rsplit('/').next().unwrap();
            let token = format!("t{}", st.link_counter.fetch_add(1, Ordering::SeqCst) + 1);
            st.links.lock().unwrap().insert(token.clone());
            Reply::ok(json!(format!(
                "{}/links/{token}/{name}",
                st.base.get().unwrap()
            )))
            .into_response()
        }
        (
            "POST",
            "/api/file-stream-upload" | "/api/file-base64-upload" | "/api/file-url-upload",
        ) => Reply::fixture("upload_ok").into_response(),
        _ => {
            Reply::json(200, json!({"code": 404, "msg": "Not found", "data": null})).into_response()
        }
    }
}

async fn serve_file(st: &MockState, method: &Method, headers: &HeaderMap, name: &str) -> Response {
    let file = {
        let mut files = st.files.lock().unwrap();
        let Some(f) = files.get_mut(name) else {
            return Response::builder()
                .status(404)
                .body(Body::from("no such file"))
                .unwrap();
        };
        let cut = (*method == Method::GET && f.cut_next > 0).then(|| {
            f.cut_next -= 1;
            f.cut_at
        });
        (f.data.clone(), f.etag.clone(), f.last_modified.clone(), cut)
    };
    let (data, etag, last_modified, cut) = file;
    let total = data.len();

    let (mut start, mut end, mut partial) = (0, total, false);
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        let validator_ok = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(v) => v == etag || v == last_modified,
        };
        if validator_ok {
            let spec = range.strip_prefix("bytes=").unwrap();
            let (a, b) = spec.split_once('-').unwrap();
            (start, end) = match (a.parse::<usize>().ok(), b.parse::<usize>().ok()) {
                (Some(a), Some(b)) => (a, (b + 1).min(total)),
                (Some(a), None) => (a, total),
                (None, Some(suffix)) => (total.saturating_sub(suffix), total),
                (None, None) => panic!("bad range {range}"),
            };
            if start >= total {
                return Response::builder()
                    .status(416)
                    .header(header::CONTENT_RANGE, format!("bytes */{total}"))
                    .body(Body::empty())
                    .unwrap();
            }
            partial = true;
        }
    }

    if *method == Method::GET {
        let n = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let barrier = st.barrier.lock().unwrap().clone();
        if let Some(b) = barrier {
            b.wait().await;
        }
        st.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    let mut b = Response::builder()
        .status(if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::ACCEPT_RANGES, "bytes");
    if partial {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", end - 1),
        );
    }
    if *method == Method::HEAD {
        return b.body(Body::empty()).unwrap();
    }
    let slice = Bytes::copy_from_slice(&data[start..end]);
    match cut {
        None => b.body(Body::from(slice)).unwrap(),
        Some(at) => {
            // send `at` bytes, let hyper flush them (the yield), then fail the body:
            // the connection closes short of Content-Length
            let first = slice.slice(..at.min(slice.len()));
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures::stream::once(async {
                    tokio::task::yield_now().await;
                    Err(std::io::Error::other("cut by the test"))
                }));
            b.body(Body::from_stream(stream)).unwrap()
        }
    }
}

use futures::StreamExt as _;

/// A fresh empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "kie-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic test content of `len` bytes.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
