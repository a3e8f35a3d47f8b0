//! Prometheus metrics: request counts and latency by route and body code.
//!
//! **Memory is bounded whether or not anyone scrapes `/metrics`.** The Prometheus
//! recorder keeps every histogram sample in a lock-free bucket until an *upkeep*
//! folds them into the fixed bucket counts; a render does one, and so does the upkeep
//! thread started with the recorder ([`UPKEEP_EVERY`]). Without it a server nobody
//! scrapes keeps ~20 bytes per request, for ever. Label sets are bounded too: methods
//! outside the standard ones are `OTHER`, routes are the router's matched patterns
//! (or `unmatched`), codes are the service's own.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often the upkeep thread folds histogram samples into their buckets: the
/// samples of this long are what the recorder holds at most (at 100k requests/s and
/// ~8 bytes a sample, about 4 MiB).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the global recorder once per process (with its upkeep thread) and returns
/// its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    "kie_http_request_duration_seconds".into(),
                ),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ],
            )
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        // A second server in the same process (tests) shares the first recorder.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("kie-metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            })
            .expect("spawn the metrics upkeep thread");
        handle
    })
}

/// Sizes of the service's bounded in-memory structures, as gauges
/// `kie_bounded_entries{structure}` and `kie_bounded_max{structure}` (set before each
/// render of `/metrics`).
pub fn record_bounded(structure: &'static str, entries: usize, max: usize) {
    metrics::gauge!("kie_bounded_entries", "structure" => structure).set(entries as f64);
    metrics::gauge!("kie_bounded_max", "structure" => structure).set(max as f64);
}

/// SQLite's page-cache memory, as gauges `kie_sqlite_page_cache_bytes{memory}`:
/// `reserved` (the buffer `kie serve` gives SQLite at start), `reserved_used` (the part
/// of it the caches hold), `heap` (pages the caches took from the heap instead: beyond
/// the buffer, or without one). Set before each render of `/metrics`.
pub fn record_sqlite_page_cache(u: crate::store::sqlite_raw::PageCacheUsage) {
    for (memory, bytes) in [
        ("reserved", u.reserved),
        ("reserved_used", u.reserved_used),
        ("heap", u.heap),
    ] {
        metrics::gauge!("kie_sqlite_page_cache_bytes", "memory" => memory).set(bytes as f64);
    }
}

/// Cached request-metric handles now (bound: [`MAX_HANDLES`]).
pub fn request_handles_len() -> usize {
    REQUEST_HANDLES
        .get()
        .and_then(|m| m.read().ok().map(|m| m.values().map(Vec::len).sum()))
        .unwrap_or(0)
}

/// Request metric handles by (route, method, body code), registered once: recording
/// is then two atomic updates instead of building and hashing label sets per request.
struct RequestHandles {
    method: axum::http::Method,
    code: i64,
    count: metrics::Counter,
    duration: metrics::Histogram,
}

/// Routes are the server's own patterns (or "unmatched"): foldhash is safe here.
type HandleMap = HashMap<String, Vec<RequestHandles>, foldhash::fast::RandomState>;
static REQUEST_HANDLES: OnceLock<RwLock<HandleMap>> = OnceLock::new();
/// Label sets beyond this are recorded without a cached handle (bounded memory).
pub const MAX_HANDLES: usize = 4096;

/// Standard methods keep their name; anything else is counted as `OTHER` (a client
/// must not be able to create label sets at will).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::TRACE => "TRACE",
        M::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

fn register(
    method: &'static str,
    route: &str,
    code: i64,
) -> (metrics::Counter, metrics::Histogram) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("code", code.to_string()),
    ];
    (
        metrics::counter!("kie_http_requests_total", &labels),
        metrics::histogram!("kie_http_request_duration_seconds", &labels),
    )
}

/// Requests answered by this process, and those with a client error (400–499) or a
/// server error (code ≥ 500) — by the body code, the one `kie_http_requests_total`
/// counts — for the operator's health page ([`rates`]).
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static CLIENT_ERRORS: AtomicU64 = AtomicU64::new(0);
static SERVER_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How far back [`rates`] looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// How often [`sample_rates`] should be called.
pub const RATE_SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    requests: u64,
    client_errors: u64,
    server_errors: u64,
}

fn now_sample() -> Sample {
    Sample {
        at: Instant::now(),
        requests: REQUESTS.load(Ordering::Relaxed),
        client_errors: CLIENT_ERRORS.load(Ordering::Relaxed),
        server_errors: SERVER_ERRORS.load(Ordering::Relaxed),
    }
}

static SAMPLES: Mutex<VecDeque<Sample>> = Mutex::new(VecDeque::new());

/// Samples the request counters (every [`RATE_SAMPLE_EVERY`], by the server's
/// housekeeping); keeps a little more than [`RATE_WINDOW`] of them.
pub fn sample_rates() {
    let s = now_sample();
    let mut q = SAMPLES.lock().expect("rate samples");
    while q
        .front()
        .is_some_and(|f| s.at.duration_since(f.at) > RATE_WINDOW + RATE_SAMPLE_EVERY)
    {
        q.pop_front();
    }
    q.push_back(s);
}

/// Request and error rates of this process over the last minute (or since its first
/// sample, when it is younger).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// The window the figures cover, in seconds
    pub window_secs: f64,
    pub requests: u64,
    pub client_errors: u64,
    pub server_errors: u64,
}

impl Rates {
    fn per_sec(&self, n: u64) -> f64 {
        if self.window_secs > 0.0 {
            n as f64 / self.window_secs
        } else {
            0.0
        }
    }
    pub fn requests_per_sec(&self) -> f64 {
        self.per_sec(self.requests)
    }
    pub fn client_errors_per_sec(&self) -> f64 {
        self.per_sec(self.client_errors)
    }
    pub fn server_errors_per_sec(&self) -> f64 {
        self.per_sec(self.server_errors)
    }
}

/// The counters now against the oldest sample at most [`RATE_WINDOW`] old.
pub fn rates() -> Rates {
    let now = now_sample();
    let base = {
        let q = SAMPLES.lock().expect("rate samples");
        q.iter()
            .find(|s| now.at.duration_since(s.at) <= RATE_WINDOW)
            .copied()
    };
    let base = base.unwrap_or(Sample { at: now.at, ..now });
    Rates {
        window_secs: now.at.duration_since(base.at).as_secs_f64(),
        requests: now.requests - base.requests,
        client_errors: now.client_errors - base.client_errors,
        server_errors: now.server_errors - base.server_errors,
    }
}

pub fn record_request(method: &axum::http::Method, route: &str, code: i64, elapsed: Duration) {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    if code >= 500 {
        SERVER_ERRORS.fetch_add(1, Ordering::Relaxed);
    } else if code >= 400 {
        CLIENT_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    let map = REQUEST_HANDLES.get_or_init(Default::default);
    let secs = elapsed.as_secs_f64();
    if let Ok(m) = map.read() {
        if let Some(h) = m
            .get(route)
            .and_then(|v| v.iter().find(|h| h.code == code && h.method == method))
        {
            h.count.increment(1);
            h.duration.record(secs);
            return;
        }
    }
    let label = method_label(method);
    let (count, duration) = register(label, route, code);
    count.increment(1);
    duration.record(secs);
    if let Ok(mut m) = map.write() {
        let n: usize = m.values().map(Vec::len).sum();
        if n < MAX_HANDLES {
            let v = m.entry(route.to_owned()).or_default();
            if !v.iter().any(|h| h.code == code && h.method == method) {
                v.push(RequestHandles {
                    method: method.clone(),
                    code,
                    count,
                    duration,
                });
            }
        }
    }
}

/// One webhook attempt: counted by outcome (HTTP status class or `error`).
pub fn record_webhook_attempt(status: Option<u16>, duration_ms: i64) {
    let outcome = match status {
        Some(s) => format!("{}xx", s / 100),
        None => "error".to_string(),
    };
    metrics::counter!("kie_webhook_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("kie_webhook_attempt_duration_seconds")
        .record(duration_ms.max(0) as f64 / 1000.0);
}

/// A task reached a final state.
pub fn record_task_finished(model: &str, state: &str) {
    metrics::counter!("kie_tasks_finished_total", "model" => model.to_owned(), "state" => state.to_owned())
        .increment(1);
}
