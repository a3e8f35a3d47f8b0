//! `kie admin`: operator commands that work directly on the service's database (SQLite
//! path or PostgreSQL URL), also while `kie serve` runs.
//!
//! With `--json` each command prints exactly one JSON value on stdout (an object, or an
//! array for lists); errors go to stderr with a non-zero exit.

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;
use std::process::ExitCode;

use kie_server::accounts::{self, AccountError};
use kie_server::config::parse_duration;
use kie_server::console::users;
use kie_server::ledger::{self, LedgerError};
use kie_server::store::{now_ms, Db};
use kie_server::{settings, StoreArgs};
use kie_server::{tasks, webhooks};
use kie_wire::Credits;

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Accounts
    #[command(subcommand)]
    Account(AccountCmd),
    /// API keys (shown once at creation; only a digest is stored)
    #[command(subcommand)]
    Key(KeyCmd),
    /// Credits: grants, deductions, balances and the ledger
    #[command(subcommand)]
    Credits(CreditsCmd),
    /// Webhook HMAC keys (whsec_…) used to sign callbacks
    #[command(name = "webhook-key", subcommand)]
    WebhookKey(WebhookKeyCmd),
    /// Tasks of the Jobs API
    #[command(subcommand)]
    Task(TaskCmd),
    /// Webhook callback deliveries and their attempts
    #[command(subcommand)]
    Webhook(WebhookCmd),
    /// Maintenance mode: every /api request answers code 455 while on
    Maintenance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Enable or disable a feature (disabled features answer code 505)
    #[command(subcommand)]
    Feature(FeatureCmd),
    /// Stored files
    #[command(subcommand)]
    File(FileCmd),
    /// The key ring that signs temporary download links
    #[command(name = "signing-key", subcommand)]
    SigningKey(SigningKeyCmd),
    /// The web console (/console/): invite account holders and operators
    #[command(subcommand)]
    Console(ConsoleCmd),
    /// Operator tokens (kieop_…): the credential of the operator API, /api/v1/admin/…
    #[command(name = "operator-token", subcommand)]
    OperatorToken(OperatorTokenCmd),
}

#[derive(Subcommand)]
enum OperatorTokenCmd {
    /// Mint a token (printed once; only its digest is stored)
    #[command(
        after_help = "Use it as `Authorization: Bearer kieop_…` on /api/v1/admin/… \
(accounts, credits, invites, settings, signing-key rotation, health; see /openapi.json, \
tag admin). It is an operator's full power over every account: keep it like a root \
password.\n\nExample:\n  kie admin operator-token create --name ci --json"
    )]
    Create {
        /// A label for the token
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never the tokens themselves)
    List,
    /// Revoke a token now (by id or prefix): its next request is refused on every node
    Revoke {
        /// Token id or its display prefix (kieop_ + 8 characters)
        id: String,
    },
}

#[derive(Subcommand)]
enum ConsoleCmd {
    /// Print a one-time URL (valid 24 h) where the person sets a password and is signed in
    #[command(group(clap::ArgGroup::new("who").required(true).args(["account", "operator"])))]
    Invite {
        /// The account (id or name) the person will see
        #[arg(long)]
        account: Option<String>,
        /// Invite an operator (needs --email)
        #[arg(long, requires = "email")]
        operator: bool,
        /// The person's email address, their sign-in name [default: the account's email]
        #[arg(long)]
        email: Option<String>,
        /// Base of the printed URL when no server has recorded its public URL yet
        #[arg(long, env = "KIE_PUBLIC_URL", value_name = "URL")]
        public_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum FileCmd {
    /// Store a local file for an account and print its file URL
    Add {
        /// Account id or name
        #[arg(long)]
        account: String,
        /// The file to store
        path: std::path::PathBuf,
        /// File name in the URL [default: the file's own name]
        #[arg(long)]
        name: Option<String>,
        /// Content type [default: guessed from the name]
        #[arg(long, value_name = "MIME")]
        content_type: Option<String>,
        /// Base of the printed URL when no server has recorded its public URL yet
        #[arg(long, env = "KIE_PUBLIC_URL", value_name = "URL")]
        public_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum SigningKeyCmd {
    /// Add a new active key and retire the old ones (their links stay valid until they expire)
    Rotate,
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account
    Create {
        #[arg(long)]
        name: String,
        /// The account holder's email address (the default of `console invite --account`)
        #[arg(long)]
        email: Option<String>,
        /// Starting credits (at most 2 decimals)
        #[arg(long, value_name = "X", allow_hyphen_values = true)]
        credits: Option<String>,
    },
    /// List accounts
    List,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create an API key for an account (prints the key once)
    #[command(
        after_help = "Caps count the credits charged through the key: a task's \
price when it is created (a task that fails gives it back), priced download links. \
Hourly and daily caps use fixed UTC hours and days; the total cap counts over the \
key's life. A request that would exceed a cap gets code 433; one from an address \
outside --allow-ip gets code 401.\n\nExample:\n  kie admin key create --account demo \
--cap-daily 20 --allow-ip 203.0.113.0/24 --json"
    )]
    Create {
        /// Account id or name
        #[arg(long)]
        account: String,
        /// A label for the key
        #[arg(long)]
        name: Option<String>,
        /// Expire after this long, e.g. 30d
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        caps: CapArgs,
        /// Only requests from this address or CIDR block (repeatable; default: any
        /// address). Checked against the TCP peer address of the connection.
        #[arg(long = "allow-ip", value_name = "CIDR")]
        allow_ip: Vec<String>,
        /// Give the key the management scope (management endpoints require it)
        #[arg(long)]
        manage: bool,
    },
    /// Change a key's caps, IP allowlist or management scope (by key id or prefix);
    /// running servers apply the allowlist and scope within `auth_cache_ttl` (2 s), caps at the next charge
    #[command(
        after_help = "Caps count the credits charged through the key: a task's \
price when it is created (a task that fails gives it back), priced download links. \
Hourly and daily caps use fixed UTC hours and days (the counter starts again at \
every full hour / at 00:00 UTC); the total cap counts over the key's life. A request \
that would exceed a cap gets code 433 \"Sub-key usage exceeds limit\" and changes \
nothing.\n\nExamples:\n  kie admin key update key_… --cap-daily 50 --cap-total none\n  \
kie admin key update key_… --allow-ip 10.0.0.0/8 --allow-ip 192.0.2.7\n  \
kie admin key update key_… --clear-allow-ip --no-manage"
    )]
    Update {
        key: String,
        #[command(flatten)]
        caps: CapArgs,
        /// Replace the allowlist with these addresses or CIDR blocks (repeatable)
        #[arg(
            long = "allow-ip",
            value_name = "CIDR",
            conflicts_with = "clear_allow_ip"
        )]
        allow_ip: Vec<String>,
        /// Remove the allowlist: any address may use the key
        #[arg(long)]
        clear_allow_ip: bool,
        /// Give the key the management scope
        #[arg(long, conflicts_with = "no_manage")]
        manage: bool,
        /// Take the management scope away
        #[arg(long)]
        no_manage: bool,
    },
    /// Show one key: status, caps and usage against them, allowlist, scope
    Show { key: String },
    /// List keys (prefixes only)
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a key (by key id or prefix); running servers refuse it within 5 s
    Revoke { key: String },
    /// Replace a key with a new one; the old one keeps working for --grace
    Roll {
        key: String,
        /// How long the old key stays valid, e.g. 1h [default: 0s, revoked at once]
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
}

/// Usage caps in credits (at most 2 decimals); `none` removes a cap (update).
#[derive(Args)]
struct CapArgs {
    /// Most credits charged through the key per UTC hour (`none`: no cap)
    #[arg(long, value_name = "X")]
    cap_hourly: Option<String>,
    /// Most credits charged through the key per UTC day (`none`: no cap)
    #[arg(long, value_name = "X")]
    cap_daily: Option<String>,
    /// Most credits charged through the key in total (`none`: no cap)
    #[arg(long, value_name = "X")]
    cap_total: Option<String>,
}

/// A cap flag: `Some(None)` for `none`.
fn cap(flag: &str, v: Option<&str>) -> Result<Option<Option<Credits>>, Failure> {
    let Some(s) = v else { return Ok(None) };
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(Some(None));
    }
    let c: Credits = s
        .parse()
        .map_err(|e| Failure(format!("invalid {flag} '{s}': {e}")))?;
    if c.0 < 0 {
        return Err(Failure(format!(
            "invalid {flag} '{s}': must not be negative"
        )));
    }
    Ok(Some(Some(c)))
}

impl CapArgs {
    fn parse(&self) -> Result<[Option<Option<Credits>>; 3], Failure> {
        Ok([
            cap("--cap-hourly", self.cap_hourly.as_deref())?,
            cap("--cap-daily", self.cap_daily.as_deref())?,
            cap("--cap-total", self.cap_total.as_deref())?,
        ])
    }
}

fn allow_list(items: &[String]) -> Result<Vec<kie_server::ipallow::Cidr>, Failure> {
    kie_server::ipallow::parse_list(items).map_err(|e| Failure(format!("invalid --allow-ip: {e}")))
}

fn caps_text(c: &accounts::Caps) -> String {
    let one = |v: Option<Credits>| v.map_or_else(|| "none".to_string(), |c| c.to_string());
    format!(
        "hourly {}, daily {}, total {}",
        one(c.hourly),
        one(c.daily),
        one(c.total)
    )
}

fn key_text(k: &accounts::KeyInfo) -> String {
    format!(
        "key {} ({}) of {}: {}\ncaps: {}\nusage: hourly {}, daily {}, total {}\nallowed from: {}\nmanagement scope: {}",
        k.id,
        k.prefix,
        k.account,
        k.status,
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

#[derive(Args)]
struct AmountArgs {
    /// Account id or name
    #[arg(long)]
    account: String,
    /// Credits, at most 2 decimals
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    amount: String,
    #[arg(long)]
    reason: Option<String>,
    /// Repeating a command with the same key applies it once
    #[arg(long, value_name = "K")]
    idempotency_key: Option<String>,
}

#[derive(Subcommand)]
enum CreditsCmd {
    /// Add credits
    Grant(AmountArgs),
    /// Remove credits (never below the available balance)
    Deduct(AmountArgs),
    /// Balance, available and held credits of an account
    Show {
        #[arg(long)]
        account: String,
    },
    /// Posted ledger entries, oldest first; their amounts sum to the balance
    History {
        #[arg(long)]
        account: String,
    },
}

#[derive(Subcommand)]
enum WebhookKeyCmd {
    /// Generate (or replace) the account's webhook key
    Generate {
        #[arg(long)]
        account: String,
    },
    /// Show the account's webhook key
    Show {
        #[arg(long)]
        account: String,
    },
    /// Replace the account's webhook key; the old one keeps signing callbacks next to
    /// the new one for --grace (Standard Webhooks: both signatures; KIE.AI scheme: the
    /// new key)
    Roll {
        #[arg(long)]
        account: String,
        /// How long the old key keeps signing too (0, 1h, 24h, 7d; at most 30d)
        #[arg(long, value_name = "D", default_value = "24h")]
        grace: String,
    },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Latest tasks, newest first
    List {
        /// Only this account (id or name)
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One task with its settlement and callback state
    Show { task: String },
}

#[derive(Subcommand)]
enum WebhookCmd {
    /// Deliveries (newest first) with every attempt: status, error, duration
    Deliveries {
        /// Only the delivery of this task
        #[arg(long)]
        task: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum FeatureCmd {
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    /// List features and whether they are enabled
    List,
}

/// An admin failure: a one-line message and the exit status.
struct Failure(String);

impl From<AccountError> for Failure {
    fn from(e: AccountError) -> Self {
        Failure(e.to_string())
    }
}
impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Self {
        Failure(match e {
            LedgerError::InsufficientCredits => {
                "insufficient credits: the amount exceeds the available balance".into()
            }
            other => other.to_string(),
        })
    }
}
impl From<kie_server::sqlx::Error> for Failure {
    fn from(e: kie_server::sqlx::Error) -> Self {
        Failure(format!("database error: {e}"))
    }
}

fn amount(flag: &str, s: &str) -> Result<Credits, Failure> {
    let c: Credits = s
        .parse()
        .map_err(|e| Failure(format!("invalid {flag} '{s}': {e}")))?;
    if c.0 <= 0 {
        return Err(Failure(format!(
            "invalid {flag} '{s}': must be greater than 0"
        )));
    }
    Ok(c)
}

fn iso(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// What a command prints: JSON for `--json`, text otherwise.
struct Out {
    json: serde_json::Value,
    text: String,
}

fn out<T: Serialize>(v: &T, text: impl Into<String>) -> Out {
    Out {
        json: serde_json::to_value(v).expect("serialisable"),
        text: text.into(),
    }
}

pub fn run(args: AdminArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kie admin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    let result = rt.block_on(async move {
        let db = kie_server::admin::open(&args.store)
            .await
            .map_err(|e| Failure(e.to_string()))?;
        let r = match args.command {
            AdminCommand::File(cmd) => file_cmd(&db, &args.store, cmd).await,
            other => execute(&db, other).await,
        };
        db.close().await;
        r
    });
    match result {
        Ok(o) => {
            if json {
                println!("{}", o.json);
            } else {
                println!("{}", o.text.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(Failure(msg)) => {
            eprintln!("kie admin: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(db: &Db, cmd: AdminCommand) -> Result<Out, Failure> {
    match cmd {
        AdminCommand::Account(AccountCmd::Create {
            name,
            email,
            credits,
        }) => {
            let c = match credits.as_deref() {
                Some(s) => Some(amount("--credits", s)?),
                None => None,
            };
            let email = match email.as_deref() {
                Some(e) => Some(users::normalize_email(e).map_err(|e| Failure(e.to_string()))?),
                None => None,
            };
            let a = accounts::create_with_email(db, &name, email.as_deref(), c).await?;
            let text = format!(
                "created account {} ({}) with {} credits",
                a.name, a.id, a.balance
            );
            let mut v = serde_json::to_value(&a).expect("serialisable");
            v["email"] = json!(email);
            Ok(Out { json: v, text })
        }
        AdminCommand::Console(ConsoleCmd::Invite {
            account,
            operator,
            email,
            public_url,
        }) => console_invite(db, account, operator, email, public_url).await,
        AdminCommand::Account(AccountCmd::List) => {
            let list = accounts::list(db).await?;
            let mut text = format!(
                "{:<22} {:<24} {:>14} {:>14}\n",
                "ID", "NAME", "BALANCE", "AVAILABLE"
            );
            for a in &list {
                text += &format!(
                    "{:<22} {:<24} {:>14} {:>14}\n",
                    a.id,
                    a.name,
                    a.balance.to_string(),
                    a.available.to_string()
                );
            }
            Ok(out(&list, text))
        }
        AdminCommand::Key(KeyCmd::Create {
            account,
            name,
            expires,
            caps,
            allow_ip,
            manage,
        }) => {
            let [hourly, daily, total] = caps.parse()?;
            let opts = accounts::KeyOptions {
                caps: accounts::Caps {
                    hourly: hourly.flatten(),
                    daily: daily.flatten(),
                    total: total.flatten(),
                },
                allow_ips: allow_list(&allow_ip)?,
                manage,
            };
            let expires_at = match expires.as_deref() {
                Some(d) => Some(
                    now_ms()
                        + parse_duration("--expires", d)
                            .map_err(|e| Failure(e.to_string()))?
                            .as_millis() as i64,
                ),
                None => None,
            };
            let k =
                accounts::create_key_with(db, &account, name.as_deref(), expires_at, &opts).await?;
            let mut text = format!(
                "API key for {} (id {}):\n{}\nStore it now: it is not shown again.",
                k.account, k.id, k.key
            );
            if opts.caps != accounts::Caps::default() {
                text += &format!("\ncaps: {}", caps_text(&opts.caps));
            }
            if !k.allow_ips.is_empty() {
                text += &format!("\nallowed from: {}", k.allow_ips.join(" "));
            }
            if k.manage {
                text += "\nmanagement scope: yes";
            }
            Ok(out(&k, text))
        }
        AdminCommand::Key(KeyCmd::Update {
            key,
            caps,
            allow_ip,
            clear_allow_ip,
            manage,
            no_manage,
        }) => {
            let [hourly, daily, total] = caps.parse()?;
            let u = accounts::KeyUpdate {
                hourly,
                daily,
                total,
                allow_ips: if clear_allow_ip {
                    Some(Vec::new())
                } else if allow_ip.is_empty() {
                    None
                } else {
                    Some(allow_list(&allow_ip)?)
                },
                manage: if manage {
                    Some(true)
                } else if no_manage {
                    Some(false)
                } else {
                    None
                },
            };
            if u.is_empty() {
                return Err(Failure(
                    "nothing to change: give --cap-hourly, --cap-daily, --cap-total, --allow-ip, --clear-allow-ip, --manage or --no-manage".into(),
                ));
            }
            let k = accounts::update_key(db, &key, &u).await?;
            Ok(out(&k, format!("updated {}", key_text(&k))))
        }
        AdminCommand::Key(KeyCmd::Show { key }) => {
            let k = accounts::find_key(db, &key).await?;
            Ok(out(&k, key_text(&k)))
        }
        AdminCommand::Key(KeyCmd::List { account }) => {
            let keys = accounts::list_keys(db, account.as_deref()).await?;
            let mut text = format!(
                "{:<22} {:<14} {:<22} {:<8} {:<24} {:<6} {}\n",
                "ID", "PREFIX", "ACCOUNT", "STATUS", "CAPS H/D/TOTAL", "IPS", "NAME"
            );
            let one = |v: Option<Credits>| v.map_or_else(|| "-".to_string(), |c| c.to_string());
            for k in &keys {
                let caps = format!(
                    "{}/{}/{}",
                    one(k.caps.hourly),
                    one(k.caps.daily),
                    one(k.caps.total)
                );
                let ips = if k.allow_ips.is_empty() {
                    "any".to_string()
                } else {
                    k.allow_ips.len().to_string()
                };
                text += &format!(
                    "{:<22} {:<14} {:<22} {:<8} {:<24} {:<6} {}{}\n",
                    k.id,
                    k.prefix,
                    k.account,
                    k.status,
                    caps,
                    ips,
                    k.name.as_deref().unwrap_or(""),
                    if k.manage { " [manage]" } else { "" }
                );
            }
            Ok(out(&keys, text))
        }
        AdminCommand::Key(KeyCmd::Revoke { key }) => {
            let k = accounts::revoke_key(db, &key).await?;
            let text = format!("revoked key {} ({})", k.id, k.prefix);
            Ok(out(&k, text))
        }
        AdminCommand::Key(KeyCmd::Roll { key, grace }) => {
            let grace_ms = match grace.as_deref() {
                Some(d) => parse_duration("--grace", d)
                    .map_err(|e| Failure(e.to_string()))?
                    .as_millis() as i64,
                None => 0,
            };
            let k = accounts::roll_key(db, &key, grace_ms, None).await?;
            let text = format!(
                "new API key for {} (id {}):\n{}\nThe old key {}.",
                k.account,
                k.id,
                k.key,
                if grace_ms > 0 {
                    format!("stays valid for {}", grace.unwrap_or_default())
                } else {
                    "is revoked".into()
                }
            );
            Ok(out(&k, text))
        }
        AdminCommand::Credits(CreditsCmd::Grant(a)) => change_credits(db, true, a).await,
        AdminCommand::Credits(CreditsCmd::Deduct(a)) => change_credits(db, false, a).await,
        AdminCommand::Credits(CreditsCmd::Show { account }) => {
            let acc = accounts::get(db, &account).await?;
            let b = ledger::balance(db, &acc.id)
                .await?
                .ok_or_else(|| Failure(format!("unknown account '{account}'")))?;
            let v = json!({"account": acc.id, "balance": b.balance, "available": b.available(), "held": b.held});
            let text = format!(
                "{} ({}): balance {}, available {}, held {}",
                acc.name,
                acc.id,
                b.balance,
                b.available(),
                b.held
            );
            Ok(Out { json: v, text })
        }
        AdminCommand::Credits(CreditsCmd::History { account }) => {
            let acc = accounts::get(db, &account).await?;
            let entries = ledger::history(db, &acc.id).await?;
            let json_entries: Vec<_> = entries
                .iter()
                .map(|e| json!({"entryId": e.entry_id, "kind": e.kind, "amount": e.amount, "reason": e.reason, "createdAt": iso(e.created_at)}))
                .collect();
            let mut text = format!(
                "{:<26} {:<24} {:<7} {:>12}  {}\n",
                "TIME", "ENTRY", "KIND", "AMOUNT", "REASON"
            );
            for e in &entries {
                text += &format!(
                    "{:<26} {:<24} {:<7} {:>12}  {}\n",
                    iso(e.created_at),
                    e.entry_id,
                    e.kind,
                    e.amount.to_string(),
                    e.reason.as_deref().unwrap_or("")
                );
            }
            Ok(Out {
                json: serde_json::Value::Array(json_entries),
                text,
            })
        }
        AdminCommand::WebhookKey(WebhookKeyCmd::Generate { account }) => {
            let k = accounts::generate_webhook_key(db, &account).await?;
            let text = format!(
                "webhook key for {}: {}",
                k.account,
                k.key.as_deref().unwrap_or("")
            );
            Ok(out(&k, text))
        }
        AdminCommand::WebhookKey(WebhookKeyCmd::Roll { account, grace }) => {
            let grace_ms = kie_server::api::callbacks::grace_ms(&grace)
                .map_err(|e| Failure(format!("--grace: {e}")))?;
            let k = accounts::roll_webhook_key(db, &account, grace_ms).await?;
            let mut text = format!(
                "new webhook key for {}: {}",
                k.account,
                k.key.as_deref().unwrap_or("")
            );
            if let Some(t) = k.previous_until {
                text.push_str(&format!(
                    "\nthe previous key also signs callbacks until {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.max(0) as u64)
                    )
                ));
            }
            Ok(out(&k, text))
        }
        AdminCommand::WebhookKey(WebhookKeyCmd::Show { account }) => {
            let k = accounts::webhook_key(db, &account).await?;
            let text = match &k.key {
                Some(key) => format!("webhook key for {}: {key}", k.account),
                None => format!("account {} has no webhook key (callbacks are sent unsigned); create one with: kie admin webhook-key generate --account {}", k.account, k.account),
            };
            Ok(out(&k, text))
        }
        AdminCommand::Task(TaskCmd::List { account, limit }) => {
            let acc = match account {
                Some(a) => Some(accounts::get(db, &a).await?.id),
                None => None,
            };
            let list = tasks::list(db, acc.as_deref(), limit.clamp(1, 10_000)).await?;
            let mut text = format!(
                "{:<24} {:<24} {:<16} {:<10} {:>8}  {}\n",
                "CREATED", "TASK", "MODEL", "STATE", "CHARGED", "ACCOUNT"
            );
            for t in &list {
                text += &format!(
                    "{:<24} {:<24} {:<16} {:<10} {:>8}  {}\n",
                    iso(t.created_at),
                    t.id,
                    t.model,
                    t.state,
                    Credits(t.consume_credits).to_string(),
                    t.account_id
                );
            }
            Ok(out(&list, text))
        }
        AdminCommand::Task(TaskCmd::Show { task }) => {
            let t = tasks::get(db, &task)
                .await?
                .ok_or_else(|| Failure(format!("unknown task '{task}'")))?;
            let text = format!(
                "task {} ({}) of {}: {}\nparam: {}\nresult: {}\nfail: {} {}\nprice {}, charged {}, hold {}\ncallback: {}",
                t.id,
                t.model,
                t.account_id,
                t.state,
                t.param,
                t.result_json,
                t.fail_code,
                t.fail_msg,
                Credits(t.price),
                Credits(t.consume_credits),
                t.hold_id,
                t.callback_url.as_deref().unwrap_or("-")
            );
            Ok(out(&t, text))
        }
        AdminCommand::Webhook(WebhookCmd::Deliveries { task, limit }) => {
            let list = webhooks::deliveries(db, task.as_deref(), limit.clamp(1, 10_000)).await?;
            let mut text = String::new();
            for d in &list {
                text += &format!(
                    "{} task {} {} attempts {} last {}\n",
                    d.id,
                    d.task_id,
                    d.state,
                    d.attempts,
                    d.last_status
                        .map(|s| s.to_string())
                        .or(d.last_error.clone())
                        .unwrap_or_else(|| "-".into())
                );
                for a in &d.attempt_log {
                    text += &format!(
                        "  #{} {} {} ms {}\n",
                        a.attempt,
                        iso(a.started_at),
                        a.duration_ms,
                        a.status
                            .map(|s| s.to_string())
                            .or(a.error.clone())
                            .unwrap_or_default()
                    );
                }
            }
            Ok(out(&list, text))
        }
        AdminCommand::Maintenance { state } => {
            let on = state == "on";
            settings::set_maintenance(db, on).await?;
            Ok(Out {
                json: json!({"maintenance": on}),
                text: format!("maintenance {state}"),
            })
        }
        AdminCommand::Feature(FeatureCmd::List) => {
            let snap = settings::load(db).await?;
            let list: Vec<_> = settings::FEATURES
                .iter()
                .map(
                    |(n, what)| json!({"name": n, "enabled": !snap.is_disabled(n), "covers": what}),
                )
                .collect();
            let mut text = String::new();
            for (n, what) in settings::FEATURES {
                text += &format!(
                    "{:<20} {:<9} {}\n",
                    n,
                    if snap.is_disabled(n) {
                        "disabled"
                    } else {
                        "enabled"
                    },
                    what
                );
            }
            Ok(Out {
                json: serde_json::Value::Array(list),
                text,
            })
        }
        AdminCommand::OperatorToken(cmd) => operator_token_cmd(db, cmd).await,
        AdminCommand::SigningKey(SigningKeyCmd::Rotate) => {
            let r = kie_server::files::links::rotate(db).await?;
            let text = format!(
                "new signing key {} is active; retired: {}",
                r.id,
                if r.retired.is_empty() {
                    "none".to_string()
                } else {
                    r.retired.join(", ")
                }
            );
            Ok(out(&r, text))
        }
        AdminCommand::File(_) => Err(Failure("internal: file commands handled above".into())),
        AdminCommand::Feature(f) => {
            let (name, enabled) = match f {
                FeatureCmd::Enable { name } => (name, true),
                FeatureCmd::Disable { name } => (name, false),
                FeatureCmd::List => return Err(Failure("internal: list handled above".into())),
            };
            if !settings::FEATURES.iter().any(|(n, _)| *n == name) {
                return Err(Failure(format!(
                    "unknown feature '{name}': use one of {}",
                    settings::FEATURES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            settings::set_feature(db, &name, enabled).await?;
            Ok(Out {
                json: json!({"feature": name, "enabled": enabled}),
                text: format!(
                    "feature {name} {}",
                    if enabled { "enabled" } else { "disabled" }
                ),
            })
        }
    }
}

async fn change_credits(db: &Db, is_grant: bool, a: AmountArgs) -> Result<Out, Failure> {
    let acc = accounts::get(db, &a.account).await?;
    let amt = amount("--amount", &a.amount)?;
    let idem = ledger::user_key(a.idempotency_key.as_deref());
    let applied = if is_grant {
        ledger::grant(db, &acc.id, amt, a.reason.as_deref(), &idem).await?
    } else {
        ledger::deduct(db, &acc.id, amt, a.reason.as_deref(), &idem).await?
    };
    let v = json!({"entryId": applied.entry_id, "balance": applied.balance, "available": applied.available()});
    let verb = if is_grant { "granted" } else { "deducted" };
    let text = if applied.replayed {
        format!(
            "already applied (same idempotency key): entry {}; balance {}, available {}",
            applied.entry_id,
            applied.balance,
            applied.available()
        )
    } else {
        format!(
            "{verb} {amt} credits: entry {}; balance {}, available {}",
            applied.entry_id,
            applied.balance,
            applied.available()
        )
    };
    Ok(Out { json: v, text })
}

/// `kie admin console invite`: a one-time URL under the server's public URL.
async fn console_invite(
    db: &Db,
    account: Option<String>,
    operator: bool,
    email: Option<String>,
    public_url: Option<String>,
) -> Result<Out, Failure> {
    // an operator has no account (clap requires --email with --operator)
    let account = if operator { None } else { account };
    let inv = match users::invite(db, email.as_deref(), account.as_deref()).await {
        Err(users::UserError::NoEmail) => {
            return Err(Failure(format!(
                "account {} has no email address: pass --email",
                account.unwrap_or_default()
            )))
        }
        r => r.map_err(|e| Failure(e.to_string()))?,
    };
    let fallback = match public_url {
        Some(u) => url::Url::parse(&u).map_err(|e| Failure(format!("--public-url {u}: {e}")))?,
        None => url::Url::parse("http://127.0.0.1:8080").expect("static URL"),
    };
    let base = kie_server::admin::public_url(db, &fallback).await;
    let url = kie_server::console::admin::invite_url(&base, &inv.token);
    let expires = inv.expires_rfc3339();
    let text = format!(
        "invite for {} ({}), valid until {expires}, usable once:\n{url}",
        inv.user.email,
        inv.user.role.as_str()
    );
    Ok(Out {
        json: json!({"url": url, "expiresAt": expires}),
        text,
    })
}

async fn operator_token_cmd(db: &Db, cmd: OperatorTokenCmd) -> Result<Out, Failure> {
    use kie_server::operator;
    let fail = |e: operator::TokenError| Failure(e.to_string());
    match cmd {
        OperatorTokenCmd::Create { name } => {
            let t = operator::create_token(db, name.as_deref())
                .await
                .map_err(fail)?;
            let text = format!(
                "operator token {} ({}), shown once, store it now:\n{}",
                t.info.id, t.info.prefix, t.token
            );
            let mut v = serde_json::to_value(&t.info).expect("serialisable");
            v["token"] = json!(t.token);
            Ok(Out { json: v, text })
        }
        OperatorTokenCmd::List => {
            let list = operator::list_tokens(db).await?;
            let mut text = format!(
                "{:<22} {:<16} {:<24} {:<9} {}\n",
                "ID", "PREFIX", "CREATED", "STATUS", "NAME"
            );
            for t in &list {
                text += &format!(
                    "{:<22} {:<16} {:<24} {:<9} {}\n",
                    t.id,
                    t.prefix,
                    iso(t.created_at),
                    if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    t.name.as_deref().unwrap_or("-")
                );
            }
            Ok(out(&list, text))
        }
        OperatorTokenCmd::Revoke { id } => {
            let t = operator::revoke_token(db, &id).await.map_err(fail)?;
            let text = format!("revoked operator token {} ({})", t.id, t.prefix);
            Ok(out(&t, text))
        }
    }
}

async fn file_cmd(db: &Db, store: &StoreArgs, cmd: FileCmd) -> Result<Out, Failure> {
    use kie_server::files::{self, FileKind, NewFile};
    let FileCmd::Add {
        account,
        path,
        name,
        content_type,
        public_url,
    } = cmd;
    // the server's own settings (retention, public URL) from the same flags and config
    let serve_args = kie_server::ServeArgs {
        store: store.clone(),
        public_url,
        ..Default::default()
    };
    let config = kie_server::Config::from_args(&serve_args).map_err(|e| Failure(e.to_string()))?;
    let acc = accounts::get(db, &account).await?;
    let name = match name {
        Some(n) => n,
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                Failure(format!(
                    "{}: no usable file name; pass --name",
                    path.display()
                ))
            })?,
    };
    files::validate_file_name(&name).map_err(|e| Failure(e.to_string()))?;
    let content_type = content_type.unwrap_or_else(|| {
        mime_guess::from_path(&name)
            .first_or_octet_stream()
            .essence_str()
            .to_string()
    });
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
    let blobs = kie_server::admin::open_blobs(store, db)
        .await
        .map_err(|e| Failure(e.to_string()))?;
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let rec = files::create(
        db,
        &blobs,
        NewFile {
            account_id: &acc.id,
            name: &name,
            content_type: &content_type,
            kind: FileKind::Admin,
            upload_path: None,
            task_id: None,
            retention: config.retention_generated,
            max_size: u64::MAX,
        },
        body,
    )
    .await
    .map_err(|e| Failure(format!("cannot store the file: {e}")))?;
    let base = kie_server::admin::public_url(db, &config.public_url).await;
    let url = rec.url(&base);
    let v = json!({"id": rec.id, "url": url, "size": rec.size, "contentType": rec.content_type});
    let text = format!(
        "{url}\n({} bytes, {}, account {})",
        rec.size, rec.content_type, acc.id
    );
    Ok(Out { json: v, text })
}
