//! The API client against a local mock replaying the recorded KIE.AI shapes.

mod common;

use std::time::Duration;

use common::{Mock, Reply};
use kie_sdk::{Client, CreateTaskRequest, Credits, Error, RetryPolicy, WaitOptions};
use serde_json::json;

const KEY: &str = "kie_test_key_0123456789";
const CREDIT: &str = "/api/v1/chat/credit";

/// Fast retries so the tests take milliseconds; `Retry-After` capped the same way.
fn fast_retries(n: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries: n,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retry_after: Duration::from_millis(5),
        maintenance_retries: 2,
    }
}

fn client(base: &str, retries: u32) -> Client {
    Client::builder()
        .api_key(KEY)
        .base_url(base)
        .retry_policy(fast_retries(retries))
        .build()
        .unwrap()
}

#[tokio::test]
async fn credits_parse_exactly() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 0);
    mock.script("GET", CREDIT, vec![Reply::fixture("credit_ok")]);
    assert_eq!(c.credits().await.unwrap(), Credits::from_hundredths(10000));
    mock.script("GET", CREDIT, vec![Reply::fixture("credit_fractional")]);
    assert_eq!(c.credits().await.unwrap(), Credits::from_hundredths(8742));
    // the key goes out as a Bearer token, and a GET carries no body
    let seen = mock.requests("GET", CREDIT);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(seen[0].body.is_empty());
}

/// Every recorded error shape, in KIE.AI's HTTP-200 style and in mirror mode: the
/// typed error comes from the body code either way, after exactly one request.
#[tokio::test]
async fn typed_errors_whatever_the_http_status() {
    let mock = Mock::start().await;
    for mirror in [false, true] {
        for (fixture, check) in [
            (
                "unauthorized",
                (|e| matches!(e, Error::Unauthorized { msg } if msg == "You do not have access permissions"))
                    as fn(&Error) -> bool,
            ),
            (
                "insufficient_credits",
                |e| matches!(e, Error::InsufficientCredits { msg } if msg == "Credits insufficient"),
            ),
            (
                "download_url_external",
                |e| matches!(e, Error::Validation { msg } if msg == "Invalid URL: external file URLs are not supported"),
            ),
            ("feature_disabled", |e| {
                matches!(e, Error::FeatureDisabled { .. })
            }),
            (
                "cloudflare_block",
                |e| matches!(e, Error::UnexpectedResponse { status: 403, snippet } if snippet == "error code: 1010"),
            ),
        ] {
            let path = format!("/t/{fixture}/{mirror}");
            let base = format!("{}{path}", mock.base);
            let reply = if mirror {
                Reply::fixture(fixture).mirrored()
            } else {
                Reply::fixture(fixture)
            };
            mock.script("GET", &format!("{path}{CREDIT}"), vec![reply]);
            let err = client(&base, 3).credits().await.unwrap_err();
            assert!(check(&err), "{fixture} (mirror {mirror}): got {err:?}");
            assert_eq!(
                mock.count("GET", &format!("{path}{CREDIT}")),
                1,
                "{fixture} must not be retried"
            );
            assert!(!err.to_string().contains(KEY));
        }
    }
}

#[tokio::test]
async fn server_errors_carry_the_request_id_and_are_retried() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 3);
    mock.script(
        "GET",
        CREDIT,
        vec![Reply::fixture("server_error").header("x-request-id", "req-7f3a")],
    );
    let err = c.credits().await.unwrap_err();
    assert!(
        matches!(&err, Error::Server { request_id: Some(id), .. } if id == "req-7f3a"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "server error (request id req-7f3a): Server error"
    );
    assert_eq!(mock.count("GET", CREDIT), 4, "1 try + 3 retries");

    // id in the message when there is no header; HTTP 500 (mirror mode) alike
    let mock = Mock::start().await;
    let c = client(&mock.base, 0);
    mock.script(
        "GET",
        CREDIT,
        vec![Reply::json(
            500,
            json!({"code": 500, "msg": "Server error (request id: abc123)", "data": null}),
        )],
    );
    assert!(
        matches!(c.credits().await.unwrap_err(), Error::Server { request_id: Some(id), .. } if id == "abc123")
    );
}

#[tokio::test]
async fn retries_then_succeeds() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 3);
    mock.script(
        "GET",
        CREDIT,
        vec![
            Reply::fixture("server_error"),
            Reply::fixture("rate_limited"),
            // a proxy's HTML 502 page: not JSON, but a 5xx worth retrying
            Reply {
                status: 502,
                headers: vec![],
                content_type: "text/html".into(),
                body: b"<html>Bad Gateway</html>".to_vec(),
            },
            Reply::fixture("credit_ok"),
        ],
    );
    assert_eq!(c.credits().await.unwrap(), Credits::from_hundredths(10000));
    assert_eq!(mock.count("GET", CREDIT), 4);
}

#[tokio::test]
async fn rate_limit_reports_retry_after_once_retries_are_spent() {
    let mock = Mock::start().await;
    mock.script("GET", CREDIT, vec![Reply::fixture("rate_limited")]);
    let err = client(&mock.base, 2).credits().await.unwrap_err();
    assert!(
        matches!(&err, Error::RateLimited { retry_after: Some(d), msg } if *d == Duration::from_secs(10) && msg == "Rate limit exceeded"),
        "{err:?}"
    );
    assert_eq!(mock.count("GET", CREDIT), 3);
}

#[tokio::test]
async fn maintenance_is_retried_a_few_times_only() {
    let mock = Mock::start().await;
    mock.script("GET", CREDIT, vec![Reply::fixture("maintenance")]);
    let err = client(&mock.base, 5).credits().await.unwrap_err();
    assert!(matches!(err, Error::Maintenance { .. }), "{err:?}");
    assert_eq!(
        mock.count("GET", CREDIT),
        3,
        "1 try + maintenance_retries (2)"
    );
}

#[tokio::test]
async fn create_task_is_not_repeated_after_a_server_error() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 3);
    let path = "/api/v1/jobs/createTask";
    mock.script("POST", path, vec![Reply::fixture("server_error")]);
    let req = CreateTaskRequest {
        model: "demo/image".into(),
        input: json!({"prompt": "a fox"}),
        call_back_url: None,
    };
    assert!(matches!(
        c.create_task(&req).await,
        Err(Error::Server { .. })
    ));
    assert_eq!(
        mock.count("POST", path),
        1,
        "the task may exist: never created twice"
    );

    // rate limiting means it was not created: retried
    mock.script(
        "POST",
        path,
        vec![
            Reply::fixture("rate_limited"),
            Reply::fixture("create_task_ok"),
        ],
    );
    assert_eq!(
        c.create_task(&req).await.unwrap(),
        "task_google_1765178608584"
    );
    let sent = mock.requests("POST", path);
    assert_eq!(sent.len(), 3);
    let body: serde_json::Value = serde_json::from_slice(&sent[2].body).unwrap();
    assert_eq!(
        body,
        json!({"model": "demo/image", "input": {"prompt": "a fox"}})
    );
}

/// A server that accepts connections and closes them without answering; counts them.
async fn hang_up_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = n.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // read the request, then hang up without a word
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            drop(sock);
        }
    });
    (base, n)
}

#[tokio::test]
async fn transport_errors_are_retried_for_idempotent_calls_only() {
    use std::sync::atomic::Ordering;
    let (base, n) = hang_up_server().await;
    let c = client(&base, 2);
    let err = c.credits().await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert_eq!(n.load(Ordering::SeqCst), 3);

    let req = CreateTaskRequest {
        model: "m".into(),
        input: json!({}),
        call_back_url: None,
    };
    assert!(matches!(
        c.create_task(&req).await,
        Err(Error::Transport(_))
    ));
    assert_eq!(
        n.load(Ordering::SeqCst),
        4,
        "sent once: the server may have acted on it"
    );

    // connection refused: nothing reached a server, so even createTask is retried
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = client(&closed, 1).create_task(&req).await.unwrap_err();
    assert!(
        matches!(&err, Error::Transport(e) if e.is_connect()),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("transport error: "), "{err}");
}

#[tokio::test]
async fn download_url_posts_the_url() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 0);
    let path = "/api/v1/common/download-url";
    mock.script("POST", path, vec![Reply::fixture("download_url_ok")]);
    let link = c
        .download_url("https://files.example/files/abc/x.png")
        .await
        .unwrap();
    assert_eq!(
        link,
        "https://tempfile.1f6cxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxbd98"
    );
    let sent = &mock.requests("POST", path)[0];
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&sent.body).unwrap(),
        json!({"url": "https://files.example/files/abc/x.png"})
    );
}

#[tokio::test]
async fn record_info_reads_kie_shapes_and_rejects_wrong_types() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 0);
    let path = "/api/v1/jobs/recordInfo";
    mock.script("GET", path, vec![Reply::fixture("record_info_success")]);
    let rec = c
        .record_info("e989621f54392584b05867f87b160672")
        .await
        .unwrap();
    assert_eq!(
        mock.requests("GET", path)[0].query,
        "taskId=e989621f54392584b05867f87b160672"
    );
    assert_eq!(rec.state, "success");
    assert_eq!(
        rec.result_urls(),
        vec!["https://tempfile.aiquickdraw.com/f/abc.mp4".to_string()]
    );
    assert_eq!(rec.consume_credits, Credits::from_hundredths(10000));
    // KIE.AI omits creditsConsumed: it repeats consumeCredits
    assert_eq!(rec.credits_consumed, Credits::from_hundredths(10000));
    assert_eq!(rec.complete_time, Some(1755599644000));

    mock.script("GET", path, vec![Reply::fixture("record_info_fail")]);
    let rec = c.record_info("bd3a0000").await.unwrap();
    assert_eq!(
        (
            rec.state.as_str(),
            rec.fail_code.as_str(),
            rec.result_json.as_str()
        ),
        ("fail", "500", "")
    );

    let mut bad = fixtures_body("record_info_success");
    bad["data"]["state"] = json!(5);
    mock.script("GET", path, vec![Reply::json(200, bad)]);
    assert!(matches!(c.record_info("x").await, Err(Error::Decode(_))));
}

fn fixtures_body(name: &str) -> serde_json::Value {
    common::fixtures()[name]["body"].clone()
}

#[tokio::test]
async fn wait_task_polls_until_done_or_timeout() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 0);
    let path = "/api/v1/jobs/recordInfo";
    let mut generating = fixtures_body("record_info_success");
    generating["data"]["state"] = json!("generating");
    generating["data"]["resultJson"] = json!("");
    mock.script(
        "GET",
        path,
        vec![
            Reply::json(200, generating.clone()),
            Reply::fixture("server_error"), // transient: polling goes on
            Reply::json(200, generating.clone()),
            Reply::fixture("record_info_success"),
        ],
    );
    let opts = WaitOptions {
        timeout: Duration::from_secs(30),
        initial_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(2),
    };
    let rec = c.wait_task("t1", &opts).await.unwrap();
    assert_eq!(rec.state, "success");
    assert_eq!(mock.count("GET", path), 4);

    mock.script("GET", path, vec![Reply::json(200, generating)]);
    let opts = WaitOptions {
        timeout: Duration::from_millis(30),
        ..opts
    };
    let err = c.wait_task("t2", &opts).await.unwrap_err();
    assert!(
        matches!(&err, Error::TaskTimeout { task_id, state, .. } if task_id == "t2" && state == "generating"),
        "{err:?}"
    );

    // a business error ends the wait at once
    mock.script(
        "GET",
        path,
        vec![Reply::json(
            200,
            json!({"code": 404, "msg": "task not found", "data": null}),
        )],
    );
    assert!(matches!(
        c.wait_task("t3", &opts).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn uploads_use_the_documented_fields() {
    let mock = Mock::start().await;
    let c = client(&mock.base, 0);
    let dir = common::TempDir::new("upload");
    let file = dir.path().join("photo.png");
    std::fs::write(&file, b"\x89PNG fake").unwrap();

    let up = c
        .upload_file(&file, "images/user-uploads", None)
        .await
        .unwrap();
    assert_eq!(
        up.file_url,
        "https://tempfile.redpandaai.co/xxx/images/user-uploads/x.png"
    );
    assert_eq!((up.file_size, up.mime_type.as_str()), (154832, "image/png"));
    let sent = &mock.requests("POST", "/api/file-stream-upload")[0];
    let fields: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        fields,
        json!({"file": "\u{FFFD}PNG fake", "file.filename": "photo.png", "uploadPath": "images/user-uploads", "fileName": "photo.png"})
    );
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );

    c.upload_base64(b"hello", "docs", Some("h.txt"))
        .await
        .unwrap();
    let sent = &mock.requests("POST", "/api/file-base64-upload")[0];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&sent.body).unwrap(),
        json!({"base64Data": "aGVsbG8=", "uploadPath": "docs", "fileName": "h.txt"})
    );

    c.upload_url("https://example.com/a.jpg", "imgs", None)
        .await
        .unwrap();
    let sent = &mock.requests("POST", "/api/file-url-upload")[0];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&sent.body).unwrap(),
        json!({"fileUrl": "https://example.com/a.jpg", "uploadPath": "imgs"})
    );

    // upload errors keep success:false and code 400
    mock.script(
        "POST",
        "/api/file-base64-upload",
        vec![Reply::fixture("upload_missing_path")],
    );
    let err = c.upload_base64(b"x", "", None).await.unwrap_err();
    assert!(
        matches!(&err, Error::Validation { msg } if msg == "Missing required parameter: uploadPath"),
        "{err:?}"
    );
}

#[test]
fn configuration_and_secrets() {
    let c = Client::builder()
        .api_key(KEY)
        .base_url("http://127.0.0.1:1/prefix/")
        .build()
        .unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(KEY) && dbg.contains("<redacted>"), "{dbg}");
    let b = Client::builder().api_key(KEY);
    assert!(!format!("{b:?}").contains(KEY));
    assert!(matches!(
        Client::builder().base_url("ftp://x").build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Client::builder().base_url("not a url").build(),
        Err(Error::Config(_))
    ));
    let err = Client::builder().api_key("abc\ndef").build().unwrap_err();
    assert!(!err.to_string().contains("abc"), "{err}");
    assert_eq!(
        Client::builder().build().unwrap().base_url().as_str(),
        "https://api.kie.ai/"
    );
}

#[tokio::test]
async fn missing_key_is_a_clear_error_before_any_request() {
    let mock = Mock::start().await;
    let c = Client::builder().base_url(&mock.base).build().unwrap();
    let err = c.credits().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "configuration: no API key: set KIE_API_KEY or pass one (--api-key)"
    );
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn base_url_with_a_path_prefix() {
    let mock = Mock::start().await;
    mock.script(
        "GET",
        &format!("/kie{CREDIT}"),
        vec![Reply::fixture("credit_ok")],
    );
    let c = client(&format!("{}/kie/", mock.base), 0);
    assert_eq!(c.credits().await.unwrap(), Credits::from_hundredths(10000));
}

/// Callers spawn these futures on multi-threaded runtimes: they must be `Send`.
#[test]
fn futures_are_send() {
    fn send<T: Send>(_: T) {}
    let c = Client::builder().build().unwrap();
    let req = CreateTaskRequest {
        model: "m".into(),
        input: json!({}),
        call_back_url: None,
    };
    send(c.credits());
    send(c.download_url("x"));
    send(c.create_task(&req));
    send(c.record_info("t"));
    send(c.wait_task("t", &WaitOptions::default()));
    send(c.upload_file(std::path::Path::new("x"), "p", None));
    let d = kie_sdk::Downloader::new(c.clone()).on_progress(|_| {});
    let items = Vec::new();
    send(d.download_all(&items));
}
