//! `kie webhook verify` (one delivery, from the command line) and `kie webhook listen`
//! (a local receiver built on the SDK's axum extractor).

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::http::Method;
use axum::response::IntoResponse;
use axum::Router;
use clap::{Args, Subcommand};
use kie_sdk::webhook::{VerifiedWebhook, WebhookRejection, WebhookVerifier};
use kie_wire::webhook::{task_id_of, verify_kie_for_task, verify_standard, VerifyError};
use serde_json::json;

use super::common::{parse_duration, print_json};

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Check a delivery's signature(s): exit 0 when valid, 1 with the reason when not
    Verify(VerifyArgs),
    /// Run a local receiver that verifies each delivery and prints it
    Listen(ListenArgs),
}

#[derive(Args)]
#[command(after_help = "\
KIE.AI scheme: --timestamp and --signature (X-Webhook-Timestamp, X-Webhook-Signature); the \
task id comes from --task-id or the body (taskId, data.taskId, data.task_id must agree).
Standard Webhooks: --webhook-id, --timestamp and --standard-signature (webhook-id, \
webhook-timestamp, webhook-signature) with --body, which that scheme signs.
Given both, both must verify.")]
pub struct VerifyArgs {
    /// Webhook HMAC key (whsec_...)
    #[arg(long, env = "KIE_WEBHOOK_KEY", hide_env_values = true)]
    pub key: String,
    /// Delivery timestamp, unix seconds
    #[arg(long, value_name = "T")]
    pub timestamp: String,
    /// X-Webhook-Signature (KIE.AI scheme)
    #[arg(long, value_name = "S")]
    pub signature: Option<String>,
    /// Body of the delivery, from FILE or "-" for standard input
    #[arg(long, value_name = "FILE")]
    pub body: Option<String>,
    /// Task id, when there is no body (or to check it against the body)
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,
    /// webhook-id header (Standard Webhooks)
    #[arg(long, value_name = "ID", requires = "standard_signature")]
    pub webhook_id: Option<String>,
    /// webhook-signature header (Standard Webhooks), "v1,<base64>" (several allowed, space-separated)
    #[arg(long, value_name = "S", requires = "webhook_id")]
    pub standard_signature: Option<String>,
    /// Accepted clock difference, both ways
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub tolerance: Duration,
    /// Check as of this unix time instead of now (for recorded deliveries)
    #[arg(long, value_name = "UNIX")]
    pub now: Option<i64>,
    /// Machine-readable output: {"valid","taskId","schemes","error"}
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ListenArgs {
    /// Port to listen on (0 picks a free one; the address is printed on stderr)
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to bind
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Webhook HMAC key (whsec_...)
    #[arg(long, env = "KIE_WEBHOOK_KEY", hide_env_values = true)]
    pub key: String,
    /// Refuse deliveries without a Standard Webhooks signature (right for kie serve,
    /// which signs the body; KIE.AI does not)
    #[arg(long)]
    pub require_standard: bool,
    /// Accepted clock difference, both ways
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub tolerance: Duration,
    /// One JSON object per delivery: {"taskId","webhookId","schemes","body"}
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: WebhookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WebhookCommand::Verify(a) => verify(a),
        WebhookCommand::Listen(a) => listen(a).await,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.signature.is_some() || a.standard_signature.is_some(),
        "nothing to verify: give --signature and/or --webhook-id with --standard-signature"
    );
    let body = match a.body.as_deref() {
        None => None,
        Some("-") => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("cannot read the body from standard input")?;
            Some(b)
        }
        Some(path) => Some(std::fs::read(path).with_context(|| format!("cannot read {path}"))?),
    };
    anyhow::ensure!(
        a.standard_signature.is_none() || body.is_some(),
        "--standard-signature needs --body: that scheme signs the body"
    );
    anyhow::ensure!(
        a.signature.is_none() || body.is_some() || a.task_id.is_some(),
        "--signature needs --body or --task-id: that scheme signs the task id"
    );
    let now = a.now.unwrap_or_else(unix_now);
    let tolerance = i64::try_from(a.tolerance.as_secs()).unwrap_or(i64::MAX);

    let outcome = check(&a, body.as_deref(), now, tolerance);
    let mut schemes = Vec::new();
    if a.signature.is_some() {
        schemes.push("kie");
    }
    if a.standard_signature.is_some() {
        schemes.push("standard");
    }
    match outcome {
        Ok(task_id) => {
            if a.json {
                print_json(
                    &json!({"valid": true, "taskId": task_id, "schemes": schemes, "error": null}),
                )?;
            } else {
                let task = task_id.map(|t| format!(", task {t}")).unwrap_or_default();
                println!("valid ({}{task})", schemes.join(" + "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if a.json {
                print_json(
                    &json!({"valid": false, "taskId": null, "schemes": schemes, "error": e.to_string()}),
                )?;
            }
            eprintln!("kie: invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Checks every scheme given; returns the task id when one is known.
fn check(
    a: &VerifyArgs,
    body: Option<&[u8]>,
    now: i64,
    tolerance: i64,
) -> Result<Option<String>, VerifyError> {
    let mut task_id = a.task_id.clone();
    if let Some(b) = body {
        // the body's task ids must agree with one another and with --task-id
        match task_id_of(b) {
            Ok(t) if task_id.as_ref().is_some_and(|given| *given != t) => {
                return Err(VerifyError::TaskIdMismatch)
            }
            Ok(t) => task_id = Some(t),
            Err(VerifyError::TaskIdMismatch) => return Err(VerifyError::TaskIdMismatch),
            // a body without a task id is fine for the Standard scheme or with --task-id
            Err(e) if a.signature.is_some() && task_id.is_none() => return Err(e),
            Err(_) => {}
        }
    }
    if let Some(sig) = &a.signature {
        let t = task_id.as_deref().ok_or(VerifyError::MissingTaskId)?;
        check_timestamp(&a.timestamp, now, tolerance)?;
        verify_kie_for_task(&a.key, t, &a.timestamp, sig)?;
    }
    if let (Some(sig), Some(id), Some(b)) = (&a.standard_signature, &a.webhook_id, body) {
        verify_standard(&a.key, id, &a.timestamp, sig, b, now, tolerance)?;
    }
    Ok(task_id)
}

fn check_timestamp(ts: &str, now: i64, tolerance: i64) -> Result<(), VerifyError> {
    let ts: i64 = ts.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > tolerance {
        return Err(VerifyError::TimestampOutOfRange);
    }
    Ok(())
}

#[derive(Clone)]
struct ListenState {
    verifier: WebhookVerifier,
    json: bool,
}

impl axum::extract::FromRef<ListenState> for WebhookVerifier {
    fn from_ref(s: &ListenState) -> Self {
        s.verifier.clone()
    }
}

async fn listen(a: ListenArgs) -> anyhow::Result<ExitCode> {
    let verifier = WebhookVerifier::new(&a.key)
        .tolerance(a.tolerance)
        .require_standard(a.require_standard);
    let state = ListenState {
        verifier,
        json: a.json,
    };
    // every path: senders are configured with whatever callback path they like
    let app = Router::new().fallback(receive).with_state(state);
    let addr = SocketAddr::new(a.bind, a.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    eprintln!("kie: listening on http://{local}/ (Ctrl-C to stop)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the receiver failed")?;
    Ok(ExitCode::SUCCESS)
}

async fn receive(
    method: Method,
    axum::extract::State(state): axum::extract::State<ListenState>,
    hook: Result<VerifiedWebhook, WebhookRejection>,
) -> axum::response::Response {
    if method != Method::POST {
        return (
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            [("allow", "POST")],
            "POST only\n",
        )
            .into_response();
    }
    let hook = match hook {
        Ok(h) => h,
        Err(rejection) => {
            let reason = match &rejection {
                WebhookRejection::Invalid(e) => e.to_string(),
                WebhookRejection::Body(e) => e.body_text(),
            };
            eprintln!("kie: rejected a delivery: {reason}");
            return rejection.into_response();
        }
    };
    let v = &hook.verified;
    let mut schemes = Vec::new();
    if v.kie {
        schemes.push("kie");
    }
    if v.standard {
        schemes.push("standard");
    }
    let body: serde_json::Value = hook.json().unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&hook.body).into_owned())
    });
    if state.json {
        let _ = print_json(&json!({
            "taskId": v.task_id,
            "webhookId": v.webhook_id,
            "schemes": schemes,
            "body": body,
        }));
    } else {
        let state_of = body
            .pointer("/data/state")
            .and_then(|s| s.as_str())
            .unwrap_or("?");
        println!(
            "task {} {}  verified: {}{}",
            v.task_id.as_deref().unwrap_or("?"),
            state_of,
            schemes.join(" + "),
            v.webhook_id
                .as_deref()
                .map(|i| format!("  webhook-id {i}"))
                .unwrap_or_default()
        );
    }
    "ok\n".into_response()
}
