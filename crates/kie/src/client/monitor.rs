//! `kie monitor`: poll the balance, report burn rate and time to exhaustion, and alert
//! once per threshold crossing (and once on recovery).

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args;
use kie_sdk::monitor::{Alert, BalanceMonitor, Observation, Thresholds};
use kie_sdk::Credits;
use serde_json::json;

use super::common::{human, one_line, parse_duration, print_json, ApiArgs};

#[derive(Args)]
#[command(after_help = "\
Levels: critical when the balance is below --critical, warn when below --warn, else ok.
On each change of level (and on the first poll when not ok) --exec runs CMD with sh -c and \
the environment KIE_EVENT (warn|critical|recovered), KIE_LEVEL, KIE_PREVIOUS_LEVEL, \
KIE_BALANCE, KIE_BURN_PER_HOUR and KIE_ETA_SECONDS (empty when unknown); --alert-url \
receives the same as a JSON POST. The API key is not passed to CMD.
--once polls once and exits 0 ok, 1 warn, 2 critical, 3 unknown (balance unreadable), \
for cron or Nagios-style checks; it runs no alert hooks.")]
pub struct MonitorArgs {
    /// Time between polls (90s, 20m, 1h)
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Warning level: alert when the balance drops below X credits
    #[arg(long, value_name = "X")]
    pub warn: Option<Credits>,
    /// Critical level: alert when the balance drops below Y credits
    #[arg(long, value_name = "Y")]
    pub critical: Option<Credits>,
    /// Shell command run on each alert
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// URL that receives each alert as a JSON POST
    #[arg(long, value_name = "URL")]
    pub alert_url: Option<String>,
    /// Poll once and exit with the level as status
    #[arg(long)]
    pub once: bool,
    /// Stop after N polls (for tests and scripted runs)
    #[arg(long, hide = true, value_name = "N")]
    pub max_polls: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Machine-readable output: one JSON object per poll
    #[arg(long)]
    pub json: bool,
}

const EXIT_UNKNOWN: u8 = 3;

pub async fn run(a: MonitorArgs) -> anyhow::Result<ExitCode> {
    if let (Some(w), Some(c)) = (a.warn, a.critical) {
        anyhow::ensure!(c <= w, "--critical ({c}) must not be above --warn ({w})");
    }
    if let Some(u) = &a.alert_url {
        reqwest::Url::parse(u).with_context(|| format!("--alert-url {u:?} is not a URL"))?;
    }
    let thresholds = Thresholds {
        warn: a.warn,
        critical: a.critical,
    };
    let client = match a.api.client() {
        Ok(c) => c,
        Err(e) if a.once => {
            eprintln!("kie: {}", one_line(&format!("{e:#}")));
            return Ok(ExitCode::from(EXIT_UNKNOWN));
        }
        Err(e) => return Err(e),
    };
    let mut monitor = BalanceMonitor::new(thresholds);

    if a.once {
        return Ok(match client.credits().await {
            Ok(b) => {
                let o = monitor.observe(Instant::now(), b);
                report(&a, &o)?;
                ExitCode::from(o.level.exit_code())
            }
            Err(e) => {
                report_error(&a, &e)?;
                ExitCode::from(EXIT_UNKNOWN)
            }
        });
    }

    // hooks get no API key: they do not need it and may log their environment
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .context("cannot build the HTTP client")?;
    let mut polls = 0u64;
    loop {
        polls += 1;
        match client.credits().await {
            Ok(b) => {
                let o = monitor.observe(Instant::now(), b);
                report(&a, &o)?;
                if let Some(alert) = o.alert {
                    fire(&a, &http, alert, &o).await;
                }
            }
            // the level is kept: one failed poll is not a crossing
            Err(e) => report_error(&a, &e)?,
        }
        if a.max_polls.is_some_and(|n| polls >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn report(a: &MonitorArgs, o: &Observation) -> anyhow::Result<()> {
    if a.json {
        print_json(&json!({
            "time": now_rfc3339(),
            "balance": o.balance,
            "level": o.level,
            "burnPerHour": o.burn_per_hour,
            "etaSeconds": o.time_to_exhaustion.map(|d| d.as_secs()),
            "alert": o.alert,
        }))
    } else {
        let mut line = format!(
            "{}  balance {}  {}",
            now_rfc3339(),
            o.balance,
            o.level.as_str()
        );
        match (o.burn_per_hour, o.time_to_exhaustion) {
            (Some(r), Some(eta)) => {
                line += &format!("  burn {r:.2}/h  exhausted in ~{}", human(eta))
            }
            (Some(_), None) => line += "  burn 0/h",
            _ => {}
        }
        if let Some(al) = o.alert {
            line += &format!("  ALERT {}", al.as_str());
        }
        println!("{line}");
        Ok(())
    }
}

fn report_error(a: &MonitorArgs, e: &kie_sdk::Error) -> anyhow::Result<()> {
    let msg = one_line(&e.to_string());
    if a.json {
        print_json(&json!({ "time": now_rfc3339(), "level": "unknown", "error": msg }))?;
    }
    eprintln!("kie: cannot read the balance: {msg}");
    Ok(())
}

/// Runs the alert hooks; their failures are reported, never fatal to the monitor.
async fn fire(a: &MonitorArgs, http: &reqwest::Client, alert: Alert, o: &Observation) {
    let burn = o
        .burn_per_hour
        .map(|r| format!("{r:.2}"))
        .unwrap_or_default();
    let eta = o
        .time_to_exhaustion
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default();
    let previous = o.previous.map(|l| l.as_str()).unwrap_or("unknown");
    if let Some(cmd) = &a.exec {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env_remove("KIE_API_KEY")
            .env("KIE_EVENT", alert.as_str())
            .env("KIE_LEVEL", o.level.as_str())
            .env("KIE_PREVIOUS_LEVEL", previous)
            .env("KIE_BALANCE", o.balance.to_string())
            .env("KIE_BURN_PER_HOUR", &burn)
            .env("KIE_ETA_SECONDS", &eta)
            .stdin(std::process::Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("kie: --exec command exited with {s}"),
            Err(e) => eprintln!("kie: cannot run the --exec command: {e}"),
        }
    }
    if let Some(url) = &a.alert_url {
        let body = json!({
            "event": alert.as_str(),
            "level": o.level,
            "previousLevel": previous,
            "balance": o.balance,
            "burnPerHour": o.burn_per_hour,
            "etaSeconds": o.time_to_exhaustion.map(|d| d.as_secs()),
            "time": now_rfc3339(),
        });
        match http.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => eprintln!("kie: --alert-url answered HTTP {}", r.status().as_u16()),
            Err(e) => eprintln!(
                "kie: --alert-url failed: {}",
                one_line(&e.without_url().to_string())
            ),
        }
    }
}
