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
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

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

type HandleMap = HashMap<String, Vec<RequestHandles>>;
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

pub fn record_request(method: &axum::http::Method, route: &str, code: i64, elapsed: Duration) {
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
