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
    pub task_id: String,
    pub url: String,
    pub status: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub next_attempt_at: Option<i64>,
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
