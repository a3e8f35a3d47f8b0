//! The account's API keys (`/api/v1/account/keys`, issue 16): list, create, revoke,
//! roll, update. Every call needs a key with the management scope; any other key gets
//! code 401 ([`crate::Error::Api`]).

use kie_wire::Credits;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;

/// Usage caps in credits (`None`: no cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    pub hourly: Option<Credits>,
    pub daily: Option<Credits>,
    pub total: Option<Credits>,
}

/// Usage counted against the caps: this UTC hour, this UTC day, in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub hourly: Credits,
    pub daily: Credits,
    pub total: Credits,
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    pub prefix: String,
    pub account: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// `active`, `expired` or `revoked`
    pub status: String,
    pub caps: Caps,
    /// CIDR blocks the key may be used from; empty: any
    pub allow_ips: Vec<String>,
    /// The management scope
    pub manage: bool,
    pub usage: Usage,
    /// When the key was last used (epoch ms, to the minute); `None`: never
    #[serde(default)]
    pub last_used_at: Option<i64>,
}

/// A new key: the only value that contains the key itself (shown once).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub prefix: String,
    pub account: String,
    pub name: Option<String>,
    pub expires_at: Option<i64>,
    pub caps: Caps,
    pub allow_ips: Vec<String>,
    pub manage: bool,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key itself
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Settings of a new key (`POST /api/v1/account/keys`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry as a duration from now (`90d`)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub caps: Caps,
    pub allow_ips: Vec<String>,
    pub manage: bool,
}

/// Changes to a key; `None` leaves a setting as it is, `Some(None)` removes a cap.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    pub hourly: Option<Option<Credits>>,
    pub daily: Option<Option<Credits>>,
    pub total: Option<Option<Credits>>,
    /// Replaces the allowlist (`Some(vec![])`: any address)
    pub allow_ips: Option<Vec<String>>,
    pub manage: Option<bool>,
}

impl KeyChanges {
    fn body(&self) -> serde_json::Value {
        let mut caps = serde_json::Map::new();
        for (k, v) in [
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("total", self.total),
        ] {
            if let Some(v) = v {
                caps.insert(k.into(), serde_json::json!(v));
            }
        }
        let mut body = serde_json::Map::new();
        if !caps.is_empty() {
            body.insert("caps".into(), caps.into());
        }
        if let Some(a) = &self.allow_ips {
            body.insert("allowIps".into(), serde_json::json!(a));
        }
        if let Some(m) = self.manage {
            body.insert("manage".into(), m.into());
        }
        body.into()
    }
}

fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

impl Client {
    /// The account's keys, oldest first (`GET /api/v1/account/keys`).
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let url = self.account_url("/api/v1/account/keys", &[])?;
        self.get_enveloped("keys", url).await
    }

    /// Creates a key (`POST /api/v1/account/keys`); not retried (a retry could mint a
    /// second key).
    pub async fn create_key(&self, spec: &KeySpec) -> Result<NewKey> {
        let url = self.account_url("/api/v1/account/keys", &[])?;
        self.post_enveloped("create key", url, false, &serde_json::json!(spec))
            .await
    }

    /// Revokes a key now (`POST /api/v1/account/keys/{id}/revoke`).
    pub async fn revoke_key(&self, id: &str) -> Result<KeyInfo> {
        let url = self.account_url(
            &format!("/api/v1/account/keys/{}/revoke", path_segment(id)),
            &[],
        )?;
        self.post_enveloped("revoke key", url, true, &serde_json::json!({}))
            .await
    }

    /// Replaces a key; the old one keeps working for `grace` (`1h`, `7d`; `None`:
    /// revoked now). Not retried.
    pub async fn roll_key(&self, id: &str, grace: Option<&str>) -> Result<NewKey> {
        let url = self.account_url(
            &format!("/api/v1/account/keys/{}/roll", path_segment(id)),
            &[],
        )?;
        let body = match grace {
            Some(g) => serde_json::json!({ "grace": g }),
            None => serde_json::json!({}),
        };
        self.post_enveloped("roll key", url, false, &body).await
    }

    /// Changes a key's caps, allowlist or scope (`POST /api/v1/account/keys/{id}/update`).
    pub async fn update_key(&self, id: &str, changes: &KeyChanges) -> Result<KeyInfo> {
        let url = self.account_url(
            &format!("/api/v1/account/keys/{}/update", path_segment(id)),
            &[],
        )?;
        self.post_enveloped("update key", url, true, &changes.body())
            .await
    }
}
