//! The console over plain HTTP (issue 16): invites, sign-in, sessions, CSRF, lockout,
//! escaping, security headers, operator credit changes. The browser tests
//! (`tests/browser`) drive the same pages in Chromium.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

/// A console visitor: a cookie jar of one cookie, redirects not followed.
pub struct Visitor {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The value of the first hidden `csrf` field.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Visitor {
    pub fn new(s: &Server) -> Visitor {
        Visitor {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: s.base.clone(),
            cookie: None,
        }
    }

    async fn finish(&mut self, r: reqwest::Response) -> Page {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        if let Some(c) = headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let pair = c.split(';').next().unwrap().to_string();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let body = r.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let mut rb = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            rb = rb.header("cookie", c);
        }
        let r = rb.send().await.unwrap();
        self.finish(r).await
    }

    /// Signs in through the form: its page first (the pre-session CSRF cookie and
    /// field), then the POST with the token.
    pub async fn login(&mut self, email: &str, password: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200);
        let csrf = form.csrf();
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("email", email), ("password", password)],
        )
        .await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut rb = self.http.post(url).form(form);
        if let Some(c) = &self.cookie {
            rb = rb.header("cookie", c);
        }
        let r = rb.send().await.unwrap();
        self.finish(r).await
    }
}

/// `kie admin console invite …` → the one-time URL.
pub fn invite(s: &Server, args: &[&str]) -> String {
    let mut a = vec!["console", "invite"];
    a.extend_from_slice(args);
    let v = s.admin(&a);
    v["url"].as_str().unwrap().to_string()
}

const PW: &str = "correct horse battery";

/// An account holder signed in through an invite: (visitor, account id).
pub async fn holder(s: &Server, name: &str, credits: &str) -> (Visitor, String) {
    let email = format!("{name}@example.com");
    let acc = s.admin(&[
        "account",
        "create",
        "--name",
        name,
        "--email",
        &email,
        "--credits",
        credits,
    ]);
    let url = invite(s, &["--account", name]);
    let mut v = Visitor::new(s);
    let p = v.post(&url, &[("password", PW), ("confirm", PW)]).await;
    assert_eq!(p.status, 303, "{}", p.body);
    (v, acc["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn invite_sets_a_password_once_and_sign_out_ends_the_session() {
    let s = Server::start(Opts::default());
    let acc = s.admin(&[
        "account",
        "create",
        "--name",
        "ann",
        "--email",
        "Ann@Example.com",
        "--credits",
        "12.5",
    ]);
    assert_eq!(acc["email"], "ann@example.com");
    let v = s.admin(&["console", "invite", "--account", "ann"]);
    let url = v["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/console/invite/", s.base)),
        "{url}"
    );
    let expires = humantime::parse_rfc3339(v["expiresAt"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(23 * 3600) && left <= Duration::from_secs(24 * 3600),
        "{left:?}"
    );

    let mut b = Visitor::new(&s);
    let form = b.get(url.strip_prefix(&s.base).unwrap()).await;
    assert_eq!(form.status, 200);
    for name in [
        "Password",
        "Confirm password",
        "Set password",
        "ann@example.com",
    ] {
        assert!(form.body.contains(name), "{name}: {}", form.body);
    }
    // two different entries: refused, nothing set
    let p = b
        .post(&url, &[("password", PW), ("confirm", "another password")])
        .await;
    assert_eq!(p.status, 422);
    assert!(b.cookie.is_none());
    let p = b.post(&url, &[("password", PW), ("confirm", PW)]).await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/console/overview");
    let set = p.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/console"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    // only a digest of the session token is stored
    let token = b.cookie.clone().unwrap();
    let token = token.strip_prefix("kie_session=").unwrap();
    let stored = s.sql("SELECT token_digest FROM console_sessions");
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0][0], token);
    let hash = s.sql("SELECT password_hash FROM console_users");
    assert!(hash[0][0].starts_with("$argon2id$"), "{hash:?}");

    let ov = b.get("/console/overview").await;
    assert_eq!(ov.status, 200);
    assert!(ov.body.contains("Available credits"));
    assert!(ov.body.contains(">12.5<"), "{}", ov.body);
    // the invite is used up
    let again = Visitor::new(&s)
        .post(&url, &[("password", PW), ("confirm", PW)])
        .await;
    assert_eq!(again.status, 404);

    // sign out without the CSRF token changes nothing
    let p = b.post("/console/logout", &[]).await;
    assert_eq!(p.status, 403);
    assert_eq!(b.get("/console/overview").await.status, 200);
    let csrf = b.get("/console/overview").await.csrf();
    let kept = b.cookie.clone();
    let p = b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 303);
    assert!(s
        .sql("SELECT token_digest FROM console_sessions")
        .is_empty());
    // the old cookie is dead everywhere
    b.cookie = kept;
    let p = b.get("/console/overview").await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));

    // sign in again with the password
    let mut c = Visitor::new(&s);
    let p = c.login("ANN@example.com", PW).await;
    assert_eq!((p.status, p.location()), (303, "/console/overview"));
    assert_eq!(c.get("/console/overview").await.status, 200);

    // neither the invite token, the session tokens nor the password reach the log
    let log = s.log();
    let invite_token = url.rsplit('/').next().unwrap();
    assert!(log.contains("/console/invite/[redacted]"), "{log}");
    let session2 = c.cookie.clone().unwrap();
    let session2 = session2.strip_prefix("kie_session=").unwrap();
    for secret in [invite_token, token, session2, PW] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[tokio::test]
async fn five_failed_sign_ins_lock_the_address_for_everyone() {
    let s = Server::start(Opts::default());
    let (_, _) = holder(&s, "bob", "1").await;
    let mut v = Visitor::new(&s);
    for i in 0..4 {
        let p = v.login("bob@example.com", "wrong password").await;
        assert_eq!(p.status, 401, "attempt {i}");
        assert!(p.body.contains("Wrong email or password"));
    }
    let p = v.login("bob@example.com", "wrong password").await;
    assert_eq!(p.status, 429);
    // now even the right password is refused, with Retry-After
    let p = v.login("bob@example.com", PW).await;
    assert_eq!(p.status, 429);
    let wait: u64 = p.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 14 * 60 && wait <= 15 * 60, "{wait}");
    assert!(
        !v.cookie
            .as_deref()
            .unwrap_or("")
            .starts_with("kie_session="),
        "no session"
    );
    // another address is not affected
    let p = v.login("nobody@example.com", "x").await;
    assert_eq!(p.status, 401);
}

#[tokio::test]
async fn forms_without_the_csrf_token_change_nothing_and_inputs_are_escaped() {
    let s = Server::start(Opts::default());
    let (mut b, acc) = holder(&s, "cat", "20").await;
    let keys = b.get("/console/keys").await;
    assert_eq!(keys.status, 200);
    let h = &keys.headers;
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(!keys.body.contains("<script>") || !keys.body.contains("<script>alert"));

    let count = |s: &Server| s.sql("SELECT COUNT(*) FROM api_keys")[0][0].clone();
    for bad in [vec![("name", "x")], vec![("name", "x"), ("csrf", "forged")]] {
        let p = b.post("/console/keys", &bad).await;
        assert_eq!(p.status, 403, "{}", p.body);
        assert_eq!(count(&s), "0");
    }
    // a cross-site form post arrives without the cookie (SameSite=Lax) and without the token
    let mut stranger = Visitor::new(&s);
    let p = stranger.post("/console/keys", &[("name", "x")]).await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));

    let p = b
        .post(
            "/console/keys",
            &[("name", "<b>bold</b>"), ("csrf", &keys.csrf())],
        )
        .await;
    assert_eq!(p.status, 200);
    assert_eq!(count(&s), "1");
    assert!(p.body.contains("&lt;b&gt;bold&lt;/b&gt;"), "{}", p.body);
    assert!(!p.body.contains("<b>bold</b>"));
    let start = p.body.find("id=\"new-key\"").expect("the new key is shown");
    let key = p.body[start..]
        .split('>')
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    assert!(key.starts_with("kie_"), "{key}");
    let (_, _, v) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
    assert_eq!(v["data"], json!(20));
    // shown once: the list has only the prefix
    assert!(!b.get("/console/keys").await.body.contains(&key));

    // a task whose prompt is a script shows as text
    let (_, _, r) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&key),
        &json!({"model": "demo/text", "input": {"prompt": "<script>alert(1)</script>"}}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let id = r["data"]["taskId"].as_str().unwrap().to_string();
    let t = b.get(&format!("/console/tasks/{id}")).await;
    assert_eq!(t.status, 200);
    assert!(
        t.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        t.body
    );
    assert!(!t.body.contains("<script>alert(1)"));
    // another account's task is not found
    let (mut other, _) = holder(&s, "dog", "1").await;
    assert_eq!(other.get(&format!("/console/tasks/{id}")).await.status, 404);
    let _ = acc;
}

#[tokio::test]
async fn an_operator_grants_credits_once_per_idempotency_key() {
    let s = Server::start(Opts::default());
    let (mut holder_b, acc) = holder(&s, "eve", "1").await;
    // account holders cannot reach operator pages
    assert_eq!(holder_b.get("/console/admin/").await.status, 403);

    let url = invite(&s, &["--operator", "--email", "ops@example.com"]);
    let mut op = Visitor::new(&s);
    let p = op.post(&url, &[("password", PW), ("confirm", PW)]).await;
    assert_eq!((p.status, p.location()), (303, "/console/admin/"));
    let list = op.get("/console/admin/?q=EVE").await;
    assert!(list.body.contains(&acc), "{}", list.body);
    let page = op.get(&format!("/console/admin/accounts/{acc}")).await;
    let csrf = page.csrf();
    let path = format!("/console/admin/accounts/{acc}/credits");
    let form = |csrf: &str| -> Vec<(String, String)> {
        vec![
            ("csrf".into(), csrf.into()),
            ("op".into(), "grant".into()),
            ("amount".into(), "41.25".into()),
            ("reason".into(), "top-up".into()),
            ("idempotency_key".into(), "grant-1".into()),
        ]
    };
    let f = form(csrf.as_str());
    let f: Vec<(&str, &str)> = f.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    // without the token: nothing
    let p = op.post(&path, &f[1..]).await;
    assert_eq!(p.status, 403);
    let avail = |s: &Server| s.admin(&["credits", "show", "--account", "eve"])["available"].clone();
    assert_eq!(avail(&s), json!(1));
    for _ in 0..2 {
        let p = op.post(&path, &f).await;
        assert_eq!(p.status, 200);
        assert_eq!(avail(&s), json!(42.25), "{}", p.body);
    }
    let ov = holder_b.get("/console/overview").await;
    assert!(ov.body.contains(">42.25<"), "{}", ov.body);
    // deducting more than is available is refused and changes nothing
    let p = op
        .post(
            &path,
            &[
                ("csrf", csrf.as_str()),
                ("op", "deduct"),
                ("amount", "100"),
                ("reason", "x"),
                ("idempotency_key", "d-1"),
            ],
        )
        .await;
    assert!(p.body.contains("exceeds the available balance"));
    assert_eq!(avail(&s), json!(42.25));

    // maintenance from the console reaches the API
    let set = op.get("/console/admin/settings").await;
    let p = op
        .post(
            "/console/admin/settings",
            &[
                ("csrf", set.csrf().as_str()),
                ("name", "maintenance"),
                ("value", "on"),
            ],
        )
        .await;
    assert_eq!(p.status, 303);
    // health figures and a signing-key rotation
    let set = op.get("/console/admin/settings").await;
    assert!(set.body.contains("reachable"), "{}", set.body);
    assert!(!set.body.contains("NOT reachable"), "{}", set.body);
    let active = || s.sql("SELECT id FROM signing_keys WHERE retired_at IS NULL");
    let before = active();
    let p = op
        .post(
            "/console/admin/settings",
            &[
                ("csrf", set.csrf().as_str()),
                ("name", "signing-key"),
                ("value", "rotate"),
            ],
        )
        .await;
    assert_eq!(p.status, 303);
    let after = active();
    assert_eq!(after.len(), 1);
    assert_ne!(before, after);
    let key = s.admin(&["key", "create", "--account", "eve"])["key"].clone();
    let key = key.as_str().unwrap().to_string();
    let on = eventually(Duration::from_secs(5), || async {
        let (_, _, v) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
        v["code"] == 455
    })
    .await;
    assert!(on.is_some());
}

#[tokio::test]
async fn task_log_filters_and_pages() {
    let s = Server::start(Opts::default().config("task_rate = 1000\n"));
    let (mut b, acc) = holder(&s, "fox", "1000").await;
    let key = s.admin(&["key", "create", "--account", &acc])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for i in 0..55 {
        let (_, _, r) = post_json(
            &s.url("/api/v1/jobs/createTask"),
            Some(&key),
            &json!({"model": "demo/text", "input": {"prompt": format!("p{i}")}}),
        )
        .await;
        assert_eq!(r["code"], 200, "{r}");
        ids.push(r["data"]["taskId"].as_str().unwrap().to_string());
    }
    let all_done = eventually(Duration::from_secs(60), || async {
        s.sql("SELECT COUNT(*) FROM tasks WHERE state = 'success'")[0][0] == "55"
    })
    .await;
    assert!(all_done.is_some());
    let first = b.get("/console/tasks?state=success").await;
    assert_eq!(
        first.body.matches("href=\"/console/tasks/task_").count(),
        50
    );
    let next = first.body.split("rel=\"next\"").next().unwrap();
    let href = next.rsplit("href=\"").next().unwrap();
    let href = href.split('"').next().unwrap().replace("&amp;", "&");
    let second = b.get(&href).await;
    assert_eq!(
        second.body.matches("href=\"/console/tasks/task_").count(),
        5
    );
    assert!(!second.body.contains("rel=\"next\""));
    let none = b.get("/console/tasks?state=fail").await;
    assert!(none.body.contains("No tasks yet"));
    // the chart counts the day's charges
    let ov = b.get("/console/overview").await;
    assert!(ov.body.contains("id=\"spent-chart\""));
    let usage = b.get("/console/usage.csv").await;
    assert_eq!(usage.headers["content-type"], "text/csv; charset=utf-8");
    assert!(usage
        .body
        .starts_with("time,entry_id,kind,amount,held_delta,reason\n"));
    assert!(usage.body.lines().count() > 55);
    let _: Value = json!(ids);
}

#[tokio::test]
async fn the_chart_counts_settled_days_once_and_today_live() {
    let s = Server::start(Opts::default());
    let (mut b, acc) = holder(&s, "gnu", "100").await;
    let day = 86_400_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let three_days_ago = (now / day - 3) * day + 3_600_000;
    let date = |ms: i64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
            .to_string()[..10]
            .to_string()
    };
    // a deduction three days ago, as the ledger would have written it then
    s.sql_script(&format!(
        "INSERT INTO ledger_entries (id, account_id, kind, amount, held_delta, reason, idempotency_key, created_at) \
         VALUES ('ent_old', '{acc}', 'deduct', -700, 0, 'old', 'user:old', {three_days_ago});
         UPDATE accounts SET balance = balance - 700 WHERE id = '{acc}';"
    ));
    s.admin(&["credits", "deduct", "--account", "gnu", "--amount", "1.5"]);
    for _ in 0..2 {
        let ov = b.get("/console/overview").await;
        let row = |d: &str, v: &str| format!("<tr><td>{d}</td><td class=\"num\">{v}</td></tr>");
        assert!(
            ov.body.contains(&row(&date(three_days_ago), "7")),
            "{}",
            ov.body
        );
        assert!(ov.body.contains(&row(&date(now), "1.5")), "{}", ov.body);
        assert!(
            ov.body.contains("8.5 credits spent in 30 days"),
            "{}",
            ov.body
        );
    }
    // settled days were kept (zeros too); today is not
    let kept = s.sql(&format!(
        "SELECT COUNT(*), SUM(spent) FROM ledger_spent_days WHERE account_id = '{acc}'"
    ));
    assert_eq!(kept[0][1], "700");
    let n: i64 = kept[0][0].parse().unwrap();
    assert!((28..=29).contains(&n), "{n}");
}

#[tokio::test]
async fn callbacks_page_shows_the_key_on_request_and_redelivers() {
    let s = Server::start(Opts::default().args(&[
        "--allow-private-targets",
        "--webhook-retry-schedule",
        "0s",
    ]));
    let (mut b, acc) = holder(&s, "hen", "10").await;
    let page = b.get("/console/callbacks").await;
    assert!(page.body.contains("No key yet"));
    let p = b
        .post(
            "/console/callbacks/key",
            &[("csrf", page.csrf().as_str()), ("action", "generate")],
        )
        .await;
    let key = s.admin(&["webhook-key", "show", "--account", "hen"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(p.body.contains(&key));
    // the plain page never carries it; "Show key" does
    let page = b.get("/console/callbacks").await;
    assert!(!page.body.contains(&key));
    let p = b
        .post(
            "/console/callbacks/key",
            &[("csrf", page.csrf().as_str()), ("action", "show")],
        )
        .await;
    assert!(p.body.contains(&key));
    // nothing without the CSRF token
    assert_eq!(
        b.post("/console/callbacks/key", &[("action", "show")])
            .await
            .status,
        403
    );

    // a callback to a closed port fails after its one attempt
    let api = s.admin(&["key", "create", "--account", &acc])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, r) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&api),
        &json!({"model": "demo/text", "input": {"prompt": "p"}, "callBackUrl": "http://127.0.0.1:9/hook"}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let state = |s: &Server| s.sql("SELECT state, attempts, id FROM webhook_deliveries");
    let failed = eventually(Duration::from_secs(30), || async {
        state(&s).first().is_some_and(|r| r[0] == "failed")
    })
    .await;
    assert!(failed.is_some(), "{:?}", state(&s));
    let id = state(&s)[0][2].clone();
    let page = b.get("/console/callbacks").await;
    assert!(page.body.contains("http://127.0.0.1:9/hook"));
    let p = b
        .post(
            &format!("/console/callbacks/{id}/redeliver"),
            &[("csrf", page.csrf().as_str())],
        )
        .await;
    assert!(p.body.contains("Queued for one more attempt"), "{}", p.body);
    let again = eventually(Duration::from_secs(30), || async {
        let r = state(&s);
        r[0][0] == "failed" && r[0][1] == "2"
    })
    .await;
    assert!(again.is_some(), "{:?}", state(&s));
    // replay every failed delivery since today: this one, once
    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let p = b
        .post(
            "/console/callbacks/replay",
            &[("csrf", page.csrf().as_str()), ("since", &today[..10])],
        )
        .await;
    assert!(
        p.body.contains("1 failed deliveries queued again"),
        "{}",
        p.body
    );
    // another account cannot redeliver it
    let (mut other, _) = holder(&s, "owl", "1").await;
    let op = other.get("/console/callbacks").await;
    let p = other
        .post(
            &format!("/console/callbacks/{id}/redeliver"),
            &[("csrf", op.csrf().as_str())],
        )
        .await;
    assert!(p.body.contains("No such finished delivery"));
}

/// Sessions live in the database: signed in on one node, signed in on all; signed out
/// on one, signed out on all.
#[tokio::test]
async fn a_session_works_on_every_node_and_sign_out_ends_it_everywhere() {
    let tmp = std::sync::Arc::new(TempDir::new());
    let db = std::sync::Arc::new(TestDb::postgres());
    let a = Server::start_in(Opts::default(), tmp.clone(), db.clone());
    let b = a.second_node();
    let (mut on_a, _) = holder(&a, "ivy", "5").await;
    let cookie = on_a.cookie.clone();
    let mut on_b = Visitor::new(&b);
    on_b.cookie = cookie.clone();
    let page = on_b.get("/console/overview").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(">5<"));
    // a form from node B's page is accepted by node A (one CSRF token per session)
    let p = on_a
        .post(
            "/console/keys",
            &[("csrf", page.csrf().as_str()), ("name", "k")],
        )
        .await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("id=\"new-key\""));
    let p = on_b
        .post("/console/logout", &[("csrf", page.csrf().as_str())])
        .await;
    assert_eq!(p.status, 303);
    on_a.cookie = cookie;
    let p = on_a.get("/console/overview").await;
    assert_eq!((p.status, p.location()), (303, "/console/login"));
}

/// The JSON API behind the console's history pages, and the `kie` commands on it.
#[tokio::test]
async fn tasks_usage_and_callbacks_as_json_and_from_the_command_line() {
    let s = Server::start(Opts::default().args(&[
        "--allow-private-targets",
        "--webhook-retry-schedule",
        "0s",
    ]));
    let (acc, key) = s.account_with_key("jay", "10");
    let (_, other_key) = s.account_with_key("kim", "10");
    let (_, _, r) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&key),
        &json!({"model": "demo/text", "input": {"prompt": "p"}, "callBackUrl": "http://127.0.0.1:9/h"}),
    )
    .await;
    let task = r["data"]["taskId"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(30), || async {
        s.sql("SELECT state FROM webhook_deliveries")
            .first()
            .is_some_and(|r| r[0] == "failed")
    })
    .await;
    assert!(done.is_some());
    let kie = |args: &[&str], key: &str| {
        let out = std::process::Command::new(KIE)
            .args(args)
            .env("KIE_API_KEY", key)
            .env("KIE_BASE_URL", &s.base)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let tasks: Value = serde_json::from_str(&kie(&["tasks", "list", "--json"], &key)).unwrap();
    assert_eq!(tasks[0]["taskId"], json!(task));
    assert_eq!(tasks[0]["state"], "success");
    assert_eq!(tasks[0]["consumeCredits"], json!(0.5));
    let none: Value =
        serde_json::from_str(&kie(&["tasks", "list", "--state", "fail", "--json"], &key)).unwrap();
    assert_eq!(none, json!([]));
    let cbs: Value = serde_json::from_str(&kie(&["callbacks", "list", "--json"], &key)).unwrap();
    let c = cbs[0].as_object().unwrap();
    let mut keys: Vec<&str> = c.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attempts",
            "event",
            "id",
            "lastStatus",
            "nextAttemptAt",
            "status",
            "taskId",
            "url"
        ]
    );
    assert_eq!(c["status"], "failed");
    assert_eq!(c["taskId"], json!(task));
    assert_eq!(c["event"], Value::Null, "a task's callback is no event");
    let csv = kie(&["usage", "--csv"], &key);
    assert!(
        csv.starts_with("time,entry_id,kind,amount,held_delta,reason\n"),
        "{csv}"
    );
    assert!(csv.contains(",post,-0.5,-0.5,"), "{csv}");
    assert!(csv.contains(",grant,10,0,initial credits"), "{csv}");
    // another account sees none of it
    let (_, _, v) = get_json(&s.url("/api/v1/account/tasks"), Some(&other_key)).await;
    assert_eq!(v["data"], json!([]));
    let (_, _, v) = get_json(
        &s.url(&format!("/api/v1/account/callbacks?taskId={task}")),
        Some(&other_key),
    )
    .await;
    assert_eq!(v["data"], json!([]));
    let (_, _, v) = get_json(&s.url("/api/v1/account/usage?limit=0"), Some(&key)).await;
    assert_eq!(v["code"], 422);
    let (_, _, v) = get_json(&s.url("/api/v1/account/usage"), None).await;
    assert_eq!(v["code"], 401);
    let _ = acc;
}

#[tokio::test]
async fn rolling_a_key_shows_the_new_one_once_and_keeps_the_old_for_its_grace() {
    let s = Server::start(Opts::default());
    let (mut b, acc) = holder(&s, "lou", "3").await;
    let old = s.admin(&["key", "create", "--account", &acc, "--name", "ci"]);
    let (old_id, old_key) = (
        old["id"].as_str().unwrap().to_string(),
        old["key"].as_str().unwrap().to_string(),
    );
    let page = b.get("/console/keys").await;
    assert!(
        page.body.contains("aria-label=\"Roll ci\""),
        "{}",
        page.body
    );
    // no token: nothing
    let p = b
        .post(&format!("/console/keys/{old_id}/roll"), &[("grace", "1h")])
        .await;
    assert_eq!(p.status, 403);
    assert_eq!(s.sql("SELECT COUNT(*) FROM api_keys")[0][0], "1");
    let p = b
        .post(
            &format!("/console/keys/{old_id}/roll"),
            &[("csrf", page.csrf().as_str()), ("grace", "1h")],
        )
        .await;
    assert_eq!(p.status, 200);
    let start = p.body.find("id=\"new-key\"").expect("the new key is shown");
    let new_key = p.body[start..]
        .split('>')
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap();
    assert_eq!(credit_code(&s, new_key).await, 200);
    assert_eq!(credit_code(&s, &old_key).await, 200, "valid for its grace");
    let expires = s.sql(&format!(
        "SELECT expires_at FROM api_keys WHERE id = '{old_id}'"
    ));
    assert!(!expires[0][0].is_empty());
    // rolling the new one with no grace revokes it at once
    let new_id = s.sql(&format!(
        "SELECT id FROM api_keys WHERE account_id = '{acc}' AND id <> '{old_id}'"
    ))[0][0]
        .clone();
    let p = b
        .post(
            &format!("/console/keys/{new_id}/roll"),
            &[("csrf", page.csrf().as_str()), ("grace", "0")],
        )
        .await;
    assert_eq!(p.status, 200);
    let new_key = new_key.to_string();
    let gone = eventually(Duration::from_secs(10), || async {
        credit_code(&s, &new_key).await == 401
    })
    .await;
    assert!(gone.is_some());
    // another account's key cannot be rolled
    let (mut other, _) = holder(&s, "max", "1").await;
    let op = other.get("/console/keys").await;
    let p = other
        .post(
            &format!("/console/keys/{old_id}/roll"),
            &[("csrf", op.csrf().as_str()), ("grace", "0")],
        )
        .await;
    assert_eq!(p.status, 404);
}

async fn credit_code(s: &Server, key: &str) -> i64 {
    get_json(&s.url("/api/v1/chat/credit"), Some(key)).await.2["code"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn the_session_cookie_is_secure_behind_an_https_public_url() {
    let s = Server::start(Opts::default().args(&["--public-url", "https://console.example.net"]));
    s.admin(&[
        "account",
        "create",
        "--name",
        "nia",
        "--email",
        "nia@example.com",
    ]);
    let url = invite(&s, &["--account", "nia"]);
    assert!(
        url.starts_with("https://console.example.net/console/invite/"),
        "{url}"
    );
    let path = &url["https://console.example.net".len()..];
    let mut v = Visitor::new(&s);
    let p = v.post(path, &[("password", PW), ("confirm", PW)]).await;
    assert_eq!(p.status, 303);
    let set = p.headers["set-cookie"].to_str().unwrap();
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly"),
        "{set}"
    );
}

/// The sign-in form carries its own (pre-session) CSRF token: a double-submit cookie.
/// A POST without it, with a wrong one or without the cookie is refused before the
/// address or password are looked at: no session, no failed attempt counted.
#[tokio::test]
async fn the_sign_in_form_needs_its_pre_session_token() {
    let s = Server::start(Opts::default());
    let (_, _) = holder(&s, "liz", "1").await;
    s.sql_script("DELETE FROM console_sessions;");
    let sessions = |s: &Server| s.sql("SELECT COUNT(*) FROM console_sessions")[0][0].clone();
    let failures = |s: &Server| s.sql("SELECT COUNT(*) FROM console_login_failures")[0][0].clone();

    let mut v = Visitor::new(&s);
    let form = v.get("/console/login").await;
    assert_eq!(form.status, 200);
    let cookie = form.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in [
        "kie_login=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console/login",
    ] {
        assert!(cookie.contains(attr), "{attr}: {cookie}");
    }
    let token = form.csrf();
    assert!(
        cookie.starts_with(&format!("kie_login={token};")),
        "{cookie}"
    );
    // the same browser gets the same token again (two tabs both work)
    assert_eq!(v.get("/console/login").await.csrf(), token);

    let right = [("email", "liz@example.com"), ("password", PW)];
    // no token, a wrong token: refused with a fresh form, nothing checked or counted
    for extra in [None, Some("forged"), Some("")] {
        let mut f = right.to_vec();
        if let Some(t) = extra {
            f.push(("csrf", t));
        }
        let p = v.post("/console/login", &f).await;
        assert_eq!(p.status, 403, "{extra:?}: {}", p.body);
        assert!(p.body.contains("nothing was checked"), "{}", p.body);
        assert!(p.body.contains("name=\"csrf\""));
        assert!(!v
            .cookie
            .as_deref()
            .unwrap_or("")
            .starts_with("kie_session="));
        assert_eq!(sessions(&s), "0");
        // the refusal set a new form cookie: use the page's token from here on
        let fresh = p.csrf();
        assert!(
            v.cookie.as_deref().unwrap().ends_with(&fresh),
            "{:?}",
            v.cookie
        );
    }
    // wrong passwords without the token are not even counted (no lockout by a stranger)
    for _ in 0..6 {
        let p = v
            .post(
                "/console/login",
                &[("email", "liz@example.com"), ("password", "nope nope")],
            )
            .await;
        assert_eq!(p.status, 403);
    }
    assert_eq!(failures(&s), "0");
    // the field right but no cookie (another site's form with a token it fetched)
    let mut stranger = Visitor::new(&s);
    let t = stranger.get("/console/login").await.csrf();
    let mut cookieless = Visitor::new(&s);
    let mut f = right.to_vec();
    f.push(("csrf", &t));
    let p = cookieless.post("/console/login", &f).await;
    assert_eq!(p.status, 403);
    assert_eq!(sessions(&s), "0");
    // a token that belongs to another browser's cookie
    let p = v.post("/console/login", &f).await;
    assert_eq!(p.status, 403);
    assert_eq!(sessions(&s), "0");

    // with it: signed in
    let p = v.login("liz@example.com", PW).await;
    assert_eq!((p.status, p.location()), (303, "/console/overview"));
    assert_eq!(sessions(&s), "1");
    assert_eq!(v.get("/console/overview").await.status, 200);
}

/// The text of the element with id `id` (its first text node).
fn text_of(body: &str, id: &str) -> String {
    let at = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {body}"));
    let rest = &body[at..];
    let rest = &rest[rest.find('>').unwrap() + 1..];
    rest[..rest.find('<').unwrap()].to_string()
}

/// The delivery backlog by account, on the operator's health page and in
/// `GET /api/v1/admin/health`: the account whose receiver fails is named with its
/// pending deliveries; the one whose receiver answers is not listed.
#[tokio::test(flavor = "multi_thread")]
async fn the_backlog_names_the_accounts_whose_receivers_fail() {
    // the first attempt at once, the next in an hour: a failed attempt stays pending
    let s = Server::start(Opts::default().args(&[
        "--allow-private-targets",
        "--webhook-retry-schedule",
        "0s,1h",
    ]));
    let down = crate::receiver::receiver(500).await;
    let up = crate::receiver::receiver(200).await;
    let mut accounts = Vec::new();
    for (name, rcv, events) in [("down-co", &down, 2), ("fine-co", &up, 1)] {
        let (acc, _) = s.account_with_key(name, "5");
        let mgr = s.admin(&["key", "create", "--account", &acc, "--manage"])["key"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, _, v) = post_json(
            &s.url("/api/v1/account/alerts"),
            Some(&mgr),
            &json!({"url": format!("{}/alert", rcv.base)}),
        )
        .await;
        assert_eq!(v["code"], 200, "{v}");
        for _ in 0..events {
            let (_, _, v) = post_json(
                &s.url("/api/v1/account/alerts/test"),
                Some(&mgr),
                &json!({}),
            )
            .await;
            assert_eq!(v["code"], 200, "{v}");
        }
        accounts.push(acc);
    }
    down.wait_for(2).await;
    up.wait_for(1).await;
    let token = s.admin(&["operator-token", "create"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    // the receiver has answered; the server records the attempt right after
    let url = s.url("/api/v1/admin/health");
    let health = std::sync::Mutex::new(Value::Null);
    let settled = eventually(Duration::from_secs(10), || async {
        let h = get_json(&url, Some(&token)).await.2["data"].clone();
        let done =
            h["backlog"]["pendingDeliveries"] == 2 && h["backlogByAccount"][0]["pending"] == 2;
        *health.lock().unwrap() = h;
        done
    })
    .await;
    let health = health.into_inner().unwrap();
    assert!(settled.is_some(), "{health}");
    assert_eq!(health["backlog"]["accountsWaiting"], 1, "{health}");
    let rows = health["backlogByAccount"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{health}");
    assert_eq!(rows[0]["account"], accounts[0].as_str());
    assert_eq!(rows[0]["name"], "down-co");
    assert_eq!(rows[0]["failed24h"], 0);
    assert!(rows[0]["oldestPendingAt"].as_i64().unwrap() > 0, "{health}");

    let url = invite(&s, &["--operator", "--email", "ops@example.com"]);
    let mut op = Visitor::new(&s);
    op.post(&url, &[("password", PW), ("confirm", PW)]).await;
    let page = op.get("/console/admin/health").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let table = &page.body[page.body.find("id=\"backlog-accounts\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    assert!(
        table.contains(&format!(
            "href=\"/console/admin/accounts/{}\">down-co<",
            accounts[0]
        )),
        "{table}"
    );
    assert!(table.contains("<td class=\"num\">2</td>"), "{table}");
    assert!(!table.contains("fine-co"), "{table}");
}

/// The operator's health page: readiness, backlog, and request and error rates over
/// the last minute from the node's request counters.
#[tokio::test]
async fn the_health_page_shows_request_and_error_rates_after_traffic() {
    let s = Server::start(Opts::default());
    let (_, key) = s.account_with_key("rates", "1");
    let url = invite(&s, &["--operator", "--email", "ops@example.com"]);
    let mut op = Visitor::new(&s);
    let p = op.post(&url, &[("password", PW), ("confirm", PW)]).await;
    assert_eq!((p.status, p.location()), (303, "/console/admin/"));
    let home = op.get("/console/admin/").await;
    assert!(
        home.body.contains("href=\"/console/admin/health\""),
        "a Health link"
    );

    // traffic: 40 good requests, 25 refused ones (401)
    for _ in 0..40 {
        let (_, _, v) = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await;
        assert_eq!(v["code"], 200);
    }
    for _ in 0..25 {
        let (_, _, v) = get_json(&s.url("/api/v1/chat/credit"), None).await;
        assert_eq!(v["code"], 401);
    }
    let page = op.get("/console/admin/health").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(text_of(&page.body, "health-ready"), "yes");
    assert!(text_of(&page.body, "health-db").contains("reachable"));
    let cell = |row: &str, class: &str| -> String {
        let r = &page.body[page.body.find(&format!("id=\"{row}\"")).unwrap()..];
        let at = r.find(&format!("class=\"{class}\">")).unwrap();
        let c = &r[at + class.len() + 9..];
        c[..c.find('<').unwrap()].to_string()
    };
    let window: f64 = text_of(&page.body, "rate-window").parse().unwrap();
    assert!((0.0..=60.0).contains(&window), "{window}");
    let requests: u64 = cell("rate-requests", "count").parse().unwrap();
    let client: u64 = cell("rate-client-errors", "count").parse().unwrap();
    let server: u64 = cell("rate-server-errors", "count").parse().unwrap();
    // this node counted at least our requests (and the console's own pages)
    assert!(requests >= 65, "{requests}: {}", page.body);
    assert!(client >= 25, "{client}");
    assert_eq!(server, 0);
    let per_sec: f64 = cell("rate-requests", "per-sec").parse().unwrap();
    assert!(per_sec > 0.0, "{per_sec}");
    let client_per_sec: f64 = cell("rate-client-errors", "per-sec").parse().unwrap();
    assert!(client_per_sec > 0.0 && client_per_sec <= per_sec);
    assert_eq!(cell("rate-server-errors", "per-sec"), "0.00");
    // account holders cannot see it
    let (mut h, _) = holder(&s, "nosy", "1").await;
    assert_eq!(h.get("/console/admin/health").await.status, 403);
}

/// The Callbacks page rolls the webhook key with a grace period: the new key is shown
/// once, the page tells until when the old one still signs.
#[tokio::test]
async fn the_callbacks_page_rolls_the_webhook_key_with_a_grace_period() {
    let s = Server::start(Opts::default());
    let (mut b, _acc) = holder(&s, "ray", "1").await;
    let page = b.get("/console/callbacks").await;
    // no key yet: no roll button
    assert!(!page.body.contains("Roll key"));
    let p = b
        .post(
            "/console/callbacks/key",
            &[("csrf", page.csrf().as_str()), ("action", "generate")],
        )
        .await;
    assert_eq!(p.status, 200);
    let old = s.admin(&["webhook-key", "show", "--account", "ray"])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let page = b.get("/console/callbacks").await;
    assert!(page.body.contains("Roll key") && page.body.contains("Grace period"));
    assert!(page.body.contains("value=\"24h\""), "24 h by default");
    let csrf = page.csrf();
    // without the token, or with a bad grace: nothing changes
    let p = b
        .post(
            "/console/callbacks/key",
            &[("action", "roll"), ("grace", "1h")],
        )
        .await;
    assert_eq!(p.status, 403);
    let p = b
        .post(
            "/console/callbacks/key",
            &[("csrf", &csrf), ("action", "roll"), ("grace", "forever")],
        )
        .await;
    assert!(p.body.contains("Grace period:"), "{}", p.body);
    let shown = |s: &Server| {
        s.admin(&["webhook-key", "show", "--account", "ray"])["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(shown(&s), old);
    // rolled: the new key shown once, the overlap stated
    let p = b
        .post(
            "/console/callbacks/key",
            &[("csrf", &csrf), ("action", "roll"), ("grace", "2h")],
        )
        .await;
    assert_eq!(p.status, 200);
    let new = shown(&s);
    assert_ne!(new, old);
    assert!(p.body.contains(&new), "the new key is shown");
    assert!(!p.body.contains(&old), "never the old one");
    assert!(p.body.contains("id=\"previous-key-overlap\""), "{}", p.body);
    let rows =
        s.sql("SELECT CAST(webhook_key_prev_until AS TEXT) FROM accounts WHERE name = 'ray'");
    let until: i64 = rows[0][0].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        until > now + 7_100_000 && until <= now + 7_200_000,
        "{until}"
    );
    let page = b.get("/console/callbacks").await;
    assert!(
        !page.body.contains(&new),
        "the plain page never carries the key"
    );
    assert!(
        page.body.contains("previous key also signs"),
        "{}",
        page.body
    );
}

/// The Overview and Files pages as JSON (`GET /api/v1/account/overview`,
/// `/api/v1/account/files`): the same figures for any key of the account, nothing of
/// another account's.
#[tokio::test]
async fn overview_and_files_are_json_endpoints_too() {
    let s = Server::start(Opts::default());
    let (_, key) = s.account_with_key("ivy", "20");
    let (_, other) = s.account_with_key("jay", "5");
    // a task that succeeds (0.50 charged today) and an upload
    let (_, _, r) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&key),
        &json!({"model": "demo/text", "input": {"prompt": "p"}}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let id = r["data"]["taskId"].as_str().unwrap().to_string();
    let info = s.url(&format!("/api/v1/jobs/recordInfo?taskId={id}"));
    let done = eventually(Duration::from_secs(30), || async {
        get_json(&info, Some(&key)).await.2["data"]["state"] == "success"
    })
    .await;
    assert!(done.is_some(), "the demo task did not finish");
    let (_, _, up) = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "aGVsbG8=", "uploadPath": "docs", "fileName": "h.txt"}),
    )
    .await;
    assert_eq!(up["code"], 200, "{up}");

    let (_, _, o) = get_json(&s.url("/api/v1/account/overview"), Some(&key)).await;
    assert_eq!(o["code"], 200, "{o}");
    let d = &o["data"];
    assert_eq!(d["available"], json!(19.5));
    assert_eq!(d["held"], json!(0));
    let days = d["spentPerDay"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["spent"], json!(0.5), "{days:?}");
    assert!(
        days[..29].iter().all(|x| x["spent"] == json!(0)),
        "{days:?}"
    );
    // 0.50 over 24 h
    assert_eq!(d["burnPerHour"], json!(0.02));
    assert!(d["projectedExhaustion"].as_i64().unwrap() > 0, "{d}");

    let (_, _, f) = get_json(&s.url("/api/v1/account/files"), Some(&key)).await;
    assert_eq!(f["code"], 200, "{f}");
    let files = f["data"].as_array().unwrap();
    let uploaded: Vec<&serde_json::Value> =
        files.iter().filter(|x| x["kind"] == "upload").collect();
    assert_eq!(uploaded.len(), 1, "{files:?}");
    assert_eq!(uploaded[0]["fileName"], "h.txt");
    assert_eq!(uploaded[0]["fileSize"], 5);
    assert_eq!(uploaded[0]["fileUrl"], up["data"]["fileUrl"]);
    // the other account sees none of it, and its own overview
    let (_, _, f) = get_json(&s.url("/api/v1/account/files"), Some(&other)).await;
    assert_eq!(f["data"], json!([]));
    let (_, _, o) = get_json(&s.url("/api/v1/account/overview"), Some(&other)).await;
    assert_eq!(o["data"]["available"], json!(5));
    // bad parameters are refused with the field named
    let (_, _, f) = get_json(&s.url("/api/v1/account/files?before=yesterday"), Some(&key)).await;
    assert_eq!(f["code"], 422, "{f}");
    assert!(f["msg"].as_str().unwrap().contains("before"), "{f}");
}
