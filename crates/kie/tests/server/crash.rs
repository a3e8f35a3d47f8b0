//! Issue 8 (crash consistency): under mixed load — admin grants with idempotency keys,
//! task creations with callbacks, demo-worker completions, uploads — the server is
//! killed with SIGKILL at random points (seeded; the seed is printed, set
//! `KIE_CRASH_SEED` to replay) at least 20 times, and on a slow machine until at least
//! 20 tasks, an upload and a grant were acknowledged. After every restart:
//!
//! * balance = sum of posted entries, nothing negative (balance, held, available);
//! * every acknowledged grant, task and upload is there (uploads byte for byte);
//! * every stored file record has its bytes; after the sweeper's orphan pass no bytes
//!   lack a live record (staged temporary files included).
//!
//! At the end: every task reaches a final state, every hold is resolved exactly once
//! and agrees with the task's charge, nothing stays held, and every finished task with
//! a `callBackUrl` was delivered to the receiver (at least once, SPEC §6).

use crate::harness::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At least this many SIGKILLs, and at least this many acknowledged tasks.
const CYCLES: usize = 20;
/// The kill points are times (a random 0–1.5 s into each load phase), so how much load
/// a cycle gets through depends on the machine's speed: on a slow or busy machine the
/// run goes on past `CYCLES` until enough load got through, up to this many SIGKILLs.
const MAX_CYCLES: usize = 60;
const ACCOUNT: &str = "crashy";

#[derive(Default)]
struct Acked {
    /// grant number → amount in hundredths (exit status 0 seen)
    grants: BTreeMap<u64, i64>,
    /// every grant attempted (acked or not), to replay with the same key
    grants_tried: BTreeMap<u64, i64>,
    tasks: Vec<String>,
    /// file URL → bytes
    uploads: Vec<(String, Vec<u8>)>,
}

/// Whether enough load got through for the run to prove anything.
fn enough_load(a: &Acked) -> bool {
    a.tasks.len() >= CYCLES && !a.uploads.is_empty() && !a.grants.is_empty()
}

/// Callback receiver: task id → deliveries seen.
async fn receiver() -> (String, Arc<Mutex<HashMap<String, u32>>>) {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let s = s.clone();
        async move {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if let Some(id) = v["taskId"].as_str() {
                    *s.lock().unwrap().entry(id.to_string()).or_default() += 1;
                }
            }
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (base, seen)
}

fn multipart(path: &str, name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let b = "crashBoundary7";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\n{path}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"fileName\"\r\n\r\n{name}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

/// One load phase against `base` until `stop` flips. Only answers that arrived count
/// as acknowledged.
#[allow(clippy::too_many_arguments)] // one load phase: its target and shared tallies
async fn load(
    base: String,
    key: String,
    s: Arc<ServerHandle>,
    cb: String,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
    seed: u64,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut jobs = tokio::task::JoinSet::new();
    // task creators
    for w in 0..3u64 {
        let (http, base, key, cb, acked, stop, seq) = (
            http.clone(),
            base.clone(),
            key.clone(),
            cb.clone(),
            acked.clone(),
            stop.clone(),
            seq.clone(),
        );
        jobs.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let body = if n % 3 == 0 {
                    json!({"model": "demo/image", "input": {"prompt": format!("p{n}"), "width": 8, "height": 8}, "callBackUrl": format!("{cb}/t")})
                } else {
                    json!({"model": "demo/text", "input": {"prompt": format!("p{n} w{w}")}, "callBackUrl": format!("{cb}/t")})
                };
                let r = http
                    .post(format!("{base}/api/v1/jobs/createTask"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await;
                let Ok(r) = r else {
                    backoff().await;
                    continue;
                };
                let Ok(bytes) = r.bytes().await else { continue };
                let v: Value = serde_json::from_slice(&bytes).expect("an enveloped answer");
                assert_eq!(v["code"], 200, "createTask: {v}");
                acked
                    .lock()
                    .unwrap()
                    .tasks
                    .push(v["data"]["taskId"].as_str().unwrap().to_string());
            }
        });
    }
    // uploaders: base64 and streamed
    for w in 0..2u64 {
        let (http, base, key, acked, stop, seq) = (
            http.clone(),
            base.clone(),
            key.clone(),
            acked.clone(),
            stop.clone(),
            seq.clone(),
        );
        jobs.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ ((w + 1) * 7919));
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let len = rng.gen_range(1..64 * 1024);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let name = format!("f{n}.bin");
                let rb = if w == 0 {
                    use base64::Engine;
                    http.post(format!("{base}/api/file-base64-upload"))
                        .json(&json!({
                            "base64Data": base64::engine::general_purpose::STANDARD.encode(&data),
                            "uploadPath": format!("crash/{n}"),
                            "fileName": name,
                        }))
                } else {
                    let (ct, body) = multipart(&format!("crash/{n}"), &name, &data);
                    http.post(format!("{base}/api/file-stream-upload"))
                        .header("content-type", ct)
                        .body(body)
                };
                let Ok(r) = rb.bearer_auth(&key).send().await else {
                    backoff().await;
                    continue;
                };
                let Ok(bytes) = r.bytes().await else { continue };
                let v: Value = serde_json::from_slice(&bytes).expect("an enveloped answer");
                assert_eq!(v["code"], 200, "upload: {v}");
                let url = v["data"]["fileUrl"].as_str().unwrap().to_string();
                acked.lock().unwrap().uploads.push((url, data));
            }
        });
    }
    // grants through `kie admin` (straight to the database, competing with the server)
    {
        let (acked, stop, seq) = (acked.clone(), stop.clone(), seq.clone());
        jobs.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let amount = (n % 7 + 1) as i64 * 25; // 0.25 .. 1.75
                acked.lock().unwrap().grants_tried.insert(n, amount);
                let s2 = s.clone();
                let ok = tokio::task::spawn_blocking(move || s2.grant(n, amount))
                    .await
                    .unwrap();
                if ok {
                    acked.lock().unwrap().grants.insert(n, amount);
                }
            }
        });
    }
    while let Some(r) = jobs.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// Pause after a failed request (the server is down or restarting), so a loop does not
/// spin on refused connections.
async fn backoff() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// What the load needs from the server between restarts: `kie admin` on its store.
struct ServerHandle {
    data_dir: PathBuf,
    db_url: Option<String>,
    config: Option<PathBuf>,
}

impl ServerHandle {
    fn of(s: &Server) -> ServerHandle {
        ServerHandle {
            data_dir: s.data_dir.clone(),
            db_url: s.db.url.clone(),
            config: s.config_path.clone(),
        }
    }
    fn grant(&self, n: u64, amount: i64) -> bool {
        let mut cmd = std::process::Command::new(KIE);
        cmd.arg("admin").arg("--data-dir").arg(&self.data_dir);
        if let Some(u) = &self.db_url {
            cmd.arg("--database-url").arg(u);
        }
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let amount = format!("{}.{:02}", amount / 100, amount % 100);
        cmd.args([
            "credits",
            "grant",
            "--account",
            ACCOUNT,
            "--amount",
            &amount,
            "--reason",
            &format!("grant-{n}"),
            "--idempotency-key",
            &format!("g-{n}"),
            "--json",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
    }
}

fn hundredths(v: &Value) -> i64 {
    (v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) * 100.0).round() as i64
}

/// Ledger invariants through `kie admin`: balance = sum of entries, nothing negative,
/// every acknowledged grant present exactly once.
fn check_ledger(s: &Server, acked: &Acked) -> i64 {
    // Workers keep settling tasks between two commands: compare a balance and a history
    // read while nothing changed (the same balance before and after).
    let mut tries = 0;
    let (balance, entries) = loop {
        let show = s.admin(&["credits", "show", "--account", ACCOUNT]);
        let history = s.admin(&["credits", "history", "--account", ACCOUNT]);
        let again = s.admin(&["credits", "show", "--account", ACCOUNT]);
        tries += 1;
        if show != again && tries < 100 {
            continue;
        }
        assert_eq!(show, again, "the balance never stood still");
        let (balance, held, available) = (
            hundredths(&show["balance"]),
            hundredths(&show["held"]),
            hundredths(&show["available"]),
        );
        assert!(balance >= 0 && held >= 0 && available >= 0, "{show}");
        assert_eq!(available, balance - held, "{show}");
        let entries = history.as_array().unwrap().clone();
        let sum: i64 = entries.iter().map(|e| hundredths(&e["amount"])).sum();
        assert_eq!(sum, balance, "balance is not the sum of the entries");
        break (balance, entries);
    };
    // The same in one statement, held credits included.
    let row = &s.sql(
        "SELECT a.balance, a.held, (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries e WHERE e.account_id = a.id), \
         (SELECT COALESCE(SUM(held_delta), 0) FROM ledger_entries e WHERE e.account_id = a.id), \
         (SELECT COALESCE(SUM(amount), 0) FROM holds h WHERE h.account_id = a.id AND h.state = 'pending') \
         FROM accounts a",
    )[0];
    assert_eq!(row[0], row[2], "balance vs entries: {row:?}");
    assert_eq!(row[1], row[3], "held vs entries: {row:?}");
    assert_eq!(row[1], row[4], "held vs pending holds: {row:?}");
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    for e in &entries {
        if let Some(r) = e["reason"].as_str() {
            *reasons.entry(r).or_default() += 1;
        }
    }
    for (n, amount) in &acked.grants {
        let r = format!("grant-{n}");
        assert_eq!(
            reasons.get(r.as_str()),
            Some(&1),
            "acknowledged grant {n} ({amount})"
        );
    }
    // every hold resolved at most once
    let twice = s.sql(
        "SELECT hold_id FROM ledger_entries WHERE kind IN ('post','void') GROUP BY hold_id HAVING COUNT(*) > 1",
    );
    assert!(twice.is_empty(), "holds resolved twice: {twice:?}");
    // every key's usage counter agrees with the holds and charges made through it
    crate::caps::check_key_usage(s);
    balance
}

async fn check_after_restart(
    s: &Server,
    key: &str,
    acked: &Acked,
    new_tasks: &[String],
    new_uploads: &[(String, Vec<u8>)],
) {
    check_ledger(s, acked);
    // every acknowledged task of the last phase exists
    for id in new_tasks {
        let (st, _, v) = get_json(
            &s.url(&format!("/api/v1/jobs/recordInfo?taskId={id}")),
            Some(key),
        )
        .await;
        assert_eq!(
            (st, v["code"].as_i64()),
            (200, Some(200)),
            "acked task {id}: {v}"
        );
    }
    // every acknowledged upload of the last phase answers its exact bytes
    let http = client();
    for (url, data) in new_uploads {
        // the port changes with every restart: keep the path
        let path = &url[url.find("/files/").expect("a file URL")..];
        let r = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "acked upload {url}");
        assert!(r.bytes().await.unwrap() == data[..], "bytes of {url}");
    }
    // no record without bytes (now), no bytes without a record (after the orphan pass)
    let store = s.data_dir.join("files");
    for k in s.live_storage_keys() {
        assert!(store.join(&k).is_file(), "file record {k} without bytes");
    }
    let clean = eventually(Duration::from_secs(20), || async {
        let live = s.live_storage_keys();
        let stored = stored_keys(&store);
        stored.is_subset(&live)
    })
    .await;
    if clean.is_none() {
        let live = s.live_storage_keys();
        let extra: Vec<_> = stored_keys(&store).difference(&live).cloned().collect();
        panic!("bytes without a live record after the sweeper ran: {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_mixed_load_keeps_every_invariant() {
    let seed: u64 = std::env::var("KIE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed: {seed} (replay with KIE_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let (cb, seen) = receiver().await;
    let opts = Opts::default()
        .demo()
        .args(&[
            "--allow-private-targets",
            "--webhook-retry-schedule",
            "0s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
        ])
        .config(
            "sweep_interval = \"300ms\"\norphan_grace = \"1s\"\ntask_timeout = \"3s\"\n\
             task_rate = 0\nwebhook_timeout = \"2s\"\ndemo_workers = 2\n",
        );
    let mut s = Server::start(opts);
    s.admin(&[
        "account",
        "create",
        "--name",
        ACCOUNT,
        "--credits",
        "100000",
    ]);
    let key = s.admin(&["key", "create", "--account", ACCOUNT])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut cycle = 0;
    loop {
        let (tasks_before, uploads_before) = {
            let a = acked.lock().unwrap();
            (a.tasks.len(), a.uploads.len())
        };
        let stop = Arc::new(AtomicBool::new(false));
        let phase = tokio::spawn(load(
            s.base.clone(),
            key.clone(),
            Arc::new(ServerHandle::of(&s)),
            cb.clone(),
            acked.clone(),
            stop.clone(),
            seq.clone(),
            seed.wrapping_add(cycle as u64),
        ));
        // the kill point: sometimes right after start-up, mostly mid-load
        let delay = if rng.gen_bool(0.2) {
            rng.gen_range(0..100)
        } else {
            rng.gen_range(200..1500)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // no new operations from here; the ones in flight meet the SIGKILL
        stop.store(true, Ordering::Relaxed);
        // the SIGKILL is ours: the server must not have ended before it
        s.assert_running();
        s = s.crash_restart();
        phase.await.unwrap();
        let a = std::mem::take(&mut *acked.lock().unwrap());
        let new_tasks = a.tasks[tasks_before..].to_vec();
        let new_uploads = a.uploads[uploads_before..].to_vec();
        eprintln!(
            "cycle {cycle}: killed after {delay} ms; acked so far: {} tasks, {} uploads, {} grants",
            a.tasks.len(),
            a.uploads.len(),
            a.grants.len()
        );
        check_after_restart(&s, &key, &a, &new_tasks, &new_uploads).await;
        // the checks above read the database directly too: a crashed server would
        // only show much later, as tasks nobody times out
        s.assert_running();
        *acked.lock().unwrap() = a;
        cycle += 1;
        let enough = enough_load(&acked.lock().unwrap());
        if cycle >= MAX_CYCLES || (cycle >= CYCLES && enough) {
            break;
        }
    }
    let a = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        enough_load(&a),
        "too little load got through in {cycle} SIGKILLs: {} tasks, {} uploads, {} grants",
        a.tasks.len(),
        a.uploads.len(),
        a.grants.len()
    );

    // Replaying every grant with its idempotency key changes nothing for the ones
    // that were applied, and applies the others once.
    let h = ServerHandle::of(&s);
    for (n, amount) in &a.grants_tried {
        assert!(h.grant(*n, *amount), "replaying grant {n}");
    }
    let mut all = a.grants_tried.clone();
    all.extend(a.grants.iter());
    let after_replay = Acked {
        grants: all,
        ..Default::default()
    };
    check_ledger(&s, &after_replay);

    // Every task ends (timed-out ones fail and void their holds).
    s.assert_running();
    let open = eventually(Duration::from_secs(30), || async {
        s.sql("SELECT COUNT(*) FROM tasks WHERE state NOT IN ('success','fail')")[0][0] == "0"
    })
    .await;
    if open.is_none() {
        s.assert_running();
    }
    assert!(
        open.is_some(),
        "tasks never finished (now {} ms; id, state, worker, claimed_at, deadline_at, \
         hold state): {:?}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        s.sql(
            "SELECT t.id, t.state, t.worker, t.claimed_at, t.deadline_at, h.state \
             FROM tasks t LEFT JOIN holds h ON h.id = t.hold_id WHERE t.state NOT IN ('success','fail')"
        )
    );
    let balance = check_ledger(&s, &after_replay);
    let show = s.admin(&["credits", "show", "--account", ACCOUNT]);
    assert_eq!(hundredths(&show["held"]), 0, "{show}");
    assert!(s
        .sql("SELECT id FROM holds WHERE state = 'pending'")
        .is_empty());
    // Each hold resolved exactly once, as the task says: success posts its charge,
    // failure voids.
    let rows = s.sql(
        "SELECT t.id, t.state, t.consume_credits, h.state, COALESCE(h.charged, -1), \
         (SELECT COUNT(*) FROM ledger_entries e WHERE e.hold_id = t.hold_id AND e.kind IN ('post','void')), \
         (SELECT COALESCE(SUM(e.amount), 0) FROM ledger_entries e WHERE e.hold_id = t.hold_id) \
         FROM tasks t JOIN holds h ON h.id = t.hold_id",
    );
    let mut charged_total = 0i64;
    for r in &rows {
        let consumed: i64 = r[2].parse().unwrap();
        assert_eq!(r[5], "1", "hold of task {} resolved {} times", r[0], r[5]);
        match r[1].as_str() {
            "success" => {
                assert_eq!(r[3], "posted", "{r:?}");
                assert_eq!(r[4].parse::<i64>().unwrap(), consumed, "{r:?}");
                assert_eq!(r[6].parse::<i64>().unwrap(), -consumed, "{r:?}");
            }
            "fail" => {
                assert_eq!(r[3], "voided", "{r:?}");
                assert_eq!(consumed, 0, "{r:?}");
                assert_eq!(r[6], "0", "{r:?}");
            }
            other => panic!("task {} in state {other}", r[0]),
        }
        charged_total += consumed;
    }
    let acked_ids: HashSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    for id in &a.tasks {
        assert!(
            acked_ids.contains(id.as_str()),
            "acknowledged task {id} is gone"
        );
    }
    let granted: i64 = after_replay.grants.values().sum();
    assert_eq!(
        balance,
        100000 * 100 + granted - charged_total,
        "money appeared or vanished"
    );

    // Every finished task with a callBackUrl was delivered (at least once).
    let with_cb: Vec<String> = s
        .sql("SELECT id FROM tasks WHERE callback_url IS NOT NULL")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let delivered = eventually(Duration::from_secs(90), || async {
        let seen = seen.lock().unwrap();
        with_cb.iter().all(|id| seen.contains_key(id))
    })
    .await;
    if delivered.is_none() {
        let seen = seen.lock().unwrap();
        let lost: Vec<_> = with_cb
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        panic!(
            "callbacks lost for {} of {} tasks: {lost:?}",
            lost.len(),
            with_cb.len()
        );
    }
    let dup = seen.lock().unwrap().values().filter(|n| **n > 1).count();
    // Final state of the store after all that: every upload still byte-exact.
    check_after_restart(&s, &key, &a, &a.tasks, &a.uploads).await;
    s.assert_running();
    eprintln!(
        "crash test: {cycle} SIGKILLs in {:?}; {} tasks ({} acked), {} uploads, {} grants acked; \
         {} callbacks delivered, {dup} of them more than once",
        started.elapsed(),
        rows.len(),
        a.tasks.len(),
        a.uploads.len(),
        a.grants.len(),
        with_cb.len()
    );
}
