//! `kie alerts show | set | test`: the account's low-balance alerts, as the console's
//! Alerts page manages them (`/api/v1/account/alerts`; a management key is needed).

use std::process::ExitCode;

use clap::Subcommand;
use kie_sdk::alerts::{AlertChanges, AlertSettings};
use kie_sdk::Credits;

use super::common::{print_json, ApiArgs};

fn parse_threshold(s: &str) -> Result<Credits, String> {
    let c: Credits = s.trim().parse().map_err(|e| format!("{e}"))?;
    if c.0 < 0 {
        return Err("must not be negative".into());
    }
    Ok(c)
}

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// The thresholds, the alert URL and the current state
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Set thresholds (credits) and the alert URL; unset flags stay as they are
    Set {
        /// Warning threshold in credits
        #[arg(long, value_name = "X", value_parser = parse_threshold)]
        warn: Option<Credits>,
        /// Critical threshold in credits
        #[arg(long, value_name = "Y", value_parser = parse_threshold)]
        critical: Option<Credits>,
        /// Where the server POSTs balance events
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Send a sample event to the alert URL
    Test {
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"eventId"}
        #[arg(long)]
        json: bool,
    },
}

fn show(s: &AlertSettings) {
    let c = |c: Option<Credits>| c.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
    println!("warning    {}", c(s.warn));
    println!("critical   {}", c(s.critical));
    println!("url        {}", s.url.as_deref().unwrap_or("-"));
    println!("state      {}", s.state);
    println!("available  {}", s.available);
}

pub async fn run(cmd: AlertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AlertsCommand::Show { api, json } => {
            let s = api.client()?.alerts().await?;
            if json {
                print_json(&s)?;
            } else {
                show(&s);
            }
        }
        AlertsCommand::Set {
            warn,
            critical,
            url,
            api,
            json,
        } => {
            let s = api
                .client()?
                .set_alerts(&AlertChanges {
                    warn,
                    critical,
                    url,
                })
                .await?;
            if json {
                print_json(&s)?;
            } else {
                show(&s);
            }
        }
        AlertsCommand::Test { api, json } => {
            let t = api.client()?.test_alert().await?;
            if json {
                print_json(&t)?;
            } else {
                println!("sent {}", t.event_id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
