//! Issue 7: group commit of SQLite writes keeps the ledger's semantics — under
//! concurrency exactly what the balance allows is held, a refused operation undoes only
//! itself, and an acknowledged write survives `kill -9`. Runs on both backends.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::HashSet;

/// Creation limit lifted, no demo workers: created tasks stay `waiting` and their holds
/// stay pending, so the ledger is still while we look at it.
fn opts() -> Opts {
    Opts::default().config("task_rate = 0\ndemo_workers = 0\n")
}

fn image(i: usize) -> Value {
    json!({"model": "demo/image", "input": {"prompt": format!("p{i}"), "width": 8, "height": 8}})
}

fn credits(s: &Server, acc: &str) -> (f64, f64, f64) {
    let show = s.admin(&["credits", "show", "--account", acc]);
    let hist = s.admin(&["credits", "history", "--account", acc]);
    let sum: f64 = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_f64().unwrap())
        .sum();
    let balance = show["balance"].as_f64().unwrap();
    assert!(
        (sum - balance).abs() < 1e-9,
        "balance {show} != sum of history {hist}"
    );
    (
        balance,
        show["held"].as_f64().unwrap(),
        show["available"].as_f64().unwrap(),
    )
}

fn task_ids(s: &Server, acc: &str) -> HashSet<String> {
    s.admin(&["task", "list", "--account", acc, "--limit", "10000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_holds_get_exactly_what_the_balance_allows() {
    let s = Server::start(opts());
    // demo/image costs 2 credits: 20 credits pay for exactly 10 of 64 creations.
    let (acc, key) = s.account_with_key("group", "20");
    let url = s.url("/api/v1/jobs/createTask");
    let mut handles = Vec::new();
    for i in 0..64 {
        let (url, key) = (url.clone(), key.clone());
        handles.push(tokio::spawn(async move {
            post_json(&url, Some(&key), &image(i)).await.2
        }));
    }
    let mut created = HashSet::new();
    let mut refused = 0;
    for h in handles {
        let r = h.await.unwrap();
        match r["code"].as_i64().unwrap() {
            200 => assert!(created.insert(r["data"]["taskId"].as_str().unwrap().to_string())),
            402 => refused += 1,
            other => panic!("unexpected {other}: {r}\nserver log:\n{}", s.log()),
        }
    }
    assert_eq!(created.len(), 10, "exactly what the balance allows");
    assert_eq!(refused, 54);
    assert_eq!(credits(&s, &acc), (20.0, 20.0, 0.0));
    // Every acknowledged task exists (readable at once) and the refused ones left nothing.
    assert_eq!(task_ids(&s, &acc), created);
    for id in &created {
        let (_, _, r) = get_json(
            &s.url(&format!("/api/v1/jobs/recordInfo?taskId={id}")),
            Some(&key),
        )
        .await;
        assert_eq!(r["data"]["state"], "waiting", "{r}");
        assert_eq!(r["data"]["remainedCredits"], json!(0), "{r}");
    }
    // The balance reads back immediately after the acknowledgments.
    let (_, _, c) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
    assert_eq!(c["data"], json!(0), "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_holds_survive_kill_9() {
    let mut s = Server::start(opts());
    let (acc, key) = s.account_with_key("crash", "1000");
    let url = s.url("/api/v1/jobs/createTask");
    // 64 clients create tasks as fast as they can; the server is killed right after the
    // 100th acknowledgment, with writes still in flight.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut handles = Vec::new();
    for c in 0..64 {
        let (url, key, tx) = (url.clone(), key.clone(), tx.clone());
        handles.push(tokio::spawn(async move {
            for i in 0.. {
                let sent = reqwest::Client::new()
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&image(c * 1000 + i))
                    .send()
                    .await;
                let Ok(resp) = sent else { return };
                let Ok(r) = resp.json::<Value>().await else {
                    return;
                };
                if r["code"] == 200
                    && tx
                        .send(r["data"]["taskId"].as_str().unwrap().into())
                        .is_err()
                {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut acked = HashSet::new();
    while acked.len() < 100 {
        acked.insert(rx.recv().await.expect("creations go on"));
    }
    s.kill();
    // Anything acknowledged before the kill landed (SIGKILL: no shutdown path ran).
    while let Ok(id) = rx.try_recv() {
        acked.insert(id);
    }
    for h in handles {
        h.await.unwrap();
    }
    while let Ok(id) = rx.try_recv() {
        acked.insert(id);
    }
    let s = Server::start_in(s.opts.clone(), s.tmp(), s.db.clone());
    let stored = task_ids(&s, &acc);
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // The ledger and the tasks agree: one 2-credit hold per stored task, no more.
    let (balance, held, _) = credits(&s, &acc);
    assert_eq!(balance, 1000.0);
    assert_eq!(held, 2.0 * stored.len() as f64, "{} tasks", stored.len());
    for id in acked.iter().take(5) {
        let (_, _, r) = get_json(
            &s.url(&format!("/api/v1/jobs/recordInfo?taskId={id}")),
            Some(&key),
        )
        .await;
        assert_eq!(r["data"]["state"], "waiting", "{r}");
    }
}
