//! The operator API (issue 16): `/api/v1/admin/…` with an operator token, the JSON twin
//! of the operator's console pages.

use serde_json::{json, Value};
use std::time::Duration;

use crate::harness::{client, eventually, get_json, post_json, wait_for_credit, Opts, Server};

/// Mints an operator token with `kie admin operator-token create --json`.
fn operator_token(s: &Server, name: &str) -> (String, String) {
    let t = s.admin(&["operator-token", "create", "--name", name]);
    let token = t["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("kieop_"), "{t}");
    assert_eq!(t["prefix"].as_str().unwrap(), &token[..14]);
    (t["id"].as_str().unwrap().to_string(), token)
}

#[tokio::test]
async fn only_a_live_operator_token_opens_the_operator_api() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("opa", "1");
    let manage = s.admin(&["key", "create", "--account", &acc, "--manage"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (id, token) = operator_token(&s, "ci");
    let fake = format!("kieop_{}", "A".repeat(40));
    let paths = [
        "/api/v1/admin/accounts",
        "/api/v1/admin/settings",
        "/api/v1/admin/health",
        &format!("/api/v1/admin/accounts/{acc}"),
    ];
    for p in paths {
        for bad in [None, Some(key.as_str()), Some(manage.as_str()), Some(&fake)] {
            let (_, _, v) = get_json(&s.url(p), bad).await;
            assert_eq!(v["code"], 401, "{p} with {:?}: {v}", bad.map(|b| &b[..6]));
            assert!(v["msg"].as_str().unwrap().contains("operator token"), "{v}");
        }
        let (_, _, v) = get_json(&s.url(p), Some(&token)).await;
        assert_eq!(v["code"], 200, "{p}: {v}");
    }
    // nothing changes without a token
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/admin/accounts/{acc}/credits")),
        Some(&manage),
        &json!({"op": "grant", "amount": 5, "reason": "x", "idempotencyKey": "k1"}),
    )
    .await;
    assert_eq!(v["code"], 401, "{v}");
    wait_for_credit(&s, &key, &json!(1)).await;
    // the token never works as an API key
    let (_, _, v) = get_json(&s.url("/api/v1/chat/credit"), Some(&token)).await;
    assert_eq!(v["code"], 401, "{v}");

    // listed with its last use, never the token; revoked: refused at once
    let list = s.admin(&["operator-token", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0]["lastUsedAt"].as_i64().is_some(), "{list}");
    assert!(list[0].get("token").is_none() && !list.to_string().contains(&token));
    let r = s.admin(&["operator-token", "revoke", &id]);
    assert!(r["revokedAt"].as_i64().is_some(), "{r}");
    let (_, _, v) = get_json(&s.url("/api/v1/admin/accounts"), Some(&token)).await;
    assert_eq!(v["code"], 401, "{v}");
    // an unknown token id is a one-line error
    let out = s.admin_raw(&["operator-token", "revoke", "opt_nope"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "kie admin: no operator token opt_nope"
    );
    assert!(!s.log().contains(&token), "the token reached the log");
}

#[tokio::test]
async fn accounts_credits_and_invites_through_the_operator_api() {
    let s = Server::start(Opts::default());
    let (_, token) = operator_token(&s, "ops");
    let t = Some(token.as_str());
    let (_, _, v) = post_json(
        &s.url("/api/v1/admin/accounts"),
        t,
        &json!({"name": "Beta Corp", "email": "Owner@Beta.example", "credits": 10}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let acc = v["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        v["data"],
        json!({"id": acc, "name": "Beta Corp", "email": "owner@beta.example",
               "balance": 10, "held": 0, "available": 10})
    );
    // a taken name, a bad email, an unknown field: refused, nothing created
    for (body, field) in [
        (json!({"name": "Beta Corp"}), "already exists"),
        (json!({"name": "Gamma", "email": "not-an-address"}), "email"),
        (json!({"name": "Gamma", "credit": 1}), "credit"),
        (json!({"name": "Gamma", "credits": 1.234}), "credits"),
    ] {
        let (_, _, v) = post_json(&s.url("/api/v1/admin/accounts"), t, &body).await;
        assert_eq!(v["code"], 422, "{body}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let (_, _, v) = get_json(&s.url("/api/v1/admin/accounts?q=gamma"), t).await;
    assert_eq!(v["data"], json!([]), "{v}");
    // search by part of the email, any case; a LIKE wildcard matches itself
    let (_, _, v) = get_json(&s.url("/api/v1/admin/accounts?q=BETA.EX"), t).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"][0]["id"], acc.as_str());
    let (_, _, v) = get_json(&s.url("/api/v1/admin/accounts?q=%25"), t).await;
    assert_eq!(v["data"], json!([]), "{v}");

    let key = s.admin(&["key", "create", "--account", &acc, "--name", "k1"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, v) = get_json(&s.url(&format!("/api/v1/admin/accounts/{acc}")), t).await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["data"]["account"]["available"], 10);
    let keys = v["data"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], "k1");
    assert_eq!(keys[0]["prefix"].as_str().unwrap(), &key[..12]);
    assert!(!v.to_string().contains(&key), "a key leaked: {v}");

    let credits = s.url(&format!("/api/v1/admin/accounts/{acc}/credits"));
    let grant =
        json!({"op": "grant", "amount": 5.25, "reason": "goodwill", "idempotencyKey": "g-1"});
    let (_, _, v) = post_json(&credits, t, &grant).await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["data"]["available"], json!(15.25));
    assert_eq!(v["data"]["replayed"], false);
    let entry = v["data"]["entryId"].clone();
    // the same key again: nothing changes, the first result answers
    let (_, _, v) = post_json(&credits, t, &grant).await;
    assert_eq!(v["data"]["available"], json!(15.25), "{v}");
    assert_eq!(v["data"]["replayed"], true);
    assert_eq!(v["data"]["entryId"], entry);
    // the same key for another change: refused
    let (_, _, v) = post_json(
        &credits,
        t,
        &json!({"op": "grant", "amount": 6, "reason": "goodwill", "idempotencyKey": "g-1"}),
    )
    .await;
    assert_eq!(v["code"], 422, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("idempotencyKey"), "{v}");
    // beyond the available balance: 402, nothing taken
    let (_, _, v) = post_json(
        &credits,
        t,
        &json!({"op": "deduct", "amount": 100, "reason": "x", "idempotencyKey": "d-1"}),
    )
    .await;
    assert_eq!(v["code"], 402, "{v}");
    for (body, field) in [
        (
            json!({"op": "grant", "amount": 0, "reason": "x", "idempotencyKey": "z"}),
            "amount",
        ),
        (
            json!({"op": "grant", "amount": -1, "reason": "x", "idempotencyKey": "z"}),
            "amount",
        ),
        (
            json!({"op": "grant", "amount": 1.001, "reason": "x", "idempotencyKey": "z"}),
            "amount",
        ),
        (
            json!({"op": "steal", "amount": 1, "reason": "x", "idempotencyKey": "z"}),
            "op",
        ),
        (
            json!({"op": "grant", "amount": 1, "reason": " ", "idempotencyKey": "z"}),
            "reason",
        ),
        (
            json!({"op": "grant", "amount": 1, "reason": "x"}),
            "idempotencyKey",
        ),
    ] {
        let (_, _, v) = post_json(&credits, t, &body).await;
        assert_eq!(v["code"], 422, "{body}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let (_, _, v) = post_json(
        &credits,
        t,
        &json!({"op": "deduct", "amount": 3, "reason": "refund", "idempotencyKey": "d-2"}),
    )
    .await;
    assert_eq!(v["data"]["available"], json!(12.25), "{v}");
    let (_, _, v) = post_json(
        &s.url("/api/v1/admin/accounts/acc_nope/credits"),
        t,
        &json!({"op": "grant", "amount": 1, "reason": "x", "idempotencyKey": "n"}),
    )
    .await;
    assert_eq!(v["code"], 404, "{v}");
    // what the account itself sees, and its ledger: one grant of 5.25, one deduction
    wait_for_credit(&s, &key, &json!(12.25)).await;
    let history = s.admin(&["credits", "history", "--account", &acc]);
    let reasons: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "goodwill").count(),
        1,
        "{history}"
    );
    assert_eq!(reasons.iter().filter(|r| **r == "refund").count(), 1);

    // an invite for the account's own address, then one for an operator
    let (_, _, v) = post_json(&s.url("/api/v1/admin/invites"), t, &json!({"account": acc})).await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["data"]["email"], "owner@beta.example");
    assert_eq!(v["data"]["role"], "account");
    let url = v["data"]["url"].as_str().unwrap().to_string();
    assert!(url.contains("/console/invite/"), "{url}");
    let path = &url[url.find("/console/").unwrap()..];
    let page = client().get(s.url(path)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Set password"));
    for (body, code) in [
        (json!({"operator": true}), 422),
        (
            json!({"operator": true, "account": acc, "email": "a@b.example"}),
            422,
        ),
        (json!({}), 422),
        (json!({"account": "nobody"}), 404),
    ] {
        let (_, _, v) = post_json(&s.url("/api/v1/admin/invites"), t, &body).await;
        assert_eq!(v["code"], code, "{body}: {v}");
    }
    let (_, _, v) = post_json(
        &s.url("/api/v1/admin/invites"),
        t,
        &json!({"operator": true, "email": "ops@example.com"}),
    )
    .await;
    assert_eq!(v["data"]["role"], "operator", "{v}");
    assert!(!s.log().contains(&token), "the token reached the log");
}

/// Polls until the credit endpoint answers `code` for `key`.
async fn credit_code_becomes(s: &Server, key: &str, code: i64) {
    let url = s.url("/api/v1/chat/credit");
    let seen = eventually(Duration::from_secs(5), || async {
        get_json(&url, Some(key)).await.2["code"] == code
    })
    .await;
    assert!(
        seen.is_some(),
        "the credit endpoint never answered code {code}"
    );
}

#[tokio::test]
async fn switches_signing_key_and_health_through_the_operator_api() {
    let s = Server::start(Opts::default());
    let (_, key) = s.account_with_key("sw", "3");
    let (_, token) = operator_token(&s, "ops");
    let t = Some(token.as_str());
    let settings = s.url("/api/v1/admin/settings");
    let (_, _, v) = get_json(&settings, t).await;
    assert_eq!(v["data"]["maintenance"], false, "{v}");
    let features = v["data"]["features"].as_array().unwrap();
    assert!(features.iter().all(|f| f["enabled"] == true), "{v}");
    assert!(features.iter().any(|f| f["name"] == "credits"));
    let key_before = v["data"]["signingKey"].clone();

    // maintenance on: the API answers 455, the operator API still answers
    let (_, _, v) = post_json(&settings, t, &json!({"maintenance": true})).await;
    assert_eq!(v["data"]["maintenance"], true, "{v}");
    credit_code_becomes(&s, &key, 455).await;
    let (_, _, v) = get_json(&settings, t).await;
    assert_eq!(v["code"], 200, "{v}");
    // an unknown feature next to real changes: refused, nothing changed
    let (_, _, v) = post_json(
        &settings,
        t,
        &json!({"maintenance": false, "features": {"credits": false, "teleport": false}}),
    )
    .await;
    assert_eq!(v["code"], 422, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("teleport"), "{v}");
    let (_, _, v) = get_json(&settings, t).await;
    assert_eq!(v["data"]["maintenance"], true, "{v}");
    // off again, and the credits feature off: 505
    let (_, _, v) = post_json(
        &settings,
        t,
        &json!({"maintenance": false, "features": {"credits": false}}),
    )
    .await;
    assert_eq!(v["data"]["maintenance"], false, "{v}");
    let off: Vec<&Value> = v["data"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["enabled"] == false)
        .collect();
    assert_eq!(off.len(), 1, "{v}");
    assert_eq!(off[0]["name"], "credits");
    credit_code_becomes(&s, &key, 505).await;
    let (_, _, v) = post_json(&settings, t, &json!({"features": {"credits": true}})).await;
    assert_eq!(v["code"], 200, "{v}");
    credit_code_becomes(&s, &key, 200).await;

    // rotation: a new active key, the old one retired
    let (_, _, v) = post_json(&s.url("/api/v1/admin/signing-key/rotate"), t, &json!({})).await;
    assert_eq!(v["code"], 200, "{v}");
    let new_key = v["data"]["signingKey"].clone();
    assert_ne!(new_key, key_before);
    if key_before.is_string() {
        assert_eq!(v["data"]["retired"], json!([key_before]), "{v}");
    }
    let (_, _, v) = get_json(&settings, t).await;
    assert_eq!(v["data"]["signingKey"], new_key);

    let (_, _, v) = get_json(&s.url("/api/v1/admin/health"), t).await;
    assert_eq!(v["code"], 200, "{v}");
    let h = &v["data"];
    assert_eq!(h["ready"], true, "{h}");
    assert_eq!(h["database"]["reachable"], true);
    let backend = if crate::harness::backend_is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(h["database"]["describe"], backend, "{h}");
    assert_eq!(h["backlog"]["openTasks"], 0, "{h}");
    assert_eq!(h["backlog"]["pendingDeliveries"], 0, "{h}");
    assert!(h["rates"]["windowSecs"].as_f64().is_some(), "{h}");

    // documented, with the operator scheme
    let (_, _, doc) = get_json(&s.url("/openapi.json"), None).await;
    for p in [
        "/api/v1/admin/accounts",
        "/api/v1/admin/accounts/{id}",
        "/api/v1/admin/accounts/{id}/credits",
        "/api/v1/admin/invites",
        "/api/v1/admin/settings",
        "/api/v1/admin/signing-key/rotate",
        "/api/v1/admin/health",
    ] {
        let ops = doc["paths"][p].as_object().unwrap_or_else(|| panic!("{p}"));
        for (method, op) in ops {
            assert_eq!(op["security"], json!([{"operator": []}]), "{method} {p}");
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["operator"]["scheme"],
        "bearer"
    );
}
