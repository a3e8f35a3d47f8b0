//! Issue 8 (hostile clients): slow headers, slow bodies, idle connections, the
//! connection limit, body and upload size limits, per-key and per-IP rate limits —
//! through raw TCP and HTTP against a real `kie serve`.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF or error (or `limit`); returns what arrived and whether the
/// connection ended (EOF/reset) within `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
fn raise_nofile() -> libc::rlim_t {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn body_json(raw: &[u8]) -> Value {
    let text = String::from_utf8_lossy(raw);
    let (_, body) = text.split_once("\r\n\r\n").expect("a response with a body");
    serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off_by_the_header_timeout() {
    let s = Server::start(Opts::default().args(&["--header-read-timeout", "1s"]));
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tcp.split();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // One byte every 250 ms: the head would take ~17 s to arrive.
    let writer = async {
        let mut sent = 0;
        for b in head.iter() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        sent
    };
    let reader = async {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
        (r.is_ok(), buf, started.elapsed())
    };
    tokio::pin!(writer);
    let (closed, got, at) = tokio::select! {
        r = reader => r,
        _ = &mut writer => panic!("the whole slow head was accepted"),
    };
    assert!(
        closed,
        "the server kept a slow-header connection open for 10 s"
    );
    assert!(
        at >= Duration::from_millis(900) && at < Duration::from_secs(6),
        "closed after {at:?}, expected ~1 s"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains(" 200 "), "a slow head was answered: {text}");

    // A connection that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(&s.addr).await.unwrap();
    let t0 = Instant::now();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(closed);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // A keep-alive connection idle after an answer is closed after the same time.
    let mut ka = TcpStream::connect(&s.addr).await.unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = ka.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t0 = Instant::now();
    let (_, closed) = read_until_closed(&mut ka, Duration::from_secs(10)).await;
    assert!(closed);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // Normal requests are unaffected.
    let (st, _, v) = get_json(&s.url("/healthz"), None).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));
}

/// Sends a request head announcing `len` body bytes, then trickles the body one
/// byte per 200 ms; returns the raw answer and how long it took to arrive.
async fn trickle_body(
    s: &Server,
    path: &str,
    key: &str,
    ctype: &str,
    body: &[u8],
) -> (Vec<u8>, Duration) {
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tcp.split();
    let writer = async {
        for b in body {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        std::future::pending::<()>().await
    };
    let reader = async {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), rd.read_to_end(&mut buf)).await;
        buf
    };
    let got = tokio::select! {
        b = reader => b,
        _ = writer => unreachable!(),
    };
    (got, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_bodies_are_cut_off_with_408() {
    let s = Server::start(
        Opts::default()
            .args(&["--request-body-timeout", "1s"])
            .demo(),
    );
    let (_, key) = s.account_with_key("slowbody", "100");

    let body = serde_json::to_vec(
        &json!({"model": "demo/text", "input": {"prompt": "a slow body that never ends"}}),
    )
    .unwrap();
    let (raw, took) = trickle_body(
        &s,
        "/api/v1/jobs/createTask",
        &key,
        "application/json",
        &body,
    )
    .await;
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "compat mode: {text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let v = body_json(&raw);
    assert_eq!(
        v,
        json!({"code": 408, "msg": "Request body not received within 1 s", "data": null})
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // No task was created and nothing was held.
    let show = s.admin(&["credits", "show", "--account", "slowbody"]);
    assert_eq!(
        (show["balance"].clone(), show["held"].clone()),
        (json!(100), json!(0))
    );
    assert_eq!(
        s.admin(&["task", "list", "--account", "slowbody"]),
        json!([])
    );

    // A trickling upload: the File Upload API envelope (success: false), no file stored.
    let boundary = "XbOuNdArY";
    let mut mp = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\nslow\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n").into_bytes();
    mp.extend(std::iter::repeat_n(b'z', 200));
    mp.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (raw, took) = trickle_body(
        &s,
        "/api/file-stream-upload",
        &key,
        &format!("multipart/form-data; boundary={boundary}"),
        &mp,
    )
    .await;
    let v = body_json(&raw);
    assert_eq!(
        v,
        json!({"success": false, "code": 408, "msg": "Request body not received within 1 s", "data": null})
    );
    assert!(took < Duration::from_secs(8), "{took:?}");

    // Mirror mode answers HTTP 408.
    let m = Server::start(Opts::default().args(&[
        "--request-body-timeout",
        "1s",
        "--status-mode",
        "mirror",
    ]));
    let (_, key) = m.account_with_key("slowbody", "1");
    let (raw, _) = trickle_body(
        &m,
        "/api/v1/common/download-url",
        &key,
        "application/json",
        br#"{"url": "http://example.com/x.png"}"#,
    )
    .await;
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(body_json(&raw)["code"], 408);

    // A body that arrives in time is served normally.
    let (st, _, v) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&key_of(&s)),
        &json!({"model": "demo/text", "input": {"prompt": "quick"}}),
    )
    .await;
    assert_eq!((st, v["code"].as_i64()), (200, Some(200)), "{v}");
}

fn key_of(s: &Server) -> String {
    s.account_with_key(&format!("k{}", rand::random::<u32>()), "10")
        .1
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_connections_do_not_starve_real_requests() {
    const IDLE: usize = 3000;
    let limit = raise_nofile();
    assert!(
        limit >= (IDLE as u64) * 2 + 200,
        "RLIMIT_NOFILE {limit} too low for this test"
    );
    let s = Server::start(Opts::default().args(&["--header-read-timeout", "30s"]));
    let pid = s.child.as_ref().unwrap().id();
    let (_, key) = s.account_with_key("idle", "5");
    // warm up, then the baseline
    for _ in 0..20 {
        let (st, _, _) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
        assert_eq!(st, 200);
    }
    let rss_before = rss_kib(pid);
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut c = TcpStream::connect(&s.addr).await.unwrap();
        // half of them start a request head and stop
        if i % 2 == 0 {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(c);
    }
    // Real requests on fresh connections still answer quickly.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let (st, _, v) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
        assert_eq!((st, v["data"].clone()), (200, json!(5)));
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_secs(2),
        "slowest real request {worst:?} with {IDLE} idle connections"
    );
    let rss_with = rss_kib(pid);
    eprintln!("RSS: {rss_before} KiB before, {rss_with} KiB with {IDLE} idle connections; slowest request {worst:?}");
    assert!(
        rss_with < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_with} KiB with {IDLE} idle connections"
    );
    // Closing them frees the server's resources: still answering.
    drop(idle);
    let (st, _, _) = get_json(&s.url("/healthz"), None).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_limit_closes_connections_beyond_it() {
    let s = Server::start(Opts::default().args(&[
        "--max-connections",
        "20",
        "--header-read-timeout",
        "30s",
    ]));
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&s.addr).await.unwrap());
    }
    // Every slot is taken: the next connection is closed at once, unanswered.
    let eventually_refused = eventually(Duration::from_secs(5), || async {
        let mut c = TcpStream::connect(&s.addr).await.unwrap();
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (got, closed) = read_until_closed(&mut c, Duration::from_secs(2)).await;
        closed && got.is_empty()
    })
    .await;
    assert!(
        eventually_refused.is_some(),
        "a connection beyond the limit was served"
    );
    // Closing held connections frees slots for real requests.
    held.truncate(10);
    let ok = eventually(Duration::from_secs(5), || async {
        reqwest::Client::new()
            .get(s.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok.is_some(), "no slot came free after closing connections");
    assert!(s.log().contains("connection limit reached"), "{}", s.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn body_and_upload_size_limits() {
    let s = Server::start(Opts::default().args(&["--max-body", "1000", "--max-upload", "2000"]));
    let (_, key) = s.account_with_key("limits", "10");
    // JSON body over max_body: 422 naming the limit (compat: HTTP 200).
    let big = json!({"url": format!("http://example.com/{}", "a".repeat(2000))});
    let (st, _, v) = post_json(&s.url("/api/v1/common/download-url"), Some(&key), &big).await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"code": 422, "msg": "Request body exceeds the limit of 1000 bytes", "data": null})
    );
    // base64 upload of 2001 bytes (its JSON body is over max_body as well as max_upload).
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 2001]);
    let (_, _, v) = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": b64, "uploadPath": "x", "fileName": "a.bin"}),
    )
    .await;
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], 422, "{v}");
    // Streamed upload over max_upload: refused, nothing stored.
    let boundary = "B0undary";
    let mut mp = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\nx\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n").into_bytes();
    mp.extend(std::iter::repeat_n(b'q', 2001));
    mp.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = client()
        .post(s.url("/api/file-stream-upload"))
        .bearer_auth(&key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(mp)
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], 422, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("2000"), "{v}");
    // exactly at the limit is fine
    let mut mp = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\nx\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ok.bin\"\r\n\r\n").into_bytes();
    mp.extend(std::iter::repeat_n(b'q', 2000));
    mp.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = client()
        .post(s.url("/api/file-stream-upload"))
        .bearer_auth(&key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(mp)
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (v["success"].clone(), v["data"]["fileSize"].clone()),
        (json!(true), json!(2000)),
        "{v}"
    );
}

/// HTTP status, headers and JSON body of an answer.
type Answer = (u16, reqwest::header::HeaderMap, Value);

/// GET through a shared client (no client to build per request: on a loaded machine
/// that alone takes longer than the limits below refill).
async fn get_answer(http: &reqwest::Client, url: &str, key: Option<&str>) -> Answer {
    let mut rb = http.get(url);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&body)));
    (status, headers, v)
}

/// Sends `first` requests one after the other, then rounds of 10 at once until one is
/// refused (429; at most 20 rounds). At once, so that they reach the server faster
/// than a limit refills however slow the machine is; until refused, not for a fixed
/// number or time. Answers in sending order (within a round, as sent).
async fn until_refused<F, Fut>(first: usize, send: F) -> Vec<Answer>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let mut answers = Vec::new();
    for _ in 0..first {
        answers.push(send().await);
    }
    for _ in 0..20 {
        if answers.iter().any(|a| a.0 == 429) {
            break;
        }
        answers.extend(futures::future::join_all((0..10).map(|_| send())).await);
    }
    answers
}

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|a| a.0).collect()
}

/// What a limiter of `burst` requests refilled at `burst` per second promises, over
/// requests sent from a fresh limit during `took`: at most `burst` plus what the rate
/// refilled meanwhile passed.
fn assert_within_budget(codes: &[u16], burst: usize, took: Duration) {
    let passed = codes.iter().filter(|c| **c == 200).count();
    let refilled = (took.as_secs_f64() * burst as f64).ceil() as usize;
    assert!(
        passed <= burst + refilled,
        "{passed} passed in {took:?}: {codes:?}"
    );
}

/// The first `burst` answers passed, later ones were limited except for what the
/// rate (`burst` per second) refilled meanwhile.
fn assert_burst_then_limited(codes: &[u16], burst: usize, took: Duration) {
    assert!(codes[..burst].iter().all(|c| *c == 200), "{codes:?}");
    assert_within_budget(codes, burst, took);
    assert!(codes.contains(&429), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_key_and_per_ip_rate_limits() {
    let http = client();
    // Per key: 2 per second, burst 2 (low, so a loaded machine still sees the limit).
    let s = Server::start(Opts::default().args(&["--key-rate-limit", "2"]));
    let (_, key) = s.account_with_key("rl", "1");
    let (_, other) = s.account_with_key("rl2", "1");
    let url = s.url("/api/v1/chat/credit");
    let t0 = Instant::now();
    let answers = until_refused(2, || get_answer(&http, &url, Some(&key))).await;
    let took = t0.elapsed();
    for (st, h, v) in &answers {
        if *st == 429 {
            assert_eq!(v["code"], 429);
            let ra: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&ra), "Retry-After {ra}");
        }
    }
    assert_burst_then_limited(&statuses(&answers), 2, took);
    // another key is not affected
    let (st, _, _) = get_answer(&http, &url, Some(&other)).await;
    assert_eq!(st, 200);

    // Per IP: 2 per second whatever the key, including unauthenticated requests.
    let s = Server::start(Opts::default().args(&["--ip-rate-limit", "2"]));
    let url = s.url("/api/v1/chat/credit");
    let t0 = Instant::now();
    let answers = until_refused(2, || get_answer(&http, &url, None)).await;
    let took = t0.elapsed();
    for (st, h, v) in &answers {
        if *st == 429 {
            assert_eq!(
                *v,
                json!({"code": 429, "msg": "Rate limit exceeded", "data": null})
            );
            assert!(h.contains_key("retry-after"));
        } else {
            assert_eq!(v["code"], 401);
        }
    }
    let codes = statuses(&answers);
    assert_burst_then_limited(&codes, 2, took);
    // Non-API paths are limited too, from the same per-IP budget, and still answer
    // with the envelope. The limit refills one request every 500 ms, so a /healthz
    // sent after the API requests may legitimately pass on a slow machine: send them
    // until one is refused, and hold all the requests to what the limiter promises.
    let health_url = s.url("/healthz");
    let health = until_refused(0, || get_answer(&http, &health_url, None)).await;
    let took = t0.elapsed();
    for (st, h, v) in &health {
        if *st == 429 {
            assert_eq!(
                *v,
                json!({"code": 429, "msg": "Rate limit exceeded", "data": null})
            );
            assert!(h.contains_key("retry-after"));
        } else {
            assert_eq!((*st, v), (200, &json!({"status": "ok"})));
        }
    }
    let health = statuses(&health);
    assert!(health.contains(&429), "/healthz never limited: {health:?}");
    let all: Vec<u16> = codes.iter().chain(&health).copied().collect();
    assert_within_budget(&all, 2, took);
    // The limit refills: within ~1 s requests pass again.
    let back = eventually(Duration::from_secs(3), || async {
        http.get(&health_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(back.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_are_refused() {
    let s = Server::start(Opts::default());
    // ~600 KiB of headers: over hyper's head buffer.
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..75 {
        head.push_str(&format!("X-Big-{i}: {}\r\n", "a".repeat(8 * 1024)));
    }
    head.push_str("\r\n");
    let _ = tcp.write_all(head.as_bytes()).await;
    let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "connection left open");
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // More than 100 header fields.
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (got, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // The server is fine afterwards.
    let (st, _, _) = get_json(&s.url("/healthz"), None).await;
    assert_eq!(st, 200);
}
