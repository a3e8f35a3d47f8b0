//! Issue 16, Callbacks: the webhook key roll with an overlap (both keys verify the
//! Standard Webhooks signature until the grace period ends, then only the new one), and
//! redeliver / replay as JSON endpoints and `kie callbacks` commands.

use crate::harness::*;
use crate::receiver::*;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// One attempt per delivery (schedule "0s": a failed attempt is final).
fn opts() -> Opts {
    Opts::default()
        .args(&["--allow-private-targets", "--webhook-retry-schedule", "0s"])
        .config("webhook_timeout = \"2s\"\n")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Does `key` verify the delivery's Standard Webhooks signature?
fn standard_ok(key: &str, d: &Delivery) -> bool {
    kie_wire::webhook::verify_standard(
        key,
        &d.header("webhook-id"),
        &d.header("webhook-timestamp"),
        &d.header("webhook-signature"),
        &d.body,
        unix_now(),
        300,
    )
    .is_ok()
}

/// Does `key` make the delivery's KIE.AI signature (over `{event id}.{ts}`)?
fn kie_ok(key: &str, d: &Delivery) -> bool {
    let id = d.json()["id"].as_str().unwrap().to_string();
    let ts = d.header("x-webhook-timestamp");
    d.header("x-webhook-signature") == hmac_b64(key.as_bytes(), format!("{id}.{ts}").as_bytes())
}

/// Runs `kie ARGS` (a client command) against `s` with `key`: (success, stdout, stderr).
fn kie(s: &Server, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(KIE)
        .args(args)
        .env("KIE_API_KEY", key)
        .env("KIE_BASE_URL", &s.base)
        .env("KIE_RETRY_BASE", "10ms")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn kie_json(s: &Server, key: &str, args: &[&str]) -> Value {
    let (ok, out, err) = kie(s, key, args);
    assert!(ok, "kie {args:?}: {err}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    serde_json::from_str(&out).unwrap()
}

fn manage_key(s: &Server, acc: &str) -> String {
    let k = s.admin(&["key", "create", "--account", acc, "--manage"]);
    k["key"].as_str().unwrap().to_string()
}

async fn set_alert_url(s: &Server, key: &str, url: &str) {
    let (_, _, v) = post_json(
        &s.url("/api/v1/account/alerts"),
        Some(key),
        &json!({ "url": url }),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
}

/// Enqueues a sample alert event: its id.
async fn test_event(s: &Server, key: &str) -> String {
    let (_, _, v) = post_json(&s.url("/api/v1/account/alerts/test"), Some(key), &json!({})).await;
    assert_eq!(v["code"], 200, "{v}");
    v["data"]["eventId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_webhook_key_overlaps_then_only_the_new_one_signs() {
    let s = Server::start(opts());
    let (acc, task_key) = s.account_with_key("roll", "10");
    let mgr = manage_key(&s, &acc);
    let old = s.admin(&["webhook-key", "generate", "--account", &acc])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let rcv = receiver(200).await;
    set_alert_url(&s, &mgr, &format!("{}/alert", rcv.base)).await;
    let key_url = s.url("/api/v1/account/callbacks/key");
    let roll_url = s.url("/api/v1/account/callbacks/key/roll");

    // Only a management key reads or rolls the webhook key.
    let (_, _, v) = get_json(&key_url, Some(&task_key)).await;
    assert_eq!(v["code"], 401, "{v}");
    assert!(v["data"].is_null(), "{v}");
    let (_, _, v) = post_json(&roll_url, Some(&task_key), &json!({})).await;
    assert_eq!(v["code"], 401, "{v}");
    let (ok, _, err) = kie(&s, &task_key, &["callbacks", "key", "roll"]);
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let (_, _, v) = get_json(&key_url, Some(&mgr)).await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(
        v["data"]["key"],
        old.as_str(),
        "unchanged by the refused rolls"
    );
    assert!(v["data"]["previousValidUntil"].is_null(), "{v}");
    // A bad grace is refused, naming the field.
    for g in ["soon", "31d"] {
        let (_, _, v) = post_json(&roll_url, Some(&mgr), &json!({ "grace": g })).await;
        assert_eq!(v["code"], 422, "{v}");
        assert!(v["msg"].as_str().unwrap().contains("grace"), "{v}");
    }

    // Roll with an hour's overlap (the CLI, --json).
    let before = now_ms();
    let r = kie_json(
        &s,
        &mgr,
        &["callbacks", "key", "roll", "--grace", "1h", "--json"],
    );
    let new = r["key"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new != old, "{r}");
    assert_eq!(r["account"], acc.as_str());
    let until = r["previousValidUntil"].as_i64().unwrap();
    assert!(
        until >= before + 3_600_000 && until <= now_ms() + 3_600_000,
        "{r}"
    );
    let shown = kie_json(&s, &mgr, &["callbacks", "key", "show", "--json"]);
    assert_eq!(shown["key"], new.as_str());
    assert_eq!(shown["previousValidUntil"], until);

    // During the overlap: two Standard Webhooks signatures, each key verifies; the
    // KIE.AI signature is the new key's.
    let ev = test_event(&s, &mgr).await;
    let d = rcv.wait_for(1).await.remove(0);
    assert_eq!(d.header("webhook-id"), ev);
    let sig = d.header("webhook-signature");
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    assert!(sig.split(' ').all(|p| p.starts_with("v1,")), "{sig}");
    assert!(standard_ok(&new, &d), "the new key verifies");
    assert!(standard_ok(&old, &d), "the old key still verifies");
    assert!(!standard_ok(&kie_wire::webhook::generate_key(), &d));
    assert!(kie_ok(&new, &d) && !kie_ok(&old, &d));
    // the CLI's verifier agrees (the old key, the two-entry header)
    let body_file = s.tmp().path().join("overlap-body.json");
    std::fs::write(&body_file, &d.body).unwrap();
    for k in [&old, &new] {
        let (ok, out, err) = kie(
            &s,
            "",
            &[
                "webhook",
                "verify",
                "--key",
                k,
                "--timestamp",
                &d.header("webhook-timestamp"),
                "--webhook-id",
                &ev,
                "--standard-signature",
                &sig,
                "--body",
                body_file.to_str().unwrap(),
            ],
        );
        assert!(ok, "{out} {err}");
    }

    // Roll again with a 2 s overlap: once it has passed (the server says so), only the
    // newest key signs.
    let r = kie_json(
        &s,
        &mgr,
        &["callbacks", "key", "roll", "--grace", "2s", "--json"],
    );
    let newer = r["key"].as_str().unwrap().to_string();
    assert!(r["previousValidUntil"].as_i64().unwrap() <= now_ms() + 2_000);
    let ev = test_event(&s, &mgr).await;
    let d = rcv.wait_for(2).await.remove(1);
    if d.header("webhook-signature").split(' ').count() == 2 {
        // still within the 2 s
        assert!(standard_ok(&newer, &d) && standard_ok(&new, &d));
    }
    assert!(!standard_ok(&old, &d), "the first key no longer signs");
    let ended = eventually(Duration::from_secs(10), || async {
        get_json(&key_url, Some(&mgr)).await.2["data"]["previousValidUntil"].is_null()
    })
    .await;
    assert!(ended.is_some(), "the overlap did not end");
    let ev2 = test_event(&s, &mgr).await;
    assert_ne!(ev, ev2);
    let d = rcv.wait_for(3).await.remove(2);
    assert_eq!(d.header("webhook-id"), ev2);
    let sig = d.header("webhook-signature");
    assert_eq!(sig.split(' ').count(), 1, "{sig}");
    assert!(standard_ok(&newer, &d));
    assert!(
        !standard_ok(&new, &d),
        "the previous key no longer verifies"
    );
    assert!(!standard_ok(&old, &d));
    assert!(kie_ok(&newer, &d));

    // --grace 0: replaced at once.
    let r = kie_json(
        &s,
        &mgr,
        &["callbacks", "key", "roll", "--grace", "0", "--json"],
    );
    let last = r["key"].as_str().unwrap().to_string();
    assert!(r["previousValidUntil"].is_null(), "{r}");
    test_event(&s, &mgr).await;
    let d = rcv.wait_for(4).await.remove(3);
    assert_eq!(d.header("webhook-signature").split(' ').count(), 1);
    assert!(standard_ok(&last, &d) && !standard_ok(&newer, &d));
    // the plain output prints the key and nothing else on stdout
    let (ok, out, _) = kie(&s, &mgr, &["callbacks", "key", "show"]);
    assert!(ok);
    assert_eq!(out.trim(), last);

    // the operator's command rolls too
    let r = s.admin(&["webhook-key", "roll", "--account", &acc, "--grace", "1h"]);
    let by_admin = r["key"].as_str().unwrap().to_string();
    assert_ne!(by_admin, last);
    let until = r["previousValidUntil"].as_i64().unwrap();
    assert!(until > now_ms() + 3_500_000, "{r}");
    let shown = kie_json(&s, &mgr, &["callbacks", "key", "show", "--json"]);
    assert_eq!(shown["key"], by_admin.as_str());
    assert_eq!(shown["previousValidUntil"], until);
    test_event(&s, &mgr).await;
    let d = rcv.wait_for(5).await.remove(4);
    assert!(standard_ok(&by_admin, &d) && standard_ok(&last, &d));
    let out = s.admin_raw(&["webhook-key", "roll", "--account", &acc, "--grace", "99d"]);
    assert!(!out.status.success());

    // the endpoints are documented
    let (_, _, doc) = get_json(&s.url("/openapi.json"), None).await;
    assert!(doc["paths"]["/api/v1/account/callbacks/key"]["get"].is_object());
    assert!(doc["paths"]["/api/v1/account/callbacks/key/roll"]["post"].is_object());
}

/// Polls `kie callbacks list --json` until the deliveries `ids` have `status`.
async fn wait_status(s: &Server, key: &str, ids: &[&str], status: &str) -> Vec<Value> {
    let mut last = Vec::new();
    let ok = eventually(Duration::from_secs(20), || {
        let v = kie_json(s, key, &["callbacks", "list", "--json"]);
        let list = v.as_array().unwrap().clone();
        let done = ids.iter().all(|id| {
            list.iter()
                .any(|d| d["id"].as_str() == Some(id) && d["status"] == status)
        });
        last = list;
        async move { done }
    })
    .await;
    assert!(ok.is_some(), "{ids:?} not {status}: {last:?}");
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliver_and_replay_through_the_cli() {
    let s = Server::start(opts());
    let (acc, task_key) = s.account_with_key("replay", "10");
    let mgr = manage_key(&s, &acc);
    let rcv = receiver(500).await;
    set_alert_url(&s, &mgr, &format!("{}/alert", rcv.base)).await;
    let since =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(60))
            .to_string();

    // Three events; the receiver fails them all (one attempt each: failed).
    let a = test_event(&s, &mgr).await;
    let b = test_event(&s, &mgr).await;
    let c = test_event(&s, &mgr).await;
    let list = wait_status(&s, &task_key, &[&a, &b, &c], "failed").await;
    assert!(
        list.iter()
            .filter(|d| [&a, &b, &c].contains(&&d["id"].as_str().unwrap().to_string()))
            .all(|d| d["attempts"] == 1 && d["lastStatus"] == 500),
        "{list:?}"
    );
    assert_eq!(rcv.all().len(), 3);
    // balance alert events are listed as events: taskId null, their evt_ id under event
    for id in [&a, &b, &c] {
        let d = list.iter().find(|d| d["id"] == id.as_str()).unwrap();
        assert!(id.starts_with("evt_"), "{id}");
        assert_eq!(d["taskId"], Value::Null, "{d}");
        assert_eq!(d["event"], id.as_str(), "{d}");
    }
    let (ok, out, _) = kie(&s, &task_key, &["callbacks", "list"]);
    assert!(ok);
    assert!(out.contains(&format!("event {a}")), "{out}");
    let (_, _, v) = get_json(&s.url("/api/v1/account/callbacks"), Some(&task_key)).await;
    assert_eq!(v["data"][0]["taskId"], Value::Null, "{v}");
    assert!(
        v["data"][0]["event"].as_str().unwrap().starts_with("evt_"),
        "{v}"
    );

    // The receiver is fixed. Redeliver one (any key of the account may).
    rcv.status.store(200, Ordering::SeqCst);
    let r = kie_json(&s, &task_key, &["callbacks", "redeliver", &a, "--json"]);
    assert_eq!(r, json!({"id": a, "status": "pending"}));
    let list = wait_status(&s, &task_key, &[&a], "delivered").await;
    for id in [&b, &c] {
        let d = list.iter().find(|d| d["id"] == id.as_str()).unwrap();
        assert_eq!(d["status"], "failed", "{d}");
    }
    let got = rcv.all();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].header("webhook-id"), a);
    assert_eq!(got[3].answered, 200);
    // the three first attempts ran concurrently: a's is whichever arrived with its id
    let first_a = got[..3]
        .iter()
        .find(|r| r.header("webhook-id") == a)
        .expect("a's first attempt");
    assert_eq!(got[3].body, first_a.body, "the same body");

    // Unknown or another account's: refused, nothing queued.
    let (ok, _, err) = kie(&s, &task_key, &["callbacks", "redeliver", "evt_nope"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (other, other_key) = s.account_with_key("other", "1");
    assert_ne!(other, acc);
    let (ok, _, err) = kie(&s, &other_key, &["callbacks", "redeliver", &b]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/account/callbacks/{b}/redeliver")),
        Some(&other_key),
        &json!({}),
    )
    .await;
    assert_eq!(v["code"], 404, "{v}");
    let (_, _, v) = post_json(
        &s.url("/api/v1/account/callbacks/replay"),
        Some(&other_key),
        &json!({"since": 0}),
    )
    .await;
    assert_eq!(v["data"]["count"], 0, "{v}");
    // a bad since
    let (_, _, v) = post_json(
        &s.url("/api/v1/account/callbacks/replay"),
        Some(&task_key),
        &json!({"since": "yesterday"}),
    )
    .await;
    assert_eq!(v["code"], 422, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("since"), "{v}");
    // since a time after them: nothing
    let later =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    let r = kie_json(
        &s,
        &task_key,
        &["callbacks", "replay", "--since", &later, "--json"],
    );
    assert_eq!(r, json!({"count": 0}));
    assert_eq!(rcv.all().len(), 4);

    // Replay every failed one since before them: the two left, once each.
    let r = kie_json(
        &s,
        &task_key,
        &["callbacks", "replay", "--since", &since, "--json"],
    );
    assert_eq!(r, json!({"count": 2}));
    wait_status(&s, &task_key, &[&a, &b, &c], "delivered").await;
    let got = rcv.all();
    assert_eq!(got.len(), 6, "each failed delivery once more");
    let mut ids: Vec<String> = got[4..].iter().map(|d| d.header("webhook-id")).collect();
    ids.sort();
    let mut want = vec![b.clone(), c.clone()];
    want.sort();
    assert_eq!(ids, want);
    // nothing failed is left
    let r = kie_json(
        &s,
        &task_key,
        &["callbacks", "replay", "--since", &since, "--json"],
    );
    assert_eq!(r, json!({"count": 0}));
    // plain output
    let (ok, out, _) = kie(&s, &task_key, &["callbacks", "replay", "--since", &since]);
    assert!(ok);
    assert_eq!(out.trim(), "0 failed deliveries queued again");
    let (ok, out, _) = kie(&s, &task_key, &["callbacks", "redeliver", &c]);
    assert!(ok);
    assert_eq!(out.trim(), format!("{c}: queued for one more attempt"));

    let (_, _, doc) = get_json(&s.url("/openapi.json"), None).await;
    assert!(doc["paths"]["/api/v1/account/callbacks/{id}/redeliver"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/account/callbacks/replay"]["post"].is_object());
}

/// A delivery whose attempt is in flight (still `pending`) cannot be redelivered: 422,
/// and it is attempted once.
#[tokio::test(flavor = "multi_thread")]
async fn redelivering_a_pending_delivery_is_refused() {
    // a long attempt timeout: the attempt stays in flight until the receiver answers
    let s = Server::start(
        Opts::default()
            .args(&["--allow-private-targets", "--webhook-retry-schedule", "0s"])
            .config("webhook_timeout = \"60s\"\n"),
    );
    let (acc, task_key) = s.account_with_key("inflight", "10");
    let mgr = manage_key(&s, &acc);
    // a receiver that holds each request until released
    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (a2, r2) = (arrived.clone(), release.clone());
    let app = axum::Router::new().fallback(move || {
        let (a, r) = (a2.clone(), r2.clone());
        async move {
            a.notify_one();
            r.notified().await;
            StatusCode::OK
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    set_alert_url(&s, &mgr, &format!("{base}/alert")).await;
    let ev = test_event(&s, &mgr).await;
    tokio::time::timeout(Duration::from_secs(20), arrived.notified())
        .await
        .expect("the attempt arrives");
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/account/callbacks/{ev}/redeliver")),
        Some(&task_key),
        &json!({}),
    )
    .await;
    assert_eq!(v["code"], 422, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("pending"), "{v}");
    let (ok, _, err) = kie(&s, &task_key, &["callbacks", "redeliver", &ev]);
    assert!(!ok && err.contains("pending"), "{err}");
    release.notify_one();
    wait_status(&s, &task_key, &[&ev], "delivered").await;
    let rows = s.sql(&format!(
        "SELECT CAST(attempts AS TEXT) FROM webhook_deliveries WHERE id = '{ev}'"
    ));
    assert_eq!(rows[0][0], "1");
}
