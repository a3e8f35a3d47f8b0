//! Issue 16, Alerts: low-balance events enqueued in the balance change's own
//! transaction, delivered through the webhook outbox and signed in both schemes.

use crate::harness::*;
use crate::receiver::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

fn opts() -> Opts {
    Opts::default()
        .args(&[
            "--allow-private-targets",
            "--webhook-retry-schedule",
            "0s,1s",
        ])
        .config("webhook_timeout = \"1s\"\n")
}

/// The event types received so far, in order.
fn types(r: &Receiver) -> Vec<String> {
    r.all()
        .iter()
        .map(|d| d.json()["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Both schemes: Standard Webhooks over the body; KIE.AI's over `{event id}.{ts}`.
fn verify_signatures(key: &str, d: &Delivery) {
    let body = d.json();
    let event_id = body["id"].as_str().unwrap();
    let id = d.header("webhook-id");
    assert_eq!(id, event_id, "webhook-id is the event id");
    let std_ts = d.header("webhook-timestamp");
    let secret = B64.decode(key.strip_prefix("whsec_").unwrap()).unwrap();
    let mut msg = format!("{id}.{std_ts}.").into_bytes();
    msg.extend_from_slice(&d.body);
    assert_eq!(
        d.header("webhook-signature"),
        format!("v1,{}", hmac_b64(&secret, &msg)),
        "Standard Webhooks signature"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    kie_wire::webhook::verify_standard(
        key,
        &id,
        &std_ts,
        &d.header("webhook-signature"),
        &d.body,
        now,
        300,
    )
    .unwrap();
    let ts = d.header("x-webhook-timestamp");
    assert_eq!(
        d.header("x-webhook-signature"),
        hmac_b64(key.as_bytes(), format!("{event_id}.{ts}").as_bytes()),
        "KIE.AI signature with the event id"
    );
}

fn manage_key(s: &Server, acc: &str) -> String {
    let k = s.admin(&["key", "create", "--account", acc, "--manage"]);
    k["key"].as_str().unwrap().to_string()
}

fn webhook_key(s: &Server, acc: &str) -> String {
    s.admin(&["webhook-key", "generate", "--account", acc])["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn credits(s: &Server, what: &str, acc: &str, amount: &str) {
    s.admin(&["credits", what, "--account", acc, "--amount", amount]);
}

/// Deliveries without a task of the account still pending in the outbox.
fn pending_alerts(s: &Server, acc: &str) -> i64 {
    let rows = s.sql(&format!(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE account_id = '{acc}' AND task_id IS NULL AND state = 'pending'"
    ));
    rows[0][0].parse().unwrap()
}

fn alert_rows(s: &Server, acc: &str) -> i64 {
    let rows = s.sql(&format!(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE account_id = '{acc}' AND task_id IS NULL"
    ));
    rows[0][0].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn crossings_send_exactly_one_signed_event_each() {
    let s = Server::start(opts());
    let (acc, task_key) = s.account_with_key("alerts", "100");
    let key = manage_key(&s, &acc);
    let wkey = webhook_key(&s, &acc);
    let rcv = receiver(200).await;
    let url = s.url("/api/v1/account/alerts");

    // Only a management key.
    let (_, _, v) = get_json(&url, Some(&task_key)).await;
    assert_eq!(v["code"], 401, "{v}");
    // Validation names the field.
    for (body, field) in [
        (json!({"warn": -1}), "warn"),
        (json!({"critical": "x"}), "critical"),
        (json!({"url": "ftp://example.com/"}), "url"),
        (json!({"warn": 10, "critical": 20}), "critical"),
    ] {
        let (_, _, v) = post_json(&url, Some(&key), &body).await;
        assert_eq!(v["code"], 422, "{body}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let (_, _, v) = post_json(
        &url,
        Some(&key),
        &json!({"warn": 50, "critical": "20.5", "url": format!("{}/alert", rcv.base)}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["data"]["warn"], json!(50));
    assert_eq!(v["data"]["critical"], json!(20.5));
    assert_eq!(v["data"]["state"], "ok");
    let (_, _, v) = get_json(&url, Some(&key)).await;
    assert_eq!(v["data"]["url"], format!("{}/alert", rcv.base));

    // 100 → 60: above warning, nothing.
    credits(&s, "deduct", &acc, "40");
    // 60 → 45: below warning: one balance.warning.
    credits(&s, "deduct", &acc, "15");
    let got = rcv.wait_for(1).await;
    let ev = got[0].json();
    assert_eq!(ev["type"], "balance.warning", "{ev}");
    assert_eq!(ev["data"]["account"], acc.as_str());
    assert_eq!(ev["data"]["available"].as_f64(), Some(45.0));
    assert_eq!(ev["data"]["threshold"].as_f64(), Some(50.0));
    assert!(ev["createdAt"].is_number(), "{ev}");
    verify_signatures(&wkey, &got[0]);
    // 45 → 44: still below warning, nothing. 44 → 14: below critical.
    credits(&s, "deduct", &acc, "1");
    credits(&s, "deduct", &acc, "30");
    let got = rcv.wait_for(2).await;
    let ev = got[1].json();
    assert_eq!(ev["type"], "balance.critical", "{ev}");
    assert_eq!(ev["data"]["available"].as_f64(), Some(14.0));
    assert_eq!(ev["data"]["threshold"].as_f64(), Some(20.5));
    verify_signatures(&wkey, &got[1]);
    // 14 → 24 (between the thresholds) → 54: one balance.recovered; 54 → 55 nothing.
    credits(&s, "grant", &acc, "10");
    credits(&s, "grant", &acc, "30");
    credits(&s, "grant", &acc, "1");
    let got = rcv.wait_for(3).await;
    let ev = got[2].json();
    assert_eq!(ev["type"], "balance.recovered", "{ev}");
    assert_eq!(ev["data"]["available"].as_f64(), Some(54.0));
    assert_eq!(ev["data"]["threshold"].as_f64(), Some(50.0));
    verify_signatures(&wkey, &got[2]);

    // Nothing more is pending or was enqueued: exactly three events.
    assert!(
        eventually(Duration::from_secs(10), || async {
            pending_alerts(&s, &acc) == 0
        })
        .await
        .is_some(),
        "an alert delivery is still pending"
    );
    assert_eq!(alert_rows(&s, &acc), 3);
    // a delivery leaves `pending` only after the receiver answered: it has them all
    assert_eq!(
        types(&rcv),
        ["balance.warning", "balance.critical", "balance.recovered"]
    );
    // The admin listing shows them (the event id in the task id's place).
    let list = s.admin(&["webhook", "deliveries"]);
    let evs: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["taskId"].as_str().unwrap().starts_with("evt_"))
        .collect();
    assert_eq!(evs.len(), 3, "{list}");
    assert!(evs.iter().all(|d| d["state"] == "delivered"), "{list}");

    // The test button's endpoint enqueues a sample event.
    let (_, _, v) = post_json(
        &s.url("/api/v1/account/alerts/test"),
        Some(&key),
        &json!({}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let got = rcv.wait_for(4).await;
    let ev = got[3].json();
    assert_eq!(ev["id"], v["data"]["eventId"]);
    assert_eq!(ev["test"], true);
    verify_signatures(&wkey, &got[3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_hold_crossing_the_threshold_alerts() {
    let s = Server::start(opts().demo());
    let (acc, task_key) = s.account_with_key("holds", "10");
    let key = manage_key(&s, &acc);
    let wkey = webhook_key(&s, &acc);
    let rcv = receiver(200).await;
    let (_, _, v) = post_json(
        &s.url("/api/v1/account/alerts"),
        Some(&key),
        &json!({"warn": 9, "url": format!("{}/alert", rcv.base)}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    // demo/image costs 2: the hold takes the available balance from 10 to 8.
    let (_, _, v) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&task_key),
        &json!({"model": "demo/image", "input": {"prompt": "a fox"}}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let got = rcv.wait_for(1).await;
    let ev = got[0].json();
    assert_eq!(ev["type"], "balance.warning", "{ev}");
    assert_eq!(ev["data"]["available"].as_f64(), Some(8.0));
    verify_signatures(&wkey, &got[0]);
    // The settlement keeps the available balance at 8: nothing more.
    let tid = v["data"]["taskId"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let (_, _, r) = get_json(
                &s.url(&format!("/api/v1/jobs/recordInfo?taskId={tid}")),
                Some(&task_key),
            )
            .await;
            r["data"]["state"] == "success"
        })
        .await
        .is_some(),
        "the task finishes"
    );
    assert!(eventually(Duration::from_secs(10), || async {
        pending_alerts(&s, &acc) == 0
    })
    .await
    .is_some());
    assert_eq!(alert_rows(&s, &acc), 1);
    assert_eq!(types(&rcv), ["balance.warning"]);
}

/// Runs `kie ARGS --json` (a client command) with `key`; asserts success.
fn kie_json(s: &Server, key: &str, args: &[&str]) -> Value {
    let out = std::process::Command::new(KIE)
        .args(args)
        .arg("--json")
        .env("KIE_API_KEY", key)
        .env("KIE_BASE_URL", &s.base)
        .env("KIE_RETRY_BASE", "10ms")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kie {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn console_page_cli_and_openapi() {
    let s = Server::start(opts());
    let rcv = receiver(200).await;
    let (mut b, acc) = crate::console::holder(&s, "owl", "100").await;
    let wkey = webhook_key(&s, &acc);
    let page = b.get("/console/alerts").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("not available yet"), "{}", page.body);
    // Nothing changes without the CSRF token.
    let p = b.post("/console/alerts", &[("warn", "70")]).await;
    assert_eq!(p.status, 403);
    assert_eq!(
        s.sql(&format!(
            "SELECT COALESCE(CAST(alert_warn AS TEXT), 'none') FROM accounts WHERE id = '{acc}'"
        ))[0][0],
        "none"
    );
    // A bad value is named, and nothing is saved.
    let p = b
        .post(
            "/console/alerts",
            &[
                ("csrf", page.csrf().as_str()),
                ("warn", "x"),
                ("critical", ""),
                ("url", ""),
            ],
        )
        .await;
    assert!(
        p.body.contains("Invalid field &#39;warn&#39;") || p.body.contains("Invalid field 'warn'"),
        "{}",
        p.body
    );
    let url = format!("{}/alert", rcv.base);
    let p = b
        .post(
            "/console/alerts",
            &[
                ("csrf", page.csrf().as_str()),
                ("warn", "70"),
                ("critical", "30"),
                ("url", url.as_str()),
            ],
        )
        .await;
    assert!(p.body.contains("Alerts saved."), "{}", p.body);
    assert_eq!(
        s.sql(&format!(
            "SELECT alert_warn, alert_critical, alert_url FROM accounts WHERE id = '{acc}'"
        ))[0],
        ["7000", "3000", url.as_str()]
    );
    // The test button.
    let p = b
        .post("/console/alerts/test", &[("csrf", page.csrf().as_str())])
        .await;
    assert!(p.body.contains("Test event"), "{}", p.body);
    let got = rcv.wait_for(1).await;
    assert_eq!(got[0].json()["test"], true);
    verify_signatures(&wkey, &got[0]);

    // The CLI, with a management key.
    let key = manage_key(&s, &acc);
    let v = kie_json(&s, &key, &["alerts", "show"]);
    assert_eq!(v["warn"], json!(70));
    assert_eq!(v["critical"], json!(30));
    assert_eq!(v["state"], "ok");
    let v = kie_json(
        &s,
        &key,
        &["alerts", "set", "--warn", "80.5", "--critical", "40"],
    );
    assert_eq!(v["warn"], json!(80.5));
    assert_eq!(v["url"], url.as_str());
    let v = kie_json(&s, &key, &["alerts", "test"]);
    let got = rcv.wait_for(2).await;
    assert_eq!(got[1].json()["id"], v["eventId"]);
    // A deduct across the new warning threshold.
    credits(&s, "deduct", &acc, "20");
    let got = rcv.wait_for(3).await;
    assert_eq!(got[2].json()["type"], "balance.warning");
    assert_eq!(got[2].json()["data"]["threshold"].as_f64(), Some(80.5));

    // The Callbacks page lists the events as events, not as tasks.
    let page = b.get("/console/callbacks").await;
    assert!(page.body.contains("balance event"), "{}", page.body);
    assert!(!page.body.contains("/console/tasks/evt_"), "{}", page.body);

    let (_, _, doc) = get_json(&s.url("/openapi.json"), None).await;
    assert!(doc["paths"]["/api/v1/account/alerts"]["get"].is_object());
    assert!(doc["paths"]["/api/v1/account/alerts"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/account/alerts/test"]["post"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deducts_from_many_processes_cross_once() {
    let s = Server::start(opts());
    let n2 = s.second_node();
    let (acc, _) = s.account_with_key("race", "100");
    let key = manage_key(&s, &acc);
    let rcv = receiver(200).await;
    let (_, _, v) = post_json(
        &s.url("/api/v1/account/alerts"),
        Some(&key),
        &json!({"warn": 50, "url": format!("{}/alert", rcv.base)}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    // Ten deducts of 6 at once (ten kie admin processes, two nodes running): 100 → 40.
    let mut kids = Vec::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { &s } else { &n2 };
        kids.push(
            node.admin_cmd(&["credits", "deduct", "--account", &acc, "--amount", "6"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let got = rcv.wait_for(1).await;
    assert!(eventually(Duration::from_secs(10), || async {
        pending_alerts(&s, &acc) == 0
    })
    .await
    .is_some());
    // a delivery leaves `pending` only after the receiver answered: it has them all
    assert_eq!(alert_rows(&s, &acc), 1);
    assert_eq!(types(&rcv), ["balance.warning"]);
    assert_eq!(got[0].json()["data"]["threshold"].as_f64(), Some(50.0));
}
