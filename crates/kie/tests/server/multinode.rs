//! Issue 6: several `kie serve` nodes on one PostgreSQL database behave as one service.
//!
//! Every test here starts two real server processes on a fresh database of the shared
//! PostgreSQL (whatever `KIE_TEST_BACKEND` says: a shared database is what scale-out
//! means) and drives them concurrently. If PostgreSQL is unreachable the tests fail.

use crate::harness::*;
use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Two nodes sharing one fresh PostgreSQL database (and, for local files, one data dir).
fn two_nodes(opts: Opts) -> (Server, Server) {
    let tmp = Arc::new(TempDir::new());
    let db = Arc::new(TestDb::postgres());
    let a = Server::start_in(opts, tmp, db);
    let b = a.second_node();
    (a, b)
}

/// One value from the shared database (`psql -tA`).
fn sql(s: &Server, query: &str) -> String {
    let url = s.db.url.as_deref().expect("a PostgreSQL database");
    let out = run_psql(Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-tAc", query]));
    assert!(
        out.status.success(),
        "psql {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sql_i64(s: &Server, query: &str) -> i64 {
    let v = sql(s, query);
    v.parse()
        .unwrap_or_else(|_| panic!("{query} gave {v:?}, not an integer"))
}

async fn code_of(url: &str, key: &str) -> i64 {
    get_json(url, Some(key)).await.2["code"].as_i64().unwrap()
}

/// Polls until `url` answers `code` on every node, within `limit` (measured from now).
async fn all_nodes_answer(nodes: &[&Server], path: &str, key: &str, code: i64, limit: Duration) {
    for n in nodes {
        let url = n.url(path);
        let took = eventually(limit, || {
            let u = url.clone();
            async move { code_of(&u, key).await == code }
        })
        .await;
        assert!(
            took.is_some(),
            "{} still does not answer {code} on {path} after {limit:?}",
            n.base
        );
    }
}

/// Fires `n` createTask requests at once, alternating between the nodes; returns the
/// body codes in request order.
async fn create_burst(nodes: &[&Server], key: &str, n: usize, body: Value) -> Vec<i64> {
    let c = client();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = nodes[i % nodes.len()].url("/api/v1/jobs/createTask");
        let c = c.clone();
        let key = key.to_string();
        let body = body.clone();
        set.spawn(async move {
            let r = c
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let http = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            let code = v["code"].as_i64().unwrap();
            // compat mode: HTTP 200 for everything but rate limiting
            assert_eq!(http, if code == 429 { 429 } else { 200 }, "{v}");
            (i, code)
        });
    }
    let mut codes = vec![0; n];
    while let Some(r) = set.join_next().await {
        let (i, code) = r.unwrap();
        codes[i] = code;
    }
    codes
}

/// The error lines of the nodes' logs, for failure messages.
fn errors_logged(nodes: &[&Server]) -> String {
    let mut out = String::new();
    for n in nodes {
        for l in n.log().lines().filter(|l| l.contains("ERROR")) {
            out += "\n";
            out += l;
        }
    }
    out
}

fn count(codes: &[i64], code: i64) -> usize {
    codes.iter().filter(|c| **c == code).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn key_revoked_or_rolled_on_one_node_is_refused_by_all_within_5s() {
    let (a, b) = two_nodes(Opts::default());
    let (_, key) = a.account_with_key("multi-revoke", "5");
    let path = "/api/v1/chat/credit";
    // both nodes have the key in their auth cache
    for n in [&a, &b] {
        assert_eq!(code_of(&n.url(path), &key).await, 200);
    }
    let keys = a.admin(&["key", "list"]);
    let id = keys[0]["id"].as_str().unwrap().to_string();
    a.admin(&["key", "revoke", &id]);
    all_nodes_answer(&[&a, &b], path, &key, 401, Duration::from_secs(5)).await;

    // roll without grace: the new key works everywhere, the old one stops everywhere
    let (_, old) = b.account_with_key("multi-roll", "5");
    for n in [&a, &b] {
        assert_eq!(code_of(&n.url(path), &old).await, 200);
    }
    let rolled = b.admin(&["key", "roll", &old[..12]]);
    let new = rolled["key"].as_str().unwrap().to_string();
    all_nodes_answer(&[&a, &b], path, &old, 401, Duration::from_secs(5)).await;
    for n in [&a, &b] {
        assert_eq!(code_of(&n.url(path), &new).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_holds_through_both_nodes_never_overspend() {
    // no workers: every accepted task keeps its hold, so exactly balance/price succeed
    let (a, b) = two_nodes(Opts::default().config("demo_workers = 0\ntask_rate = 0\n"));
    let (acc, key) = a.account_with_key("multi-holds", "10");
    // demo/text costs 0.50: 20 tasks fit in 10 credits, 64 are asked for at once
    let codes = create_burst(
        &[&a, &b],
        &key,
        64,
        json!({"model": "demo/text", "input": {"prompt": "p"}}),
    )
    .await;
    assert_eq!(
        count(&codes, 200),
        20,
        "{codes:?}{}",
        errors_logged(&[&a, &b])
    );
    assert_eq!(
        count(&codes, 402),
        44,
        "{codes:?}{}",
        errors_logged(&[&a, &b])
    );
    // both nodes took part in the successes
    let ok_a = codes.iter().step_by(2).filter(|c| **c == 200).count();
    assert!(ok_a > 0 && ok_a < 20, "accepted through node A: {ok_a}");

    let q = |s: &str| s.replace("ACC", &acc);
    assert_eq!(
        sql_i64(&a, &q("SELECT balance FROM accounts WHERE id = 'ACC'")),
        1000
    );
    assert_eq!(
        sql_i64(&a, &q("SELECT held FROM accounts WHERE id = 'ACC'")),
        1000
    );
    assert_eq!(
        sql_i64(
            &a,
            &q("SELECT SUM(amount) FROM ledger_entries WHERE account_id = 'ACC'")
        ),
        1000,
        "balance = sum of the ledger"
    );
    assert_eq!(
        sql_i64(
            &a,
            &q("SELECT SUM(held_delta) FROM ledger_entries WHERE account_id = 'ACC'")
        ),
        1000,
        "held = sum of the holds"
    );
    assert_eq!(
        sql_i64(
            &a,
            &q("SELECT COUNT(*) FROM holds WHERE account_id = 'ACC' AND state = 'pending'")
        ),
        20
    );
    assert_eq!(
        sql_i64(
            &a,
            &q("SELECT COUNT(*) FROM tasks WHERE account_id = 'ACC'")
        ),
        20
    );
    for n in [&a, &b] {
        let (_, _, v) = get_json(&n.url("/api/v1/chat/credit"), Some(&key)).await;
        assert_eq!(v["data"], json!(0), "{v}");
    }
    let shown = b.admin(&["credits", "show", "--account", &acc]);
    assert_eq!(shown["available"], json!(0), "{shown}");

    // grants and holds racing through both nodes and the admin tool: still exact
    let granter = {
        let a_dd = a.data_dir.clone();
        let url = a.db.url.clone().unwrap();
        let acc = acc.clone();
        std::thread::spawn(move || {
            for i in 0..5 {
                let out = Command::new(KIE)
                    .args(["admin", "--data-dir"])
                    .arg(&a_dd)
                    .args(["--database-url", &url, "--json", "credits", "grant"])
                    .args(["--account", &acc, "--amount", "1"])
                    .args(["--idempotency-key", &format!("multi-grant-{i}")])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    };
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // keep asking until the 5 granted credits (10 tasks) are used up
    let done = eventually(Duration::from_secs(30), || {
        let (a, b, key, accepted) = (&a, &b, &key, accepted.clone());
        async move {
            let codes = create_burst(
                &[a, b],
                key,
                8,
                json!({"model": "demo/text", "input": {"prompt": "q"}}),
            )
            .await;
            let now = count(&codes, 200)
                + accepted.fetch_add(count(&codes, 200), std::sync::atomic::Ordering::SeqCst);
            now >= 10
        }
    })
    .await;
    granter.join().unwrap();
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(done.is_some(), "accepted only {accepted} after the grants");
    assert_eq!(accepted, 10, "exactly the granted credits were spent");
    assert_eq!(
        sql_i64(
            &a,
            &q("SELECT balance - held FROM accounts WHERE id = 'ACC'")
        ),
        0
    );
    assert_eq!(
        sql_i64(
            &a,
            &q("SELECT SUM(amount) FROM ledger_entries WHERE account_id = 'ACC'")
        ),
        1500
    );
    assert_eq!(
        sql_i64(
            &a,
            &q("SELECT COUNT(*) FROM accounts WHERE balance < held OR held < 0")
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn task_creation_limit_holds_across_nodes() {
    let (a, b) = two_nodes(
        Opts::default().config("demo_workers = 0\ntask_rate = 7\ntask_rate_window = \"1h\"\n"),
    );
    let (acc, key) = a.account_with_key("multi-rate", "100");
    let codes = create_burst(
        &[&a, &b],
        &key,
        40,
        json!({"model": "demo/text", "input": {"prompt": "p"}}),
    )
    .await;
    assert_eq!(count(&codes, 200), 7, "{codes:?}");
    assert_eq!(count(&codes, 429), 33, "{codes:?}");
    assert_eq!(
        sql_i64(
            &a,
            &format!("SELECT COUNT(*) FROM tasks WHERE account_id = '{acc}'")
        ),
        7
    );
    // refused requests held nothing
    assert_eq!(
        sql_i64(&a, &format!("SELECT held FROM accounts WHERE id = '{acc}'")),
        7 * 50
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_and_feature_flags_set_once_apply_to_every_node() {
    let (a, b) = two_nodes(Opts::default());
    let (_, key) = a.account_with_key("multi-flags", "5");
    let path = "/api/v1/chat/credit";
    let limit = Duration::from_secs(5);
    all_nodes_answer(&[&a, &b], path, &key, 200, limit).await;
    a.admin(&["maintenance", "on"]);
    all_nodes_answer(&[&a, &b], path, &key, 455, limit).await;
    b.admin(&["maintenance", "off"]);
    all_nodes_answer(&[&a, &b], path, &key, 200, limit).await;
    b.admin(&["feature", "disable", "credits"]);
    all_nodes_answer(&[&a, &b], path, &key, 505, limit).await;
    a.admin(&["feature", "enable", "credits"]);
    all_nodes_answer(&[&a, &b], path, &key, 200, limit).await;
}

/// The operator API on two nodes: a grant through one is seen by the account on the
/// other, maintenance set through one node's API ends through the other's (the
/// operator API answers in maintenance), and a revoked operator token is refused by
/// both on its next request.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_api_acts_once_for_every_node() {
    let (a, b) = two_nodes(Opts::default());
    let (acc, key) = a.account_with_key("multi-op", "1");
    let t = a.admin(&["operator-token", "create", "--name", "ops"]);
    let token = t["token"].as_str().unwrap().to_string();
    let (_, _, v) = post_json(
        &a.url(&format!("/api/v1/admin/accounts/{acc}/credits")),
        Some(&token),
        &json!({"op": "grant", "amount": 4, "reason": "multi", "idempotencyKey": "m-1"}),
    )
    .await;
    assert_eq!(v["data"]["available"], json!(5), "{v}");
    wait_for_credit(&b, &key, &json!(5)).await;
    // the same key through the other node: the first result, nothing granted twice
    let (_, _, v) = post_json(
        &b.url(&format!("/api/v1/admin/accounts/{acc}/credits")),
        Some(&token),
        &json!({"op": "grant", "amount": 4, "reason": "multi", "idempotencyKey": "m-1"}),
    )
    .await;
    assert_eq!(v["data"]["replayed"], true, "{v}");
    assert_eq!(v["data"]["available"], json!(5), "{v}");

    let limit = Duration::from_secs(5);
    let path = "/api/v1/chat/credit";
    let (_, _, v) = post_json(
        &a.url("/api/v1/admin/settings"),
        Some(&token),
        &json!({"maintenance": true}),
    )
    .await;
    assert_eq!(v["data"]["maintenance"], true, "{v}");
    all_nodes_answer(&[&a, &b], path, &key, 455, limit).await;
    let (_, _, v) = post_json(
        &b.url("/api/v1/admin/settings"),
        Some(&token),
        &json!({"maintenance": false}),
    )
    .await;
    assert_eq!(v["data"]["maintenance"], false, "{v}");
    all_nodes_answer(&[&a, &b], path, &key, 200, limit).await;

    b.admin(&["operator-token", "revoke", t["id"].as_str().unwrap()]);
    for n in [&a, &b] {
        let (_, _, v) = get_json(&n.url("/api/v1/admin/health"), Some(&token)).await;
        assert_eq!(v["code"], 401, "{}: {v}", n.base);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn links_signed_by_one_node_verify_on_the_other_across_a_rotation() {
    // behind a load balancer every node has the same public URL
    let public = "http://kie.test";
    let (a, b) = two_nodes(Opts::default().args(&["--public-url", public]));
    let (acc, key) = a.account_with_key("multi-links", "10");
    let file = a.tmp().path().join("hello.txt");
    std::fs::write(&file, b"hello from node A").unwrap();
    let added = a.admin(&["file", "add", "--account", &acc, file.to_str().unwrap()]);
    let file_url = added["url"].as_str().unwrap().to_string();
    assert!(file_url.starts_with(public), "{file_url}");

    let link_via = |s: &Server| {
        let url = s.url("/api/v1/common/download-url");
        let (key, file_url) = (key.clone(), file_url.clone());
        async move {
            let (_, _, v) = post_json(&url, Some(&key), &json!({ "url": file_url })).await;
            assert_eq!(v["code"], 200, "{v}");
            v["data"].as_str().unwrap().to_string()
        }
    };
    let fetch_on = |s: &Server, link: &str| {
        let url = link.replacen(public, &s.base, 1);
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status(), r.bytes().await.unwrap())
        }
    };
    let key_id = |link: &str| {
        let u = reqwest::Url::parse(link).unwrap();
        u.query_pairs()
            .find(|(k, _)| k == "k")
            .map(|(_, v)| v.to_string())
            .unwrap()
    };
    let from_a = link_via(&a).await;
    let from_b = link_via(&b).await;
    assert_eq!(key_id(&from_a), key_id(&from_b), "one shared ring");
    for (link, on) in [(&from_a, &b), (&from_b, &a)] {
        let (st, body) = fetch_on(on, link).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(&body[..], b"hello from node A");
    }

    let rot = b.admin(&["signing-key", "rotate"]);
    let new_id = rot["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, key_id(&from_a));
    // the next link from either node uses the new key once the node has seen the
    // rotation, made by another process (`kie admin`): within the bound on PostgreSQL
    // (tested in `links_see_local_changes_at_once_and_remote_ones_within_100ms`),
    // polled here, and the other node verifies it
    let mut newest = Vec::new();
    for n in [&a, &b] {
        let last = Mutex::new(String::new());
        let seen = eventually(Duration::from_secs(10), || async {
            let l = link_via(n).await;
            let fresh = key_id(&l) == new_id;
            *last.lock().unwrap() = l;
            fresh
        })
        .await;
        let last = last.into_inner().unwrap();
        assert!(seen.is_some(), "still signing with the old key: {last}");
        newest.push(last);
    }
    let (new_a, new_b) = (newest[0].clone(), newest[1].clone());
    assert_eq!(key_id(&new_a), new_id);
    assert_eq!(key_id(&new_b), new_id);
    for (link, on) in [(&new_a, &b), (&new_b, &a), (&from_a, &b), (&from_b, &a)] {
        let (st, body) = fetch_on(on, link).await;
        assert_eq!(st, StatusCode::OK, "{link}");
        assert_eq!(&body[..], b"hello from node A");
    }
    // a forged signature is refused on both
    let forged = new_a.replacen("&s=", "&s=A", 1);
    for n in [&a, &b] {
        assert_ne!(fetch_on(n, &forged).await.0, StatusCode::OK);
    }
}

/// A webhook receiver counting requests per task id: the first request of each task
/// fails (500), the next ones succeed.
struct Counter {
    base: String,
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

async fn counting_receiver() -> Counter {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let seen = s2.clone();
        async move {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let id = v["taskId"]
                .as_str()
                .or(v["data"]["taskId"].as_str())
                .unwrap_or("?")
                .to_string();
            let n = {
                let mut m = seen.lock().unwrap();
                let c = m.entry(id).or_default();
                *c += 1;
                *c
            };
            if n == 1 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Counter { base, seen }
}

/// Task ids of the webhook attempts a node logged (JSON logs, dispatcher at debug).
fn attempts_logged(s: &Server) -> Vec<String> {
    s.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "webhook attempt")
        .map(|v| v["task_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_webhook_attempt_is_made_by_exactly_one_node() {
    let rcv = counting_receiver().await;
    let opts = Opts::default()
        .args(&[
            "--allow-private-targets",
            "--webhook-retry-schedule",
            "0s,1s",
            "--log-format",
            "json",
        ])
        .env("KIE_LOG", "info,kie_server::webhooks::dispatch=debug")
        .config("task_rate = 0\ndemo_workers = 2\n");
    let (a, b) = two_nodes(opts);
    let (_, key) = a.account_with_key("multi-hooks", "100");
    let n = 80;
    let codes = create_burst(
        &[&a, &b],
        &key,
        n,
        json!({"model": "demo/text", "input": {"prompt": "p"},
               "callBackUrl": format!("{}/hook", rcv.base)}),
    )
    .await;
    assert_eq!(count(&codes, 200), n, "{codes:?}");
    // every callback fails once and is retried once: 2 requests per task
    let settled = eventually(Duration::from_secs(60), || async {
        sql_i64(
            &a,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE state <> 'pending'",
        ) == n as i64
    })
    .await;
    let delivered = sql_i64(
        &a,
        "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'delivered'",
    );
    assert!(
        settled.is_some() && delivered == n as i64,
        "deliveries: {}",
        sql(
            &a,
            "SELECT string_agg(state || ':' || attempts, ',') FROM webhook_deliveries"
        )
    );
    let seen = rcv.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), n, "{seen:?}");
    assert!(seen.values().all(|c| *c == 2), "{seen:?}");
    assert_eq!(
        sql_i64(&a, "SELECT COUNT(*) FROM webhook_attempts"),
        2 * n as i64
    );
    assert_eq!(
        sql_i64(
            &a,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE attempts <> 2"
        ),
        0
    );
    // both nodes dispatched, and no attempt was made twice
    let (la, lb) = (attempts_logged(&a), attempts_logged(&b));
    assert!(
        !la.is_empty() && !lb.is_empty(),
        "attempts per node: {} and {}",
        la.len(),
        lb.len()
    );
    eprintln!(
        "webhook attempts: node A {}, node B {} ({} tasks, 2 attempts each)",
        la.len(),
        lb.len(),
        n
    );
    let mut per_task: BTreeMap<String, u32> = BTreeMap::new();
    for t in la.iter().chain(lb.iter()) {
        *per_task.entry(t.clone()).or_default() += 1;
    }
    assert_eq!(per_task.len(), n);
    assert!(per_task.values().all(|c| *c == 2), "{per_task:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_deployment_config_runs_two_nodes() {
    // deploy/kie.toml as shipped; only what a test machine cannot have is overridden
    // by flags (which take precedence): port, data dir, database, local storage.
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kie.toml");
    let tmp = Arc::new(TempDir::new());
    let files = format!("file://{}", tmp.path().join("files").display());
    let opts =
        Opts::default().args(&["--config", cfg, "--storage", &files, "--log-format", "text"]);
    let a = Server::start_in(opts, tmp, Arc::new(TestDb::postgres()));
    let b = a.second_node();
    let (_, key) = a.account_with_key("deploy-example", "3");
    for n in [&a, &b] {
        let (st, _, v) = get_json(&n.url("/readyz"), None).await;
        assert_eq!((st, v["database"].clone()), (200, json!(true)), "{v}");
        let (_, _, v) = get_json(&n.url("/api/v1/chat/credit"), Some(&key)).await;
        assert_eq!(
            (v["code"].clone(), v["data"].clone()),
            (json!(200), json!(3)),
            "{v}"
        );
    }
    // the settings of the example are in force: public URL of the load balancer
    let acc = a.admin(&["account", "list"]);
    assert_eq!(acc.as_array().unwrap().len(), 1);
    assert!(a.log().contains("https://kie.example.com"), "{}", a.log());
}

async fn credit_of(s: &Server, key: &str) -> f64 {
    let (_, _, v) = get_json(&s.url("/api/v1/chat/credit"), Some(key)).await;
    assert_eq!(v["code"], 200, "{v}");
    v["data"].as_f64().expect("credit is a number")
}

/// Reads the credit three times on both nodes (each caches it), then holds 0.50
/// through node A (a demo/text task); A's next read shows it at once.
async fn cache_then_hold_through_a(a: &Server, b: &Server, key: &str) {
    for _ in 0..3 {
        assert_eq!(credit_of(a, key).await, 10.0);
        assert_eq!(credit_of(b, key).await, 10.0);
    }
    let (_, _, v) = post_json(
        &a.url("/api/v1/jobs/createTask"),
        Some(key),
        &json!({"model": "demo/text", "input": {"prompt": "p"}}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(credit_of(a, key).await, 9.5);
}

/// The stated bound for changes made elsewhere: a read that starts this long after a
/// change was acknowledged does not use an entry read before it (entries live that
/// long from the start of their read). The guarantee is about time, so this wait is
/// the condition under test, not a stand-in for one.
async fn past_the_bound() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Issue 14: what a credit read may see on PostgreSQL, where each node caches balances
/// (store::nodecache). A change made through a node is seen by that node's next read at
/// once — checked with a cache kept for an hour, so only the invalidation can make it
/// so; one acknowledged elsewhere (the other node, `kie admin`) by every read that
/// starts at least `balance_cache_ttl` (default 100 ms) after it was acknowledged.
#[tokio::test]
async fn credit_reads_see_local_changes_at_once_and_remote_ones_within_100ms() {
    // local changes, with entries that would otherwise stay an hour
    let (a, b) = two_nodes(
        Opts::default().config("demo_workers = 0\ntask_rate = 0\nbalance_cache_ttl = \"1h\"\n"),
    );
    let (_, key) = a.account_with_key("multi-credit", "10");
    // (without the invalidation A shows 10 after the hold: checked by removing it)
    cache_then_hold_through_a(&a, &b, &key).await;
    drop((a, b));

    // remote changes, default bound (100 ms)
    let (a, b) = two_nodes(Opts::default().config("demo_workers = 0\ntask_rate = 0\n"));
    let (acc, key) = a.account_with_key("multi-credit-2", "10");
    cache_then_hold_through_a(&a, &b, &key).await;
    past_the_bound().await;
    assert_eq!(credit_of(&b, &key).await, 9.5);
    // elsewhere: kie admin, another process; both nodes may have the old value cached
    assert_eq!(credit_of(&a, &key).await, 9.5);
    assert_eq!(credit_of(&b, &key).await, 9.5);
    a.admin(&["credits", "grant", "--account", &acc, "--amount", "5"]);
    past_the_bound().await;
    assert_eq!(credit_of(&a, &key).await, 14.5);
    assert_eq!(credit_of(&b, &key).await, 14.5);
}

/// Uploads `b"hello"` to `path/h.txt` through `n`; returns the file's URL.
async fn upload_hello(n: &Server, key: &str, path: &str) -> String {
    let (_, _, v) = post_json(
        &n.url("/api/file-base64-upload"),
        Some(key),
        &json!({"base64Data": "aGVsbG8=", "uploadPath": path, "fileName": "h.txt"}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");
    v["data"]["fileUrl"].as_str().unwrap().to_string()
}

/// `POST /api/v1/common/download-url` on `n`: `Ok(the link's signing key id)` or
/// `Err(code)`.
async fn link_key_on(n: &Server, key: &str, url: &str) -> Result<String, i64> {
    let (_, _, v) = post_json(
        &n.url("/api/v1/common/download-url"),
        Some(key),
        &json!({ "url": url }),
    )
    .await;
    match v["code"].as_i64() {
        Some(200) => {
            let link = reqwest::Url::parse(v["data"].as_str().expect("a link")).unwrap();
            let k = link
                .query_pairs()
                .find(|(k, _)| k == "k")
                .expect("k= in the link");
            Ok(k.1.to_string())
        }
        Some(code) => Err(code),
        None => panic!("{v}"),
    }
}

/// Rotates the signing key through `n`'s operator API; returns the new active key id.
async fn rotate_through(n: &Server, token: &str) -> String {
    let (_, _, v) = post_json(
        &n.url("/api/v1/admin/signing-key/rotate"),
        Some(token),
        &json!({}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    v["data"]["signingKey"]
        .as_str()
        .expect("key id")
        .to_string()
}

/// Issue 14 item 4: issuing a download link on PostgreSQL reads the file's record and
/// the active signing key from each node's cache (store::nodecache), under the credit
/// reads' rule. A change made through a node — a file replaced by an upload to its
/// path, a key rotation — is seen by that node's next link at once (checked with
/// entries kept for an hour, so only the invalidation can make it so); one made on the
/// other node by every link issued at least `balance_cache_ttl` (100 ms) later.
#[tokio::test]
async fn links_see_local_changes_at_once_and_remote_ones_within_100ms() {
    for (config, remote) in [("balance_cache_ttl = \"1h\"\n", false), ("", true)] {
        // behind a load balancer every node has the same public URL
        let opts = Opts::default().args(&["--public-url", "http://kie.test"]);
        let (a, b) = two_nodes(opts.config(config));
        let (_, key) = a.account_with_key("multi-links", "10");
        let token = a.admin(&["operator-token", "create"])["token"]
            .as_str()
            .unwrap()
            .to_string();
        let url = upload_hello(&a, &key, "docs").await;
        // both nodes link it (and cache its record and the active key)
        let mut first = None;
        for _ in 0..3 {
            for n in [&a, &b] {
                let k = link_key_on(n, &key, &url).await.expect("a link");
                assert_eq!(first.get_or_insert(k.clone()), &k);
            }
        }
        // the file is replaced (marked deleted) by an upload to its path through A
        let replacement = upload_hello(&a, &key, "docs").await;
        assert_ne!(replacement, url);
        // a rotation through A
        let rotated = rotate_through(&a, &token).await;
        assert_ne!(Some(&rotated), first.as_ref());
        let reader = if remote {
            past_the_bound().await;
            &b
        } else {
            &a
        };
        assert_eq!(
            link_key_on(reader, &key, &url).await,
            Err(404),
            "remote {remote}"
        );
        assert_eq!(
            link_key_on(reader, &key, &replacement).await,
            Ok(rotated),
            "remote {remote}"
        );
    }
}
