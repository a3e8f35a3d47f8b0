//! What every client command shares: connection settings and output helpers. A
//! sibling of the commands (not their parent module), so that imports point one way.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use kie_sdk::{Client, RetryPolicy, DEFAULT_BASE_URL};
use serde::Serialize;

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
