//! Secrets never reach logs or error answers: API keys (valid, unknown, revoked, in
//! odd places of a request), webhook keys, the worker token and link signatures.
//! The suite-wide scan of every log (`scripts/test`, `--example scan-secrets`) covers
//! the other tests; this test provokes the paths most likely to echo a secret and
//! checks this server's log directly, so it fails on its own.

use crate::harness::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_logs_and_error_answers() {
    let token = "wt-0123456789-VERY-secret-worker-token";
    let s = Server::start(Opts::default().demo().args(&["--worker-token", token]));
    let (acc, key) = s.account_with_key("sec", "5");
    let wk = s.admin(&["webhook-key", "generate", "--account", &acc]);
    let whsec = wk["key"].as_str().unwrap().to_string();
    let demo = s.demo_key.clone().expect("demo key");
    // an unknown key of the right shape, a revoked key, a malformed one
    let unknown = kie_wire::apikey::generate();
    let (_, revoked) = s.account_with_key("rev", "1");
    s.admin(&["key", "revoke", kie_wire::apikey::display_prefix(&revoked)]);
    let malformed = format!("{}x", &key[..key.len() - 1]);

    let c = client();
    let mut bodies = Vec::new();
    for k in [&key, &unknown, &revoked, &malformed, &whsec] {
        for path in [
            "/api/v1/chat/credit".to_string(),
            format!("/api/v1/chat/credit?key={k}"),
            format!("/api/v1/nope/{k}"),
            format!("/links/{k}/x?e=1&k=kX&s={k}"),
        ] {
            let r = c
                .get(s.url(&path))
                .bearer_auth(k)
                .header("x-request-id", k.as_str())
                .send()
                .await
                .unwrap();
            bodies.push(r.text().await.unwrap());
        }
        let r = c
            .post(s.url("/api/v1/jobs/createTask"))
            .header("authorization", format!("Bearer  {k} extra"))
            .json(&json!({"model": k, "input": {"prompt": k}, "callBackUrl": format!("http://{k}.invalid/")}))
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
        // the worker API with an API key instead of the worker token
        let r = c
            .post(s.url("/internal/v1/worker/claim"))
            .bearer_auth(k)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
    }
    // a wrong worker token close to the right one
    let r = c
        .post(s.url("/internal/v1/worker/claim"))
        .bearer_auth(format!("{token}x"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    bodies.push(r.text().await.unwrap());
    // a real download link: its signature must not be logged either
    let up = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "aGVsbG8=", "uploadPath": "p", "fileName": "h.txt"}),
    )
    .await
    .2;
    let file_url = up["data"]["fileUrl"]
        .as_str()
        .expect("uploaded")
        .to_string();
    let link = post_json(
        &s.url("/api/v1/common/download-url"),
        Some(&key),
        &json!({"url": file_url}),
    )
    .await
    .2;
    let link = link["data"].as_str().expect("a link").to_string();
    let sig = link.rsplit("s=").next().unwrap().to_string();
    assert_eq!(c.get(&link).send().await.unwrap().status(), 200);

    for b in &bodies {
        for secret in [&key, &unknown, &revoked, &malformed, &whsec, &demo] {
            assert!(
                !b.contains(secret.as_str()),
                "an answer echoes a secret: {b}"
            );
        }
        assert!(!b.contains(token), "an answer echoes the worker token: {b}");
    }
    let log = s.log();
    assert!(log.len() > 1000, "the server logged the requests: {log}");
    let names = [
        "key",
        "unknown",
        "revoked",
        "malformed",
        "whsec",
        "demo",
        "link signature",
    ];
    for (name, secret) in names
        .iter()
        .zip([&key, &unknown, &revoked, &malformed, &whsec, &demo, &sig])
    {
        if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
            panic!(
                "the log holds the {name} secret: {}",
                line.replace(secret.as_str(), "<SECRET>")
            );
        }
    }
    assert!(!log.contains(token), "the log holds the worker token");
    let found = kie_wire::secrets::scan(&log);
    assert!(
        found.is_empty(),
        "secret-looking tokens in the log: {found:?}"
    );
}
