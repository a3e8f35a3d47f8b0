//! Issue 14 item 4: what it costs a SQLite point read to know that nothing committed
//! since its cached value was read, three ways, on one WAL database:
//!
//! * `header`: the WAL-index header watch the direct reads use
//!   (`store::sqlite_raw::WalWatch`: two 48-byte loads from SQLite's `-shm` mapping);
//! * `data_version`: the supported alternative — `PRAGMA data_version` on a read
//!   connection (it changes when any *other* connection, of any process, committed;
//!   a commit hook on the writer would add nothing to a read's cost, and cannot see
//!   other processes, so this pragma is the part of that alternative a read pays);
//! * `point read`: no cache at all — the read itself
//!   (`SELECT balance - held FROM accounts WHERE id = ?1`, a fresh read transaction).
//!
//! Each is timed for `ITERS` calls in `ROUNDS` alternating rounds; prints ns per call,
//! the median per method, and the ratios. Also checks that each method sees a commit
//! made by another connection (a method that cannot is no alternative).
//!
//!     cargo run --release -p kie-server --example change_detection [ROUNDS] [ITERS]

use kie_server::store::sqlite_raw::WalWatch;
use rusqlite::{Connection, OpenFlags};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let iters: usize = args.next().map_or(1_000_000, |a| a.parse().expect("ITERS"));
    let dir = std::env::temp_dir().join(format!("kie-change-detection-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("d.db");
    let writer = Connection::open(&path).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode=WAL; \
             CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL, held INTEGER NOT NULL); \
             INSERT INTO accounts VALUES ('acc_1', 1000, 0);",
        )
        .unwrap();
    let read = || Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let watch = WalWatch::open(read()).expect("a WAL-index header to watch");
    let reader = read();
    let version = |c: &Connection| -> i64 {
        c.prepare_cached("PRAGMA data_version")
            .unwrap()
            .query_row([], |r| r.get(0))
            .unwrap()
    };
    let point = |c: &Connection| -> i64 {
        c.prepare_cached("SELECT balance - held FROM accounts WHERE id = ?1")
            .unwrap()
            .query_row(["acc_1"], |r| r.get(0))
            .unwrap()
    };

    // Each method sees a commit made by another connection.
    let (h0, v0, p0) = (watch.header(), version(&reader), point(&reader));
    writer
        .execute("UPDATE accounts SET held = held + 1 WHERE id = 'acc_1'", [])
        .unwrap();
    assert_ne!(watch.header(), h0, "the header changes on a commit");
    assert_ne!(version(&reader), v0, "data_version changes on a commit");
    assert_eq!(point(&reader), p0 - 1, "the point read sees the commit");

    let mut header_ns = Vec::new();
    let mut version_ns = Vec::new();
    let mut point_ns = Vec::new();
    let mut sink = 0u64;
    for round in 1..=rounds {
        let t = Instant::now();
        for _ in 0..iters {
            sink = sink.wrapping_add(watch.header().map_or(0, |h| h[2]));
        }
        let h = t.elapsed().as_nanos() as f64 / iters as f64;
        let t = Instant::now();
        for _ in 0..iters {
            sink = sink.wrapping_add(version(&reader) as u64);
        }
        let v = t.elapsed().as_nanos() as f64 / iters as f64;
        let t = Instant::now();
        for _ in 0..iters {
            sink = sink.wrapping_add(point(&reader) as u64);
        }
        let p = t.elapsed().as_nanos() as f64 / iters as f64;
        println!("round {round}: header {h:.1} ns, data_version {v:.1} ns, point read {p:.1} ns");
        header_ns.push(h);
        version_ns.push(v);
        point_ns.push(p);
    }
    let (h, v, p) = (median(header_ns), median(version_ns), median(point_ns));
    println!("median ns per call: header {h:.1}, data_version {v:.1}, point read {p:.1}");
    println!(
        "data_version / header = {:.1}x; point read / data_version = {:.2}x; point read / header = {:.1}x",
        v / h,
        p / v,
        p / h
    );
    std::hint::black_box(sink);
    drop((watch, reader, writer));
    let _ = std::fs::remove_dir_all(&dir);
}
