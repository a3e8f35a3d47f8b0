//! `kie tasks list`, `kie usage`, `kie callbacks list`: the account's own history, as
//! the console shows it (`GET /api/v1/account/…`).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kie_sdk::account::TaskFilter;

use super::common::{print_json, ApiArgs};

/// `2026-11-29` (midnight UTC) or an RFC 3339 time (`2026-11-29T12:00:00Z`) → epoch ms.
fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let t = if s.len() == 10 {
        humantime::parse_rfc3339_weak(&format!("{s} 00:00:00"))
    } else {
        humantime::parse_rfc3339_weak(s)
    }
    .map_err(|e| format!("{e} (examples: 2026-11-29, 2026-11-29T12:00:00Z)"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

fn iso(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

#[derive(Subcommand)]
pub enum TasksCommand {
    /// The account's tasks, newest first
    List {
        /// Only this state (waiting, generating, success, fail)
        #[arg(long)]
        state: Option<String>,
        /// Only this model
        #[arg(long)]
        model: Option<String>,
        /// Only tasks created since (2026-11-29 or an RFC 3339 time)
        #[arg(long, value_name = "T", value_parser = parse_time)]
        since: Option<i64>,
        /// At most N (1–1000)
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct UsageArgs {
    /// Only entries since (2026-11-29 or an RFC 3339 time)
    #[arg(long, value_name = "T", value_parser = parse_time)]
    since: Option<i64>,
    /// At most N entries, newest first (1–1000)
    #[arg(long, default_value_t = 100, value_name = "N")]
    limit: u32,
    /// CSV on stdout: time,entry_id,kind,amount,held_delta,reason
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    #[command(flatten)]
    api: ApiArgs,
    /// Machine-readable output: a JSON array
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum CallbacksCommand {
    /// The account's callback deliveries, newest first
    List {
        /// Only the delivery of this task
        #[arg(long)]
        task: Option<String>,
        /// At most N (1–1000)
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: [{"id","taskId","event","url","status","attempts","lastStatus","nextAttemptAt"}] (taskId null and event set for a balance alert event)
        #[arg(long)]
        json: bool,
    },
    /// Send a finished delivery again: one more attempt now (same webhook-id and body)
    Redeliver {
        /// Delivery id (the webhook-id, msg_… or evt_…)
        id: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"id","status"}
        #[arg(long)]
        json: bool,
    },
    /// Send every delivery that failed (retries exhausted) since T again, once each
    Replay {
        /// Failed deliveries created since (2026-11-29 or an RFC 3339 time)
        #[arg(long, value_name = "T", value_parser = parse_time)]
        since: i64,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"count"}
        #[arg(long)]
        json: bool,
    },
    /// The webhook HMAC key: show, roll (needs a management key)
    #[command(subcommand)]
    Key(WebhookKeyCommand),
}

#[derive(Subcommand)]
pub enum WebhookKeyCommand {
    /// Print the webhook HMAC key (whsec_…)
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"account","key","previousValidUntil"}
        #[arg(long)]
        json: bool,
    },
    /// Replace the key; the old one keeps signing next to the new one for --grace
    #[command(
        after_help = "During the overlap each callback's webhook-signature carries two Standard Webhooks \
signatures (\"v1,<new> v1,<old>\"), so receivers verifying with either key accept it; \
X-Webhook-Signature (KIE.AI scheme) is made with the new key."
    )]
    Roll {
        /// How long the old key keeps signing too (0, 1h, 7d; at most 30d)
        #[arg(long, value_name = "D", default_value = "24h", value_parser = parse_grace)]
        grace: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"account","key","previousValidUntil"}
        #[arg(long)]
        json: bool,
    },
}

/// A grace period such as `0`, `1h`, `7d` (checked here, sent as written).
fn parse_grace(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(t.to_string());
    }
    humantime::parse_duration(t)
        .map(|_| t.to_string())
        .map_err(|e| format!("{e} (examples: 0, 1h, 24h, 7d)"))
}

pub async fn tasks(cmd: TasksCommand) -> anyhow::Result<ExitCode> {
    let TasksCommand::List {
        state,
        model,
        since,
        limit,
        api,
        json,
    } = cmd;
    let list = api
        .client()?
        .tasks(&TaskFilter {
            state,
            model,
            since,
            limit: Some(limit),
        })
        .await?;
    if json {
        print_json(&list)?;
    } else {
        println!(
            "{:<22} {:<16} {:<10} {:<20} {:>8}  FAILURE",
            "TASK", "MODEL", "STATE", "CREATED", "CREDITS"
        );
        for t in &list {
            println!(
                "{:<22} {:<16} {:<10} {:<20} {:>8}  {}",
                t.task_id,
                t.model,
                t.state,
                iso(t.create_time),
                t.consume_credits.to_string(),
                t.fail_msg
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One CSV field (quoted when needed; a leading formula character defused).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

pub async fn usage(a: UsageArgs) -> anyhow::Result<ExitCode> {
    let list = a.api.client()?.usage(a.since, Some(a.limit)).await?;
    if a.json {
        print_json(&list)?;
    } else if a.csv {
        println!("time,entry_id,kind,amount,held_delta,reason");
        for e in &list {
            println!(
                "{},{},{},{},{},{}",
                iso(e.created_at),
                csv_field(&e.entry_id),
                csv_field(&e.kind),
                e.amount,
                e.held_delta,
                csv_field(e.reason.as_deref().unwrap_or(""))
            );
        }
    } else {
        println!(
            "{:<20} {:<7} {:>10} {:>10}  REASON",
            "TIME", "KIND", "AMOUNT", "HELD"
        );
        for e in &list {
            println!(
                "{:<20} {:<7} {:>10} {:>10}  {}",
                iso(e.created_at),
                e.kind,
                e.amount.to_string(),
                e.held_delta.to_string(),
                e.reason.as_deref().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn callbacks(cmd: CallbacksCommand) -> anyhow::Result<ExitCode> {
    let (task, limit, api, json) = match cmd {
        CallbacksCommand::List {
            task,
            limit,
            api,
            json,
        } => (task, limit, api, json),
        CallbacksCommand::Redeliver { id, api, json } => {
            let r = api.client()?.redeliver(&id).await?;
            if json {
                print_json(&r)?;
            } else {
                println!("{}: queued for one more attempt", r.id);
            }
            return Ok(ExitCode::SUCCESS);
        }
        CallbacksCommand::Replay { since, api, json } => {
            let r = api.client()?.replay_failed(since).await?;
            if json {
                print_json(&r)?;
            } else {
                println!("{} failed deliveries queued again", r.count);
            }
            return Ok(ExitCode::SUCCESS);
        }
        CallbacksCommand::Key(WebhookKeyCommand::Show { api, json }) => {
            let k = api.client()?.webhook_key().await?;
            print_webhook_key(&k, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        CallbacksCommand::Key(WebhookKeyCommand::Roll { grace, api, json }) => {
            let k = api.client()?.roll_webhook_key(Some(&grace)).await?;
            print_webhook_key(&k, json)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let list = api
        .client()?
        .callbacks(task.as_deref(), Some(limit))
        .await?;
    if json {
        print_json(&list)?;
    } else {
        println!(
            "{:<28} {:<28} {:<10} {:>8} {:>6}  URL",
            "ID", "TASK / EVENT", "STATUS", "ATTEMPTS", "LAST"
        );
        for c in &list {
            let what = match (&c.task_id, &c.event) {
                (Some(t), _) => t.clone(),
                (None, Some(e)) => format!("event {e}"),
                (None, None) => "-".into(),
            };
            println!(
                "{:<28} {:<28} {:<10} {:>8} {:>6}  {}",
                c.id,
                what,
                c.status,
                c.attempts,
                c.last_status.map(|s| s.to_string()).unwrap_or_default(),
                c.url
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_webhook_key(k: &kie_sdk::account::WebhookKey, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(k);
    }
    match &k.key {
        Some(key) => println!("{key}"),
        None => println!("no webhook key (callbacks are sent unsigned)"),
    }
    if let Some(t) = k.previous_valid_until {
        eprintln!("the previous key also signs callbacks until {}", iso(t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(parse_time("yesterday").is_err());
    }
}
