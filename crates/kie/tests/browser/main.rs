//! Browser tests of the console (issue 16): a real `kie serve` (SQLite, or PostgreSQL
//! with `KIE_TEST_BACKEND=postgres`) driven through Debian's headless Chromium by
//! chromedriver, finding everything by its accessible name. They write a 1280×800
//! screenshot of every page to `target/screenshots/` (`KIE_UPDATE_SCREENSHOTS=1`: also
//! to `docs/screenshots/`, the set the README shows).
//!
//! Needs `chromium` and `chromium-driver` (`scripts/install-test-tools` installs them);
//! fails, never skips, without them.

#[path = "../server/harness.rs"]
mod harness;
mod webdriver;

use harness::*;
use serde_json::json;
use std::time::Duration;
use webdriver::Browser;

const PW: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(20);

async fn credit(s: &Server, key: &str) -> serde_json::Value {
    get_json(&s.url("/api/v1/chat/credit"), Some(key)).await.2
}

/// Sets the password on an invite page and lands signed in.
async fn accept_invite(b: &Browser, url: &str, shot: Option<&str>) {
    b.goto(url).await;
    b.type_into(&b.field("Password").await, PW).await;
    b.type_into(&b.field("Confirm password").await, PW).await;
    if let Some(name) = shot {
        b.screenshot(name).await;
    }
    b.click(&b.button("Set password").await).await;
}

async fn sign_in(b: &Browser, s: &Server, email: &str) {
    b.goto(&s.url("/console/login")).await;
    b.type_into(&b.field("Email").await, email).await;
    b.type_into(&b.field("Password").await, PW).await;
    b.click(&b.button("Sign in").await).await;
}

async fn sign_out(b: &Browser) {
    b.click(&b.button("Sign out").await).await;
    b.field("Email").await;
}

/// The text of the element labelled "Available credits".
async fn available(b: &Browser) -> String {
    let e = b
        .find("//*[@aria-labelledby=//*[normalize-space()='Available credits']/@id]")
        .await;
    assert_eq!(b.label(&e).await, "Available credits");
    b.text(&e).await
}

async fn nav(b: &Browser, name: &str) {
    b.click(
        &b.find(&format!("//nav//a[normalize-space()='{name}']"))
            .await,
    )
    .await;
    b.find(&format!(
        "//h1[starts-with(normalize-space(), '{}')]",
        match name {
            "API keys" => "API keys",
            other => other,
        }
    ))
    .await;
}

#[tokio::test]
async fn account_holder_flow_in_a_browser() {
    let s = Server::start(Opts::default());
    s.admin(&[
        "account",
        "create",
        "--name",
        "ann",
        "--email",
        "ann@example.com",
        "--credits",
        "25",
    ]);
    let invite = s.admin(&["console", "invite", "--account", "ann"]);
    let b = Browser::start().await;

    // invite → set password → signed in on the overview
    accept_invite(&b, invite["url"].as_str().unwrap(), Some("invite")).await;
    assert_eq!(available(&b).await, "25");
    let cookies = b.cookies().await;
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kie_session")
        .expect("session cookie");
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Lax");

    // sign out, sign in with the password
    sign_out(&b).await;
    b.screenshot("login").await;
    sign_in(&b, &s, "ann@example.com").await;
    assert_eq!(available(&b).await, "25");

    // create a key; it works on the API
    nav(&b, "API keys").await;
    b.type_into(&b.field("Key name").await, "laptop").await;
    b.click(&b.button("Create key").await).await;
    let key = b.text(&b.find("//code[@id='new-key']").await).await;
    assert!(key.starts_with("kie_"), "{key}");
    b.button("Copy").await;
    b.screenshot("keys").await;
    assert_eq!(credit(&s, &key).await["data"], json!(25));

    // revoke it (with the confirmation); the key gets 401
    b.click(&b.button("Revoke").await).await;
    b.screenshot("keys-revoke-confirm").await;
    b.click(&b.button("Confirm").await).await;
    b.find("//td/span[normalize-space()='revoked']").await;
    b.wait_for(WAIT, "the revoked key to be refused", || async {
        credit(&s, &key).await["code"] == 401
    })
    .await;

    // a task created through the API shows in the task log with its result; its
    // script-like prompt is text
    let api_key = s.admin(&["key", "create", "--account", "ann"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, r) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&api_key),
        &json!({"model": "demo/image", "input": {"prompt": "<script>alert(1)</script>", "width": 64, "height": 48}}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let task = r["data"]["taskId"].as_str().unwrap().to_string();
    b.wait_for(WAIT, "the task to finish", || async {
        let (_, _, v) = get_json(
            &s.url(&format!("/api/v1/jobs/recordInfo?taskId={task}")),
            Some(&api_key),
        )
        .await;
        v["data"]["state"] == "success"
    })
    .await;
    nav(&b, "Tasks").await;
    b.screenshot("tasks").await;
    b.click(&b.find(&format!("//a[normalize-space()='{task}']")).await)
        .await;
    let input = b.text(&b.find("//pre[@id='task-input']").await).await;
    assert!(input.contains("<script>alert(1)</script>"), "{input}");
    assert!(!b.alert_open().await, "the prompt ran as a script");
    assert_eq!(
        b.text(&b.find("//*[@id='task-state']").await).await,
        "success"
    );
    let result = b.text(&b.find("//pre[@id='task-result']").await).await;
    assert!(result.contains("resultUrls"), "{result}");
    b.screenshot("task").await;
    // a result file gets a fresh download link that serves it
    b.click(
        &b.find("//button[starts-with(@aria-label, 'Get a link to ')]")
            .await,
    )
    .await;
    let link = b.text(&b.find("//code[@id='file-link']").await).await;
    assert!(link.contains("/links/"), "{link}");
    let got = client().get(&link).send().await.unwrap();
    assert_eq!(got.status(), 200);
    b.screenshot("files").await;

    // CSRF: a form post without the token, with the session cookie, changes nothing
    let keys_before = s.sql("SELECT COUNT(*) FROM api_keys")[0][0].clone();
    let status = b
        .run_async(
            "const done = arguments[0];
             fetch('/console/keys', {method: 'POST', credentials: 'include',
                    body: new URLSearchParams({name: 'forged'})})
               .then(r => done(r.status), e => done(String(e)));",
        )
        .await;
    assert_eq!(status, json!(403));
    assert_eq!(s.sql("SELECT COUNT(*) FROM api_keys")[0][0], keys_before);

    // the 30-day chart renders: 30 bars, an accessible image, the day's spending
    nav(&b, "Overview").await;
    let chart = b.find("//*[local-name()='svg'][@id='spent-chart']").await;
    let role = b.role(&chart).await;
    assert!(role == "image" || role == "img", "{role}");
    assert_eq!(
        b.count("//*[local-name()='svg'][@id='spent-chart']/*[local-name()='rect']")
            .await,
        30
    );
    let desc = b
        .text(
            &b.find("//figure[contains(@class,'chart')]/figcaption")
                .await,
        )
        .await;
    assert!(desc.contains("credits spent in 30 days"), "{desc}");
    b.screenshot("overview").await;

    for (page, shot) in [
        ("Usage", "usage"),
        ("Callbacks", "callbacks"),
        ("Alerts", "alerts"),
    ] {
        nav(&b, page).await;
        b.screenshot(shot).await;
    }
    // the webhook key: generated, then rolled with the default 24 h overlap
    nav(&b, "Callbacks").await;
    b.click(&b.button("Generate key").await).await;
    b.find("//*[@id='webhook-key']").await;
    assert_eq!(b.count("//input[@name='grace' and @value='24h']").await, 1);
    b.click(&b.button("Roll key").await).await;
    let overlap = b
        .text(&b.find("//*[@id='previous-key-overlap']").await)
        .await;
    assert!(overlap.contains("previous key also signs"), "{overlap}");
    b.screenshot("callbacks-key-rolled").await;
    drop(b);
}

#[tokio::test]
async fn operator_grants_credits_in_a_browser() {
    let s = Server::start(Opts::default());
    s.admin(&[
        "account",
        "create",
        "--name",
        "bob",
        "--email",
        "bob@example.com",
        "--credits",
        "3",
    ]);
    let holder = s.admin(&["console", "invite", "--account", "bob"]);
    let op = s.admin(&[
        "console",
        "invite",
        "--operator",
        "--email",
        "ops@example.com",
    ]);
    let b = Browser::start().await;

    accept_invite(&b, op["url"].as_str().unwrap(), None).await;
    b.find("//h1[normalize-space()='Accounts']").await;
    search_accounts(&b, "bob").await;
    b.screenshot("admin-accounts").await;
    b.click(&b.link("bob").await).await;
    b.type_into(&b.field("Amount").await, "40.5").await;
    b.type_into(&b.field("Reason").await, "welcome bonus").await;
    b.click(&b.button("Apply").await).await;
    let note = b
        .text(&b.find("//p[contains(@class,'notice')]").await)
        .await;
    assert!(note.contains("Granted 40.5 credits"), "{note}");
    b.screenshot("admin-account").await;
    b.click(&b.find("//nav//a[normalize-space()='Settings']").await)
        .await;
    b.find("//h1[normalize-space()='Settings']").await;
    b.screenshot("admin-settings").await;
    b.click(&b.find("//nav//a[normalize-space()='Health']").await)
        .await;
    b.find("//h1[normalize-space()='Health']").await;
    // the rates table, with this session's own requests counted
    let requests = b
        .text(&b.find("//tr[@id='rate-requests']/td[@class='count']").await)
        .await;
    assert!(requests.parse::<u64>().unwrap() > 0, "{requests}");
    b.screenshot("admin-health").await;
    sign_out(&b).await;

    // the account holder's overview shows the grant
    accept_invite(&b, holder["url"].as_str().unwrap(), None).await;
    assert_eq!(available(&b).await, "43.5");
    drop(b);
}

/// Two nodes on one PostgreSQL database (whatever `KIE_TEST_BACKEND` says: sharing a
/// database is what scale-out means): a session started on one node works on the
/// other, an operator's grant through one shows on the other, a key created on one is
/// revoked on the other and refused by both, and signing out on one ends the session
/// on both. The browser's cookies are per host, not per port, as behind one name.
/// Searches the operator's account list and waits for the results page: the list
/// before the search shows the same links, so finding one proves nothing about which
/// page it is on (clicking it while the next page loads hits a stale element).
async fn search_accounts(b: &Browser, q: &str) {
    b.type_into(&b.field("Search accounts").await, q).await;
    b.click(&b.button("Search").await).await;
    let want = format!("q={q}");
    b.wait_for(
        Duration::from_secs(10),
        "the search results page",
        || async { b.current_url().await.contains(&want) },
    )
    .await;
}

#[tokio::test]
async fn two_nodes_share_sessions_keys_and_balances_in_a_browser() {
    let tmp = std::sync::Arc::new(TempDir::new());
    let db = std::sync::Arc::new(TestDb::postgres());
    let a = Server::start_in(Opts::default(), tmp, db);
    let n2 = a.second_node();
    a.admin(&[
        "account",
        "create",
        "--name",
        "cy",
        "--email",
        "cy@example.com",
        "--credits",
        "7",
    ]);
    let holder = a.admin(&["console", "invite", "--account", "cy"]);
    let op = a.admin(&[
        "console",
        "invite",
        "--operator",
        "--email",
        "ops2@example.com",
    ]);
    let b = Browser::start().await;

    // the operator signs up on node A and grants through node B
    accept_invite(&b, op["url"].as_str().unwrap(), None).await;
    b.find("//h1[normalize-space()='Accounts']").await;
    b.goto(&n2.url("/console/admin/")).await;
    search_accounts(&b, "cy").await;
    b.click(&b.link("cy").await).await;
    b.type_into(&b.field("Amount").await, "3").await;
    b.type_into(&b.field("Reason").await, "two nodes").await;
    b.click(&b.button("Apply").await).await;
    let note = b
        .text(&b.find("//p[contains(@class,'notice')]").await)
        .await;
    assert!(note.contains("Granted 3 credits"), "{note}");
    sign_out(&b).await;

    // the holder signs up on A (sees the grant made on B), works on B
    accept_invite(&b, holder["url"].as_str().unwrap(), None).await;
    assert_eq!(available(&b).await, "10");
    b.goto(&n2.url("/console/")).await;
    assert_eq!(available(&b).await, "10");
    nav(&b, "API keys").await;
    b.type_into(&b.field("Key name").await, "node-b").await;
    b.click(&b.button("Create key").await).await;
    let key = b.text(&b.find("//code[@id='new-key']").await).await;
    assert_eq!(credit(&a, &key).await["data"], json!(10));
    assert_eq!(credit(&n2, &key).await["data"], json!(10));

    // revoked on A: both nodes refuse it
    b.goto(&a.url("/console/keys")).await;
    b.click(&b.button("Revoke").await).await;
    b.click(&b.button("Confirm").await).await;
    b.find("//td/span[normalize-space()='revoked']").await;
    for node in [&a, &n2] {
        b.wait_for(
            WAIT,
            "the revoked key to be refused by every node",
            || async { credit(node, &key).await["code"] == 401 },
        )
        .await;
    }

    // signed out on B: the session is gone on A too
    b.goto(&n2.url("/console/")).await;
    sign_out(&b).await;
    b.goto(&a.url("/console/")).await;
    b.field("Email").await;
    drop(b);
}
