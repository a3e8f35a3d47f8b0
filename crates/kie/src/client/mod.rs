//! The API client commands: a thin front end over `kie-sdk`.
//!
//! Conventions shared by every command: `--api-key`/`KIE_API_KEY` and
//! `--base-url`/`KIE_BASE_URL` (default `https://api.kie.ai`), `--json` for
//! machine-readable stdout, errors as one line on stderr with a non-zero exit status.
//! The API key is never printed (`--help` hides its environment value too).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use kie_sdk::{Client, RetryPolicy, DEFAULT_BASE_URL};
use serde::Serialize;

mod account;
mod download;
mod monitor;
mod progress;
mod task;
mod upload;
mod webhook;

/// Connection settings shared by the commands that call the API.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// API key (sent as a Bearer token, never printed)
    #[arg(long, env = "KIE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// API base URL
    #[arg(long, env = "KIE_BASE_URL", default_value = DEFAULT_BASE_URL)]
    pub base_url: String,
    /// Retries of a failed request (connection errors, 5xx, 429; never 4xx business errors)
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_retries: u32,
    /// First retry backoff, doubled on each retry (with jitter)
    #[arg(long, env = "KIE_RETRY_BASE", default_value = "250ms", value_parser = parse_duration, hide = true)]
    pub retry_base: Duration,
    /// Longest wait a `Retry-After` header may impose before a retry
    #[arg(long, env = "KIE_RETRY_AFTER_CAP", default_value = "60s", value_parser = parse_duration, hide = true)]
    pub retry_after_cap: Duration,
}

impl ApiArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(self.builder().build()?)
    }

    pub fn builder(&self) -> kie_sdk::ClientBuilder {
        let mut b = Client::builder()
            .base_url(&self.base_url)
            .retry_policy(RetryPolicy {
                max_retries: self.max_retries,
                base_delay: self.retry_base,
                max_retry_after: self.retry_after_cap,
                ..RetryPolicy::default()
            });
        if let Some(k) = self.api_key.as_deref().filter(|k| !k.trim().is_empty()) {
            b = b.api_key(k);
        }
        b
    }
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Show the account's available credit balance
    Credits {
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"balance": N}
        #[arg(long)]
        json: bool,
    },
    /// Get a temporary download link for a generated file URL
    Link {
        /// The file URL (a result URL, an upload's fileUrl, or an older link)
        url: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"url": "..."}
        #[arg(long)]
        json: bool,
    },
    /// Download files: resumable, a fresh link when one expired, complete files skipped
    Download(download::DownloadArgs),
    /// Watch the balance: burn rate, time to exhaustion, alerts on threshold crossings
    Monitor(monitor::MonitorArgs),
    /// Verify webhook signatures, or run a local receiver that does
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Create, inspect and wait for tasks (Jobs API)
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Upload a file: streamed (default), as base64 (--base64), or fetched by the server (--url)
    Upload(upload::UploadArgs),
    /// The account's task log, newest first (what the console's Tasks page shows)
    #[command(subcommand)]
    Tasks(account::TasksCommand),
    /// The account's ledger: grants, charges, holds, voids (--csv for a spreadsheet)
    Usage(account::UsageArgs),
    /// The account's callback deliveries
    #[command(subcommand)]
    Callbacks(account::CallbacksCommand),
}

pub fn run(cmd: ClientCommand) -> ExitCode {
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kie: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cmd {
            ClientCommand::Credits { api, json } => credits(api, json).await,
            ClientCommand::Link { url, api, json } => link(url, api, json).await,
            ClientCommand::Download(a) => download::run(a).await,
            ClientCommand::Monitor(a) => monitor::run(a).await,
            ClientCommand::Webhook(c) => webhook::run(c).await,
            ClientCommand::Task(c) => task::run(c).await,
            ClientCommand::Upload(a) => upload::run(a).await,
            ClientCommand::Tasks(c) => account::tasks(c).await,
            ClientCommand::Usage(a) => account::usage(a).await,
            ClientCommand::Callbacks(c) => account::callbacks(c).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` puts anyhow's context chain on the same line
            eprintln!("kie: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn credits(api: ApiArgs, json: bool) -> anyhow::Result<ExitCode> {
    let balance = api.client()?.credits().await?;
    if json {
        print_json(&serde_json::json!({ "balance": balance }))?;
    } else {
        println!("{balance}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn link(url: String, api: ApiArgs, json: bool) -> anyhow::Result<ExitCode> {
    let link = api.client()?.download_url(&url).await?;
    if json {
        print_json(&serde_json::json!({ "url": link }))?;
    } else {
        println!("{link}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr, silent unless `RUST_LOG` asks: the default output is the
/// command's own, and errors are printed once by `run`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// One JSON document on one stdout line.
pub(crate) fn print_json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Messages from servers may hold newlines; stderr gets one line per error.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `90s`, `20m`, `3d`, `250ms`, `1h 30m`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 20m, 3d)"))
}

/// `1h 2m 3s` style, whole seconds.
pub(crate) fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
