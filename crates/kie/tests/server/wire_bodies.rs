//! SPEC §2 body rules on the JSON endpoints: content type, size limit, malformed JSON,
//! wrong types naming the field, unknown fields ignored; and 402 over HTTP.

use crate::harness::*;
use serde_json::{json, Value};

async fn post_raw(url: &str, key: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut rb = client().post(url).bearer_auth(key).body(body);
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    let r = rb.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn json_bodies_are_checked_and_errors_name_the_problem() {
    let s = Server::start(Opts::default());
    let (_, key) = s.account_with_key("wb", "10");
    let url = s.url("/api/v1/common/download-url");
    let ct = Some("application/json");

    let (st, v) = post_raw(&url, &key, ct, b"{not json".to_vec()).await;
    assert_eq!((st, v["code"].clone()), (200, json!(422)));
    assert!(v["msg"].as_str().unwrap().contains("Malformed JSON"), "{v}");

    let (_, v) = post_raw(&url, &key, ct, br#"{"url": 5}"#.to_vec()).await;
    assert_eq!(v["code"], 422);
    assert!(
        v["msg"].as_str().unwrap().contains("url"),
        "names the field: {v}"
    );

    let (_, v) = post_raw(&url, &key, Some("text/plain"), br#"{"url":"x"}"#.to_vec()).await;
    assert_eq!(v["code"], 422);
    assert!(v["msg"].as_str().unwrap().contains("Content-Type"), "{v}");

    let (_, v) = post_raw(&url, &key, None, br#"{"url":"x"}"#.to_vec()).await;
    assert_eq!(v["code"], 422);

    let (_, v) = post_raw(&url, &key, ct, Vec::new()).await;
    assert_eq!(v["code"], 422);

    let big = format!(r#"{{"url":"{}"}}"#, "a".repeat(2 * 1024 * 1024));
    let (st, v) = post_raw(&url, &key, ct, big.into_bytes()).await;
    assert_eq!(st, 200, "compat: HTTP 200");
    assert_eq!(v["code"], 422);
    assert!(
        v["msg"].as_str().unwrap().contains("1048576"),
        "names the limit: {v}"
    );

    // unknown fields are ignored: the answer is about the URL, not the extra field
    let (_, v) = post_raw(
        &url,
        &key,
        Some("application/json; charset=utf-8"),
        br#"{"url":"https://elsewhere.example/x.png","extra":1}"#.to_vec(),
    )
    .await;
    assert_eq!(v["code"], 422);
    assert!(v["msg"].as_str().unwrap().contains("external"), "{v}");

    // still healthy, nothing charged
    assert_eq!(
        get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["data"],
        json!(10)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_413_in_mirror_mode() {
    let s = Server::start(Opts::default().args(&["--status-mode", "mirror", "--max-body", "1000"]));
    let (_, key) = s.account_with_key("wb2", "10");
    let big = format!(r#"{{"url":"{}"}}"#, "a".repeat(5000));
    let (st, v) = post_raw(
        &s.url("/api/v1/common/download-url"),
        &key,
        Some("application/json"),
        big.into_bytes(),
    )
    .await;
    assert_eq!(st, 413);
    assert_eq!(v["code"], 422);
    let (st, v) = post_raw(
        &s.url("/api/v1/common/download-url"),
        &key,
        Some("application/json"),
        b"[".to_vec(),
    )
    .await;
    assert_eq!((st, v["code"].clone()), (422, json!(422)));
}

#[tokio::test(flavor = "multi_thread")]
async fn insufficient_credits_is_402_and_changes_nothing() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("poor", "1.99");
    // demo/image costs 2 credits
    let (st, _, v) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&key),
        &json!({"model": "demo/image", "input": {"prompt": "x"}}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"code": 402, "msg": "Credits insufficient", "data": null})
    );
    let show = s.admin(&["credits", "show", "--account", &acc]);
    assert_eq!(show["held"], json!(0));
    assert_eq!(show["available"], json!(1.99));
}
