//! The account's own history (`GET /api/v1/account/tasks`, `/usage`, `/callbacks`):
//! what the console's Tasks, Usage and Callbacks pages show.

use kie_wire::Credits;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::client::Client;
use crate::error::{Error, Result};

/// One task of the account's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub task_id: String,
    pub model: String,
    pub state: String,
    pub price: Credits,
    pub consume_credits: Credits,
    pub create_time: i64,
    pub complete_time: Option<i64>,
    pub fail_code: String,
    pub fail_msg: String,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageEntry {
    pub entry_id: String,
    pub kind: String,
    pub amount: Credits,
    pub held_delta: Credits,
    pub reason: Option<String>,
    pub created_at: i64,
}

/// One callback delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackSummary {
    pub id: String,
    /// The task; `None` for a balance alert event
    #[serde(default)]
    pub task_id: Option<String>,
    /// The event id (`evt_…`) of a balance alert event; `None` for a task's callback
    #[serde(default)]
    pub event: Option<String>,
    pub url: String,
    pub status: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub next_attempt_at: Option<i64>,
}

/// A delivery queued again by [`Client::redeliver`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redelivered {
    pub id: String,
    pub status: String,
}

/// How many failed deliveries [`Client::replay_failed`] queued again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    pub count: u64,
}

/// The account's webhook HMAC key (management scope).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookKey {
    pub account: String,
    /// `whsec_…`; `None` when callbacks are sent unsigned
    pub key: Option<String>,
    /// Until when (epoch ms) the key replaced by the last roll still signs too
    pub previous_valid_until: Option<i64>,
}

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key itself
        f.debug_struct("WebhookKey")
            .field("account", &self.account)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("previous_valid_until", &self.previous_valid_until)
            .finish()
    }
}

/// Filters of [`Client::tasks`].
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<String>,
    pub model: Option<String>,
    /// Created at or after (epoch milliseconds)
    pub since: Option<i64>,
    pub limit: Option<u32>,
}

impl Client {
    pub(crate) fn account_url(&self, path: &str, query: &[(&str, String)]) -> Result<Url> {
        let mut url = Url::parse(&format!(
            "{}{path}",
            self.base_url().as_str().trim_end_matches('/')
        ))
        .map_err(|e| Error::Config(e.to_string()))?;
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        Ok(url)
    }

    /// The account's tasks, newest first (`GET /api/v1/account/tasks`).
    pub async fn tasks(&self, f: &TaskFilter) -> Result<Vec<TaskSummary>> {
        let mut q = Vec::new();
        if let Some(s) = &f.state {
            q.push(("state", s.clone()));
        }
        if let Some(m) = &f.model {
            q.push(("model", m.clone()));
        }
        if let Some(t) = f.since {
            q.push(("since", t.to_string()));
        }
        if let Some(n) = f.limit {
            q.push(("limit", n.to_string()));
        }
        let url = self.account_url("/api/v1/account/tasks", &q)?;
        self.get_enveloped("account tasks", url).await
    }

    /// The account's ledger entries, newest first (`GET /api/v1/account/usage`).
    pub async fn usage(&self, since: Option<i64>, limit: Option<u32>) -> Result<Vec<UsageEntry>> {
        let mut q = Vec::new();
        if let Some(t) = since {
            q.push(("since", t.to_string()));
        }
        if let Some(n) = limit {
            q.push(("limit", n.to_string()));
        }
        let url = self.account_url("/api/v1/account/usage", &q)?;
        self.get_enveloped("account usage", url).await
    }

    /// The account's callback deliveries, newest first (`GET /api/v1/account/callbacks`).
    pub async fn callbacks(
        &self,
        task_id: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<CallbackSummary>> {
        let mut q = Vec::new();
        if let Some(t) = task_id {
            q.push(("taskId", t.to_string()));
        }
        if let Some(n) = limit {
            q.push(("limit", n.to_string()));
        }
        let url = self.account_url("/api/v1/account/callbacks", &q)?;
        self.get_enveloped("account callbacks", url).await
    }
}

impl Client {
    /// One more attempt of a finished delivery (`POST
    /// /api/v1/account/callbacks/{id}/redeliver`; not retried).
    pub async fn redeliver(&self, delivery_id: &str) -> Result<Redelivered> {
        let mut url = self.account_url("/api/v1/account/callbacks", &[])?;
        url.path_segments_mut()
            .map_err(|_| Error::Config("base URL cannot have a path".into()))?
            .push(delivery_id)
            .push("redeliver");
        self.post_enveloped("redeliver", url, false, &serde_json::json!({}))
            .await
    }

    /// Every failed delivery created at or after `since_ms` again, once each (`POST
    /// /api/v1/account/callbacks/replay`; not retried).
    pub async fn replay_failed(&self, since_ms: i64) -> Result<Replayed> {
        let url = self.account_url("/api/v1/account/callbacks/replay", &[])?;
        self.post_enveloped(
            "replay",
            url,
            false,
            &serde_json::json!({ "since": since_ms }),
        )
        .await
    }

    /// The webhook HMAC key (`GET /api/v1/account/callbacks/key`; management scope).
    pub async fn webhook_key(&self) -> Result<WebhookKey> {
        let url = self.account_url("/api/v1/account/callbacks/key", &[])?;
        self.get_enveloped("webhook key", url).await
    }

    /// A new webhook key; the previous one keeps signing for `grace` (`24h` by default
    /// on the server) (`POST /api/v1/account/callbacks/key/roll`; management scope).
    pub async fn roll_webhook_key(&self, grace: Option<&str>) -> Result<WebhookKey> {
        let url = self.account_url("/api/v1/account/callbacks/key/roll", &[])?;
        let body = match grace {
            Some(g) => serde_json::json!({ "grace": g }),
            None => serde_json::json!({}),
        };
        self.post_enveloped("roll webhook key", url, false, &body)
            .await
    }
}
