//! Every in-memory structure keyed by something a client chooses stays within its
//! stated bound when driven with 100,000 distinct keys: client addresses (the
//! loopback range 127.0.0.0/8 gives a test that many sources), made-up API keys, real
//! API keys of as many accounts, made-up file ids and link key ids. Sizes are read
//! from the server's own `kie_bounded_entries` / `kie_bounded_max` gauges on
//! `/metrics`.
//!
//! The structures are the same in-process maps on both backends; on PostgreSQL every
//! miss is a network round trip of a debug build, so there the tests drive 20,000
//! distinct keys (still twice the 10,000 bound of the file and link caches) to keep
//! the suite's time in check; on SQLite, 100,000.

use crate::harness::*;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn distinct() -> u32 {
    if backend_is_postgres() {
        20_000
    } else {
        100_000
    }
}
/// Requests in flight at once.
const PARALLEL: u32 = 32;

/// `(entries, max)` by structure, from `/metrics`.
async fn bounded(s: &Server) -> HashMap<String, (u64, u64)> {
    let text = s.metrics().await;
    let mut out: HashMap<String, (u64, u64)> = HashMap::new();
    for line in text.lines() {
        for (metric, max) in [("kie_bounded_entries", false), ("kie_bounded_max", true)] {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            let Some(rest) = rest.strip_prefix("{structure=\"") else {
                continue;
            };
            let (name, value) = rest.split_once("\"} ").unwrap();
            let v: f64 = value.trim().parse().unwrap();
            let e = out.entry(name.to_string()).or_default();
            if max {
                e.1 = v as u64;
            } else {
                e.0 = v as u64;
            }
        }
    }
    out
}

/// Asserts that `structure` is reported, holds at most its bound (+ `slack`), and
/// returns its size.
async fn within_bound(s: &Server, structure: &str, slack: u64) -> u64 {
    let b = bounded(s).await;
    let (n, max) = *b
        .get(structure)
        .unwrap_or_else(|| panic!("{structure} not reported: {b:?}"));
    assert!(max > 0, "{structure}: no bound reported");
    assert!(n <= max + slack, "{structure}: {n} entries, bound {max}");
    n
}

/// Runs `f(i)` for i in 0..distinct(), `PARALLEL` at a time; each returns an HTTP status
/// which must be `want`.
async fn drive<F, Fut>(want: u16, f: F)
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u16> + Send,
{
    let f = Arc::new(f);
    let n = distinct();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..PARALLEL {
        let f = f.clone();
        workers.spawn(async move {
            let mut i = w;
            while i < n {
                let st = f(i).await;
                assert_eq!(st, want, "request {i}");
                i += PARALLEL;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_limiter_is_bounded_for_100k_client_addresses() {
    // A limit no test client reaches, so every address gets an entry and every
    // request passes.
    let s = Server::start(Opts::default().args(&["--ip-rate-limit", "1000000"]));
    let server: SocketAddr = s.addr.parse().unwrap();
    drive(200, move |i| async move {
        // 127.1.0.0 + i: a distinct source address per request
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + i);
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(ip.into(), 0)).unwrap();
        let mut tcp = sock.connect(server).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..buf.len().min(12)]).into_owned();
        head[9..12].parse().unwrap()
    })
    .await;
    let slack = u64::from(kie_server::ratelimit::CHECK_EVERY);
    let n = within_bound(&s, "ip_limiter", slack).await;
    assert!(n > 0, "the limiter saw none of the addresses");
    // The limiter still limits after its reset: a low limit on another server is
    // reached by one address (the bound does not switch limiting off).
    let s = Server::start(Opts::default().args(&["--ip-rate-limit", "2"]));
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            reqwest::get(s.url("/healthz"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(codes.contains(&429), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_cache_and_key_limiter_are_bounded_for_100k_keys() {
    let s = Server::start(Opts::default());
    // distinct() made-up (well-formed, checksummed) keys: none enters the cache.
    let http = client();
    let url = s.url("/api/v1/chat/credit");
    drive(200, move |_| {
        let rb = http.get(&url).bearer_auth(kie_wire::apikey::generate());
        async move {
            let r = rb.send().await.unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["code"], 401, "{v}");
            200
        }
    })
    .await;
    assert_eq!(within_bound(&s, "auth_cache", 0).await, 0);

    // distinct() real keys of as many accounts, written straight into the database
    // (`kie admin` would take hours), then each used once.
    let n = distinct();
    let keys: Vec<String> = (0..n).map(|_| kie_wire::apikey::generate()).collect();
    let mut sql =
        String::from("BEGIN;\nINSERT INTO accounts (id, name, balance, held, created_at) VALUES\n");
    for i in 0..n {
        let sep = if i + 1 == n { ";\n" } else { ",\n" };
        sql.push_str(&format!(
            "('acc_bulk{i}', 'bulk{i}', {}, 0, 0){sep}",
            100 + i
        ));
    }
    sql.push_str(
        "INSERT INTO api_keys (id, account_id, name, prefix, digest, created_at) VALUES\n",
    );
    for (i, k) in keys.iter().enumerate() {
        let sep = if i + 1 == keys.len() { ";\n" } else { ",\n" };
        sql.push_str(&format!(
            "('key_bulk{i}', 'acc_bulk{i}', NULL, '{}', '{}', 0){sep}",
            kie_wire::apikey::display_prefix(k),
            kie_wire::apikey::digest(k)
        ));
    }
    sql.push_str("COMMIT;\n");
    s.sql_script(&sql);

    let http = client();
    let url = s.url("/api/v1/chat/credit");
    let keys = Arc::new(keys);
    drive(200, move |i| {
        let rb = http.get(&url).bearer_auth(&keys[i as usize]);
        async move {
            let r = rb.send().await.unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["code"], 200, "{v}");
            // each account's own balance: 100 + i hundredths
            assert_eq!(
                (v["data"].as_f64().unwrap() * 100.0).round() as u64,
                100 + u64::from(i),
                "{v}"
            );
            200
        }
    })
    .await;
    let cached = within_bound(&s, "auth_cache", 0).await;
    assert!(cached > 0);
    // the last use of every key was noted (within its bound)
    assert!(within_bound(&s, "key_last_used", 0).await > 0);
    within_bound(
        &s,
        "key_limiter",
        u64::from(kie_server::ratelimit::CHECK_EVERY),
    )
    .await;
    if !backend_is_postgres() {
        within_bound(&s, "balance_cache", 0).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn file_and_link_caches_are_bounded_for_100k_ids() {
    let s = Server::start(Opts::default());
    // distinct() made-up file ids on the public file URL: 404 each.
    let http = client();
    let base = s.url("/files/");
    drive(404, move |_| {
        let rb = http.get(format!(
            "{base}{}/x.png",
            kie_wire::apikey::random_base62(32)
        ));
        async move { rb.send().await.unwrap().status().as_u16() }
    })
    .await;
    // the store's file-record cache: PostgreSQL's per-node one, SQLite's point reads
    if backend_is_postgres() {
        within_bound(&s, "file_records", 0).await;
    } else {
        within_bound(&s, "file_cache", 0).await;
    }

    // distinct() made-up link key ids: 403 each, remembered as unknown within the bound.
    let http = client();
    let base = s.url("/links/");
    drive(403, move |i| {
        let rb = http.get(format!(
            "{base}{}/x.png?e=4102444800&k=kforged{i}&s=AAAA",
            kie_wire::apikey::random_base62(32)
        ));
        async move { rb.send().await.unwrap().status().as_u16() }
    })
    .await;
    let unknown = within_bound(&s, "link_keys_unknown", 0).await;
    assert!(unknown > 0, "no made-up key id was remembered");
    within_bound(&s, "link_keys", 0).await;
    within_bound(&s, "metric_label_sets", 0).await;
    within_bound(&s, "settings_disabled_features", 0).await;
}

/// `kie_sqlite_page_cache_bytes{memory}` from `/metrics` (empty when not reported).
async fn page_cache(s: &Server) -> HashMap<String, i64> {
    let text = s.metrics().await;
    text.lines()
        .filter_map(|l| l.strip_prefix("kie_sqlite_page_cache_bytes{memory=\""))
        .map(|rest| {
            let (name, value) = rest.split_once("\"} ").unwrap();
            (
                name.to_string(),
                value.trim().parse::<f64>().unwrap() as i64,
            )
        })
        .collect()
}

/// SQLite's page caches, every connection's, take their pages from one buffer `kie
/// serve` reserves and writes at start — resident from the first request — instead of
/// from the heap as the database grows into them, which showed as memory rising for
/// the first minutes of a soak (issue 13, BENCHMARKS.md "Soak"). The buffer holds
/// every cache at its bound, so writes that grow the database take no page cache from
/// the heap. PostgreSQL: no SQLite in the process, nothing reported.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_page_caches_live_in_the_buffer_reserved_at_start() {
    let s = Server::start(Opts::default());
    let before = page_cache(&s).await;
    if backend_is_postgres() {
        assert!(before.is_empty(), "{before:?}");
        return;
    }
    // the default pooled readers; a slot is a page and SQLite's header for it
    let readers = kie_server::config::sqlite_default_readers();
    let slots = kie_server::store::sqlite_page_cache_slots(readers) as i64;
    let reserved = before["reserved"];
    assert_eq!(reserved % slots, 0, "{before:?}");
    let slot = reserved / slots;
    assert!((4096..4096 + 512).contains(&slot), "slot of {slot} bytes");
    assert_eq!(before["heap"], 0, "{before:?}");

    // 400 uploads: new rows and index entries for the writer's cache, and reads of
    // the changed database for the readers'
    let (_, key) = s.account_with_key("pagecache", "10");
    let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 2048]);
    for i in 0..400 {
        let (_, _, v) = post_json(
            &s.url("/api/file-base64-upload"),
            Some(&key),
            &serde_json::json!({"base64Data": body, "uploadPath": "pc", "fileName": format!("f{i}.bin")}),
        )
        .await;
        assert_eq!(v["code"], 200, "{v}");
    }
    let after = page_cache(&s).await;
    assert_eq!(after["reserved"], reserved, "{after:?}");
    assert_eq!(
        after["heap"], 0,
        "page cache taken from the heap: {after:?}"
    );
    // (readers' caches are emptied when another connection commits, so their part
    // goes up and down; what matters is where the pages come from)
    assert!(after["reserved_used"] > 0, "{after:?}");
}
