//! A webhook receiver for the tests (callbacks, alerts): listens on 127.0.0.1:0,
//! answers a status that a test may change, and keeps every request it got.

use crate::harness::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status the receiver answered
    pub answered: u16,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
            .to_string()
    }
}

/// A receiver on 127.0.0.1:0 that answers `status` (changeable) and keeps every request.
pub struct Receiver {
    pub base: String,
    pub got: Arc<Mutex<Vec<Delivery>>>,
    /// What the receiver answers from now on
    pub status: Arc<AtomicU16>,
}

pub async fn receiver(status: u16) -> Receiver {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let status = Arc::new(AtomicU16::new(status));
    let (g, st) = (got.clone(), status.clone());
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let (g, st) = (g.clone(), st.clone());
        async move {
            let answered = st.load(Ordering::SeqCst);
            g.lock().unwrap().push(Delivery {
                headers,
                body,
                answered,
            });
            StatusCode::from_u16(answered).unwrap()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Receiver { base, got, status }
}

impl Receiver {
    pub fn all(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
    /// Waits (up to 20 s) until `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let ok = eventually(Duration::from_secs(20), || async {
            self.got.lock().unwrap().len() >= n
        })
        .await;
        assert!(
            ok.is_some(),
            "expected {n} requests, got {}",
            self.all().len()
        );
        self.all()
    }
}

/// The base64 HMAC-SHA256 of `msg` under `key`.
pub fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    B64.encode(m.finalize().into_bytes())
}
