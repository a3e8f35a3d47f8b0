//! Issue 16: key management for an account's own keys — the JSON endpoints
//! (`/api/v1/account/keys…`, management scope only), `kie keys …`, and the console's
//! API keys page (caps, allowlist, scope), through real `kie serve` processes.

use crate::console::holder;
use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const WORKER_TOKEN: &str = "wt-keys-5d1e";

/// `ext/echo` (price 3) stays pending (nobody works on it), so every creation holds 3
/// credits against the key's caps. No creation rate limit; a short auth cache so that
/// revocations apply quickly.
fn opts() -> Opts {
    Opts::default()
        .args(&["--worker-token", WORKER_TOKEN])
        .config(
            "task_timeout = \"5m\"\ntask_rate = 0\nauth_cache_ttl = \"200ms\"\n\
             [models.\"ext/echo\"]\nprice = \"3\"\nkind = \"external\"\n",
        )
}

fn task() -> Value {
    json!({"model": "ext/echo", "input": {"text": "hi"}})
}

/// A key of `acc` made by `kie admin key create` (with `extra` flags): (id, key).
fn admin_key(s: &Server, acc: &str, extra: &[&str]) -> (String, String) {
    let mut a = vec!["key", "create", "--account", acc];
    a.extend_from_slice(extra);
    let k = s.admin(&a);
    (
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    )
}

/// Every management request, for key id `id`.
fn management_calls(id: &str) -> Vec<(&'static str, String, Value)> {
    vec![
        ("GET", "/api/v1/account/keys".into(), Value::Null),
        (
            "POST",
            "/api/v1/account/keys".into(),
            json!({"name": "x", "manage": true}),
        ),
        (
            "POST",
            format!("/api/v1/account/keys/{id}/revoke"),
            json!({}),
        ),
        (
            "POST",
            format!("/api/v1/account/keys/{id}/roll"),
            json!({"grace": "1h"}),
        ),
        (
            "POST",
            format!("/api/v1/account/keys/{id}/update"),
            json!({"caps": {"total": 1}, "manage": true}),
        ),
    ]
}

async fn call(s: &Server, key: &str, method: &str, path: &str, body: &Value) -> Value {
    if method == "GET" {
        get_json(&s.url(path), Some(key)).await.2
    } else {
        post_json(&s.url(path), Some(key), body).await.2
    }
}

fn key_rows(s: &Server) -> Vec<Vec<String>> {
    s.sql(
        "SELECT id, COALESCE(CAST(revoked_at AS TEXT), '-'), COALESCE(CAST(expires_at AS TEXT), '-'), \
         COALESCE(CAST(cap_total AS TEXT), '-'), CAST(manage AS TEXT) FROM api_keys ORDER BY id",
    )
}

#[tokio::test]
async fn a_key_without_the_management_scope_gets_401_everywhere_and_changes_nothing() {
    let s = Server::start(opts());
    let acc = s.admin(&["account", "create", "--name", "plain", "--credits", "10"]);
    let acc = acc["id"].as_str().unwrap();
    let (id, key) = admin_key(&s, acc, &[]);
    let before = key_rows(&s);
    for (method, path, body) in management_calls(&id) {
        let v = call(&s, &key, method, &path, &body).await;
        assert_eq!(v["code"], 401, "{method} {path}: {v}");
        assert!(
            v["msg"].as_str().unwrap().contains("management key"),
            "{method} {path}: {v}"
        );
        assert_eq!(v["data"], Value::Null);
    }
    assert_eq!(key_rows(&s), before);
    // the key itself still works where no scope is needed
    let (_, _, v) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
    assert_eq!(v["code"], 200, "{v}");
    // and no key at all is the usual 401
    let (_, _, v) = get_json(&s.url("/api/v1/account/keys"), None).await;
    assert_eq!(v["code"], 401);
}

#[tokio::test]
async fn a_management_key_creates_revokes_rolls_and_updates_its_accounts_keys() {
    let s = Server::start(opts());
    let acc = s.admin(&["account", "create", "--name", "mgr", "--credits", "100"]);
    let acc = acc["id"].as_str().unwrap().to_string();
    let (mgr_id, mgr) = admin_key(&s, &acc, &["--manage"]);

    // create: the key is returned once and works
    let (_, _, v) = post_json(
        &s.url("/api/v1/account/keys"),
        Some(&mgr),
        &json!({"name": "ci", "expires": "90d", "caps": {"daily": 20}, "allowIps": ["127.0.0.1/32"]}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let new = &v["data"];
    let new_key = new["key"].as_str().unwrap().to_string();
    let new_id = new["id"].as_str().unwrap().to_string();
    assert_eq!(new["account"], json!(acc));
    assert_eq!(new["name"], "ci");
    assert_eq!(
        new["caps"],
        json!({"hourly": null, "daily": 20, "total": null})
    );
    assert_eq!(new["allowIps"], json!(["127.0.0.1/32"]));
    assert_eq!(new["manage"], false);
    let expires = new["expiresAt"].as_i64().unwrap();
    let in_90d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 90 * 86_400_000;
    assert!((expires - in_90d).abs() < 60_000, "{expires} vs {in_90d}");
    let (_, _, c) = get_json(&s.url("/api/v1/chat/credit"), Some(&new_key)).await;
    assert_eq!(c, json!({"code": 200, "msg": "success", "data": 100}));

    // list: caps, usage, allowlist, scope; never a key
    let (_, _, l) = get_json(&s.url("/api/v1/account/keys"), Some(&mgr)).await;
    assert_eq!(l["code"], 200, "{l}");
    let list = l["data"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(!l.to_string().contains(&new_key) && !l.to_string().contains(&mgr));
    let listed = list.iter().find(|k| k["id"] == json!(new_id)).unwrap();
    assert_eq!(listed["status"], "active");
    assert_eq!(listed["caps"]["daily"], 20);
    assert_eq!(
        listed["usage"],
        json!({"hourly": 0, "daily": 0, "total": 0})
    );
    assert_eq!(listed["allowIps"], json!(["127.0.0.1/32"]));
    let me = list.iter().find(|k| k["id"] == json!(mgr_id)).unwrap();
    assert_eq!(me["manage"], true);

    // the new key (no scope) cannot manage
    let (_, _, v) = get_json(&s.url("/api/v1/account/keys"), Some(&new_key)).await;
    assert_eq!(v["code"], 401);

    // update caps: then a createTask beyond the cap gets 433
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/account/keys/{new_id}/update")),
        Some(&mgr),
        &json!({"caps": {"total": 5, "daily": null}}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(
        v["data"]["caps"],
        json!({"hourly": null, "daily": null, "total": 5})
    );
    assert_eq!(v["data"]["allowIps"], json!(["127.0.0.1/32"]), "unchanged");
    let (_, _, t) = post_json(&s.url("/api/v1/jobs/createTask"), Some(&new_key), &task()).await;
    assert_eq!(t["code"], 200, "{t}");
    let (_, _, t) = post_json(&s.url("/api/v1/jobs/createTask"), Some(&new_key), &task()).await;
    assert_eq!(
        t,
        json!({"code": 433, "msg": "Sub-key usage exceeds limit", "data": null})
    );
    let (_, _, l) = get_json(&s.url("/api/v1/account/keys"), Some(&mgr)).await;
    let listed = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(new_id))
        .unwrap()
        .clone();
    assert_eq!(listed["usage"]["total"], 3, "{listed}");

    // roll with a grace period: both work, the new one keeps caps and allowlist
    let (_, _, r) = post_json(
        &s.url(&format!("/api/v1/account/keys/{new_id}/roll")),
        Some(&mgr),
        &json!({"grace": "1h"}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let rolled = r["data"]["key"].as_str().unwrap().to_string();
    let rolled_id = r["data"]["id"].as_str().unwrap().to_string();
    assert_ne!(rolled, new_key);
    assert_eq!(r["data"]["caps"]["total"], 5);
    assert_eq!(r["data"]["allowIps"], json!(["127.0.0.1/32"]));
    for k in [&new_key, &rolled] {
        let (_, _, c) = get_json(&s.url("/api/v1/chat/credit"), Some(k)).await;
        assert_eq!(c["code"], 200, "{c}");
    }
    let old_expiry = s.sql(&format!(
        "SELECT CAST(expires_at AS TEXT) FROM api_keys WHERE id = '{new_id}'"
    ));
    let left = old_expiry[0][0].parse::<i64>().unwrap() - in_90d + 90 * 86_400_000;
    assert!((3_500_000..=3_700_000).contains(&left), "{left}");

    // revoke: then 401
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/account/keys/{rolled_id}/revoke")),
        Some(&mgr),
        &json!({}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["data"]["status"], "revoked");
    let refused = eventually(Duration::from_secs(5), || async {
        get_json(&s.url("/api/v1/chat/credit"), Some(&rolled))
            .await
            .2["code"]
            == 401
    })
    .await;
    assert!(refused.is_some(), "the revoked key still works");
    // a revoked key cannot be rolled
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/account/keys/{rolled_id}/roll")),
        Some(&mgr),
        &json!({}),
    )
    .await;
    assert_eq!(v["code"], 422, "{v}");

    // another account's key: 404 everywhere, nothing changes
    let other = s.admin(&["account", "create", "--name", "other", "--credits", "1"]);
    let (other_id, other_key) = admin_key(&s, other["id"].as_str().unwrap(), &[]);
    let before = key_rows(&s);
    for (method, path, body) in management_calls(&other_id).into_iter().skip(2) {
        let v = call(&s, &mgr, method, &path, &body).await;
        assert_eq!(v["code"], 404, "{method} {path}: {v}");
    }
    assert_eq!(key_rows(&s), before);
    let (_, _, l) = get_json(&s.url("/api/v1/account/keys"), Some(&mgr)).await;
    assert!(!l.to_string().contains(&other_id), "{l}");
    let (_, _, c) = get_json(&s.url("/api/v1/chat/credit"), Some(&other_key)).await;
    assert_eq!(c["code"], 200);

    // validation errors name the field, and change nothing
    let bad: &[(Value, &str)] = &[
        (json!({"allowIps": ["not-an-ip"]}), "allowIps"),
        (json!({"caps": {"hourly": -1}}), "caps.hourly"),
        (json!({"name": "n".repeat(101)}), "name"),
        (json!({"expires": "soon"}), "expires"),
        (json!({"expiresAt": 1000}), "expiresAt"),
        (json!({"manage": "yes"}), "manage"),
        (json!({"caps": {"weekly": 1}}), "caps"),
    ];
    for (body, field) in bad {
        let (_, _, v) = post_json(&s.url("/api/v1/account/keys"), Some(&mgr), body).await;
        assert_eq!(v["code"], 422, "{body}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/account/keys/{mgr_id}/update")),
        Some(&mgr),
        &json!({"caps": {"total": -2}}),
    )
    .await;
    assert_eq!(v["code"], 422, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("caps.total"), "{v}");
    let (_, _, v) = post_json(
        &s.url(&format!("/api/v1/account/keys/{mgr_id}/update")),
        Some(&mgr),
        &json!({}),
    )
    .await;
    assert_eq!(v["code"], 422, "{v}");
    assert_eq!(key_rows(&s), before);

    // all in /openapi.json
    let (_, _, doc) = get_json(&s.url("/openapi.json"), None).await;
    for p in [
        "/api/v1/account/keys",
        "/api/v1/account/keys/{id}/revoke",
        "/api/v1/account/keys/{id}/roll",
        "/api/v1/account/keys/{id}/update",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} not documented");
    }
    assert!(doc["paths"]["/api/v1/account/keys"]["post"].is_object());
}

/// Runs `kie ARGS` (a client command) against `s` with `key`: (success, stdout, stderr).
fn kie(s: &Server, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(KIE)
        .args(args)
        .env("KIE_API_KEY", key)
        .env("KIE_BASE_URL", &s.base)
        .env("KIE_RETRY_BASE", "10ms")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn kie_json(s: &Server, key: &str, args: &[&str]) -> Value {
    let (ok, out, err) = kie(s, key, args);
    assert!(ok, "kie {args:?}: {err}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn kie_keys_commands_and_their_json() {
    let s = Server::start(opts());
    let acc = s.admin(&["account", "create", "--name", "cli", "--credits", "50"]);
    let acc = acc["id"].as_str().unwrap().to_string();
    let (plain_id, plain) = admin_key(&s, &acc, &[]);
    let (_, mgr) = admin_key(&s, &acc, &["--manage"]);

    // without the scope: an error naming the management key, exit status 1
    let (ok, out, err) = kie(&s, &plain, &["keys", "list", "--json"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("management key"), "{err}");

    let k = kie_json(
        &s,
        &mgr,
        &[
            "keys",
            "create",
            "--name",
            "bot",
            "--expires",
            "30d",
            "--cap-hourly",
            "4",
            "--cap-total",
            "9.5",
            "--allow-ip",
            "127.0.0.1",
            "--json",
        ],
    );
    let mut keys: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "account",
            "allowIps",
            "caps",
            "expiresAt",
            "id",
            "key",
            "manage",
            "name",
            "prefix"
        ]
    );
    assert_eq!(k["caps"], json!({"hourly": 4, "daily": null, "total": 9.5}));
    assert_eq!(k["allowIps"], json!(["127.0.0.1/32"]));
    assert_eq!(k["manage"], false);
    let id = k["id"].as_str().unwrap().to_string();
    let key = k["key"].as_str().unwrap().to_string();
    let (_, _, c) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
    assert_eq!(c["code"], 200);

    let m = kie_json(&s, &mgr, &["keys", "create", "--manage", "--json"]);
    assert_eq!(m["manage"], true);
    assert_eq!(m["name"], Value::Null);

    let list = kie_json(&s, &mgr, &["keys", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 4);
    let one = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == json!(id))
        .unwrap();
    let mut fields: Vec<&str> = one
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "account",
            "allowIps",
            "caps",
            "createdAt",
            "expiresAt",
            "id",
            "lastUsedAt",
            "manage",
            "name",
            "prefix",
            "revokedAt",
            "status",
            "usage"
        ]
    );
    assert!(!list.to_string().contains(&key));

    let u = kie_json(
        &s,
        &mgr,
        &[
            "keys",
            "update",
            &id,
            "--cap-hourly",
            "none",
            "--cap-daily",
            "2",
            "--clear-allow-ip",
            "--json",
        ],
    );
    assert_eq!(u["caps"], json!({"hourly": null, "daily": 2, "total": 9.5}));
    assert_eq!(u["allowIps"], json!([]));
    let (ok, _, err) = kie(&s, &mgr, &["keys", "update", &id]);
    assert!(!ok && err.contains("nothing to change"), "{err}");
    let (ok, _, err) = kie(&s, &mgr, &["keys", "update", &id, "--allow-ip", "nope"]);
    assert!(!ok && err.contains("allowIps"), "{err}");

    let r = kie_json(&s, &mgr, &["keys", "roll", &id, "--grace", "2h", "--json"]);
    assert_eq!(r["caps"]["daily"], 2);
    assert_eq!(r["name"], "bot");
    let rolled_id = r["id"].as_str().unwrap().to_string();
    assert_ne!(rolled_id, id);

    let v = kie_json(&s, &mgr, &["keys", "revoke", &rolled_id, "--json"]);
    assert_eq!(v["status"], "revoked");
    assert!(v["revokedAt"].is_i64());

    // another account's key: not found
    let other = s.admin(&["account", "create", "--name", "cli2"]);
    let (other_id, _) = admin_key(&s, other["id"].as_str().unwrap(), &[]);
    let (ok, _, err) = kie(&s, &mgr, &["keys", "revoke", &other_id, "--json"]);
    assert!(!ok, "revoked another account's key");
    assert!(
        err.contains("404") || err.to_lowercase().contains("not found"),
        "{err}"
    );

    // plain text output
    let (ok, out, _) = kie(&s, &mgr, &["keys", "list"]);
    assert!(ok);
    assert!(
        out.contains(&plain_id) && out.contains("[manage]") && out.contains("revoked"),
        "{out}"
    );
}

/// The value of the hidden `csrf` field of `body`.
fn csrf_of(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a CSRF field");
    let rest = &body[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test]
async fn console_keys_page_shows_and_edits_caps_allowlist_and_scope() {
    let s = Server::start(opts());
    let (mut v, acc) = holder(&s, "pat", "40").await;
    let (id, key) = admin_key(
        &s,
        &acc,
        &["--cap-daily", "7", "--allow-ip", "203.0.113.0/24"],
    );
    let page = v.get("/console/keys").await;
    assert_eq!(page.status, 200);
    for text in [
        "Key name",
        "Create key",
        "Revoke",
        "Management key",
        "203.0.113.0/24",
        "0 / 7",
        "Allowed IPs",
        "Caps",
    ] {
        assert!(page.body.contains(text), "{text}: {}", page.body);
    }
    let csrf = csrf_of(&page.body);
    let update = format!("/console/keys/{id}/update");
    let caps = |s: &Server| {
        s.sql(&format!(
            "SELECT COALESCE(CAST(cap_hourly AS TEXT), '-'), COALESCE(CAST(cap_daily AS TEXT), '-'), \
             COALESCE(CAST(cap_total AS TEXT), '-'), COALESCE(allow_ips, '-') FROM api_keys WHERE id = '{id}'"
        ))
    };
    let before = caps(&s);
    // without the token (or with a wrong one) nothing changes
    let form = [
        ("cap_hourly", "1"),
        ("cap_daily", ""),
        ("cap_total", "12.5"),
        ("allow_ips", "198.51.100.7 2001:db8::/32"),
    ];
    let p = v.post(&update, &form).await;
    assert_eq!(p.status, 403, "{}", p.body);
    let mut with_bad = form.to_vec();
    with_bad.push(("csrf", "forged"));
    let p = v.post(&update, &with_bad).await;
    assert_eq!(p.status, 403);
    assert_eq!(caps(&s), before);
    // with it: the caps and the allowlist change
    let mut with = form.to_vec();
    with.push(("csrf", &csrf));
    let p = v.post(&update, &with).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location(), "/console/keys");
    let after = caps(&s);
    assert_eq!(after[0][0], "100");
    assert_eq!(after[0][1], "-");
    assert_eq!(after[0][2], "1250");
    assert!(
        after[0][3].contains("198.51.100.7/32") && after[0][3].contains("2001:db8::/32"),
        "{after:?}"
    );
    let page = v.get("/console/keys").await;
    assert!(page.body.contains("198.51.100.7/32"), "{}", page.body);
    // a bad value: an error naming the field, nothing changes
    let mut bad = vec![
        ("csrf", csrf.as_str()),
        ("cap_daily", "-3"),
        ("allow_ips", ""),
    ];
    bad.push(("cap_total", "12.5"));
    let p = v.post(&update, &bad).await;
    assert_eq!(p.status, 422, "{}", p.body);
    assert!(p.body.contains("daily"), "{}", p.body);
    let p = v
        .post(&update, &[("csrf", &csrf), ("allow_ips", "not-an-address")])
        .await;
    assert_eq!(p.status, 422);
    assert_eq!(caps(&s), after);
    // another account's key: not found, unchanged
    let other = s.admin(&["account", "create", "--name", "zed"]);
    let (other_id, _) = admin_key(&s, other["id"].as_str().unwrap(), &["--cap-total", "3"]);
    let p = v
        .post(
            &format!("/console/keys/{other_id}/update"),
            &[("csrf", &csrf), ("cap_total", "99")],
        )
        .await;
    assert_eq!(p.status, 404);
    assert_eq!(
        s.sql(&format!(
            "SELECT CAST(cap_total AS TEXT) FROM api_keys WHERE id = '{other_id}'"
        ))[0][0],
        "300"
    );

    // the Management key checkbox
    let p = v
        .post(
            "/console/keys",
            &[("csrf", &csrf), ("name", "admin bot"), ("manage", "on")],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let rows = s.sql("SELECT CAST(manage AS TEXT) FROM api_keys WHERE name = 'admin bot'");
    assert!(rows[0][0] == "1" || rows[0][0] == "true", "{rows:?}");
    assert!(p.body.contains("management"), "{}", p.body);
    let p = v
        .post("/console/keys", &[("csrf", &csrf), ("name", "task bot")])
        .await;
    assert_eq!(p.status, 200);
    let rows = s.sql("SELECT CAST(manage AS TEXT) FROM api_keys WHERE name = 'task bot'");
    assert!(rows[0][0] == "0" || rows[0][0] == "false", "{rows:?}");

    // caps set on the console are enforced: any address again, a total cap of one task
    let p = v
        .post(
            &update,
            &[
                ("csrf", &csrf),
                ("cap_hourly", ""),
                ("cap_daily", ""),
                ("cap_total", "3"),
                ("allow_ips", ""),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let allowed = eventually(Duration::from_secs(5), || async {
        get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["code"] == 200
    })
    .await;
    assert!(allowed.is_some(), "the cleared allowlist still refuses");
    let (_, _, t) = post_json(&s.url("/api/v1/jobs/createTask"), Some(&key), &task()).await;
    assert_eq!(t["code"], 200, "{t}");
    let (_, _, t) = post_json(&s.url("/api/v1/jobs/createTask"), Some(&key), &task()).await;
    assert_eq!(t["code"], 433, "{t}");
    let page = v.get("/console/keys").await;
    assert!(page.body.contains("total 3 / 3"), "{}", page.body);
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `YYYY-MM-DD HH:MM:SS UTC`, as the console shows times.
fn console_time(ms: i64) -> String {
    let t =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
            .to_string();
    format!("{} {} UTC", &t[..10], &t[11..19])
}

/// The text of the `last-used` cell in key `id`'s row of the console's keys page.
fn last_used_cell(body: &str, id: &str) -> String {
    let row = &body[body
        .find(&format!("data-key=\"{id}\""))
        .expect("the key's row")..];
    let at = row.find("class=\"last-used\">").expect("a last-used cell");
    let cell = &row[at + "class=\"last-used\">".len()..];
    cell[..cell.find('<').unwrap()].to_string()
}

/// "Last used": the first use of a key in each minute is noted and written within a
/// few seconds (no write per request); the JSON listing, `kie keys list` and the
/// console's keys table show it.
#[tokio::test]
async fn last_used_is_recorded_once_a_minute_and_listed_everywhere() {
    let s = Server::start(opts());
    let (mut v, acc) = holder(&s, "lu", "10").await;
    let (id, key) = admin_key(&s, &acc, &[]);
    let (idle_id, _) = admin_key(&s, &acc, &["--name", "idle"]);
    let (mgr_id, mgr) = admin_key(&s, &acc, &["--manage"]);
    let keys_url = s.url("/api/v1/account/keys");
    let last_used = |list: &Value, id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()["lastUsedAt"]
            .clone()
    };
    let (_, _, l) = get_json(&keys_url, Some(&mgr)).await;
    assert_eq!(last_used(&l["data"], &id), Value::Null, "{l}");
    let page = v.get("/console/keys").await;
    assert!(page.body.contains("Last used"), "{}", page.body);
    assert_eq!(last_used_cell(&page.body, &id), "never");

    let before = epoch_ms();
    let (_, _, c) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
    assert_eq!(c["code"], 200, "{c}");
    let first_done = epoch_ms();
    for _ in 0..30 {
        let (_, _, c) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
        assert_eq!(c["code"], 200);
    }
    // written within a few seconds (polled)
    let seen = eventually(Duration::from_secs(20), || async {
        let (_, _, l) = get_json(&keys_url, Some(&mgr)).await;
        !last_used(&l["data"], &id).is_null()
    })
    .await;
    assert!(seen.is_some(), "lastUsedAt never appeared");
    let list = get_json(&keys_url, Some(&mgr)).await.2["data"].clone();
    // the first use of the minute is the one recorded (later uses within the minute
    // are not written)
    let t = last_used(&list, &id).as_i64().unwrap();
    assert!(
        t >= before && t <= first_done,
        "{t} not in [{before}, {first_done}]"
    );
    assert_eq!(last_used(&list, &idle_id), Value::Null);
    // the management key's own use (the listing) is recorded too, eventually
    let mgr_seen = eventually(Duration::from_secs(20), || async {
        let (_, _, l) = get_json(&keys_url, Some(&mgr)).await;
        !last_used(&l["data"], &mgr_id).is_null()
    })
    .await;
    assert!(mgr_seen.is_some());
    // stored once: the column holds the first use
    let rows = s.sql(&format!(
        "SELECT CAST(last_used_at AS TEXT) FROM api_keys WHERE id = '{id}'"
    ));
    assert_eq!(rows[0][0], t.to_string());

    // kie keys list: --json and the table
    let j = kie_json(&s, &mgr, &["keys", "list", "--json"]);
    assert_eq!(last_used(&j, &id), json!(t));
    assert_eq!(last_used(&j, &idle_id), Value::Null);
    let (ok, out, _) = kie(&s, &mgr, &["keys", "list"]);
    assert!(ok);
    assert!(out.lines().next().unwrap().contains("LAST USED"), "{out}");
    let iso =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(t as u64))
            .to_string();
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.contains(&iso), "{row}");
    let row = out.lines().find(|l| l.starts_with(&idle_id)).unwrap();
    assert!(row.contains("never"), "{row}");
    // the console's keys table
    let page = v.get("/console/keys").await;
    assert_eq!(last_used_cell(&page.body, &id), console_time(t));
    assert_eq!(last_used_cell(&page.body, &idle_id), "never");
}

/// The console's create form sets an expiry; the edit form gives and takes the
/// management scope (which the API then enforces).
#[tokio::test]
async fn console_creates_keys_with_an_expiry_and_changes_their_scope() {
    let s = Server::start(opts());
    let (mut v, acc) = holder(&s, "exp", "10").await;
    let page = v.get("/console/keys").await;
    assert!(page.body.contains("id=\"key-expires\""), "{}", page.body);
    let csrf = csrf_of(&page.body);
    let before = epoch_ms();
    let p = v
        .post(
            "/console/keys",
            &[("csrf", &csrf), ("name", "month"), ("expires", "30d")],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    let after = epoch_ms();
    let rows = s.sql("SELECT id, CAST(expires_at AS TEXT) FROM api_keys WHERE name = 'month'");
    let exp: i64 = rows[0][1].parse().unwrap();
    let month = 30 * 86_400_000;
    assert!(exp >= before + month && exp <= after + month, "{exp}");
    let month_id = rows[0][0].clone();
    // the page shows it
    let page = v.get("/console/keys").await;
    assert!(page.body.contains(&console_time(exp)), "{}", page.body);
    // no expiry by default; an unknown choice is refused, nothing created
    let p = v
        .post("/console/keys", &[("csrf", &csrf), ("name", "forever")])
        .await;
    assert_eq!(p.status, 200);
    let rows = s.sql("SELECT COUNT(*) FROM api_keys WHERE name = 'forever' AND expires_at IS NULL");
    assert_eq!(rows[0][0], "1");
    let p = v
        .post(
            "/console/keys",
            &[("csrf", &csrf), ("name", "odd"), ("expires", "2d")],
        )
        .await;
    assert_eq!(p.status, 422, "{}", p.body);
    assert!(s
        .sql("SELECT id FROM api_keys WHERE name = 'odd'")
        .is_empty());

    // scope: a task key gets management through the edit form, then loses it
    let (id, key) = admin_key(&s, &acc, &[]);
    let keys_url = s.url("/api/v1/account/keys");
    let (_, _, l) = get_json(&keys_url, Some(&key)).await;
    assert_eq!(l["code"], 401);
    let update = format!("/console/keys/{id}/update");
    // without the token nothing changes
    let p = v
        .post(&update, &[("set_manage", "1"), ("manage", "on")])
        .await;
    assert_eq!(p.status, 403);
    let scope = |s: &Server| {
        let r = s.sql(&format!(
            "SELECT CAST(manage AS TEXT) FROM api_keys WHERE id = '{id}'"
        ));
        r[0][0] == "1" || r[0][0] == "true"
    };
    assert!(!scope(&s));
    let p = v
        .post(
            &update,
            &[("csrf", &csrf), ("set_manage", "1"), ("manage", "on")],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(scope(&s));
    let ok = eventually(Duration::from_secs(5), || async {
        get_json(&keys_url, Some(&key)).await.2["code"] == 200
    })
    .await;
    assert!(ok.is_some(), "the management scope did not apply");
    let page = v.get("/console/keys").await;
    assert!(
        page.body.contains("aria-label=\"Management scope of "),
        "the scope checkbox is labelled"
    );
    // the caps-only form (no set_manage) leaves the scope alone
    let p = v
        .post(&update, &[("csrf", &csrf), ("cap_total", "5")])
        .await;
    assert_eq!(p.status, 303);
    assert!(scope(&s));
    // unticked: taken away
    let p = v
        .post(&update, &[("csrf", &csrf), ("set_manage", "1")])
        .await;
    assert_eq!(p.status, 303);
    assert!(!scope(&s));
    let ok = eventually(Duration::from_secs(5), || async {
        get_json(&keys_url, Some(&key)).await.2["code"] == 401
    })
    .await;
    assert!(ok.is_some(), "the scope was not taken away");
    let _ = month_id;
}
