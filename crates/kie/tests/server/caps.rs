//! Issue 15 item 5: per-key usage caps (code 433) and IP allowlists (401), and the
//! management scope of keys (issue 16), through `kie admin key …` and real `kie serve`
//! processes. Caps run on the backend `KIE_TEST_BACKEND` names; the two-node test
//! always runs on PostgreSQL.

use crate::harness::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const WORKER_TOKEN: &str = "wt-caps-81c2";

/// `ext/echo` (price 3) is only ever finished by the test through the worker protocol,
/// so every hold stays pending until the test resolves it. No creation rate limit.
fn opts() -> Opts {
    Opts::default()
        .args(&["--worker-token", WORKER_TOKEN])
        .config(
            "task_timeout = \"5m\"\ntask_rate = 0\n\
             [pricing]\ndownload_url = \"0.5\"\n\
             [models.\"ext/echo\"]\nprice = \"3\"\nkind = \"external\"\n",
        )
}

fn task() -> Value {
    json!({"model": "ext/echo", "input": {"text": "hi"}})
}

/// Fires `n` createTask requests at once, alternating between `nodes`; returns the
/// body codes.
async fn burst(nodes: &[&Server], key: &str, n: usize) -> Vec<i64> {
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = nodes[i % nodes.len()].url("/api/v1/jobs/createTask");
        let (c, key) = (c.clone(), key.to_string());
        set.spawn(async move {
            let r = c.post(url).bearer_auth(key).json(&task()).send().await;
            let v: Value = r.unwrap().json().await.unwrap();
            if v["code"] == 433 {
                assert_eq!(
                    v,
                    json!({"code": 433, "msg": "Sub-key usage exceeds limit", "data": null})
                );
            }
            v["code"].as_i64().unwrap()
        });
    }
    let mut codes = Vec::new();
    while let Some(r) = set.join_next().await {
        codes.push(r.unwrap());
    }
    codes
}

/// Milliseconds left in the current UTC hour (the hourly and daily caps' buckets end on
/// full hours).
fn left_in_hour() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    3_600_000 - now % 3_600_000
}

/// A test that counts hourly or daily usage must not straddle a bucket boundary: with
/// less than a minute left in the hour, wait (on the clock) for the next one.
async fn away_from_bucket_boundary() {
    if left_in_hour() < 60_000 {
        let next = eventually(Duration::from_secs(70), || async {
            left_in_hour() > 60_000
        });
        assert!(next.await.is_some());
    }
}

fn count(codes: &[i64], code: i64) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

fn show(s: &Server, acc: &str) -> (Value, Value) {
    let v = s.admin(&["credits", "show", "--account", acc]);
    (v["available"].clone(), v["held"].clone())
}

fn key_of(s: &Server, acc: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["key", "create", "--account", acc];
    args.extend_from_slice(extra);
    let k = s.admin(&args);
    (
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    )
}

/// Claims the oldest waiting task and fails it (its hold is voided).
async fn fail_one(s: &Server) -> String {
    let (st, _, v) = post_json(
        &s.url("/internal/v1/worker/claim"),
        Some(WORKER_TOKEN),
        &json!({"models": ["ext/echo"], "waitMs": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let id = v["data"]["taskId"]
        .as_str()
        .expect("a waiting task")
        .to_string();
    let (st, _, v) = post_json(
        &s.url(&format!("/internal/v1/worker/tasks/{id}/fail")),
        Some(WORKER_TOKEN),
        &json!({"failCode": "500", "failMsg": "test"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    id
}

/// The key usage invariant of `ledger.rs`, for every key: `used_total` = pending holds'
/// amounts + posted holds' charges + deducts made through the key; nothing negative.
pub fn check_key_usage(s: &Server) {
    let rows = s.sql(
        "SELECT k.id, k.used_total, \
         (SELECT COALESCE(SUM(CASE WHEN h.state = 'pending' THEN h.amount \
            WHEN h.state = 'posted' THEN h.charged ELSE 0 END), 0) FROM holds h WHERE h.key_id = k.id) \
         + (SELECT COALESCE(SUM(-e.amount), 0) FROM ledger_entries e \
            WHERE e.key_id = k.id AND e.kind = 'deduct'), \
         k.hour_used, k.day_used FROM api_keys k",
    );
    for r in rows {
        assert_eq!(r[1], r[2], "key usage vs ledger: {r:?}");
        assert!(
            r[1..].iter().all(|v| v.parse::<i64>().unwrap() >= 0),
            "{r:?}"
        );
    }
}

fn pending_holds(s: &Server, key_id: &str) -> i64 {
    s.sql(&format!(
        "SELECT COUNT(*) FROM holds WHERE key_id = '{key_id}' AND state = 'pending'"
    ))[0][0]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_creations_take_exactly_what_each_cap_allows_and_voids_give_back() {
    for which in ["hourly", "daily", "total"] {
        // a server of its own: the worker claims the oldest task of any account
        let s = Server::start(opts());
        away_from_bucket_boundary().await;
        let acc = s.admin(&["account", "create", "--name", which, "--credits", "1000"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        // 16 credits: room for exactly 5 tasks at 3
        let flag = format!("--cap-{which}");
        let (key_id, key) = key_of(&s, &acc, &[&flag, "16"]);
        let codes = burst(&[&s], &key, 32).await;
        assert_eq!(
            (count(&codes, 200), count(&codes, 433)),
            (5, 27),
            "{which}: {codes:?}"
        );
        assert_eq!(show(&s, &acc), (json!(985), json!(15)), "{which}");
        assert_eq!(pending_holds(&s, &key_id), 5, "{which}");
        let k = s.admin(&["key", "show", &key_id]);
        assert_eq!(k["usage"][which], json!(15), "{which}: {k}");
        assert_eq!(k["usage"]["total"], json!(15), "{which}: {k}");

        // a failed task voids its hold and gives its 3 credits back to the cap
        fail_one(&s).await;
        assert_eq!(show(&s, &acc), (json!(988), json!(12)), "{which}");
        assert_eq!(
            s.admin(&["key", "show", &key_id])["usage"][which],
            json!(12)
        );
        let codes = burst(&[&s], &key, 8).await;
        assert_eq!(
            (count(&codes, 200), count(&codes, 433)),
            (1, 7),
            "{which}: {codes:?}"
        );
        assert_eq!(show(&s, &acc), (json!(985), json!(15)), "{which}");

        // another key of the same account is not limited by this one's cap
        let (_, other) = key_of(&s, &acc, &[]);
        let codes = burst(&[&s], &other, 2).await;
        assert_eq!(count(&codes, 200), 2, "{which}: {codes:?}");

        // raising the cap applies to the next request
        s.admin(&["key", "update", &key_id, &flag, "19"]);
        let codes = burst(&[&s], &key, 4).await;
        assert_eq!(
            (count(&codes, 200), count(&codes, 433)),
            (1, 3),
            "{which}: {codes:?}"
        );
        s.admin(&["key", "update", &key_id, &flag, "none"]);
        let codes = burst(&[&s], &key, 3).await;
        assert_eq!(count(&codes, 200), 3, "{which}: {codes:?}");
        // nothing refused was written: the ledger's sums still match
        assert_eq!(
            show(&s, &acc),
            (json!(1000 - 3 * 11), json!(3 * 11)),
            "{which}"
        );
        check_key_usage(&s);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn priced_links_count_against_the_cap() {
    let s = Server::start(opts());
    let acc = s.admin(&["account", "create", "--name", "links", "--credits", "10"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    away_from_bucket_boundary().await;
    let (key_id, key) = key_of(&s, &acc, &["--cap-daily", "4"]);
    let src = s.tmp().path().join("capped.txt");
    std::fs::write(&src, b"capped").unwrap();
    let f = s.admin(&["file", "add", "--account", &acc, src.to_str().unwrap()]);
    let url = f["url"].as_str().unwrap().to_string();
    // one task (3) and two links (0.5 each) fill the 4 credits; the next link is refused
    let codes = burst(&[&s], &key, 1).await;
    assert_eq!(codes, [200_i64]);
    let link = || async {
        post_json(
            &s.url("/api/v1/common/download-url"),
            Some(&key),
            &json!({ "url": url }),
        )
        .await
        .2
    };
    assert_eq!(link().await["code"], 200);
    assert_eq!(link().await["code"], 200);
    assert_eq!(
        link().await,
        json!({"code": 433, "msg": "Sub-key usage exceeds limit", "data": null})
    );
    assert_eq!(show(&s, &acc), (json!(6), json!(3)));
    let k = s.admin(&["key", "show", &key_id]);
    assert_eq!(k["usage"], json!({"hourly": 4, "daily": 4, "total": 4}));
    let hist = s.admin(&["credits", "history", "--account", &acc]);
    let deducts = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "deduct")
        .count();
    assert_eq!(deducts, 2);
    check_key_usage(&s);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_never_exceed_a_cap_together() {
    let tmp = Arc::new(TempDir::new());
    let db = Arc::new(TestDb::postgres());
    let a = Server::start_in(opts(), tmp, db);
    let b = a.second_node();
    away_from_bucket_boundary().await;
    let acc = a.admin(&["account", "create", "--name", "two", "--credits", "1000"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // 22 credits: exactly 7 tasks at 3
    let (key_id, key) = key_of(&a, &acc, &["--cap-total", "22", "--cap-hourly", "100"]);
    let codes = burst(&[&a, &b], &key, 32).await;
    assert_eq!(
        (count(&codes, 200), count(&codes, 433)),
        (7, 25),
        "{codes:?}"
    );
    assert_eq!(show(&a, &acc), (json!(979), json!(21)));
    assert_eq!(pending_holds(&a, &key_id), 7);
    // a void on one node makes room for exactly one more, whichever node takes it
    fail_one(&b).await;
    let codes = burst(&[&a, &b], &key, 16).await;
    assert_eq!(
        (count(&codes, 200), count(&codes, 433)),
        (1, 15),
        "{codes:?}"
    );
    assert_eq!(show(&a, &acc), (json!(979), json!(21)));
    assert_eq!(
        a.admin(&["key", "show", &key_id])["usage"],
        json!({"hourly": 21, "daily": 21, "total": 21})
    );
    check_key_usage(&a);

    // an allowlist set by kie admin reaches both running nodes
    a.admin(&["key", "update", &key_id, "--allow-ip", "10.0.0.0/8"]);
    for n in [&a, &b] {
        let url = n.url("/api/v1/chat/credit");
        let took = eventually(Duration::from_secs(5), || {
            let (u, k) = (url.clone(), key.clone());
            async move { get_json(&u, Some(&k)).await.2["code"] == 401 }
        })
        .await;
        assert!(took.is_some(), "{} still accepts the key", n.base);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_refuses_other_addresses_without_revealing_itself() {
    let s = Server::start(opts());
    let acc = s.admin(&["account", "create", "--name", "ips", "--credits", "10"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let credit = s.url("/api/v1/chat/credit");
    let (key_id, key) = key_of(&s, &acc, &["--allow-ip", "10.0.0.0/8"]);
    let (_, _, v) = get_json(&credit, Some(&key)).await;
    assert_eq!(v["code"], 401, "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("IP address") && msg.contains("not allowed"),
        "{msg}"
    );
    assert!(!v.to_string().contains("10.0.0.0"), "{v}");
    // every authenticated route refuses it, and nothing is held
    let (_, _, v) = post_json(&s.url("/api/v1/jobs/createTask"), Some(&key), &task()).await;
    assert_eq!(v["code"], 401, "{v}");
    assert!(!v.to_string().contains("10.0.0.0"), "{v}");
    let (_, _, v) = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "aGVsbG8=", "uploadPath": "tmp", "fileName": "h.txt"}),
    )
    .await;
    assert_eq!(v["code"], 401, "{v}");
    assert!(!v.to_string().contains("10.0.0.0"), "{v}");
    assert_eq!(show(&s, &acc), (json!(10), json!(0)));

    // allowing loopback takes effect on the running server
    s.admin(&["key", "update", &key_id, "--allow-ip", "127.0.0.0/8"]);
    let ok = eventually(Duration::from_secs(5), || async {
        get_json(&credit, Some(&key)).await.2["code"] == 200
    })
    .await;
    assert!(ok.is_some(), "the updated allowlist was not applied");
    let (_, _, v) = post_json(&s.url("/api/v1/jobs/createTask"), Some(&key), &task()).await;
    assert_eq!(v["code"], 200, "{v}");

    // and taking it away again too
    s.admin(&["key", "update", &key_id, "--allow-ip", "192.0.2.0/24"]);
    let refused = eventually(Duration::from_secs(5), || async {
        get_json(&credit, Some(&key)).await.2["code"] == 401
    })
    .await;
    assert!(refused.is_some(), "the narrowed allowlist was not applied");
    s.admin(&["key", "update", &key_id, "--clear-allow-ip"]);
    let ok = eventually(Duration::from_secs(5), || async {
        get_json(&credit, Some(&key)).await.2["code"] == 200
    })
    .await;
    assert!(ok.is_some(), "clearing the allowlist was not applied");

    // a key created with a loopback allowlist works at once
    let (_, local) = key_of(&s, &acc, &["--allow-ip", "127.0.0.1", "--allow-ip", "::1"]);
    assert_eq!(get_json(&credit, Some(&local)).await.2["code"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_commands_show_caps_allowlist_and_scope() {
    let s = Server::start(opts());
    let acc = s.admin(&["account", "create", "--name", "cli", "--credits", "1"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let plain = s.admin(&["key", "create", "--account", &acc]);
    assert_eq!(
        plain["caps"],
        json!({"hourly": null, "daily": null, "total": null})
    );
    assert_eq!(plain["allowIps"], json!([]));
    assert_eq!(plain["manage"], json!(false));

    let k = s.admin(&[
        "key",
        "create",
        "--account",
        &acc,
        "--cap-hourly",
        "1.5",
        "--cap-total",
        "10",
        "--allow-ip",
        "10.1.2.3/8",
        "--allow-ip",
        "192.0.2.7",
        "--manage",
    ]);
    assert_eq!(
        k["caps"],
        json!({"hourly": 1.5, "daily": null, "total": 10})
    );
    assert_eq!(k["allowIps"], json!(["10.0.0.0/8", "192.0.2.7/32"]));
    assert_eq!(k["manage"], json!(true));
    let id = k["id"].as_str().unwrap().to_string();

    let u = s.admin(&[
        "key",
        "update",
        &id,
        "--cap-hourly",
        "none",
        "--cap-daily",
        "2.25",
        "--allow-ip",
        "2001:db8::1/32",
        "--no-manage",
    ]);
    assert_eq!(
        u["caps"],
        json!({"hourly": null, "daily": 2.25, "total": 10})
    );
    assert_eq!(u["allowIps"], json!(["2001:db8::/32"]));
    assert_eq!(u["manage"], json!(false));
    assert_eq!(u["usage"], json!({"hourly": 0, "daily": 0, "total": 0}));
    assert_eq!(u["id"], json!(id));
    // flags not given are left as they are
    let u = s.admin(&["key", "update", &id, "--manage"]);
    assert_eq!(
        u["caps"],
        json!({"hourly": null, "daily": 2.25, "total": 10})
    );
    assert_eq!(u["allowIps"], json!(["2001:db8::/32"]));
    assert_eq!(u["manage"], json!(true));
    let u = s.admin(&[
        "key",
        "update",
        &id,
        "--clear-allow-ip",
        "--cap-total",
        "none",
    ]);
    assert_eq!(
        u["caps"],
        json!({"hourly": null, "daily": 2.25, "total": null})
    );
    assert_eq!(u["allowIps"], json!([]));
    assert_eq!(s.admin(&["key", "show", &id]), u);
    let listed = s.admin(&["key", "list", "--account", &acc]);
    assert_eq!(listed.as_array().unwrap()[1], u);

    // a rolled key keeps the settings
    s.admin(&["key", "update", &id, "--allow-ip", "127.0.0.1"]);
    let rolled = s.admin(&["key", "roll", &id]);
    assert_eq!(
        rolled["caps"],
        json!({"hourly": null, "daily": 2.25, "total": null})
    );
    assert_eq!(rolled["allowIps"], json!(["127.0.0.1/32"]));
    assert_eq!(rolled["manage"], json!(true));

    // refusals, each in one line, changing nothing
    for bad in [
        vec!["key", "update", &id, "--allow-ip", "10.0.0.0/33"],
        vec!["key", "update", &id, "--allow-ip", "nope"],
        vec!["key", "update", &id, "--cap-daily", "-1"],
        vec!["key", "update", &id, "--cap-daily", "0.001"],
        vec!["key", "update", &id],
        vec![
            "key",
            "update",
            &id,
            "--allow-ip",
            "10.0.0.0/8",
            "--clear-allow-ip",
        ],
        vec!["key", "update", &id, "--manage", "--no-manage"],
        vec!["key", "update", "key_nope", "--manage"],
    ] {
        let out = s.admin_raw(&bad);
        assert!(!out.status.success(), "{bad:?} succeeded");
    }
    assert_eq!(s.admin(&["key", "show", &id])["caps"]["daily"], json!(2.25));
    let help = s.admin_raw(&["key", "update", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["--cap-hourly", "--clear-allow-ip", "UTC", "433", "none"] {
        assert!(help.contains(word), "help lacks {word}: {help}");
    }
}
