//! The API client commands: a thin front end over `kie-sdk`.
//!
//! Conventions shared by every command: `--api-key`/`KIE_API_KEY` and
//! `--base-url`/`KIE_BASE_URL` (default `https://api.kie.ai`), `--json` for
//! machine-readable stdout, errors as one line on stderr with a non-zero exit status.
//! The API key is never printed (`--help` hides its environment value too).

use std::process::ExitCode;

use clap::Subcommand;
pub use common::ApiArgs;
use common::{one_line, print_json};

mod account;
mod alerts;
mod common;
mod download;
mod keys;
mod monitor;
mod progress;
mod task;
mod upload;
mod webhook;

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
    /// The account's callback deliveries: list, redeliver, replay; the webhook key (show, roll)
    #[command(subcommand)]
    Callbacks(account::CallbacksCommand),
    /// The account's API keys: list, create, revoke, roll, update (needs a management key)
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Low-balance alerts: thresholds, alert URL, a test event (needs a management key)
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
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
            ClientCommand::Keys(c) => keys::run(c).await,
            ClientCommand::Alerts(c) => alerts::run(c).await,
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
