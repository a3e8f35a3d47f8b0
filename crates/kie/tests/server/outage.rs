//! Issue 8 (database outages): PostgreSQL stopped under load. Runs its own private
//! PostgreSQL cluster (never the shared one other tests use), whatever
//! `KIE_TEST_BACKEND` says.

use crate::harness::*;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request made by the load generator.
#[derive(Debug, Clone)]
struct Sample {
    what: &'static str,
    started: Instant,
    elapsed: Duration,
    http: u16,
    request_id: String,
    body: Value,
}

/// Clients calling the API in a loop until `stop` flips; every answer is kept.
fn load(
    s: &Server,
    key: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinSet<Vec<Sample>> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (base, key, stop) = (s.base.clone(), key.to_string(), stop.clone());
        set.spawn(async move {
            // a generous client timeout: the assertion is on the measured time
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut out = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (what, rb) = match (i + n) % 3 {
                    0 => (
                        "credit",
                        c.get(format!("{base}/api/v1/chat/credit"))
                            .bearer_auth(&key),
                    ),
                    1 => (
                        "createTask",
                        c.post(format!("{base}/api/v1/jobs/createTask"))
                            .bearer_auth(&key)
                            .json(&json!({"model": "demo/text", "input": {"prompt": "load"}})),
                    ),
                    _ => ("readyz", c.get(format!("{base}/readyz"))),
                };
                let t0 = Instant::now();
                let r = rb.send().await.expect("the server answers");
                let http = r.status().as_u16();
                let request_id = r
                    .headers()
                    .get("x-request-id")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let body: Value = r.json().await.expect("a JSON answer");
                out.push(Sample {
                    what,
                    started: t0,
                    elapsed: t0.elapsed(),
                    http,
                    request_id,
                    body,
                });
            }
            out
        });
    }
    set
}

/// A webhook receiver that refuses (503) until `accept` is set, then answers 200.
/// Counts the accepted requests per task id.
async fn gated_receiver(accept: Arc<AtomicBool>) -> (String, Arc<Mutex<HashMap<String, u32>>>) {
    let ok: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let ok2 = ok.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (ok, accept) = (ok2.clone(), accept.clone());
        async move {
            if !accept.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let id = v["taskId"].as_str().unwrap_or("?").to_string();
            *ok.lock().unwrap().entry(id).or_default() += 1;
            StatusCode::OK
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (base, ok)
}

fn pg_count(url: &str, q: &str) -> i64 {
    let out = Command::new("psql")
        .args([url, "-tAc", q])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_under_load_answers_fast_and_recovers_by_itself() {
    let mut pg = PrivatePg::start();
    let db = Arc::new(TestDb::at(&pg.url()));
    let accept = Arc::new(AtomicBool::new(false));
    let (rcv, delivered) = gated_receiver(accept.clone()).await;
    // callbacks are retried every second for a minute
    let schedule = std::iter::once("0s")
        .chain(std::iter::repeat_n("1s", 60))
        .collect::<Vec<_>>()
        .join(",");
    let s = Server::start_in(
        Opts::default()
            .args(&[
                "--allow-private-targets",
                "--webhook-retry-schedule",
                &schedule,
            ])
            .config("task_rate = 0\ntask_timeout = \"5s\"\nwebhook_timeout = \"2s\"\n"),
        Arc::new(TempDir::new()),
        db,
    );
    let (acc, key) = s.account_with_key("outage", "100000");
    // download links made before the outage: one already served (cached), one not
    let mut links = Vec::new();
    for name in ["served.txt", "fresh.txt"] {
        let p = s.tmp().path().join(name);
        std::fs::write(&p, name.as_bytes()).unwrap();
        let f = s.admin(&["file", "add", "--account", &acc, p.to_str().unwrap()]);
        let (_, _, v) = post_json(
            &s.url("/api/v1/common/download-url"),
            Some(&key),
            &json!({"url": f["url"]}),
        )
        .await;
        assert_eq!(v["code"], 200, "{v}");
        links.push(v["data"].as_str().unwrap().to_string());
    }
    assert_eq!(client().get(&links[0]).send().await.unwrap().status(), 200);

    // callbacks enqueued before the outage; the receiver refuses them for now
    let mut before = Vec::new();
    for _ in 0..5 {
        let (_, _, v) = post_json(
            &s.url("/api/v1/jobs/createTask"),
            Some(&key),
            &json!({"model": "demo/text", "input": {"prompt": "before"},
                    "callBackUrl": format!("{rcv}/hook")}),
        )
        .await;
        assert_eq!(v["code"], 200, "{v}");
        before.push(v["data"]["taskId"].as_str().unwrap().to_string());
    }
    let url = pg.url();
    let enqueued = eventually(Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            pg_count(
                &url,
                "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending' AND attempts >= 1",
            ) == 5
        }
    })
    .await;
    assert!(enqueued.is_some(), "callbacks attempted before the outage");

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load(&s, &key, 4, stop.clone());
    // warm: the load gets answers
    assert!(eventually(Duration::from_secs(10), || async {
        get_json(&s.url("/readyz"), None).await.0 == 200
    })
    .await
    .is_some());

    // the outage: ~10 s, watched through /readyz
    let down_at = Instant::now();
    pg.stop();
    accept.store(true, Ordering::SeqCst);
    let mut saw_503 = false;
    while down_at.elapsed() < Duration::from_secs(10) {
        let t0 = Instant::now();
        let r = client().get(s.url("/readyz")).send().await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "/readyz took {:?}",
            t0.elapsed()
        );
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            saw_503 = true;
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["database"], false, "{v}");
        }
        // file serving answers from its caches or fails fast
        for l in &links {
            let t0 = Instant::now();
            let st = client().get(l).send().await.unwrap().status().as_u16();
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "link took {:?}",
                t0.elapsed()
            );
            assert!(matches!(st, 200 | 500), "link answered {st}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_503,
        "/readyz never said 503 while the database was down"
    );
    assert!(s.child.is_some());

    pg.resume();
    let up_at = Instant::now();
    let recovered = eventually(Duration::from_secs(30), || async {
        get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["code"] == 200
            && get_json(&s.url("/readyz"), None).await.0 == 200
    })
    .await
    .expect("the service recovers by itself after the database is back");
    // keep the load running a little after recovery: new tasks are accepted again
    let new_task = eventually(Duration::from_secs(10), || async {
        post_json(
            &s.url("/api/v1/jobs/createTask"),
            Some(&key),
            &json!({"model": "demo/text", "input": {"prompt": "after"}}),
        )
        .await
        .2["code"]
            == 200
    })
    .await;
    assert!(new_task.is_some(), "createTask works again");
    for l in &links {
        assert_eq!(client().get(l).send().await.unwrap().status(), 200, "{l}");
    }
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    while let Some(r) = clients.join_next().await {
        samples.extend(r.unwrap());
    }

    // every answer within 2 s; API answers are envelopes: success or a clean 500
    let mut errors = 0;
    let mut slowest = (Duration::ZERO, "", 0i128);
    for smp in &samples {
        if smp.elapsed > slowest.0 {
            // what, and when it started relative to the stop (ms)
            let rel = if smp.started >= down_at {
                (smp.started - down_at).as_millis() as i128
            } else {
                -((down_at - smp.started).as_millis() as i128)
            };
            slowest = (smp.elapsed, smp.what, rel);
        }
        assert!(
            smp.elapsed < Duration::from_secs(2),
            "{} took {:?}: {:?}",
            smp.what,
            smp.elapsed,
            smp.body
        );
        if smp.what == "readyz" {
            assert!(matches!(smp.http, 200 | 503), "{smp:?}");
            continue;
        }
        assert_eq!(smp.http, 200, "compat mode: {smp:?}");
        match smp.body["code"].as_i64() {
            Some(200) => {}
            Some(500) => {
                errors += 1;
                let msg = smp.body["msg"].as_str().unwrap();
                assert!(!smp.request_id.is_empty(), "{smp:?}");
                assert!(msg.contains(&smp.request_id), "{msg}");
                for leak in [
                    "postgres",
                    "sqlx",
                    "pool",
                    "connection",
                    "127.0.0.1",
                    "SELECT",
                    "os error",
                ] {
                    assert!(!msg.contains(leak), "msg leaks {leak}: {msg}");
                }
                assert!(smp.body["data"].is_null(), "{smp:?}");
            }
            _ => panic!("unexpected answer {smp:?}"),
        }
    }
    assert!(errors > 0, "the load saw the outage");
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
    // background loops report an outage once, not on every retry
    for msg in [
        "could not lease webhook deliveries",
        "task timeout reaper failed",
        "settings refresh failed",
    ] {
        assert!(
            log.matches(msg).count() <= 1,
            "{msg} logged more than once:\n{log}"
        );
    }

    // the outbox resumes: callbacks enqueued before the outage are delivered after it
    let all = eventually(Duration::from_secs(30), || async {
        let d = delivered.lock().unwrap();
        before.iter().all(|t| d.get(t).is_some_and(|n| *n >= 1))
    })
    .await;
    assert!(
        all.is_some(),
        "delivered after the outage: {:?}",
        delivered.lock().unwrap()
    );
    eprintln!(
        "outage: {} requests, {} answered 500, slowest {:?} (started {} ms after the stop); \
         recovered {:?} after the restart; \
         pre-outage callbacks all delivered within {:?} of the restart",
        samples.len(),
        errors,
        (slowest.0, slowest.1),
        slowest.2,
        recovered,
        up_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database_at_start_is_one_line_and_non_zero() {
    let mut pg = PrivatePg::start();
    let port = pg.port;
    pg.stop();
    let tmp = TempDir::new();
    let t0 = Instant::now();
    let out = Command::new(KIE)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .args([
            "--database-url",
            &format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/postgres"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot open database"), "{err}");
    assert!(err.contains("refused"), "says why: {err}");
    assert!(!err.contains("s3cret-pw"), "no password: {err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_database_answers_fast_and_recovers_by_itself() {
    // SIGSTOP on every PostgreSQL process: connections stay open, nothing answers (a
    // stalled host or a network partition rather than a clean stop)
    let pg = PrivatePg::start();
    let s = Server::start_in(
        Opts::default().config("task_rate = 0\n"),
        Arc::new(TempDir::new()),
        Arc::new(TestDb::at(&pg.url())),
    );
    let (_, key) = s.account_with_key("freeze", "100000");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load(&s, &key, 4, stop.clone());
    assert!(eventually(Duration::from_secs(10), || async {
        get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["code"] == 200
    })
    .await
    .is_some());
    pg.freeze();
    let frozen_at = Instant::now();
    let mut saw_503 = false;
    while frozen_at.elapsed() < Duration::from_secs(6) {
        let t0 = Instant::now();
        let r = client().get(s.url("/readyz")).send().await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "/readyz took {:?}",
            t0.elapsed()
        );
        saw_503 |= r.status() == StatusCode::SERVICE_UNAVAILABLE;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_503,
        "/readyz never said 503 while the database was frozen"
    );
    pg.thaw();
    let thawed_at = Instant::now();
    let recovered = eventually(Duration::from_secs(30), || async {
        get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["code"] == 200
            && get_json(&s.url("/readyz"), None).await.0 == 200
    })
    .await
    .expect("the service recovers by itself");
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    while let Some(r) = clients.join_next().await {
        samples.extend(r.unwrap());
    }
    // Requests that started once the database was frozen answer within 2 s. Requests
    // whose query was already sent when it froze are answered when the probe declares
    // the database down (no answer for 1 s), instead of waiting for the thaw.
    let mut in_flight_at_freeze = 0;
    let mut errors = 0;
    for smp in &samples {
        if smp.started < frozen_at {
            if smp.started + smp.elapsed > frozen_at {
                in_flight_at_freeze += 1;
                assert!(
                    smp.elapsed < Duration::from_millis(2500),
                    "in flight at the freeze: {} took {:?}",
                    smp.what,
                    smp.elapsed
                );
            }
            continue;
        }
        if smp.started > thawed_at {
            continue;
        }
        assert!(
            smp.elapsed < Duration::from_secs(2),
            "{} took {:?}: {:?}",
            smp.what,
            smp.elapsed,
            smp.body
        );
        if smp.what != "readyz" && smp.body["code"] == 500 {
            errors += 1;
            let msg = smp.body["msg"].as_str().unwrap();
            assert!(msg.contains(&smp.request_id), "{msg}");
        }
    }
    assert!(errors > 0, "the load saw the freeze");
    assert!(!s.log().contains("panicked"));
    eprintln!(
        "freeze: {} requests, {} answered 500 while frozen, {} in flight at the freeze; \
         recovered {:?} after the thaw",
        samples.len(),
        errors,
        in_flight_at_freeze,
        recovered
    );
}
