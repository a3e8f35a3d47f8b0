//! Jobs benchmark client (run by `bench/jobs.sh` against a release `kie serve`).
//!
//! Creates N `demo/text` tasks with C in flight, each with a `callBackUrl` pointing at
//! a local receiver, and measures:
//! * end-to-end tasks per second: first creation to last callback received;
//! * completion-to-callback latency: receipt time at the receiver minus the task's
//!   `completeTime` (from the callback body), median and p90.
//!
//! Usage: bench_jobs BASE_URL API_KEY [N=5000] [C=64]

use axum::body::Bytes;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_jobs BASE_URL API_KEY [N] [C]");
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_string();
    let key = args[2].clone();
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let c: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(64);

    // The receiver: records (receipt time, completeTime) of every callback.
    let (tx, mut rx) = mpsc::unbounded_channel::<(f64, f64)>();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let tx = tx.clone();
        async move {
            let at = now_ms_f64();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let done = v["data"]["completeTime"].as_f64().unwrap_or(f64::NAN);
            let _ = tx.send((at, done));
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(c)
        .build()
        .unwrap();
    let next = Arc::new(Mutex::new(0usize));
    let failures = Arc::new(Mutex::new(0usize));
    let start = Instant::now();
    let mut creators = Vec::new();
    for _ in 0..c {
        let (client, base, key, hook, next, failures) = (
            client.clone(),
            base.clone(),
            key.clone(),
            hook.clone(),
            next.clone(),
            failures.clone(),
        );
        creators.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut g = next.lock().unwrap();
                    if *g >= n {
                        return;
                    }
                    *g += 1;
                    *g
                };
                let body = serde_json::json!({
                    "model": "demo/text",
                    "input": {"prompt": format!("bench {i}")},
                    "callBackUrl": hook,
                });
                let r = client
                    .post(format!("{base}/api/v1/jobs/createTask"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .map(|v| v["code"] == 200)
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if !ok {
                    *failures.lock().unwrap() += 1;
                }
            }
        }));
    }
    for h in creators {
        h.await.unwrap();
    }
    let created_in = start.elapsed();
    let failed = *failures.lock().unwrap();
    let expected = n - failed;
    let mut lat = Vec::with_capacity(expected);
    while lat.len() < expected {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some((at, done))) => lat.push(at - done),
            _ => break,
        }
    }
    let total = start.elapsed();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("tasks: {n} (concurrency {c}), creation failures: {failed}");
    println!(
        "created in {:.2} s ({:.0} creations/s)",
        created_in.as_secs_f64(),
        n as f64 / created_in.as_secs_f64()
    );
    println!(
        "callbacks received: {} in {:.2} s → {:.0} tasks/s end to end",
        lat.len(),
        total.as_secs_f64(),
        lat.len() as f64 / total.as_secs_f64()
    );
    println!(
        "completion → callback latency: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}
