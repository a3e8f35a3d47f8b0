//! The account's low-balance alerts (`/api/v1/account/alerts`, issue 16): thresholds,
//! the alert URL and a test event. Every call needs a key with the management scope.

use kie_wire::Credits;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;

/// The account's alert settings and where its available balance stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertSettings {
    pub warn: Option<Credits>,
    pub critical: Option<Credits>,
    pub url: Option<String>,
    /// `ok`, `warning` or `critical`
    pub state: String,
    pub available: Credits,
}

/// A change: unset fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AlertChanges {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warn: Option<Credits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<Credits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The sample event enqueued by [`Client::test_alert`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestSent {
    pub event_id: String,
}

impl Client {
    /// `GET /api/v1/account/alerts`
    pub async fn alerts(&self) -> Result<AlertSettings> {
        let url = self.account_url("/api/v1/account/alerts", &[])?;
        self.get_enveloped("alerts", url).await
    }

    /// `POST /api/v1/account/alerts` (idempotent: retried per the policy).
    pub async fn set_alerts(&self, changes: &AlertChanges) -> Result<AlertSettings> {
        let url = self.account_url("/api/v1/account/alerts", &[])?;
        self.post_enveloped("set alerts", url, true, &serde_json::json!(changes))
            .await
    }

    /// `POST /api/v1/account/alerts/test`: enqueues a sample event (not retried).
    pub async fn test_alert(&self) -> Result<TestSent> {
        let url = self.account_url("/api/v1/account/alerts/test", &[])?;
        self.post_enveloped("test alert", url, false, &serde_json::json!({}))
            .await
    }
}
