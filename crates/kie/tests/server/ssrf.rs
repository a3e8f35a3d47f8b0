//! The SSRF guard (`kie-server/src/net_guard.rs`) through the public surface: URL
//! uploads and `callBackUrl` refuse every spelling of loopback, names that resolve to
//! it, and redirects to it — and the loopback receiver sees no request at all.
//!
//! Only loopback targets are used: a "sink" listening on 127.0.0.1:P and [::1]:P counts
//! every request (every spelling below means one of these two sockets), and a
//! "source" on 127.0.0.2 — the one address the operator allowed with
//! `allowed_private_targets` — redirects to the sink.
//!
//! Names: `localhost` resolves (through /etc/hosts) to loopback and is refused after
//! resolution. `localhost.` does not resolve on this machine (glibc does not match the
//! trailing dot in /etc/hosts and there is no DNS); where it does resolve, it resolves
//! to loopback and is refused as forbidden. Either answer is a refusal and the sink sees
//! nothing, which is what is asserted. The resolver is the system's and cannot be
//! overridden (no test-only switch exists in production builds); the unit test
//! `net_guard::tests::resolver_refuses_any_forbidden_answer` covers hand-made answers,
//! including rebinding answers that mix a public and a loopback address.

use crate::harness::*;
use axum::response::{IntoResponse, Redirect};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const FORBIDDEN: &str = "fileUrl is not allowed: the target address is not allowed (loopback, private, link-local or reserved network)";
const UNRESOLVABLE: &str = "fileUrl is not allowed: the host name could not be resolved";
const CALLBACK_FORBIDDEN: &str = "Invalid field 'callBackUrl': the target address is not allowed (loopback, private or link-local)";

/// Counts every request on 127.0.0.1:P and [::1]:P; returns P.
async fn sink(hits: Arc<AtomicUsize>) -> u16 {
    let app = |hits: Arc<AtomicUsize>| {
        axum::Router::new().fallback(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { "sink: you should not be here" }
        })
    };
    // the same port on both loopback addresses (retry when [::1]:P is taken)
    for _ in 0..20 {
        let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await else {
            continue;
        };
        let (a, b) = (app(hits.clone()), app(hits.clone()));
        tokio::spawn(async move { axum::serve(v4, a).await });
        tokio::spawn(async move { axum::serve(v6, b).await });
        return port;
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// Every spelling of the sink at port `p` (each means 127.0.0.1:p or [::1]:p).
fn spellings(p: u16) -> Vec<(String, bool)> {
    // (URL, is a host name resolved by DNS rather than an IP literal)
    let lit = [
        format!("http://127.0.0.1:{p}/x"),
        format!("http://127.1:{p}/x"),
        format!("http://2130706433:{p}/x"),
        format!("http://0x7f000001:{p}/x"),
        format!("http://0x7f.0.0.1:{p}/x"),
        format!("http://0177.0.0.1:{p}/x"),
        format!("http://127.000.000.001:{p}/x"),
        format!("http://[::1]:{p}/x"),
        format!("http://[0:0:0:0:0:0:0:1]:{p}/x"),
        format!("http://[::ffff:127.0.0.1]:{p}/x"),
        format!("http://[::ffff:7f00:1]:{p}/x"),
        format!("http://0.0.0.0:{p}/x"),
        format!("http://0:{p}/x"),
        format!("https://127.0.0.1:{p}/x"),
        format!("http://user:pw@127.0.0.1:{p}/x"),
    ];
    let names = [
        format!("http://localhost:{p}/x"),
        format!("http://LOCALHOST:{p}/x"),
        format!("http://localhost.:{p}/x"),
    ];
    lit.into_iter()
        .map(|u| (u, false))
        .chain(names.into_iter().map(|u| (u, true)))
        .collect()
}

async fn url_upload(s: &Server, key: &str, url: &str) -> Value {
    post_json(
        &s.url("/api/file-url-upload"),
        Some(key),
        &json!({"fileUrl": url, "uploadPath": "ssrf"}),
    )
    .await
    .2
}

fn refused_upload(url: &str, v: &Value, is_name: bool) {
    let msg = v["msg"].as_str().unwrap_or_default();
    let ok = msg == FORBIDDEN || (is_name && msg == UNRESOLVABLE);
    assert!(
        ok && v["success"] == false && v["code"] == 422 && v["data"].is_null(),
        "{url}: {v}"
    );
}

/// Files in the server's blob store (the local store under the data dir).
fn stored_files(s: &Server) -> usize {
    fn walk(p: &std::path::Path) -> usize {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }
    walk(&s.data_dir.join("files"))
}

#[tokio::test(flavor = "multi_thread")]
async fn url_uploads_refuse_every_loopback_spelling_and_send_nothing() {
    let hits = Arc::new(AtomicUsize::new(0));
    let port = sink(hits.clone()).await;
    let s = Server::start(Opts::default());
    let (_, key) = s.account_with_key("ssrf", "1");
    for (u, is_name) in spellings(port) {
        let v = url_upload(&s, &key, &u).await;
        refused_upload(&u, &v, is_name);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the sink saw a request");
    assert_eq!(stored_files(&s), 0);
}

/// A source on 127.0.0.2 (allowed) redirecting to the `n`-th spelling of the sink.
async fn redirecting_source(sink_port: u16, hits: Arc<AtomicUsize>) -> String {
    let targets: Arc<Vec<String>> =
        Arc::new(spellings(sink_port).into_iter().map(|t| t.0).collect());
    let app = axum::Router::new().route(
        "/to/{n}",
        axum::routing::any(move |axum::extract::Path(n): axum::extract::Path<usize>| {
            hits.fetch_add(1, Ordering::SeqCst);
            let t = targets[n].clone();
            async move { Redirect::temporary(&t).into_response() }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    base
}

#[tokio::test(flavor = "multi_thread")]
async fn url_upload_redirects_to_loopback_are_refused_at_the_hop() {
    let sink_hits = Arc::new(AtomicUsize::new(0));
    let port = sink(sink_hits.clone()).await;
    let src_hits = Arc::new(AtomicUsize::new(0));
    let src = redirecting_source(port, src_hits.clone()).await;
    let s = Server::start(Opts::default().config("allowed_private_targets = [\"127.0.0.2\"]\n"));
    let (_, key) = s.account_with_key("ssrf", "1");
    let all = spellings(port);
    for (n, (u, is_name)) in all.iter().enumerate() {
        let v = url_upload(&s, &key, &format!("{src}/to/{n}")).await;
        refused_upload(&format!("redirect to {u}"), &v, *is_name);
    }
    assert_eq!(
        src_hits.load(Ordering::SeqCst),
        all.len(),
        "each first hop was fetched once"
    );
    assert_eq!(
        sink_hits.load(Ordering::SeqCst),
        0,
        "the sink saw a request"
    );
    assert_eq!(stored_files(&s), 0);
}

fn callback_opts(extra_toml: &str) -> Opts {
    Opts::default()
        .args(&["--webhook-retry-schedule", "0s,1s"])
        .config(&format!(
            "task_timeout = \"5s\"\nwebhook_timeout = \"2s\"\n{extra_toml}"
        ))
}

async fn create_task(s: &Server, key: &str, cb: &str) -> Value {
    post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(key),
        &json!({"model": "demo/text", "input": {"prompt": "p"}, "callBackUrl": cb}),
    )
    .await
    .2
}

/// Waits until the task's one delivery is in a final state; returns it.
async fn final_delivery(s: &Server, task: &str) -> Value {
    let mut last = Value::Null;
    let done = eventually(Duration::from_secs(30), || {
        let v = s.admin(&["webhook", "deliveries", "--task", task]);
        last = v.clone();
        async move {
            v.as_array().is_some_and(|a| {
                a.len() == 1 && matches!(a[0]["state"].as_str(), Some("refused" | "failed"))
            })
        }
    })
    .await;
    assert!(done.is_some(), "delivery for {task} did not end: {last}");
    last[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_refuse_every_loopback_spelling_and_send_nothing() {
    let hits = Arc::new(AtomicUsize::new(0));
    let port = sink(hits.clone()).await;
    let s = Server::start(callback_opts(""));
    let (_, key) = s.account_with_key("ssrf", "100");
    let mut by_name = Vec::new();
    for (u, is_name) in spellings(port) {
        let v = create_task(&s, &key, &u).await;
        if is_name {
            // a name is only known to be loopback once resolved: accepted now,
            // refused at delivery
            assert_eq!(v["code"], 200, "{u}: {v}");
            by_name.push((u, v["data"]["taskId"].as_str().unwrap().to_string()));
        } else {
            assert_eq!(
                v,
                json!({"code": 422, "msg": CALLBACK_FORBIDDEN, "data": null}),
                "{u}"
            );
        }
    }
    for (u, task) in &by_name {
        let d = final_delivery(&s, task).await;
        let err = d["lastError"].as_str().unwrap_or_default();
        if u.contains("localhost.") {
            assert!(
                (d["state"] == "refused" && err.contains("not allowed"))
                    || (d["state"] == "failed" && err.contains("could not be resolved")),
                "{u}: {d}"
            );
        } else {
            assert_eq!(d["state"], "refused", "{u}: {d}");
            assert!(
                err.contains("the target address is not allowed"),
                "{u}: {d}"
            );
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the sink saw a request");
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_redirects_to_loopback_are_not_followed() {
    let sink_hits = Arc::new(AtomicUsize::new(0));
    let port = sink(sink_hits.clone()).await;
    let src_hits = Arc::new(AtomicUsize::new(0));
    let src = redirecting_source(port, src_hits.clone()).await;
    let s = Server::start(callback_opts("allowed_private_targets = [\"127.0.0.2\"]\n"));
    let (_, key) = s.account_with_key("ssrf", "100");
    // the allow-list is exact: the sink's own addresses stay refused
    let v = create_task(&s, &key, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(v["code"], 422, "{v}");
    let n = spellings(port).len();
    let mut tasks = Vec::new();
    for i in 0..n {
        let v = create_task(&s, &key, &format!("{src}/to/{i}")).await;
        assert_eq!(v["code"], 200, "{v}");
        tasks.push(v["data"]["taskId"].as_str().unwrap().to_string());
    }
    for t in &tasks {
        let d = final_delivery(&s, t).await;
        assert_eq!(d["state"], "failed", "{d}");
        assert!(
            d["lastError"]
                .as_str()
                .unwrap_or_default()
                .contains("redirect not followed"),
            "{d}"
        );
    }
    // every attempt reached the allowed source (with retries), none the sink
    assert!(src_hits.load(Ordering::SeqCst) >= n);
    assert_eq!(
        sink_hits.load(Ordering::SeqCst),
        0,
        "the sink saw a request"
    );
}
