//! Prometheus metrics: request counts and latency by route and body code.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle.
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
        handle
    })
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
const MAX_HANDLES: usize = 4096;

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
