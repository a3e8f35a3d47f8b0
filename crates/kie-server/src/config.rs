//! Service configuration: one serde struct, [`Settings`], layered by figment — flags,
//! then `KIE_*` environment variables (clap reads both into [`ServeArgs`]), then an
//! optional TOML file — and then built-in defaults and the checks of [`Config`].

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

use kie_wire::Credits;

/// How HTTP statuses relate to the body `code` (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatusMode {
    /// HTTP 200 for every enveloped answer except rate limiting (429), as KIE.AI does.
    #[default]
    Compat,
    /// HTTP status mirrors the body code (455 → 503, 505 → 501, too large → 413).
    Mirror,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the service keeps its metadata and bytes. Shared by `kie serve` and `kie admin`.
/// Serialized, it is the flags layer of [`Settings`] (unset flags are left out).
#[derive(Debug, Clone, Args, Default, Serialize)]
pub struct StoreArgs {
    /// Data directory for the embedded default (SQLite database and local files)
    #[arg(long, env = "KIE_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Metadata database: sqlite://PATH or postgres://… [default: sqlite://<data-dir>/kie.db]
    #[arg(
        long,
        env = "KIE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
    /// File bytes: file://DIR or s3://bucket/prefix [default: file://<data-dir>/files]
    #[arg(long, env = "KIE_STORAGE", value_name = "URL", global = true)]
    pub storage: Option<String>,
    /// Optional TOML configuration file (flags and KIE_* variables take precedence)
    #[arg(long, env = "KIE_CONFIG", value_name = "FILE", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// S3 storage: endpoint of an S3-compatible store (overrides AWS_ENDPOINT_URL)
    #[arg(long, env = "KIE_S3_ENDPOINT", value_name = "URL", global = true)]
    pub s3_endpoint: Option<String>,
    /// S3 storage: bucket addressing [default: path]
    #[arg(long, env = "KIE_S3_ADDRESSING", value_enum, global = true)]
    pub s3_addressing: Option<crate::blobs::S3Addressing>,
}

/// `kie serve` flags. Every flag can also be set as `KIE_<NAME>` or in the TOML file.
/// Serialized, it is the flags layer of [`Settings`] (unset flags are left out).
#[derive(Debug, Clone, Args, Default, Serialize)]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreArgs,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "KIE_BIND", value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// Public base URL of file URLs and download links [default: http://<bind>]
    #[arg(long, env = "KIE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Lifetime of temporary download links, e.g. 20m (max 7d) [default: 20m]
    #[arg(long, env = "KIE_LINK_TTL", value_name = "DURATION")]
    pub link_ttl: Option<String>,
    /// HTTP status mode [default: compat]
    #[arg(long, env = "KIE_STATUS_MODE", value_enum)]
    pub status_mode: Option<StatusMode>,
    /// Allow webhook callbacks and URL uploads to loopback/private addresses
    #[arg(long, env = "KIE_ALLOW_PRIVATE_TARGETS")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_private_targets: bool,
    /// Webhook retry delays, e.g. 0s,5s,5m,30m,2h,5h,10h,24h
    #[arg(long, env = "KIE_WEBHOOK_RETRY_SCHEDULE", value_name = "LIST")]
    pub webhook_retry_schedule: Option<String>,
    /// Per-API-key request rate limit in requests per second (0 = off) [default: 50000]
    #[arg(long, env = "KIE_KEY_RATE_LIMIT", value_name = "N")]
    pub key_rate_limit: Option<u32>,
    /// Maximum JSON request body in bytes [default: 1048576]
    #[arg(long, env = "KIE_MAX_BODY", value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// Token external workers use on the internal worker API (unset: internal API off)
    #[arg(
        long,
        env = "KIE_WORKER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(serialize_with = "expose_secret")]
    pub worker_token: Option<kie_wire::secrets::Secret>,
    /// Create (once) a demo account with credits and print its API key and a curl line
    #[arg(long, env = "KIE_DEMO")]
    #[serde(skip)]
    pub demo: bool,
    /// Log format [default: text]
    #[arg(long, env = "KIE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Maximum upload size in bytes [default: 104857600]
    #[arg(long, env = "KIE_MAX_UPLOAD", value_name = "BYTES")]
    pub max_upload: Option<u64>,
    /// Time a connection has to send a complete request head, after opening and between
    /// requests (also the keep-alive idle timeout) [default: 10s]
    #[arg(long, env = "KIE_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Time a request body has to arrive completely after its head [default: 5m]
    #[arg(long, env = "KIE_REQUEST_BODY_TIMEOUT", value_name = "DURATION")]
    pub request_body_timeout: Option<String>,
    /// Client connections served at once; more are closed on accept [default: 10000]
    #[arg(long, env = "KIE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Per-client-IP request rate limit in requests per second (0 = off) [default: 100000]
    #[arg(long, env = "KIE_IP_RATE_LIMIT", value_name = "N")]
    pub ip_rate_limit: Option<u32>,
    /// SQLite: commit concurrent writes together, one fsync per batch (false: one
    /// transaction per write) [default: true]
    #[arg(long, env = "KIE_SQLITE_GROUP_COMMIT", value_name = "BOOL")]
    pub sqlite_group_commit: Option<bool>,
    /// Price in credits of catalog models KIE.AI publishes no price for [default: 10]
    #[arg(long, env = "KIE_DEFAULT_MODEL_PRICE", value_name = "CREDITS")]
    pub default_model_price: Option<String>,
    /// Built-in generators: time a task stays `generating` before it finishes, e.g.
    /// 3s (per model: `delay` in the TOML `models` table) [default: 0s]
    #[arg(long, env = "KIE_DEMO_DELAY", value_name = "DURATION")]
    pub demo_delay: Option<String>,
    /// Built-in generators: share of tasks that fail on purpose, 0 to 1 (per model:
    /// `fail_rate` in the TOML `models` table) [default: 0]
    #[arg(long, env = "KIE_DEMO_FAIL_RATE", value_name = "RATE")]
    pub demo_fail_rate: Option<f64>,
}

/// Every setting, as the layers give it: the flags (and their `KIE_*` variables) and the
/// TOML file, which also holds the settings only a file can express (the model catalog,
/// retention, prices). `None`: no layer set it, the default applies ([`Config`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    bind: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    storage: Option<String>,
    s3_endpoint: Option<String>,
    s3_addressing: Option<crate::blobs::S3Addressing>,
    link_ttl: Option<String>,
    status_mode: Option<StatusMode>,
    allow_private_targets: Option<bool>,
    webhook_retry_schedule: Option<String>,
    key_rate_limit: Option<u32>,
    max_body: Option<usize>,
    max_upload: Option<u64>,
    worker_token: Option<kie_wire::secrets::Secret>,
    log_format: Option<LogFormat>,
    file_hosts: Option<Vec<String>>,
    public_result_urls: Option<bool>,
    retention_generated: Option<String>,
    retention_uploads: Option<String>,
    sweep_interval: Option<String>,
    orphan_grace: Option<String>,
    allowed_private_targets: Option<Vec<String>>,
    task_rate: Option<u32>,
    task_rate_window: Option<String>,
    balance_cache_ttl: Option<String>,
    task_timeout: Option<String>,
    webhook_timeout: Option<String>,
    demo_workers: Option<u32>,
    auth_cache_ttl: Option<String>,
    db_max_connections: Option<u32>,
    db_statement_timeout: Option<String>,
    header_read_timeout: Option<String>,
    request_body_timeout: Option<String>,
    max_connections: Option<usize>,
    ip_rate_limit: Option<u32>,
    db_acquire_timeout: Option<String>,
    sqlite_group_commit: Option<bool>,
    default_model_price: Option<String>,
    demo_delay: Option<String>,
    demo_fail_rate: Option<f64>,
    catalog_rate_limit: Option<u32>,
    pricing: Option<PricingFile>,
    models: Option<BTreeMap<String, ModelFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    download_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    /// Required for a model the catalog does not know; overrides the catalog's price
    /// otherwise.
    price: Option<String>,
    /// `image`, `video`, `audio`, `text` for the built-in demo generators, `external`
    /// for models served by an external worker.
    kind: Option<String>,
    /// Built-in generators: this model's `demo_delay`.
    delay: Option<String>,
    /// Built-in generators: this model's `demo_fail_rate`.
    fail_rate: Option<f64>,
}

/// One model the server accepts tasks for.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub price: Credits,
    pub kind: ModelKind,
    /// Its catalog entry (fields, task type, published price), if it is a KIE.AI model.
    pub spec: Option<std::sync::Arc<crate::catalog::CatalogModel>>,
    /// Whether `price` is KIE.AI's published one (or the operator's), not the default.
    pub price_published: bool,
    /// Generation delay of the built-in generators (`None`: `demo_delay`).
    pub delay: Option<Duration>,
    /// Failure rate of the built-in generators (`None`: `demo_fail_rate`).
    pub fail_rate: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    DemoImage,
    DemoVideo,
    DemoAudio,
    DemoText,
    External,
}

impl ModelKind {
    /// Served by the built-in generators.
    pub fn is_demo(self) -> bool {
        self != ModelKind::External
    }
}

/// Default number of pooled SQLite readers (`db_max_connections` unset): twice the
/// cores, 4 to 16. A SQLite read is CPU work on its connection's own thread, so
/// readers beyond about twice the cores only queue on the CPU, while each costs
/// ~0.3 MiB kept for the process's life (its thread, lookaside, parsed schema and page
/// cache); the hottest reads skip the pool anyway (`store::fastread`).
pub fn sqlite_default_readers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(4, 16) as u32
}

/// Where the metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Fully resolved configuration of the service.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: String,
    pub public_url: Url,
    pub data_dir: PathBuf,
    pub database: DatabaseUrl,
    pub storage: String,
    /// S3 settings besides the AWS variables (used when `storage` is `s3://…`).
    pub s3: crate::blobs::S3Options,
    pub link_ttl: Duration,
    pub status_mode: StatusMode,
    pub allow_private_targets: bool,
    pub webhook_retry_schedule: Vec<Duration>,
    pub key_rate_limit: u32,
    pub max_body: usize,
    pub max_upload: u64,
    /// Redacted in `Debug` ([`kie_wire::secrets::Secret`]).
    pub worker_token: Option<kie_wire::secrets::Secret>,
    pub demo: bool,
    pub log_format: LogFormat,
    /// Lower-cased host[:port] of hosts whose URLs name our files.
    pub file_hosts: Vec<String>,
    pub public_result_urls: bool,
    pub retention_generated: Duration,
    pub retention_uploads: Duration,
    pub sweep_interval: Duration,
    /// Stored bytes without a live record older than this are deleted by the sweeper.
    pub orphan_grace: Duration,
    /// Addresses URL uploads and callbacks may reach although they are private
    /// (exact IPs; `allow_private_targets` opens everything instead).
    pub allowed_private_targets: Vec<std::net::IpAddr>,
    pub task_rate: u32,
    pub task_rate_window: Duration,
    /// PostgreSQL: how old a node's cached balance, file record or signing key may be
    /// when a hot read uses it (`store::nodecache`; 0 = no cache). TOML
    /// `balance_cache_ttl`, default 100ms.
    pub balance_cache_ttl: Duration,
    pub task_timeout: Duration,
    /// Per-attempt timeout of a webhook callback (SPEC §6: 15 s).
    pub webhook_timeout: Duration,
    /// In-process workers running the built-in demo models (0 = none).
    pub demo_workers: u32,
    pub auth_cache_ttl: Duration,
    pub db_max_connections: u32,
    pub db_statement_timeout: Duration,
    /// Longest wait for a PostgreSQL connection of a busy pool (an unreachable database
    /// is detected by `store::health` and fails requests at once instead).
    pub db_acquire_timeout: Duration,
    /// SQLite: commit concurrent write transactions together (one fsync per batch;
    /// nothing is acknowledged before its batch is on disk).
    pub sqlite_group_commit: bool,
    pub price_download_url: Credits,
    pub models: BTreeMap<String, Model>,
    /// Price of catalog models without a published price.
    pub default_model_price: Credits,
    /// Built-in generators: time between claiming a task and finishing it.
    pub demo_delay: Duration,
    /// Built-in generators: share of tasks failed on purpose (0..=1).
    pub demo_fail_rate: f64,
    /// Requests per second per account on the catalog endpoints (`/api/v1/models…`,
    /// KIE.AI: 1; 0 = off).
    pub catalog_rate_limit: u32,
    /// See `conn_guard`: head deadline (and keep-alive idle timeout).
    pub header_read_timeout: Duration,
    /// See `conn_guard`: the whole request body must arrive within this.
    pub request_body_timeout: Duration,
    /// See `conn_guard`: connections served at once.
    pub max_connections: usize,
    /// Requests per second per client IP (0 = off).
    pub ip_rate_limit: u32,
}

/// A configuration problem, reported as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Parses `90s`, `20m`, `3d`, `1h30m`.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| bad(format!("invalid {what} '{s}': {e} (use e.g. 90s, 20m, 3d)")))
}

fn parse_credits(what: &str, s: &str) -> Result<Credits, ConfigError> {
    let c: Credits = s
        .parse()
        .map_err(|e| bad(format!("invalid {what} '{s}': {e}")))?;
    if c.is_negative() {
        return Err(bad(format!("invalid {what} '{s}': must not be negative")));
    }
    Ok(c)
}

pub const DEFAULT_RETRY_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,24h";
pub const MAX_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The price of catalog models KIE.AI publishes no price for, unless configured.
pub const DEFAULT_MODEL_PRICE: &str = "10";

/// The built-in `demo/*` models (need `input.prompt`; images take `width`/`height`).
pub fn default_models() -> BTreeMap<String, Model> {
    [
        ("demo/image", 200, ModelKind::DemoImage),
        ("demo/video", 300, ModelKind::DemoVideo),
        ("demo/audio", 100, ModelKind::DemoAudio),
        ("demo/text", 50, ModelKind::DemoText),
    ]
    .into_iter()
    .map(|(n, p, k)| {
        (
            n.to_string(),
            Model {
                name: n.into(),
                price: Credits(p),
                kind: k,
                spec: None,
                price_published: true,
                delay: None,
                fail_rate: None,
            },
        )
    })
    .collect()
}

/// The embedded KIE.AI catalog plus the `demo/*` models, every one served by the
/// built-in generator of its output media; `default_price` for unpublished prices.
pub fn catalog_models(default_price: Credits) -> BTreeMap<String, Model> {
    let mut out = default_models();
    for m in &crate::catalog::catalog().models {
        let published = m.price.as_deref().and_then(|p| p.parse::<Credits>().ok());
        let kind = match m.output {
            crate::catalog::Output::Image => ModelKind::DemoImage,
            crate::catalog::Output::Video => ModelKind::DemoVideo,
            crate::catalog::Output::Audio => ModelKind::DemoAudio,
            crate::catalog::Output::Text => ModelKind::DemoText,
        };
        out.insert(
            m.model.clone(),
            Model {
                name: m.model.clone(),
                price: published.unwrap_or(default_price),
                kind,
                spec: Some(m.clone()),
                price_published: published.is_some(),
                delay: None,
                fail_rate: None,
            },
        );
    }
    out
}

fn parse_fail_rate(what: &str, r: f64) -> Result<f64, ConfigError> {
    if !(0.0..=1.0).contains(&r) {
        return Err(bad(format!("invalid {what} {r}: must be between 0 and 1")));
    }
    Ok(r)
}

/// The flags' value, for the flags layer only (never logged: `Secret` has no
/// `Serialize` of its own).
fn expose_secret<S: serde::Serializer>(
    v: &Option<kie_wire::secrets::Secret>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(v.expose()),
        None => s.serialize_none(),
    }
}

/// The layers merged: `flags` (what clap read from the command line and the `KIE_*`
/// variables; unset ones are left out) over the TOML file at `path`, if any.
fn layered(path: Option<&Path>, flags: &impl Serialize) -> Result<Settings, ConfigError> {
    use figment::providers::Serialized;
    use figment::value::Value;
    use figment::Figment;
    let mut fig = Figment::new();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read config file {}: {e}", path.display())))?;
        // parsed here for toml's one-line message; figment layers the value
        let file: toml::Table = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|r| format!("line {}: ", text[..r.start].matches('\n').count() + 1))
                .unwrap_or_default();
            let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            bad(format!(
                "invalid config file {}: {line}{msg}",
                path.display()
            ))
        })?;
        fig = fig.merge(Serialized::defaults(file));
        fig.extract::<Settings>().map_err(|e| {
            bad(format!(
                "invalid config file {}: {}",
                path.display(),
                one_line(&e)
            ))
        })?;
    }
    let flags = match Value::serialize(flags) {
        Ok(Value::Dict(_, d)) => d
            .into_iter()
            .filter(|(_, v)| !matches!(v, Value::Empty(..)))
            .collect::<figment::value::Dict>(),
        _ => unreachable!("the flags serialize as a map"),
    };
    fig.merge(Serialized::defaults(flags))
        .extract()
        .map_err(|e| bad(format!("invalid setting: {}", one_line(&e))))
}

/// A figment error as one line: `key: what is wrong`.
fn one_line(e: &figment::Error) -> String {
    let what = match &e.kind {
        figment::error::Kind::UnknownField(name, _) => format!("unknown setting `{name}`"),
        kind => kind.to_string(),
    };
    match e.path.is_empty() {
        true => what,
        false => format!("{}: {what}", e.path.join(".")),
    }
}

impl StoreArgs {
    /// Resolves data dir, database and storage (shared with `kie admin`).
    pub fn resolve(&self) -> Result<(PathBuf, DatabaseUrl, String), ConfigError> {
        resolve_store(&layered(self.config.as_deref(), self)?)
    }

    /// The storage named by `--storage`, `KIE_STORAGE` or the config file, if any
    /// (`None`: the default, `file://<data-dir>/files`, applies).
    pub fn explicit_storage(&self) -> Result<Option<String>, ConfigError> {
        Ok(layered(self.config.as_deref(), self)?.storage)
    }

    /// The S3 settings (`--s3-endpoint`, `--s3-addressing`, or the config file).
    pub fn s3_options(&self) -> Result<crate::blobs::S3Options, ConfigError> {
        Ok(resolve_s3(&layered(self.config.as_deref(), self)?))
    }
}

fn resolve_s3(f: &Settings) -> crate::blobs::S3Options {
    crate::blobs::S3Options {
        endpoint: f.s3_endpoint.clone().filter(|e| !e.trim().is_empty()),
        addressing: f.s3_addressing.unwrap_or_default(),
    }
}

fn resolve_store(f: &Settings) -> Result<(PathBuf, DatabaseUrl, String), ConfigError> {
    let data_dir = f
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./kie-data"));
    let database = match &f.database_url {
        None => DatabaseUrl::Sqlite(data_dir.join("kie.db")),
        Some(u) => parse_database_url(u)?,
    };
    let storage = f
        .storage
        .clone()
        .unwrap_or_else(|| format!("file://{}", data_dir.join("files").display()));
    if !(storage.starts_with("file://") || storage.starts_with("s3://")) {
        return Err(bad(format!(
            "invalid --storage '{storage}': use file://DIR or s3://bucket/prefix"
        )));
    }
    Ok((data_dir, database, storage))
}

/// `sqlite://PATH`, `sqlite:PATH`, `postgres://…`, `postgresql://…`.
pub fn parse_database_url(u: &str) -> Result<DatabaseUrl, ConfigError> {
    if let Some(rest) = u
        .strip_prefix("sqlite://")
        .or_else(|| u.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(bad("invalid --database-url: sqlite URL has no path"));
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if u.starts_with("postgres://") || u.starts_with("postgresql://") {
        Url::parse(u).map_err(|e| bad(format!("invalid --database-url: {e}")))?;
        return Ok(DatabaseUrl::Postgres(u.to_string()));
    }
    Err(bad(
        "invalid --database-url: use sqlite://PATH or postgres://USER@HOST/DB",
    ))
}

impl Config {
    pub fn from_args(a: &ServeArgs) -> Result<Config, ConfigError> {
        let f = layered(a.store.config.as_deref(), a)?;
        let (data_dir, database, storage) = resolve_store(&f)?;

        let bind = f.bind.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
        let bind_addr: SocketAddr = bind.parse().map_err(|_| {
            bad(format!(
                "invalid --bind '{bind}': expected ADDR:PORT, e.g. 127.0.0.1:8080"
            ))
        })?;
        let public_url_s = f
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bind_addr}"));
        let public_url = parse_public_url(&public_url_s)?;

        let link_ttl_s = f.link_ttl.clone().unwrap_or_else(|| "20m".into());
        let link_ttl = parse_duration("--link-ttl", &link_ttl_s)?;
        if link_ttl.is_zero() || link_ttl > MAX_LINK_TTL {
            return Err(bad(format!(
                "invalid --link-ttl '{link_ttl_s}': must be between 1s and 7d"
            )));
        }
        let schedule_s = f
            .webhook_retry_schedule
            .clone()
            .unwrap_or_else(|| DEFAULT_RETRY_SCHEDULE.into());
        let webhook_retry_schedule = schedule_s
            .split(',')
            .map(|p| parse_duration("--webhook-retry-schedule entry", p))
            .collect::<Result<Vec<_>, _>>()?;

        let dur = |what: &str, v: &Option<String>, d: &str| -> Result<Duration, ConfigError> {
            parse_duration(what, v.as_deref().unwrap_or(d))
        };

        let mut file_hosts: Vec<String> = f
            .file_hosts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        file_hosts.push(host_key(&public_url));

        let default_model_price = parse_credits(
            "--default-model-price",
            f.default_model_price
                .as_deref()
                .unwrap_or(DEFAULT_MODEL_PRICE),
        )?;
        // The catalog, then the TOML `models` table overriding or extending it.
        let mut models = catalog_models(default_model_price);
        for (name, spec) in f.models.iter().flatten() {
            let kind = match spec.kind.as_deref() {
                None => None,
                Some("external") => Some(ModelKind::External),
                Some("image") => Some(ModelKind::DemoImage),
                Some("video") => Some(ModelKind::DemoVideo),
                Some("audio") => Some(ModelKind::DemoAudio),
                Some("text") => Some(ModelKind::DemoText),
                Some(k) => {
                    return Err(bad(format!(
                        "invalid model '{name}': kind '{k}' is not image, video, audio, text or external"
                    )))
                }
            };
            let price = spec
                .price
                .as_deref()
                .map(|p| parse_credits(&format!("price of model '{name}'"), p))
                .transpose()?;
            let delay = spec
                .delay
                .as_deref()
                .map(|d| parse_duration(&format!("delay of model '{name}'"), d))
                .transpose()?;
            let fail_rate = spec
                .fail_rate
                .map(|r| parse_fail_rate(&format!("fail_rate of model '{name}'"), r))
                .transpose()?;
            let m = match models.get_mut(name) {
                Some(m) => m,
                None => {
                    let Some(price) = price else {
                        return Err(bad(format!(
                            "invalid model '{name}': not in the catalog, so it needs a price"
                        )));
                    };
                    models.entry(name.clone()).or_insert(Model {
                        name: name.clone(),
                        price,
                        kind: kind.unwrap_or(ModelKind::External),
                        spec: None,
                        price_published: true,
                        delay: None,
                        fail_rate: None,
                    })
                }
            };
            if let Some(p) = price {
                m.price = p;
                m.price_published = true;
            }
            if let Some(k) = kind {
                m.kind = k;
            }
            m.delay = delay.or(m.delay);
            m.fail_rate = fail_rate.or(m.fail_rate);
        }
        let demo_delay = parse_duration("--demo-delay", f.demo_delay.as_deref().unwrap_or("0s"))?;
        let demo_fail_rate = parse_fail_rate("--demo-fail-rate", f.demo_fail_rate.unwrap_or(0.0))?;
        let price_download_url = match f.pricing.as_ref().and_then(|p| p.download_url.as_deref()) {
            None => Credits::ZERO,
            Some(p) => parse_credits("pricing.download_url", p)?,
        };

        let allowed_private_targets = f
            .allowed_private_targets
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.parse::<std::net::IpAddr>().map_err(|_| {
                    bad(format!(
                        "invalid allowed_private_targets entry '{s}': expected an IP address"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let db_max_connections = f.db_max_connections.unwrap_or(match database {
            DatabaseUrl::Sqlite(_) => sqlite_default_readers(),
            DatabaseUrl::Postgres(_) => 16,
        });
        Ok(Config {
            bind,
            public_url,
            data_dir,
            database,
            storage,
            s3: resolve_s3(&f),
            link_ttl,
            status_mode: f.status_mode.unwrap_or_default(),
            allow_private_targets: f.allow_private_targets.unwrap_or(false),
            webhook_retry_schedule,
            key_rate_limit: f.key_rate_limit.unwrap_or(50_000),
            max_body: f.max_body.unwrap_or(1024 * 1024),
            max_upload: f.max_upload.unwrap_or(100 * 1024 * 1024),
            worker_token: f.worker_token.clone(),
            demo: a.demo,
            log_format: f.log_format.unwrap_or_default(),
            file_hosts,
            public_result_urls: f.public_result_urls.unwrap_or(true),
            retention_generated: dur("retention_generated", &f.retention_generated, "14d")?,
            retention_uploads: dur("retention_uploads", &f.retention_uploads, "3d")?,
            sweep_interval: dur("sweep_interval", &f.sweep_interval, "1m")?,
            orphan_grace: dur("orphan_grace", &f.orphan_grace, "15m")?,
            allowed_private_targets,
            task_rate: f.task_rate.unwrap_or(20),
            task_rate_window: dur("task_rate_window", &f.task_rate_window, "10s")?,
            balance_cache_ttl: dur("balance_cache_ttl", &f.balance_cache_ttl, "100ms")?,
            task_timeout: dur("task_timeout", &f.task_timeout, "10m")?,
            webhook_timeout: dur("webhook_timeout", &f.webhook_timeout, "15s")?,
            demo_workers: f.demo_workers.unwrap_or(2),
            auth_cache_ttl: dur("auth_cache_ttl", &f.auth_cache_ttl, "2s")?,
            db_max_connections,
            db_statement_timeout: dur("db_statement_timeout", &f.db_statement_timeout, "5s")?,
            db_acquire_timeout: dur("db_acquire_timeout", &f.db_acquire_timeout, "3s")?,
            sqlite_group_commit: f.sqlite_group_commit.unwrap_or(true),
            price_download_url,
            models,
            default_model_price,
            demo_delay,
            demo_fail_rate,
            catalog_rate_limit: f.catalog_rate_limit.unwrap_or(1),
            header_read_timeout: positive(
                "--header-read-timeout",
                dur(
                    "--header-read-timeout",
                    &f.header_read_timeout.clone(),
                    "10s",
                )?,
            )?,
            request_body_timeout: positive(
                "--request-body-timeout",
                dur(
                    "--request-body-timeout",
                    &f.request_body_timeout.clone(),
                    "5m",
                )?,
            )?,
            max_connections: match f.max_connections.unwrap_or(10_000) {
                0 => return Err(bad("invalid --max-connections 0: must be at least 1")),
                n => n,
            },
            ip_rate_limit: f.ip_rate_limit.unwrap_or(100_000),
        })
    }

    pub fn bind_addr(&self) -> SocketAddr {
        self.bind.parse().expect("validated in from_args")
    }
}

fn positive(what: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(bad(format!("invalid {what}: must be longer than 0s")));
    }
    Ok(d)
}

fn parse_public_url(s: &str) -> Result<Url, ConfigError> {
    let u = Url::parse(s).map_err(|e| bad(format!("invalid --public-url '{s}': {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(bad(format!(
            "invalid --public-url '{s}': must be an http(s) URL with a host"
        )));
    }
    Ok(u)
}

/// `host` or `host:port` (port only when it is not the scheme's default), lower-cased.
pub fn host_key(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sane() {
        let c = Config::from_args(&ServeArgs::default()).unwrap();
        assert_eq!(c.bind, "127.0.0.1:8080");
        assert_eq!(c.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(c.link_ttl, Duration::from_secs(1200));
        assert_eq!(
            c.database,
            DatabaseUrl::Sqlite(PathBuf::from("./kie-data/kie.db"))
        );
        assert_eq!(c.webhook_retry_schedule.len(), 8);
        assert_eq!(c.models["demo/text"].price, Credits(50));
        assert_eq!(c.file_hosts, vec!["127.0.0.1:8080".to_string()]);
    }

    #[test]
    fn catalog_models_with_toml_overrides() {
        let dir = std::env::temp_dir().join(format!("kie-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kie.toml");
        let with = |toml: &str| {
            std::fs::write(&path, toml).unwrap();
            let a = ServeArgs {
                store: StoreArgs {
                    config: Some(path.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            Config::from_args(&a)
        };
        let c = with(
            "default_model_price = \"2.5\"\ndemo_delay = \"2s\"\n\
             [models.\"google/nano-banana\"]\nprice = \"9\"\nfail_rate = 0.5\n\
             [models.\"acme/x\"]\nprice = \"1\"\n",
        )
        .unwrap();
        let nb = &c.models["google/nano-banana"];
        assert_eq!(
            (nb.price, nb.fail_rate, nb.kind),
            (Credits(900), Some(0.5), ModelKind::DemoImage)
        );
        assert!(nb.spec.is_some() && nb.price_published);
        let sd = &c.models["bytedance/seedance-2"];
        assert_eq!(
            (sd.price, sd.price_published, sd.kind),
            (Credits(250), false, ModelKind::DemoVideo)
        );
        assert_eq!(c.models["acme/x"].kind, ModelKind::External);
        assert!(c.models.contains_key("demo/image") && c.models.len() == 149 + 4 + 1);
        assert_eq!(c.demo_delay, Duration::from_secs(2));
        assert_eq!(c.catalog_rate_limit, 1);
        let e = with("[models.\"acme/y\"]\nkind = \"video\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid model 'acme/y': not in the catalog, so it needs a price"
        );
        assert!(with("demo_fail_rate = 2.0\n").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// flags (and `KIE_*`, which clap folds into them) > TOML > defaults, setting by
    /// setting; an unset flag (or a `false` switch) leaves the file's value.
    #[test]
    fn layers_take_precedence_setting_by_setting() {
        let dir = std::env::temp_dir().join(format!("kie-layers-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kie.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9000\"\nlink_ttl = \"5m\"\nallow_private_targets = true\n\
             key_rate_limit = 7\nworker_token = \"from-file\"\ns3_addressing = \"virtual\"\n",
        )
        .unwrap();
        let store = StoreArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let file_only = Config::from_args(&ServeArgs {
            store: store.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(file_only.bind, "127.0.0.1:9000");
        assert_eq!(file_only.public_url.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(file_only.link_ttl, Duration::from_secs(300));
        assert!(file_only.allow_private_targets);
        assert_eq!(file_only.key_rate_limit, 7);
        assert_eq!(
            file_only.worker_token.as_ref().map(|t| t.expose()),
            Some("from-file")
        );
        assert_eq!(file_only.s3.addressing, crate::blobs::S3Addressing::Virtual);
        // a default the file does not set
        assert_eq!(file_only.max_body, 1024 * 1024);

        let flags = Config::from_args(&ServeArgs {
            store: StoreArgs {
                s3_addressing: Some(crate::blobs::S3Addressing::Path),
                ..store.clone()
            },
            link_ttl: Some("1m".into()),
            key_rate_limit: Some(0),
            worker_token: Some(kie_wire::secrets::Secret::new("from-flag")),
            allow_private_targets: false,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(flags.link_ttl, Duration::from_secs(60));
        assert_eq!(flags.key_rate_limit, 0);
        assert_eq!(
            flags.worker_token.as_ref().map(|t| t.expose()),
            Some("from-flag")
        );
        assert_eq!(flags.s3.addressing, crate::blobs::S3Addressing::Path);
        // not given as flags: the file's
        assert_eq!(flags.bind, "127.0.0.1:9000");
        assert!(flags.allow_private_targets);

        // a wrong type in the file: one line naming the file and the key
        std::fs::write(&path, "key_rate_limit = \"many\"\n").unwrap();
        let e = Config::from_args(&ServeArgs {
            store: store.clone(),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "invalid config file {}: key_rate_limit: ",
                path.display()
            )),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let e = store.resolve().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "invalid config file {}: no_such_setting: unknown setting `no_such_setting`",
                path.display()
            )
        );
        std::fs::write(&path, "bind = \"127.0.0.1:1\"\nlink_ttl = \n").unwrap();
        let e = store.resolve().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "invalid config file {}: line 2: invalid string expected `\"`, `'`",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connection_guard_settings() {
        let c = Config::from_args(&ServeArgs::default()).unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.request_body_timeout, Duration::from_secs(300));
        assert_eq!((c.max_connections, c.ip_rate_limit), (10_000, 100_000));
        let a = ServeArgs {
            header_read_timeout: Some("0s".into()),
            ..Default::default()
        };
        let e = Config::from_args(&a).unwrap_err().to_string();
        assert_eq!(e, "invalid --header-read-timeout: must be longer than 0s");
        let a = ServeArgs {
            max_connections: Some(0),
            ..Default::default()
        };
        assert!(Config::from_args(&a).is_err());
        let a = ServeArgs {
            request_body_timeout: Some("2s".into()),
            max_upload: Some(5),
            ..Default::default()
        };
        let c = Config::from_args(&a).unwrap();
        assert_eq!(
            (c.request_body_timeout, c.max_upload),
            (Duration::from_secs(2), 5)
        );
    }

    #[test]
    fn bad_values_give_one_line_errors() {
        let a = ServeArgs {
            bind: Some("nope".into()),
            ..Default::default()
        };
        let e = Config::from_args(&a).unwrap_err().to_string();
        assert!(e.starts_with("invalid --bind 'nope'"), "{e}");
        let a = ServeArgs {
            link_ttl: Some("8d".into()),
            ..Default::default()
        };
        assert!(Config::from_args(&a)
            .unwrap_err()
            .to_string()
            .contains("between 1s and 7d"));
        let a = ServeArgs {
            public_url: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(Config::from_args(&a).is_err());
    }
}
