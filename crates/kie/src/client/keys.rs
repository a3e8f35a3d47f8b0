//! `kie keys list | create | revoke | roll | update`: the account's API keys, as the
//! console's API keys page manages them (`/api/v1/account/keys`). They need a key with
//! the management scope (`kie admin key create --manage`, or the console's
//! **Management key** checkbox); any other key gets code 401.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kie_sdk::keys::{Caps, KeyChanges, KeyInfo, KeySpec, NewKey};
use kie_sdk::Credits;

use super::common::{print_json, ApiArgs};

fn iso(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// A cap flag's value: credits, or `None` for `none` (no cap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cap(Option<Credits>);

/// A cap value: credits (at most 2 decimals) or `none`.
fn parse_cap(s: &str) -> Result<Cap, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(Cap(None));
    }
    let c: Credits = s.trim().parse().map_err(|e| format!("{e}"))?;
    if c.0 < 0 {
        return Err("must not be negative".into());
    }
    Ok(Cap(Some(c)))
}

/// A duration such as `90d`, `12h`, `30m` (checked here, sent as written).
fn parse_duration_text(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(t.to_string());
    }
    humantime::parse_duration(t)
        .map(|_| t.to_string())
        .map_err(|e| format!("{e} (examples: 1h, 7d, 90d)"))
}

/// Usage caps in credits; `none` removes a cap (update).
#[derive(Args, Clone)]
pub struct CapFlags {
    /// Most credits charged through the key per UTC hour (`none`: no cap)
    #[arg(long, value_name = "X", value_parser = parse_cap)]
    cap_hourly: Option<Cap>,
    /// Most credits charged through the key per UTC day (`none`: no cap)
    #[arg(long, value_name = "X", value_parser = parse_cap)]
    cap_daily: Option<Cap>,
    /// Most credits charged through the key in total (`none`: no cap)
    #[arg(long, value_name = "X", value_parser = parse_cap)]
    cap_total: Option<Cap>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// The account's keys: status, caps and usage, allowed IPs, scope
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: a JSON array of keys (never the keys themselves)
        #[arg(long)]
        json: bool,
    },
    /// Create a key; it is printed once
    #[command(
        after_help = "Example:\n  kie keys create --name ci --expires 90d --cap-daily 20 --allow-ip 203.0.113.0/24"
    )]
    Create {
        /// A name for the key (up to 100 characters)
        #[arg(long)]
        name: Option<String>,
        /// Expire after this long (90d, 12h)
        #[arg(long, value_name = "D", value_parser = parse_duration_text)]
        expires: Option<String>,
        /// Give the key the management scope (it can manage keys itself)
        #[arg(long)]
        manage: bool,
        #[command(flatten)]
        caps: CapFlags,
        /// Only from this CIDR block or address (repeatable); default: any address
        #[arg(long, value_name = "CIDR")]
        allow_ip: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: {"id","key","prefix","account","name","expiresAt","caps","allowIps","manage"}
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key now
    Revoke {
        /// Key id (or display prefix)
        id: String,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: the key
        #[arg(long)]
        json: bool,
    },
    /// Replace a key with a new one (same caps, allowlist, scope); the old one keeps working for --grace
    Roll {
        /// Key id (or display prefix)
        id: String,
        /// How long the old key keeps working (1h, 7d; default: revoked now)
        #[arg(long, value_name = "D", value_parser = parse_duration_text)]
        grace: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: the new key
        #[arg(long)]
        json: bool,
    },
    /// Change a key's caps or IP allowlist
    #[command(
        after_help = "Examples:\n  kie keys update key_… --cap-daily 50 --cap-total none\n  kie keys update key_… --allow-ip 203.0.113.0/24 --allow-ip 2001:db8::/32\n  kie keys update key_… --clear-allow-ip"
    )]
    Update {
        /// Key id (or display prefix)
        id: String,
        #[command(flatten)]
        caps: CapFlags,
        /// Replace the allowlist with these CIDR blocks or addresses (repeatable)
        #[arg(long, value_name = "CIDR", conflicts_with = "clear_allow_ip")]
        allow_ip: Vec<String>,
        /// Remove the allowlist (any address)
        #[arg(long)]
        clear_allow_ip: bool,
        #[command(flatten)]
        api: ApiArgs,
        /// Machine-readable output: the key
        #[arg(long)]
        json: bool,
    },
}

fn cap_text(c: Option<Credits>) -> String {
    c.map_or_else(|| "-".to_string(), |c| c.to_string())
}

fn caps_text(c: &Caps) -> String {
    format!(
        "{}/{}/{}",
        cap_text(c.hourly),
        cap_text(c.daily),
        cap_text(c.total)
    )
}

fn key_text(k: &KeyInfo) -> String {
    format!(
        "key {} ({}) {}{}\ncaps (hourly/daily/total): {}\nusage (hourly/daily/total): {}/{}/{}\nallowed from: {}\nmanagement scope: {}",
        k.id,
        k.prefix,
        k.status,
        k.name.as_deref().map(|n| format!(", {n}")).unwrap_or_default(),
        caps_text(&k.caps),
        k.usage.hourly,
        k.usage.daily,
        k.usage.total,
        if k.allow_ips.is_empty() {
            "any address".to_string()
        } else {
            k.allow_ips.join(" ")
        },
        if k.manage { "yes" } else { "no" }
    )
}

fn new_key_text(k: &NewKey) -> String {
    format!(
        "API key {} (id {}):\n{}\nStore it now: it is not shown again.",
        k.prefix, k.id, k.key
    )
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::List { api, json } => {
            let keys = api.client()?.keys().await?;
            if json {
                print_json(&keys)?;
            } else {
                println!(
                    "{:<22} {:<14} {:<8} {:<20} {:<20} {:<20} {:<20} {:<6} NAME",
                    "ID",
                    "PREFIX",
                    "STATUS",
                    "LAST USED",
                    "EXPIRES",
                    "CAPS H/D/TOTAL",
                    "USED H/D/TOTAL",
                    "IPS"
                );
                for k in &keys {
                    println!(
                        "{:<22} {:<14} {:<8} {:<20} {:<20} {:<20} {:<20} {:<6} {}{}",
                        k.id,
                        k.prefix,
                        k.status,
                        k.last_used_at.map(iso).unwrap_or_else(|| "never".into()),
                        k.expires_at.map(iso).unwrap_or_else(|| "-".into()),
                        caps_text(&k.caps),
                        format!("{}/{}/{}", k.usage.hourly, k.usage.daily, k.usage.total),
                        if k.allow_ips.is_empty() {
                            "any".to_string()
                        } else {
                            k.allow_ips.len().to_string()
                        },
                        k.name.as_deref().unwrap_or(""),
                        if k.manage { " [manage]" } else { "" }
                    );
                }
            }
        }
        KeysCommand::Create {
            name,
            expires,
            manage,
            caps,
            allow_ip,
            api,
            json,
        } => {
            let spec = KeySpec {
                name,
                expires,
                caps: Caps {
                    hourly: caps.cap_hourly.and_then(|c| c.0),
                    daily: caps.cap_daily.and_then(|c| c.0),
                    total: caps.cap_total.and_then(|c| c.0),
                },
                allow_ips: allow_ip,
                manage,
            };
            let k = api.client()?.create_key(&spec).await?;
            if json {
                print_json(&k)?;
            } else {
                println!("{}", new_key_text(&k));
            }
        }
        KeysCommand::Revoke { id, api, json } => {
            let k = api.client()?.revoke_key(&id).await?;
            if json {
                print_json(&k)?;
            } else {
                println!("revoked {}", key_text(&k));
            }
        }
        KeysCommand::Roll {
            id,
            grace,
            api,
            json,
        } => {
            let k = api.client()?.roll_key(&id, grace.as_deref()).await?;
            if json {
                print_json(&k)?;
            } else {
                println!(
                    "{}\nThe old key {}.",
                    new_key_text(&k),
                    match grace.as_deref() {
                        None | Some("0") => "is revoked".to_string(),
                        Some(g) => format!("keeps working for {g}"),
                    }
                );
            }
        }
        KeysCommand::Update {
            id,
            caps,
            allow_ip,
            clear_allow_ip,
            api,
            json,
        } => {
            let changes = KeyChanges {
                hourly: caps.cap_hourly.map(|c| c.0),
                daily: caps.cap_daily.map(|c| c.0),
                total: caps.cap_total.map(|c| c.0),
                allow_ips: if clear_allow_ip {
                    Some(Vec::new())
                } else if allow_ip.is_empty() {
                    None
                } else {
                    Some(allow_ip)
                },
                manage: None,
            };
            if changes.hourly.is_none()
                && changes.daily.is_none()
                && changes.total.is_none()
                && changes.allow_ips.is_none()
            {
                anyhow::bail!(
                    "nothing to change: give --cap-hourly, --cap-daily, --cap-total, --allow-ip or --clear-allow-ip"
                );
            }
            let k = api.client()?.update_key(&id, &changes).await?;
            if json {
                print_json(&k)?;
            } else {
                println!("updated {}", key_text(&k));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_durations() {
        assert_eq!(parse_cap("none").unwrap(), Cap(None));
        assert_eq!(parse_cap("2.5").unwrap(), Cap(Some(Credits(250))));
        assert!(parse_cap("-1").is_err());
        assert!(parse_cap("abc").is_err());
        assert_eq!(parse_duration_text("7d").unwrap(), "7d");
        assert!(parse_duration_text("soon").is_err());
    }
}
