//! The real router (`kie_server::app::router`) driven in-process with
//! `tower::ServiceExt::oneshot`: no `kie serve` process, no socket. The state is the
//! one `kie serve` builds ([`AppState::open`]) on a real SQLite database and local
//! store in a temporary directory; set-up goes through the same library calls
//! `kie admin` makes (accounts, keys, files, settings).
//!
//! Requests reach the router directly: the one path every request of `kie serve` takes
//! too (`http::pipeline`, the layer around the router). The per-IP limiter and key
//! allowlists read the client's address that `kie serve` gives each connection's
//! service (`PipelineService::for_peer`): every request here comes from 127.0.0.1.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tower::ServiceExt;

use kie_server::app::router;
use kie_server::config::{StatusMode, StoreArgs};
use kie_server::files::{self, FileKind, NewFile};
use kie_server::AppState;
use kie_server::{accounts, settings, Config, ServeArgs};

const PUBLIC_URL: &str = "http://kie.test";

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use rand::Rng;
        let suffix: String = (0..12)
            .map(|_| (b'a' + rand::thread_rng().gen_range(0..26)) as char)
            .collect();
        let p = std::env::temp_dir().join(format!("kie-inprocess-{suffix}"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A router on its own SQLite database and local store.
struct App {
    state: AppState,
    router: kie_server::app::App,
    _shutdown: tokio::sync::watch::Sender<bool>,
    _dir: TempDir,
}

impl App {
    async fn new(status_mode: Option<StatusMode>) -> App {
        let dir = TempDir::new();
        let args = ServeArgs {
            store: StoreArgs {
                data_dir: Some(dir.0.join("data")),
                ..Default::default()
            },
            public_url: Some(PUBLIC_URL.into()),
            status_mode,
            ..Default::default()
        };
        let config = Config::from_args(&args).expect("config");
        let (state, shutdown) = AppState::open(config).await.expect("state");
        App {
            router: router(state.clone()),
            state,
            _shutdown: shutdown,
            _dir: dir,
        }
    }

    /// Starts the settings refresh `kie serve` runs in the background (every 500 ms).
    fn refresh_settings(&self) {
        tokio::spawn(
            self.state
                .settings
                .clone()
                .refresh_loop(self.state.db.clone(), self.state.shutdown.clone()),
        );
    }

    /// An account with `credits` and an API key for it: (account id, key).
    async fn account_with_key(&self, name: &str, credits: &str) -> (String, String) {
        let acc = accounts::create(&self.state.db, name, Some(credits.parse().unwrap()))
            .await
            .unwrap();
        let key = accounts::create_key(&self.state.db, &acc.id, None, None)
            .await
            .unwrap();
        (acc.id, key.key)
    }

    /// Sends one request through the router, as from 127.0.0.1.
    async fn send(&self, req: Request<Body>) -> Response {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        self.router
            .clone()
            .for_peer(peer.ip())
            .oneshot(req)
            .await
            .unwrap()
    }

    /// GET `path` with an optional bearer key.
    async fn get(&self, path: &str, key: Option<&str>) -> Response {
        let mut b = Request::builder().method(Method::GET).uri(path);
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    /// POST a JSON body with an optional bearer key.
    async fn post_json(&self, path: &str, key: Option<&str>, body: &Value) -> Response {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        self.send(b.body(Body::from(body.to_string())).unwrap())
            .await
    }
}

async fn body_bytes(r: Response) -> Vec<u8> {
    r.into_body().collect().await.unwrap().to_bytes().to_vec()
}

/// The body as JSON (asserting the JSON content type).
async fn body_json(r: Response) -> Value {
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    let bytes = body_bytes(r).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

fn request_id(r: &Response) -> String {
    r.headers()["x-request-id"].to_str().unwrap().to_string()
}

/// A generated request id: `req_` and 16 base62 characters.
fn assert_generated_id(id: &str) {
    assert_eq!(id.len(), 20, "{id}");
    assert!(id.starts_with("req_"), "{id}");
    assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
}

#[tokio::test]
async fn credit_with_a_valid_key_is_the_exact_envelope() {
    let app = App::new(None).await;
    let (_, key) = app.account_with_key("alice", "12.5").await;
    let r = app.get("/api/v1/chat/credit", Some(&key)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_generated_id(&request_id(&r));
    assert_eq!(
        body_bytes(r).await,
        br#"{"code":200,"msg":"success","data":12.5}"#
    );
    let (_, whole) = app.account_with_key("bob", "100").await;
    let r = app.get("/api/v1/chat/credit", Some(&whole)).await;
    assert_eq!(
        body_bytes(r).await,
        br#"{"code":200,"msg":"success","data":100}"#
    );
}

#[tokio::test]
async fn missing_or_unknown_key_is_the_401_envelope() {
    let app = App::new(None).await;
    let refused = json!({"code": 401, "msg": "You do not have access permissions", "data": null});
    let r = app.get("/api/v1/chat/credit", None).await;
    assert_eq!(r.status(), StatusCode::OK, "compat mode: HTTP 200");
    assert_eq!(body_json(r).await, refused);
    let r = app
        .get("/api/v1/chat/credit", Some("kie_notarealkeyatall"))
        .await;
    assert_eq!(body_json(r).await, refused);

    // mirror mode: the HTTP status follows the body code
    let mirror = App::new(Some(StatusMode::Mirror)).await;
    let r = mirror.get("/api/v1/chat/credit", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(r).await, refused);
}

#[tokio::test]
async fn unknown_api_route_is_the_404_envelope() {
    let app = App::new(None).await;
    let r = app.get("/api/v1/no/such/endpoint", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_generated_id(&request_id(&r));
    assert_eq!(
        body_json(r).await,
        json!({"code": 404, "msg": "Unknown endpoint", "data": null})
    );
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = App::new(None).await;
    let r = app
        .send(
            Request::builder()
                .method(Method::DELETE)
                .uri("/api/v1/chat/credit")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::ALLOW], "GET,HEAD");
    assert_eq!(
        body_json(r).await,
        json!({"code": 405, "msg": "Method not allowed", "data": null})
    );
    let r = app
        .get("/api/v1/common/download-url", Some("kie_whatever"))
        .await;
    assert_eq!(r.headers()[header::ALLOW], "POST");
    assert_eq!(body_json(r).await["code"], 405);
}

#[tokio::test]
async fn maintenance_switched_in_the_database_answers_455() {
    let app = App::new(None).await;
    let (_, key) = app.account_with_key("alice", "3").await;
    app.refresh_settings();
    let code = |app: &App, key: String| {
        let app_router = app.router.clone();
        async move {
            let req = Request::get("/api/v1/chat/credit")
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap();
            let peer = "127.0.0.1:40000".parse::<SocketAddr>().unwrap();
            let r = app_router.for_peer(peer.ip()).oneshot(req).await.unwrap();
            body_json(r).await
        }
    };
    assert_eq!(code(&app, key.clone()).await["code"], 200);

    // what `kie admin maintenance on` does
    settings::set_maintenance(&app.state.db, true)
        .await
        .unwrap();
    let took = poll(|| code(&app, key.clone()), |v| v["code"] == 455).await;
    assert!(took.is_some(), "maintenance never seen");
    assert_eq!(
        code(&app, key.clone()).await,
        json!({"code": 455, "msg": "Service unavailable: system maintenance", "data": null})
    );
    // every /api route, before auth; non-API routes are not affected
    let r = app.get("/api/v1/no/such/endpoint", None).await;
    assert_eq!(body_json(r).await["code"], 455);
    let r = app.get("/healthz", None).await;
    assert_eq!(r.status(), StatusCode::OK);

    settings::set_maintenance(&app.state.db, false)
        .await
        .unwrap();
    let took = poll(|| code(&app, key.clone()), |v| v["code"] == 200).await;
    assert!(took.is_some(), "maintenance never ended");
    assert_eq!(
        code(&app, key.clone()).await,
        json!({"code": 200, "msg": "success", "data": 3})
    );
}

/// Each route's feature switch, declared in the route table: while a feature is off
/// its routes answer 505 before auth (no key needed to learn it), uploads in their own
/// envelope; other routes are untouched; switched on again, the route answers as
/// before.
#[tokio::test]
async fn disabled_features_answer_505_on_their_routes_only() {
    let app = App::new(None).await;
    let (_, key) = app.account_with_key("alice", "3").await;
    app.refresh_settings();
    for f in ["credits", "download-url", "jobs", "file-upload"] {
        settings::set_feature(&app.state.db, f, false)
            .await
            .unwrap();
    }
    // written one after another: once the last is seen, all are
    let upload = || async {
        let body = json!({"base64Data": "eA=="});
        body_json(app.post_json("/api/file-base64-upload", None, &body).await).await
    };
    assert!(
        poll(upload, |v| v["code"] == 505).await.is_some(),
        "the switch never took effect"
    );
    let credit = || async { body_json(app.get("/api/v1/chat/credit", None).await).await };
    let off = |f: &str| json!({"code": 505, "msg": format!("Feature disabled: {f}"), "data": null});
    assert_eq!(credit().await, off("credits"));
    let r = app
        .post_json("/api/v1/common/download-url", None, &json!({"url": "x"}))
        .await;
    assert_eq!(body_json(r).await, off("download-url"));
    let r = app
        .post_json(
            "/api/v1/jobs/createTask",
            None,
            &json!({"model": "demo/text"}),
        )
        .await;
    assert_eq!(body_json(r).await, off("jobs"));
    let r = app.get("/api/v1/jobs/recordInfo?taskId=t", None).await;
    assert_eq!(body_json(r).await, off("jobs"));
    assert_eq!(
        upload().await,
        json!({"success": false, "code": 505, "msg": "Feature disabled: file-upload", "data": null})
    );
    // a route without a switch answers as ever (here: auth first)
    let r = app.get("/api/v1/account/usage", None).await;
    assert_eq!(body_json(r).await["code"], 401);

    settings::set_feature(&app.state.db, "credits", true)
        .await
        .unwrap();
    let with_key = || async { body_json(app.get("/api/v1/chat/credit", Some(&key)).await).await };
    assert!(poll(with_key, |v| v["code"] == 200).await.is_some());
    assert_eq!(
        with_key().await,
        json!({"code": 200, "msg": "success", "data": 3})
    );
}

/// Calls `f` every 20 ms until `done` holds for its answer (at most 10 s).
async fn poll<F, Fut>(mut f: F, done: impl Fn(&Value) -> bool) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if done(&f().await) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn download_url_for_a_file_and_its_link() {
    let app = App::new(None).await;
    let (acc, key) = app.account_with_key("alice", "1").await;
    let (_, other) = app.account_with_key("mallory", "1").await;
    let bytes: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    // what `kie admin file add` does
    let rec = files::create(
        &app.state.db,
        &app.state.blobs,
        NewFile {
            account_id: &acc,
            name: "report 1.bin",
            content_type: "application/octet-stream",
            kind: FileKind::Admin,
            upload_path: None,
            task_id: None,
            retention: Duration::from_secs(3600),
            max_size: u64::MAX,
        },
        futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes.clone()))]),
    )
    .await
    .unwrap();
    let file_url = rec.url(&PUBLIC_URL.parse().unwrap());
    assert_eq!(
        file_url,
        format!("{PUBLIC_URL}/files/{}/report%201.bin", rec.id)
    );

    let r = app
        .post_json(
            "/api/v1/common/download-url",
            Some(&key),
            &json!({"url": file_url}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["msg"], "success");
    let link = v["data"].as_str().unwrap();
    let prefix = format!("{PUBLIC_URL}/links/{}/report%201.bin?e=", rec.id);
    assert!(link.starts_with(&prefix), "{link}");

    // the link, through the same router, needs no key
    let path = link.strip_prefix(PUBLIC_URL).unwrap();
    let r = app.get(path, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"report 1.bin\"; filename*=UTF-8''report%201.bin"
    );
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "3000");
    assert_eq!(body_bytes(r).await, bytes);

    // another account's key: not found (not "forbidden")
    let r = app
        .post_json(
            "/api/v1/common/download-url",
            Some(&other),
            &json!({"url": file_url}),
        )
        .await;
    assert_eq!(
        body_json(r).await,
        json!({"code": 404, "msg": "File not found", "data": null})
    );
    // a tampered link: HTTP 403 whatever the status mode
    let r = app.get(&format!("{path}x"), None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_json(r).await["code"], 403);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = App::new(None).await;
    // a sane incoming id is echoed, on API and non-API routes alike
    for path in ["/api/v1/chat/credit", "/healthz", "/api/nope"] {
        let r = app
            .send(
                Request::get(path)
                    .header("x-request-id", "trace-42.a_b:c")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.headers()["x-request-id"], "trace-42.a_b:c", "{path}");
    }
    // an unusable one is replaced by a fresh id
    for bad in ["has space", "<script>", &"x".repeat(65)] {
        let r = app
            .send(
                Request::get("/api/v1/chat/credit")
                    .header("x-request-id", bad)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_generated_id(&request_id(&r));
    }
    // fresh ids are distinct
    let a = request_id(&app.get("/healthz", None).await);
    let b = request_id(&app.get("/healthz", None).await);
    assert_generated_id(&a);
    assert_generated_id(&b);
    assert_ne!(a, b);
}
