//! Webhook verification: the independent vectors, replay protection, the extractor.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use http::HeaderMap;
use kie_sdk::webhook::{VerifiedWebhook, WebhookVerifier};
use kie_wire::webhook::{kie_signature, standard_signature, VerifyError};
use serde_json::Value;

struct Vectors {
    key: String,
    task: String,
    ts: String,
    now: i64,
    body: String,
    kie_sig: String,
    id: String,
    std_sig: String,
    v: Value,
}

fn vectors() -> Vectors {
    let v = common::webhook_vectors();
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap().to_string();
    Vectors {
        key: s("/key"),
        task: s("/taskId"),
        ts: s("/timestamp"),
        now: s("/timestamp").parse().unwrap(),
        body: s("/body"),
        kie_sig: s("/kie_signature"),
        id: s("/webhook_id"),
        std_sig: s("/standard_signature"),
        v,
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

fn kie_headers(t: &Vectors, sig: &str) -> HeaderMap {
    headers(&[("x-webhook-timestamp", &t.ts), ("x-webhook-signature", sig)])
}

fn both_headers(t: &Vectors, std_sig: &str) -> HeaderMap {
    headers(&[
        ("x-webhook-timestamp", &t.ts),
        ("x-webhook-signature", &t.kie_sig),
        ("webhook-id", &t.id),
        ("webhook-timestamp", &t.ts),
        ("webhook-signature", std_sig),
    ])
}

#[test]
fn both_schemes_verify_the_vectors() {
    let t = vectors();
    let v = WebhookVerifier::new(&t.key);
    let ok = v
        .verify_at(&kie_headers(&t, &t.kie_sig), t.body.as_bytes(), t.now)
        .unwrap();
    assert_eq!(
        (ok.task_id.as_deref(), ok.kie, ok.standard),
        (Some(t.task.as_str()), true, false)
    );

    let v = WebhookVerifier::new(&t.key).require_standard(true);
    let ok = v
        .verify_at(&both_headers(&t, &t.std_sig), t.body.as_bytes(), t.now)
        .unwrap();
    assert_eq!(ok.task_id.as_deref(), Some(t.task.as_str()));
    assert_eq!(ok.webhook_id.as_deref(), Some(t.id.as_str()));
    assert!(ok.kie && ok.standard);
}

#[test]
fn negatives_are_refused() {
    let t = vectors();
    let neg = |p: &str| {
        t.v.pointer(&format!("/negative/{p}"))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    let v = WebhookVerifier::new(&t.key);
    for sig in [
        neg("kie_signature_other_task"),
        neg("kie_signature_other_timestamp"),
    ] {
        assert_eq!(
            v.verify_at(&kie_headers(&t, &sig), t.body.as_bytes(), t.now),
            Err(VerifyError::BadSignature)
        );
    }
    assert_eq!(
        v.verify_at(
            &both_headers(&t, &neg("standard_signature_tampered_body")),
            t.body.as_bytes(),
            t.now
        ),
        Err(VerifyError::BadSignature)
    );
    // a body changed after signing: the KIE scheme cannot see it, the Standard one can
    let forged = t
        .body
        .replace("\"consumeCredits\":2", "\"consumeCredits\":0");
    assert_eq!(
        v.verify_at(&both_headers(&t, &t.std_sig), forged.as_bytes(), t.now),
        Err(VerifyError::BadSignature)
    );
    // outside the tolerance, both ways
    let v = WebhookVerifier::new(&t.key);
    assert_eq!(
        v.verify_at(&kie_headers(&t, &t.kie_sig), t.body.as_bytes(), t.now + 301),
        Err(VerifyError::TimestampOutOfRange)
    );
    assert_eq!(
        v.verify_at(&kie_headers(&t, &t.kie_sig), t.body.as_bytes(), t.now - 301),
        Err(VerifyError::TimestampOutOfRange)
    );
    assert!(v
        .verify_at(&kie_headers(&t, &t.kie_sig), t.body.as_bytes(), t.now + 300)
        .is_ok());
    // wrong key
    let v = WebhookVerifier::new("whsec_b3RoZXIga2V5IG9mIDI0IGJ5dGVzIGxvbmc=");
    assert_eq!(
        v.verify_at(&kie_headers(&t, &t.kie_sig), t.body.as_bytes(), t.now),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn missing_and_partial_headers() {
    let t = vectors();
    let v = WebhookVerifier::new(&t.key);
    assert_eq!(
        v.verify_at(&HeaderMap::new(), t.body.as_bytes(), t.now),
        Err(VerifyError::MissingHeader("x-webhook-signature"))
    );
    let only_ts = headers(&[("x-webhook-timestamp", &t.ts)]);
    assert_eq!(
        v.verify_at(&only_ts, t.body.as_bytes(), t.now),
        Err(VerifyError::MissingHeader("x-webhook-signature"))
    );
    let std_no_id = headers(&[
        ("webhook-timestamp", &t.ts),
        ("webhook-signature", &t.std_sig),
    ]);
    assert_eq!(
        v.verify_at(&std_no_id, t.body.as_bytes(), t.now),
        Err(VerifyError::MissingHeader("webhook-id"))
    );
    // KIE scheme alone is refused when the Standard one is required
    let strict = WebhookVerifier::new(&t.key).require_standard(true);
    assert_eq!(
        strict.verify_at(&kie_headers(&t, &t.kie_sig), t.body.as_bytes(), t.now),
        Err(VerifyError::MissingHeader("webhook-signature"))
    );
}

#[test]
fn task_ids_that_disagree_are_invalid() {
    let t = vectors();
    let body = format!(
        r#"{{"taskId":"{}","data":{{"taskId":"{}","task_id":"other"}}}}"#,
        t.task, t.task
    );
    let v = WebhookVerifier::new(&t.key);
    assert_eq!(
        v.verify_at(&kie_headers(&t, &t.kie_sig), body.as_bytes(), t.now),
        Err(VerifyError::TaskIdMismatch)
    );
    // also when only the body-covering scheme is present
    let sig = standard_signature(&t.key, &t.id, &t.ts, body.as_bytes());
    let h = headers(&[
        ("webhook-id", &t.id),
        ("webhook-timestamp", &t.ts),
        ("webhook-signature", &sig),
    ]);
    assert_eq!(
        v.verify_at(&h, body.as_bytes(), t.now),
        Err(VerifyError::TaskIdMismatch)
    );
}

#[test]
fn replays_are_refused_until_they_age_out() {
    let t = vectors();
    let v = WebhookVerifier::new(&t.key);
    let h = both_headers(&t, &t.std_sig);
    let first = v.verify_at(&h, t.body.as_bytes(), t.now).unwrap();
    assert_eq!(first.replay_key, format!("id:{}", t.id));
    assert_eq!(
        v.verify_at(&h, t.body.as_bytes(), t.now + 10),
        Err(VerifyError::Replay)
    );
    // a clone shares the memory (axum states are cloned per request)
    assert_eq!(
        v.clone().verify_at(&h, t.body.as_bytes(), t.now + 10),
        Err(VerifyError::Replay)
    );
    // a failed handler lets the sender's retry in
    v.forget(&first.replay_key);
    assert!(v.verify_at(&h, t.body.as_bytes(), t.now + 20).is_ok());

    // KIE scheme only: task id + timestamp identify the delivery
    let v = WebhookVerifier::new(&t.key);
    let h = kie_headers(&t, &t.kie_sig);
    assert!(v.verify_at(&h, t.body.as_bytes(), t.now).is_ok());
    assert_eq!(
        v.verify_at(&h, t.body.as_bytes(), t.now),
        Err(VerifyError::Replay)
    );
    // a new delivery of the same task (new timestamp) is not a replay
    let ts2 = (t.now + 5).to_string();
    let h2 = headers(&[
        ("x-webhook-timestamp", &ts2),
        ("x-webhook-signature", &kie_signature(&t.key, &t.task, &ts2)),
    ]);
    assert!(v.verify_at(&h2, t.body.as_bytes(), t.now + 5).is_ok());
}

#[test]
fn debug_output_hides_the_key() {
    let t = vectors();
    let dbg = format!("{:?}", WebhookVerifier::new(&t.key));
    assert!(!dbg.contains(&t.key[6..]), "{dbg}");
}

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

/// (task id, body) of each delivery the handler saw.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>;

#[derive(Clone)]
struct AppState {
    verifier: WebhookVerifier,
    got: Received,
}

impl axum::extract::FromRef<AppState> for WebhookVerifier {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

async fn on_callback(State(s): State<AppState>, hook: VerifiedWebhook) -> &'static str {
    s.got
        .lock()
        .unwrap()
        .push((hook.verified.task_id.clone(), hook.json().unwrap()));
    "ok"
}

#[tokio::test]
async fn the_axum_extractor_accepts_valid_and_refuses_the_rest() {
    let t = vectors();
    let state = AppState {
        verifier: WebhookVerifier::new(&t.key).require_standard(true),
        got: Default::default(),
    };
    let app = Router::new()
        .route("/hook", post(on_callback))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let ts = now();
    let body = t.body.clone();
    let http = reqwest::Client::new();
    let send = |id: &str, body: &str, kie_sig: String, std_sig: String| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("x-webhook-timestamp", &ts)
            .header("x-webhook-signature", kie_sig)
            .header("webhook-id", id)
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", std_sig)
            .body(body.to_string())
            .send()
    };
    let kie_sig = kie_signature(&t.key, &t.task, &ts);
    let std_sig = standard_signature(&t.key, "msg_1", &ts, body.as_bytes());

    let r = send("msg_1", &body, kie_sig.clone(), std_sig.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = send("msg_1", &body, kie_sig.clone(), std_sig.clone())
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (409, "webhook-id already seen (replay)".to_string())
    );
    // a forged body under a captured KIE signature
    let forged = body.replace("\"state\":\"success\"", "\"state\":\"fail\"");
    let r = send("msg_2", &forged, kie_sig.clone(), std_sig.clone())
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (401, "signature does not match".to_string())
    );
    // no signature at all
    let r = http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let got = state.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only the valid delivery reached the handler");
    assert_eq!(got[0].0.as_deref(), Some(t.task.as_str()));
    assert_eq!(got[0].1["data"]["state"], "success");
}
