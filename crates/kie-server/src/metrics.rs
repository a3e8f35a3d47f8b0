//! Prometheus metrics: request counts and latency by route and body code.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
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

pub fn record_request(method: &axum::http::Method, route: &str, code: i64, elapsed: Duration) {
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route.to_owned()),
        ("code", code.to_string()),
    ];
    metrics::counter!("kie_http_requests_total", &labels).increment(1);
    metrics::histogram!("kie_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
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
