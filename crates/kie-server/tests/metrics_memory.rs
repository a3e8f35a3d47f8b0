//! The metrics recorder's memory stays bounded with nobody rendering `/metrics`.
//!
//! The Prometheus recorder holds histogram samples until an upkeep folds them into
//! buckets. This test counts the bytes the process has allocated (its own global
//! allocator), records a million request samples without ever rendering, and waits
//! for the upkeep thread to give the memory back while a slow load goes on. Without
//! the upkeep thread the live bytes never come down and the test fails at its
//! deadline.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn histogram_samples_are_released_without_a_scrape() {
    kie_server::metrics::handle();
    let get = axum::http::Method::GET;
    // warm up: the label sets and their handles exist before the baseline
    for code in [200, 401] {
        kie_server::metrics::record_request(&get, "/api/v1/chat/credit", code, Duration::ZERO);
    }
    let before = live();
    const SAMPLES: usize = 1_000_000;
    for i in 0..SAMPLES {
        let code = if i % 2 == 0 { 200 } else { 401 };
        kie_server::metrics::record_request(
            &get,
            "/api/v1/chat/credit",
            code,
            Duration::from_micros((i % 1000) as u64),
        );
    }
    let grown = live() - before;
    // one f64 per sample, in blocks: at least 4 MB held right after recording
    assert!(grown >= 4_000_000, "samples held: {grown} bytes");

    // The load goes on, slowly (a sample a millisecond: ~8 bytes each); the upkeep
    // runs every `UPKEEP_EVERY`: wait for its effect, not for a time. (Freed blocks go
    // back through an epoch-based collector, which the recording threads drive.)
    let deadline = Instant::now() + kie_server::metrics::UPKEEP_EVERY * 6;
    let mut recorded = SAMPLES;
    loop {
        kie_server::metrics::record_request(&get, "/api/v1/chat/credit", 200, Duration::ZERO);
        recorded += 1;
        let now = live() - before;
        if now < grown / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "histogram samples still held after {:?}: {now} bytes (was {grown})",
            kie_server::metrics::UPKEEP_EVERY * 6
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // and the counts are all there when somebody does render
    let text = kie_server::metrics::handle().render();
    let count_line = text
        .lines()
        .find(|l| {
            l.starts_with("kie_http_request_duration_seconds_count") && l.contains("code=\"200\"")
        })
        .expect("duration count for code 200");
    let n: f64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n as usize, recorded - SAMPLES / 2 + 1, "{count_line}");
}
