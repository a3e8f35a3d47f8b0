//! Verifying the callbacks KIE.AI (or `kie serve`) POSTs to your server.
//!
//! Both signature schemes of SPEC §6 are checked with kie-wire's constant-time
//! functions. On top of them this module adds what needs memory: replay protection.
//!
//! * A delivery must carry at least one scheme, and every scheme it carries must verify.
//!   KIE.AI itself sends only its own scheme, which signs `taskId.timestamp` but not the
//!   body; `kie serve` sends both. Receivers of `kie serve` should call
//!   [`WebhookVerifier::require_standard`] so a captured KIE-scheme signature cannot be
//!   replayed with a forged body.
//! * Timestamps must be within the tolerance (default 300 s) both ways.
//! * A delivery is accepted once: its `webhook-id` (or, for KIE-scheme-only deliveries,
//!   task id + timestamp) is remembered until its timestamp leaves the tolerance, in a
//!   bounded set. Standard Webhooks keeps the `webhook-id` across retries, so a handler
//!   that fails after accepting a delivery should call [`WebhookVerifier::forget`] to let
//!   the retry in.
//!
//! ```
//! use kie_sdk::webhook::WebhookVerifier;
//! use kie_wire::webhook::{kie_signature, standard_signature, VerifyError};
//!
//! let key = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
//! let body = br#"{"taskId":"t1","code":200,"data":{"taskId":"t1","task_id":"t1"}}"#;
//! let now = 1_769_670_760;
//! let ts = now.to_string();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-webhook-timestamp", ts.parse().unwrap());
//! headers.insert("x-webhook-signature", kie_signature(key, "t1", &ts).parse().unwrap());
//! headers.insert("webhook-id", "msg_1".parse().unwrap());
//! headers.insert("webhook-timestamp", ts.parse().unwrap());
//! headers.insert("webhook-signature", standard_signature(key, "msg_1", &ts, body).parse().unwrap());
//!
//! let verifier = WebhookVerifier::new(key).require_standard(true);
//! let ok = verifier.verify_at(&headers, body, now).unwrap();
//! assert_eq!(ok.task_id.as_deref(), Some("t1"));
//! assert!(ok.kie && ok.standard);
//! // the same delivery again is a replay
//! assert_eq!(verifier.verify_at(&headers, body, now), Err(VerifyError::Replay));
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use kie_wire::webhook::{
    task_id_of, verify_kie, verify_standard, VerifyError, DEFAULT_TOLERANCE_SECS,
    HDR_KIE_SIGNATURE, HDR_KIE_TIMESTAMP, HDR_STD_ID, HDR_STD_SIGNATURE, HDR_STD_TIMESTAMP,
};

/// Default number of delivery ids remembered for replay protection.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// A delivery that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The task id read from the body (`taskId`, `data.taskId`, `data.task_id`).
    /// Always set when the KIE scheme was checked.
    pub task_id: Option<String>,
    /// `webhook-id` when the Standard Webhooks scheme was present.
    pub webhook_id: Option<String>,
    /// The KIE.AI scheme was present and valid.
    pub kie: bool,
    /// The Standard Webhooks scheme was present and valid.
    pub standard: bool,
    /// What replay protection remembered; pass to [`WebhookVerifier::forget`].
    pub replay_key: String,
}

/// Verifies webhook deliveries. Cheap to clone (clones share the replay memory), so it
/// can live in an axum state.
#[derive(Clone)]
pub struct WebhookVerifier {
    key: Arc<str>,
    tolerance: i64,
    require_standard: bool,
    seen: Arc<ReplayGuard>,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("key", &"<redacted>")
            .field("tolerance", &self.tolerance)
            .field("require_standard", &self.require_standard)
            .finish()
    }
}

impl WebhookVerifier {
    /// A verifier for the account's webhook key (`whsec_…`).
    pub fn new(key: impl AsRef<str>) -> Self {
        WebhookVerifier {
            key: Arc::from(key.as_ref().trim()),
            tolerance: DEFAULT_TOLERANCE_SECS,
            require_standard: false,
            seen: Arc::new(ReplayGuard::new(DEFAULT_REPLAY_CAPACITY)),
        }
    }

    /// How far a delivery's timestamp may be from now, both ways (default 300 s).
    pub fn tolerance(mut self, d: Duration) -> Self {
        self.tolerance = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// Reject deliveries without a valid Standard Webhooks signature (which covers the
    /// body). Right for `kie serve`, wrong for KIE.AI, which does not send one.
    pub fn require_standard(mut self, yes: bool) -> Self {
        self.require_standard = yes;
        self
    }

    /// How many delivery ids are remembered (oldest evicted first). Changing it starts
    /// a new, empty memory.
    pub fn replay_capacity(mut self, n: usize) -> Self {
        self.seen = Arc::new(ReplayGuard::new(n.max(1)));
        self
    }

    /// Verifies a delivery against the current time.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.verify_at(headers, body, now)
    }

    /// Verifies a delivery as if the time were `now` (unix seconds).
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let h = |name: &'static str| headers.get(name).and_then(|v| v.to_str().ok());
        let kie = scheme(&[
            (HDR_KIE_TIMESTAMP, h(HDR_KIE_TIMESTAMP)),
            (HDR_KIE_SIGNATURE, h(HDR_KIE_SIGNATURE)),
        ])?;
        let std = scheme(&[
            (HDR_STD_ID, h(HDR_STD_ID)),
            (HDR_STD_TIMESTAMP, h(HDR_STD_TIMESTAMP)),
            (HDR_STD_SIGNATURE, h(HDR_STD_SIGNATURE)),
        ])?;
        if std.is_none() && (self.require_standard || kie.is_none()) {
            // name the header a sender that meant to sign would have set
            let missing = if self.require_standard {
                HDR_STD_SIGNATURE
            } else {
                HDR_KIE_SIGNATURE
            };
            return Err(VerifyError::MissingHeader(missing));
        }

        let mut task_id = None;
        let mut newest_ts = i64::MIN;
        if let Some(k) = &kie {
            let (ts, sig) = (k[0], k[1]);
            task_id = Some(verify_kie(&self.key, ts, sig, body, now, self.tolerance)?);
            newest_ts = newest_ts.max(ts.trim().parse().unwrap_or(now));
        }
        if let Some(s) = &std {
            let (id, ts, sig) = (s[0], s[1], s[2]);
            verify_standard(&self.key, id, ts, sig, body, now, self.tolerance)?;
            newest_ts = newest_ts.max(ts.trim().parse().unwrap_or(now));
            if task_id.is_none() {
                // the body is signed; its task id is informative, but ids that disagree
                // are still an invalid delivery
                task_id = match task_id_of(body) {
                    Ok(t) => Some(t),
                    Err(VerifyError::TaskIdMismatch) => return Err(VerifyError::TaskIdMismatch),
                    Err(_) => None,
                };
            }
        }

        let webhook_id = std.as_ref().map(|s| s[0].trim().to_string());
        let replay_key = match &webhook_id {
            Some(id) => format!("id:{id}"),
            None => format!(
                "kie:{}:{}",
                task_id.as_deref().unwrap_or_default(),
                kie.as_ref().map_or("", |k| k[0].trim())
            ),
        };
        // remembered only once the signature holds, so forged requests cannot fill the
        // memory; kept until the timestamp itself would be refused
        self.seen
            .check_and_insert(&replay_key, newest_ts.saturating_add(self.tolerance), now)?;
        Ok(Verified {
            task_id,
            webhook_id,
            kie: kie.is_some(),
            standard: std.is_some(),
            replay_key,
        })
    }

    /// Lets a delivery with this replay key in again (after the handler failed on it).
    pub fn forget(&self, replay_key: &str) {
        self.seen.remove(replay_key);
    }
}

/// The header values of one scheme: all present, none present, or an error naming
/// the first missing one.
fn scheme<'a>(hs: &[(&'static str, Option<&'a str>)]) -> Result<Option<Vec<&'a str>>, VerifyError> {
    if hs.iter().all(|(_, v)| v.is_none()) {
        return Ok(None);
    }
    hs.iter()
        .map(|(name, v)| v.ok_or(VerifyError::MissingHeader(name)))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A bounded set of recently seen delivery ids, each kept until its expiry time.
struct ReplayGuard {
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    expiry: HashMap<String, i64>,
    /// Insertion order, for evicting the oldest when full and purging expired ones.
    order: VecDeque<String>,
}

impl ReplayGuard {
    fn new(capacity: usize) -> Self {
        ReplayGuard {
            capacity,
            inner: Mutex::new(Seen::default()),
        }
    }

    fn check_and_insert(&self, key: &str, expires_at: i64, now: i64) -> Result<(), VerifyError> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        // purge from the front while expired or already forgotten
        while let Some(front) = s.order.front() {
            match s.expiry.get(front) {
                Some(&exp) if exp >= now => break,
                Some(_) => {
                    s.expiry.remove(front);
                    s.order.pop_front();
                }
                None => {
                    s.order.pop_front();
                }
            }
        }
        if s.expiry.get(key).is_some_and(|&exp| exp >= now) {
            return Err(VerifyError::Replay);
        }
        while s.expiry.len() >= self.capacity {
            // memory stays bounded; the timestamp tolerance still refuses an evicted
            // delivery once it ages out
            match s.order.pop_front() {
                Some(k) => {
                    s.expiry.remove(&k);
                }
                None => break,
            }
        }
        if s.expiry.insert(key.to_string(), expires_at).is_none() {
            s.order.push_back(key.to_string());
        }
        Ok(())
    }

    fn remove(&self, key: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // its entry in `order` is dropped by a later purge
        s.expiry.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().expiry.len()
    }
}

#[cfg(feature = "axum")]
pub use extractor::{VerifiedWebhook, WebhookRejection};

#[cfg(feature = "axum")]
mod extractor {
    //! The axum extractor.

    use axum::body::Bytes;
    use axum::extract::rejection::BytesRejection;
    use axum::extract::{FromRef, FromRequest, Request};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use kie_wire::webhook::VerifyError;
    use serde::de::DeserializeOwned;

    use super::{Verified, WebhookVerifier};

    /// A webhook delivery whose signature(s), timestamp and uniqueness were checked
    /// against the [`WebhookVerifier`] in the router state. Refused deliveries get
    /// 401 (signature, timestamp or missing headers), 400 (not a callback body) or
    /// 409 (replay), with the reason as a one-line text body.
    ///
    /// ```
    /// use axum::{routing::post, Router};
    /// use kie_sdk::webhook::{VerifiedWebhook, WebhookVerifier};
    ///
    /// async fn on_callback(hook: VerifiedWebhook) -> &'static str {
    ///     let body: serde_json::Value = hook.json().unwrap();
    ///     println!("task {:?} is {}", hook.verified.task_id, body["data"]["state"]);
    ///     "ok"
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let key = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    /// let app: Router = Router::new()
    ///     .route("/kie/callback", post(on_callback))
    ///     .with_state(WebhookVerifier::new(key));
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// # let url = format!("http://{}/kie/callback", listener.local_addr().unwrap());
    /// # tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    /// # let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    /// # let body = r#"{"taskId":"t1","data":{"state":"success"}}"#;
    /// # let http = reqwest::Client::new();
    /// # let send = |sig: String| http.post(&url).header("x-webhook-timestamp", &ts)
    /// #     .header("x-webhook-signature", sig).body(body).send();
    /// # let good = kie_wire::webhook::kie_signature(key, "t1", &ts);
    /// # assert_eq!(send(good.clone()).await.unwrap().status(), 200);
    /// # assert_eq!(send(good).await.unwrap().status(), 409); // replay
    /// # assert_eq!(send("bad".into()).await.unwrap().status(), 401);
    /// # }
    /// ```
    #[derive(Debug, Clone)]
    pub struct VerifiedWebhook {
        pub verified: Verified,
        /// The raw body, exactly as signed.
        pub body: Bytes,
    }

    impl VerifiedWebhook {
        /// The body parsed as JSON (any `Deserialize` type, or `serde_json::Value`).
        pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
            serde_json::from_slice(&self.body)
        }
    }

    /// Why a delivery was refused.
    #[derive(Debug)]
    pub enum WebhookRejection {
        Invalid(VerifyError),
        Body(BytesRejection),
    }

    impl IntoResponse for WebhookRejection {
        fn into_response(self) -> Response {
            match self {
                WebhookRejection::Body(r) => r.into_response(),
                WebhookRejection::Invalid(e) => {
                    let status = match e {
                        VerifyError::Replay => StatusCode::CONFLICT,
                        VerifyError::BadBody
                        | VerifyError::MissingTaskId
                        | VerifyError::TaskIdMismatch => StatusCode::BAD_REQUEST,
                        _ => StatusCode::UNAUTHORIZED,
                    };
                    (status, e.to_string()).into_response()
                }
            }
        }
    }

    impl<S> FromRequest<S> for VerifiedWebhook
    where
        S: Send + Sync,
        WebhookVerifier: FromRef<S>,
    {
        type Rejection = WebhookRejection;

        async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
            let verifier = WebhookVerifier::from_ref(state);
            let headers = req.headers().clone();
            let body = Bytes::from_request(req, state)
                .await
                .map_err(WebhookRejection::Body)?;
            let verified = verifier
                .verify(&headers, &body)
                .map_err(WebhookRejection::Invalid)?;
            Ok(VerifiedWebhook { verified, body })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_guard_expires_and_stays_bounded() {
        let g = ReplayGuard::new(3);
        assert_eq!(g.check_and_insert("a", 100, 0), Ok(()));
        assert_eq!(g.check_and_insert("a", 100, 50), Err(VerifyError::Replay));
        // expired: accepted again
        assert_eq!(g.check_and_insert("a", 300, 101), Ok(()));
        for k in ["b", "c", "d", "e"] {
            assert_eq!(g.check_and_insert(k, 1000, 200), Ok(()));
        }
        assert_eq!(g.len(), 3);
        // the oldest ("a", "b") were evicted, the newest are still refused
        assert_eq!(g.check_and_insert("e", 1000, 200), Err(VerifyError::Replay));
        g.remove("e");
        assert_eq!(g.check_and_insert("e", 1000, 200), Ok(()));
    }
}
