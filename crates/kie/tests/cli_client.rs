//! The client commands of the real `kie` binary against a local mock API.

#[path = "../../kie-sdk/tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{content, Mock, Reply, TempDir};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const KEY: &str = "kie_cli_test_key_abcdef123456";
const CREDIT: &str = "/api/v1/chat/credit";

fn kie(base: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kie"));
    c.env_remove("KIE_API_KEY")
        .env_remove("KIE_WEBHOOK_KEY")
        .env_remove("KIE_UPLOAD_BASE_URL")
        .env_remove("RUST_LOG")
        .env("KIE_BASE_URL", base)
        // retries in milliseconds, not seconds
        .env("KIE_RETRY_BASE", "1ms")
        .env("KIE_RETRY_AFTER_CAP", "1ms")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

fn with_key(mut c: Command) -> Command {
    c.env("KIE_API_KEY", KEY);
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(c: &mut Command) -> Out {
    let o = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("kie did not finish")
        .unwrap();
    let out = Out {
        code: o.status.code().expect("exited"),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    };
    assert!(
        !out.stdout.contains(KEY) && !out.stderr.contains(KEY),
        "the API key leaked"
    );
    out
}

async fn run_with_stdin(c: &mut Command, input: &str) -> Out {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    Out {
        code: o.status.code().unwrap(),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    }
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test]
async fn credits_text_json_and_errors() {
    let mock = Mock::start().await;
    mock.script("GET", CREDIT, vec![Reply::fixture("credit_fractional")]);
    let o = run(with_key(kie(&mock.base)).arg("credits")).await;
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (0, "87.42\n", "")
    );
    let o = run(kie(&mock.base).args(["credits", "--json", "--api-key", KEY])).await;
    assert_eq!(o.stdout, "{\"balance\":87.42}\n");
    assert_eq!(
        mock.requests("GET", CREDIT)[1].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );

    mock.script("GET", CREDIT, vec![Reply::fixture("credit_ok")]);
    let o = run(with_key(kie(&mock.base)).args(["credits", "--json"])).await;
    assert_eq!(o.stdout, "{\"balance\":100}\n");

    mock.script("GET", CREDIT, vec![Reply::fixture("unauthorized")]);
    let o = run(with_key(kie(&mock.base)).arg("credits")).await;
    assert_eq!((o.code, o.stdout.as_str()), (1, ""));
    assert_eq!(
        o.stderr,
        "kie: unauthorized: You do not have access permissions\n"
    );

    mock.script("GET", CREDIT, vec![Reply::fixture("cloudflare_block")]);
    let o = run(with_key(kie(&mock.base)).arg("credits")).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with(
            "kie: unexpected answer (HTTP 403, not the API's JSON): error code: 1010 (blocked by Cloudflare"
        ),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.lines().count(), 1);

    let o = run(kie(&mock.base).arg("credits")).await;
    assert_eq!(
        o.stderr,
        "kie: configuration: no API key: set KIE_API_KEY or pass one (--api-key)\n"
    );
}

#[tokio::test]
async fn retries_are_visible_in_request_counts() {
    let mock = Mock::start().await;
    mock.script(
        "GET",
        CREDIT,
        vec![
            Reply::fixture("server_error"),
            Reply::fixture("rate_limited"),
            Reply::fixture("credit_ok"),
        ],
    );
    let o = run(with_key(kie(&mock.base)).arg("credits")).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "100\n"));
    assert_eq!(mock.count("GET", CREDIT), 3);

    mock.script("GET", CREDIT, vec![Reply::fixture("insufficient_credits")]);
    let o = run(with_key(kie(&mock.base)).args(["credits", "--max-retries", "5"])).await;
    assert_eq!(
        o.stderr,
        "kie: insufficient credits: Credits insufficient\n"
    );
    assert_eq!(mock.count("GET", CREDIT), 4, "a 402 is asked once");
}

#[tokio::test]
async fn link_prints_the_temporary_link() {
    let mock = Mock::start().await;
    let file_url = format!("{}/files/a.png", mock.base);
    let o = run(with_key(kie(&mock.base)).args(["link", &file_url, "--json"])).await;
    assert_eq!(
        json_of(&o.stdout),
        json!({"url": format!("{}/links/t1/a.png", mock.base)})
    );
    let o = run(with_key(kie(&mock.base)).args(["link", &file_url])).await;
    assert_eq!(o.stdout, format!("{}/links/t2/a.png\n", mock.base));

    mock.script(
        "POST",
        "/api/v1/common/download-url",
        vec![Reply::fixture("download_url_external")],
    );
    let o = run(with_key(kie(&mock.base)).args(["link", "https://elsewhere.example/x.png"])).await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "kie: invalid request: Invalid URL: external file URLs are not supported\n"
        )
    );
}

#[tokio::test]
async fn download_respects_jobs_and_prints_the_json_array() {
    let mock = Mock::start().await;
    let urls: Vec<String> = (0..4)
        .map(|i| mock.add_file(&format!("f{i}.bin"), content(2000 + i, i as u8)))
        .collect();
    mock.hold_file_gets_in_groups_of(2);
    let dir = TempDir::new("cli-dl-jobs");
    let out = dir.path().join("out");
    let mut c = kie(&mock.base);
    c.args(["download", "-j", "2", "--json", "-o", out.to_str().unwrap()])
        .args(&urls);
    let o = run(&mut c).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(mock.max_in_flight(), 2);
    let want: Vec<Value> = (0..4)
        .map(|i| {
            json!({
                "url": urls[i],
                "path": out.join(format!("f{i}.bin")).to_str().unwrap(),
                "bytes": 2000 + i,
                "ok": true,
                "error": null,
            })
        })
        .collect();
    assert_eq!(json_of(&o.stdout), Value::Array(want));
    for i in 0..4 {
        assert_eq!(
            std::fs::read(out.join(format!("f{i}.bin"))).unwrap(),
            content(2000 + i, i as u8)
        );
    }
    assert_eq!(
        o.stderr, "",
        "no progress bars when stderr is not a terminal"
    );
}

#[tokio::test]
async fn download_list_with_blanks_duplicates_and_a_failure() {
    let mock = Mock::start().await;
    let a = mock.add_file("a.bin", content(1500, 1));
    let b = mock.add_file("b.bin", content(2500, 2));
    let missing = format!("{}/files/missing.bin", mock.base);
    let list = format!("{a}\n\n   \n# a comment\n{missing}\n{b}\n{a}\n");
    let dir = TempDir::new("cli-dl-list");
    let mut c = kie(&mock.base);
    c.args([
        "download",
        "-i",
        "-",
        "--json",
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    let o = run_with_stdin(&mut c, &list).await;
    assert_eq!(o.code, 1);
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    assert_eq!(
        json_of(&o.stdout),
        json!([
            {"url": a, "path": p("a.bin"), "bytes": 1500, "ok": true, "error": null},
            {"url": missing, "path": p("missing.bin"), "bytes": 0, "ok": false,
             "error": format!("HTTP 404 from {missing}")},
            {"url": b, "path": p("b.bin"), "bytes": 2500, "ok": true, "error": null},
        ])
    );
    assert_eq!(
        o.stderr,
        format!("kie: {missing}: HTTP 404 from {missing}\nkie: 1 of 3 files failed\n")
    );
    assert_eq!(
        mock.count("GET", "/files/a.bin"),
        1,
        "duplicates fetched once"
    );
    assert!(
        !dir.path().join("missing.bin").exists() && !dir.path().join("missing.bin.part").exists()
    );

    // a second run skips what is complete
    let mut c = kie(&mock.base);
    c.args(["download", "-o", dir.path().to_str().unwrap(), &a, &b]);
    let o = run(&mut c).await;
    assert_eq!(o.code, 0);
    assert_eq!(
        o.stdout,
        format!(
            "{}\t1500 bytes\talready complete\n{}\t2500 bytes\talready complete\n",
            p("a.bin"),
            p("b.bin")
        )
    );
    assert_eq!(
        (
            mock.count("GET", "/files/a.bin"),
            mock.count("GET", "/files/b.bin")
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn download_refreshes_expired_links_and_resumes_cut_transfers() {
    let mock = Mock::start().await;
    let data = content(40_000, 3);
    mock.add_file("v.mp4", data.clone());
    mock.cut("v.mp4", 1, 10_000);
    let expired = mock.expired_link("v.mp4");
    let dir = TempDir::new("cli-dl-refresh");
    let o = run(with_key(kie(&mock.base)).args([
        "download",
        "-o",
        dir.path().to_str().unwrap(),
        &expired,
    ]))
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        format!(
            "{}\t40000 bytes\tresumed\n",
            dir.path().join("v.mp4").display()
        )
    );
    assert_eq!(std::fs::read(dir.path().join("v.mp4")).unwrap(), data);
    let gets = mock.requests("GET", "/links/t1/v.mp4");
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].header("range"), Some("bytes=10000-"));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn download_reports_a_full_disk() {
    let mock = Mock::start().await;
    let url = mock.add_file("big.bin", content(100_000, 4));
    let dir = TempDir::new("cli-dl-full");
    let part = dir.path().join("big.bin.part");
    std::os::unix::fs::symlink("/dev/full", &part).unwrap();
    let o = run(kie(&mock.base).args(["download", "-o", dir.path().to_str().unwrap(), &url])).await;
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        format!(
            "kie: {url}: disk full while writing {}\nkie: 1 of 1 files failed\n",
            part.display()
        )
    );
    assert!(!dir.path().join("big.bin").exists());
}

#[tokio::test]
async fn download_without_urls_is_an_error() {
    let o = run(kie("http://127.0.0.1:1").args(["download", "-o", "/nonexistent"])).await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "kie: no URLs to download (give them as arguments or with -i FILE)\n"
        )
    );
}

#[tokio::test]
async fn monitor_once_exit_status_follows_the_level() {
    let mock = Mock::start().await;
    for (reply, code) in [
        (Reply::ok(json!(100)), 0),
        (Reply::ok(json!(40)), 1),
        (Reply::ok(json!(5.5)), 2),
        (Reply::fixture("server_error"), 3),
        (Reply::fixture("unauthorized"), 3),
    ] {
        mock.script("GET", CREDIT, vec![reply]);
        let o = run(with_key(kie(&mock.base)).args([
            "monitor",
            "--once",
            "--warn",
            "50",
            "--critical",
            "10",
            "--max-retries",
            "0",
        ]))
        .await;
        assert_eq!(o.code, code, "stdout {} stderr {}", o.stdout, o.stderr);
    }
    mock.script("GET", CREDIT, vec![Reply::ok(json!(40))]);
    let o =
        run(with_key(kie(&mock.base)).args(["monitor", "--once", "--json", "--warn", "50"])).await;
    let mut v = json_of(&o.stdout);
    v.as_object_mut()
        .unwrap()
        .remove("time")
        .expect("time field");
    assert_eq!(
        v,
        json!({"balance": 40, "level": "warn", "burnPerHour": null, "etaSeconds": null, "alert": "warn"})
    );
    // a bad configuration is an error, not a level
    let o = run(with_key(kie(&mock.base)).args([
        "monitor",
        "--once",
        "--warn",
        "5",
        "--critical",
        "10",
    ]))
    .await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (1, "kie: --critical (10) must not be above --warn (5)\n")
    );
}

#[tokio::test]
async fn monitor_alerts_once_per_crossing_and_once_on_recovery() {
    let mock = Mock::start().await;
    let balances = [
        json!(100),
        json!(60),
        json!(40),
        Value::Null,
        json!(30),
        json!(5),
        json!(4),
        json!(50),
        json!(70),
    ];
    let replies = balances
        .iter()
        .map(|b| {
            if b.is_null() {
                Reply::fixture("server_error")
            } else {
                Reply::ok(b.clone())
            }
        })
        .collect();
    mock.script("GET", CREDIT, replies);
    let dir = TempDir::new("cli-monitor");
    let log = dir.path().join("alerts.log");
    let exec = format!(
        "printf '%s %s %s %s %s\\n' \"$KIE_EVENT\" \"$KIE_LEVEL\" \"$KIE_PREVIOUS_LEVEL\" \"$KIE_BALANCE\" \"${{KIE_API_KEY:-nokey}}\" >> '{}'",
        log.display()
    );
    let alert_url = format!("{}/alerts", mock.base);
    let mut c = with_key(kie(&mock.base));
    c.args([
        "monitor",
        "--interval",
        "1ms",
        "--max-polls",
        "9",
        "--max-retries",
        "0",
        "--json",
    ])
    .args([
        "--warn",
        "50",
        "--critical",
        "10",
        "--exec",
        &exec,
        "--alert-url",
        &alert_url,
    ]);
    let o = run(&mut c).await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let lines: Vec<Value> = o.stdout.lines().map(json_of).collect();
    let levels: Vec<&str> = lines.iter().map(|l| l["level"].as_str().unwrap()).collect();
    assert_eq!(
        levels,
        ["ok", "ok", "warn", "unknown", "warn", "critical", "critical", "ok", "ok"]
    );
    let alerts: Vec<Value> = lines
        .iter()
        .map(|l| l.get("alert").cloned().unwrap_or(Value::Null))
        .collect();
    assert_eq!(
        alerts,
        [
            Value::Null,
            Value::Null,
            json!("warn"),
            Value::Null,
            Value::Null,
            json!("critical"),
            Value::Null,
            json!("recovered"),
            Value::Null
        ]
    );
    assert_eq!(
        o.stderr,
        "kie: cannot read the balance: server error: Server error\n"
    );

    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "warn warn ok 40 nokey\ncritical critical warn 5 nokey\nrecovered ok critical 50 nokey\n"
    );
    let posted: Vec<(String, Value, String)> = mock
        .posted()
        .iter()
        .map(|p| {
            (
                p["event"].as_str().unwrap().to_string(),
                p["balance"].clone(),
                p["level"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        posted,
        vec![
            ("warn".into(), json!(40), "warn".into()),
            ("critical".into(), json!(5), "critical".into()),
            ("recovered".into(), json!(50), "ok".into())
        ]
    );
    // burn rate and time to exhaustion appear once there are two readings
    assert!(lines[1]["burnPerHour"].as_f64().unwrap() > 0.0);
    assert!(lines[1]["etaSeconds"].is_u64());
}

fn vs(v: &Value, p: &str) -> String {
    v.pointer(p).unwrap().as_str().unwrap().to_string()
}

#[tokio::test]
async fn webhook_verify_against_the_vectors() {
    let v = common::webhook_vectors();
    let dir = TempDir::new("cli-verify");
    let body = dir.path().join("body.json");
    std::fs::write(&body, vs(&v, "/body")).unwrap();
    let (key, ts, task) = (vs(&v, "/key"), vs(&v, "/timestamp"), vs(&v, "/taskId"));
    let verify = |extra: &[&str]| {
        let mut c = kie("http://127.0.0.1:1");
        c.args([
            "webhook",
            "verify",
            "--key",
            &key,
            "--timestamp",
            &ts,
            "--now",
            &ts,
        ])
        .args(extra);
        c
    };
    let body_s = body.to_str().unwrap();
    let kie_sig = vs(&v, "/kie_signature");

    let o = run(&mut verify(&["--signature", &kie_sig, "--body", body_s])).await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, format!("valid (kie, task {task})\n").as_str())
    );
    let o = run(&mut verify(&["--signature", &kie_sig, "--task-id", &task])).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (id, std_sig) = (vs(&v, "/webhook_id"), vs(&v, "/standard_signature"));
    let std_args = [
        "--webhook-id",
        id.as_str(),
        "--standard-signature",
        std_sig.as_str(),
    ];
    let o = run(verify(&["--body", body_s]).args(std_args)).await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, format!("valid (standard, task {task})\n").as_str())
    );
    let o =
        run(verify(&["--signature", &kie_sig, "--body", body_s, "--json"]).args(std_args)).await;
    assert_eq!(o.code, 0);
    assert_eq!(
        json_of(&o.stdout),
        json!({"valid": true, "taskId": task, "schemes": ["kie", "standard"], "error": null})
    );
    // the body from standard input
    let o = run_with_stdin(
        &mut verify(&["--signature", &kie_sig, "--body", "-"]),
        &vs(&v, "/body"),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    let neg = |n: &str| vs(&v, &format!("/negative/{n}"));
    for (args, reason) in [
        (
            vec![
                "--signature".to_string(),
                neg("kie_signature_other_task"),
                "--body".into(),
                body_s.into(),
            ],
            "signature does not match",
        ),
        (
            vec![
                "--signature".to_string(),
                neg("kie_signature_other_timestamp"),
                "--task-id".into(),
                task.clone(),
            ],
            "signature does not match",
        ),
        (
            vec![
                "--body".to_string(),
                body_s.into(),
                "--webhook-id".into(),
                id.clone(),
                "--standard-signature".into(),
                neg("standard_signature_tampered_body"),
            ],
            "signature does not match",
        ),
        (
            vec![
                "--signature".to_string(),
                kie_sig.clone(),
                "--body".into(),
                body_s.into(),
                "--task-id".into(),
                "other".into(),
            ],
            "task ids in the body disagree",
        ),
    ] {
        let o = run(&mut verify(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
        .await;
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (1, "", format!("kie: invalid: {reason}\n").as_str()),
            "{args:?}"
        );
    }
    // today is far from the recorded timestamp
    let mut c = kie("http://127.0.0.1:1");
    c.args([
        "webhook",
        "verify",
        "--key",
        &key,
        "--timestamp",
        &ts,
        "--signature",
        &kie_sig,
        "--body",
        body_s,
    ]);
    let o = run(&mut c).await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (1, "kie: invalid: timestamp outside the tolerance\n")
    );
    c.arg("--json");
    let o = run(&mut c).await;
    assert_eq!(
        json_of(&o.stdout),
        json!({"valid": false, "taskId": null, "schemes": ["kie"], "error": "timestamp outside the tolerance"})
    );
}

#[tokio::test]
async fn webhook_listen_verifies_and_prints_each_delivery() {
    let v = common::webhook_vectors();
    let key = vs(&v, "/key");
    let mut child = kie("http://127.0.0.1:1")
        .args(["webhook", "listen", "--port", "0", "--json", "--key", &key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let wait = Duration::from_secs(30);
    let first = tokio::time::timeout(wait, stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("kie: listening on ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();

    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = vs(&v, "/body");
    let task = vs(&v, "/taskId");
    let http = reqwest::Client::new();
    let post = |kie_sig: String, id: &str| {
        http.post(format!("{url}kie/callback"))
            .header("x-webhook-timestamp", &ts)
            .header("x-webhook-signature", kie_sig)
            .header("webhook-id", id)
            .header("webhook-timestamp", &ts)
            .header(
                "webhook-signature",
                kie_wire::webhook::standard_signature(&key, id, &ts, body.as_bytes()),
            )
            .body(body.clone())
            .send()
    };
    let good = kie_wire::webhook::kie_signature(&key, &task, &ts);
    assert_eq!(post(good.clone(), "msg_a").await.unwrap().status(), 200);
    let line = tokio::time::timeout(wait, stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let got = json_of(&line);
    assert_eq!(
        (
            got["taskId"].clone(),
            got["webhookId"].clone(),
            got["schemes"].clone(),
            got["body"]["data"]["state"].clone()
        ),
        (
            json!(task),
            json!("msg_a"),
            json!(["kie", "standard"]),
            json!("success")
        )
    );
    assert_eq!(post(good.clone(), "msg_a").await.unwrap().status(), 409);
    assert_eq!(post("AAAA".into(), "msg_b").await.unwrap().status(), 401);
    let rejected = tokio::time::timeout(wait, stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        rejected,
        "kie: rejected a delivery: webhook-id already seen (replay)"
    );
    let rejected = tokio::time::timeout(wait, stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        rejected,
        "kie: rejected a delivery: signature does not match"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

fn record(base: &Value, state: &str, result_json: &str) -> Reply {
    let mut b = base.clone();
    b["data"]["state"] = json!(state);
    b["data"]["resultJson"] = json!(result_json);
    Reply::json(200, b)
}

#[tokio::test]
async fn task_create_get_wait_and_download() {
    let mock = Mock::start().await;
    mock.script(
        "POST",
        "/api/v1/jobs/createTask",
        vec![Reply::fixture("create_task_ok")],
    );
    let o = run(with_key(kie(&mock.base)).args([
        "task",
        "create",
        "--model",
        "demo/image",
        "--input",
        r#"{"prompt":"a fox"}"#,
    ]))
    .await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "task_google_1765178608584\n")
    );
    let sent: Value =
        serde_json::from_slice(&mock.requests("POST", "/api/v1/jobs/createTask")[0].body).unwrap();
    assert_eq!(
        sent,
        json!({"model": "demo/image", "input": {"prompt": "a fox"}})
    );
    let o =
        run(with_key(kie(&mock.base)).args(["task", "create", "--model", "m", "--input", "[1]"]))
            .await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (1, "kie: --input must be a JSON object\n")
    );

    let path = "/api/v1/jobs/recordInfo";
    let base_rec = common::fixtures()["record_info_success"]["body"].clone();
    mock.script("GET", path, vec![Reply::fixture("record_info_success")]);
    let o = run(with_key(kie(&mock.base)).args([
        "task",
        "get",
        "e989621f54392584b05867f87b160672",
        "--json",
    ]))
    .await;
    let mut want = base_rec["data"].clone();
    want["creditsConsumed"] = json!(100);
    want["remainedCredits"] = json!(0);
    assert_eq!(json_of(&o.stdout), want);

    let data = content(3000, 9);
    let file_url = mock.add_file("fox.png", data.clone());
    let result = json!({"resultUrls": [file_url]}).to_string();
    mock.script(
        "GET",
        path,
        vec![
            record(&base_rec, "waiting", ""),
            record(&base_rec, "generating", ""),
            record(&base_rec, "success", &result),
        ],
    );
    let dir = TempDir::new("cli-task");
    let o = run(with_key(kie(&mock.base)).args([
        "task",
        "wait",
        "t1",
        "--interval",
        "1ms",
        "--download",
        dir.path().to_str().unwrap(),
    ]))
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("state    success\n"), "{}", o.stdout);
    assert!(
        o.stdout
            .ends_with(&format!("saved {}\n", dir.path().join("fox.png").display())),
        "{}",
        o.stdout
    );
    assert_eq!(std::fs::read(dir.path().join("fox.png")).unwrap(), data);

    mock.script("GET", path, vec![Reply::fixture("record_info_fail")]);
    let o = run(with_key(kie(&mock.base)).args(["task", "wait", "bd3a0000", "--interval", "1ms"]))
        .await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (1, "kie: task bd3a0000 failed: 500 Internal server error\n")
    );

    mock.script("GET", path, vec![record(&base_rec, "generating", "")]);
    let o = run(with_key(kie(&mock.base)).args([
        "task",
        "wait",
        "slow",
        "--interval",
        "1ms",
        "--timeout",
        "20ms",
    ]))
    .await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "kie: task slow did not finish within 0.02s (last state: generating)\n"
        )
    );
}

#[tokio::test]
async fn upload_variants() {
    let mock = Mock::start().await;
    let dir = TempDir::new("cli-upload");
    let file = dir.path().join("cat.png");
    std::fs::write(&file, b"not really a png").unwrap();
    let f = file.to_str().unwrap();
    let o =
        run(with_key(kie(&mock.base)).args(["upload", f, "--path", "/images/user-uploads/"])).await;
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (
            0,
            "https://tempfile.redpandaai.co/xxx/images/user-uploads/x.png\n"
        )
    );
    let fields: Value =
        serde_json::from_slice(&mock.requests("POST", "/api/file-stream-upload")[0].body).unwrap();
    assert_eq!(
        fields,
        json!({"file": "not really a png", "file.filename": "cat.png", "uploadPath": "images/user-uploads", "fileName": "cat.png"})
    );

    let o = run(with_key(kie(&mock.base)).args([
        "upload", f, "--path", "p", "--name", "n.png", "--base64", "--json",
    ]))
    .await;
    assert_eq!(
        json_of(&o.stdout),
        common::fixtures()["upload_ok"]["body"]["data"]
    );
    let sent: Value =
        serde_json::from_slice(&mock.requests("POST", "/api/file-base64-upload")[0].body).unwrap();
    assert_eq!(
        sent,
        json!({"base64Data": "bm90IHJlYWxseSBhIHBuZw==", "uploadPath": "p", "fileName": "n.png"})
    );

    let o = run(with_key(kie(&mock.base)).args([
        "upload",
        "https://example.com/x.jpg",
        "--path",
        "p",
        "--url",
    ]))
    .await;
    assert_eq!(o.code, 0);
    let sent: Value =
        serde_json::from_slice(&mock.requests("POST", "/api/file-url-upload")[0].body).unwrap();
    assert_eq!(
        sent,
        json!({"fileUrl": "https://example.com/x.jpg", "uploadPath": "p"})
    );

    mock.script(
        "POST",
        "/api/file-stream-upload",
        vec![Reply::fixture("upload_missing_path")],
    );
    let o = run(with_key(kie(&mock.base)).args(["upload", f, "--path", "p"])).await;
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "kie: invalid request: Missing required parameter: uploadPath\n"
        )
    );
}

#[tokio::test]
async fn help_never_shows_the_key() {
    let o = run(with_key(kie("http://127.0.0.1:1")).args(["credits", "--help"])).await;
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("--api-key"));
}

/// One batch hitting every kind of bad answer: each file gets its own clear message,
/// the good one still arrives, nothing half-written sits under a final name, and a
/// cut transfer keeps its `.part` for the next run to resume.
#[tokio::test]
async fn download_bad_answers_each_get_a_clear_message() {
    let mock = Mock::start().await;
    let good = mock.add_file("good.bin", content(3000, 1));
    let cut = mock.add_file("cut.bin", content(20_000, 2));
    mock.cut("cut.bin", 100, 5000);
    let html = mock.add_file("html.bin", content(10, 3));
    mock.script(
        "GET",
        "/files/html.bin",
        vec![Reply {
            status: 502,
            headers: vec![],
            content_type: "text/html".into(),
            body: b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
        }],
    );
    // an expired link whose refresh meets a Cloudflare block page
    let expired = mock.expired_link("gone.bin");
    mock.script(
        "POST",
        "/api/v1/common/download-url",
        vec![Reply::fixture("cloudflare_block")],
    );
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/files/dead.bin", l.local_addr().unwrap())
    };
    let dir = TempDir::new("cli-dl-bad");
    let list = format!("{good}\n\n{cut}\n{html}\n  {expired}\n{dead}\n{good}\n");
    let mut c = with_key(kie(&mock.base));
    c.args([
        "download",
        "-i",
        "-",
        "--json",
        "-j",
        "3",
        "--max-retries",
        "1",
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    let o = run_with_stdin(&mut c, &list).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let v = json_of(&o.stdout);
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 5, "{v}");
    assert_eq!(
        arr[0],
        json!({"url": good, "path": p("good.bin"), "bytes": 3000, "ok": true, "error": null})
    );
    assert_eq!(
        arr[1],
        json!({"url": cut, "path": p("cut.bin"), "bytes": 10_000, "ok": false,
               "error": "transfer incomplete: received 10000 of 20000 bytes"})
    );
    assert_eq!(
        arr[2],
        json!({"url": html, "path": p("html.bin"), "bytes": 0, "ok": false,
               "error": format!("HTTP 502 from {html}")})
    );
    let e3 = arr[3]["error"].as_str().unwrap();
    assert!(
        e3.starts_with(
            "link refused (HTTP 403, expired?) and no fresh link could be had: \
             unexpected answer (HTTP 403, not the API's JSON): error code: 1010"
        ),
        "{e3}"
    );
    assert_eq!(
        (&arr[3]["ok"], &arr[3]["path"], &arr[3]["bytes"]),
        (&json!(false), &json!(p("gone.bin")), &json!(0))
    );
    let e4 = arr[4]["error"].as_str().unwrap();
    assert!(
        e4.starts_with("transport error: ") && e4.contains("onnect"),
        "{e4}"
    );
    assert_eq!(arr[4]["ok"], false);
    // one line per failed file, then the count
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{}", o.stderr);
    assert_eq!(
        lines[0],
        format!("kie: {cut}: transfer incomplete: received 10000 of 20000 bytes")
    );
    assert_eq!(lines[1], format!("kie: {html}: HTTP 502 from {html}"));
    assert!(lines[2].starts_with(&format!("kie: {expired}: link refused")));
    assert!(lines[3].starts_with(&format!("kie: {dead}: transport error: ")));
    assert_eq!(lines[4], "kie: 4 of 5 files failed");
    assert!(!o.stderr.contains(KEY));
    // final names only for complete files; the cut one waits in .part
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cut.bin.part", "cut.bin.part.meta", "good.bin"]);
    assert_eq!(
        std::fs::read(dir.path().join("cut.bin.part")).unwrap(),
        content(20_000, 2)[..10_000]
    );

    // the connection behaves again: the next run continues from byte 10000 (two
    // attempts of 5000 bytes each were kept)
    mock.cut("cut.bin", 0, 0);
    let o = run(kie(&mock.base).args(["download", "-o", dir.path().to_str().unwrap(), &cut])).await;
    assert_eq!(
        (o.code, o.stdout, o.stderr.as_str()),
        (0, format!("{}\t20000 bytes\tresumed\n", p("cut.bin")), "")
    );
    assert_eq!(
        std::fs::read(dir.path().join("cut.bin")).unwrap(),
        content(20_000, 2)
    );
    let gets = mock.requests("GET", "/files/cut.bin");
    assert_eq!(gets.last().unwrap().header("range"), Some("bytes=10000-"));
}

/// API answers that are not the API's: an HTML page with HTTP 200, JSON of the wrong
/// shape, an empty body. One clear line each, exit 1, nothing on stdout.
#[tokio::test]
async fn garbage_answers_are_one_clear_line() {
    let mock = Mock::start().await;
    let cases = [
        (
            Reply {
                status: 200,
                headers: vec![],
                content_type: "text/html; charset=UTF-8".into(),
                body: b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>\n<body>Checking your browser</body></html>".to_vec(),
            },
            "kie: unexpected answer (HTTP 200, not the API's JSON): ",
            "kie: unexpected answer (HTTP 200, not the API's JSON): <!DOCTYPE html><html><head>\
             <title>Just a moment...</title></head> <body>Checking your browser</body></html>\n",
        ),
        (
            Reply::json(200, json!({"code": 200, "msg": "success", "data": "lots"})),
            "kie: invalid response: unexpected `data`",
            "kie: invalid response: unexpected `data`: the link \"lots\" is not an http(s) URL\n",
        ),
        (
            Reply::json(200, json!([1, 2, 3])),
            "kie: unexpected answer (HTTP 200, not the API's JSON): [1,2,3]",
            "kie: unexpected answer (HTTP 200, not the API's JSON): [1,2,3]\n",
        ),
        (
            Reply {
                status: 200,
                headers: vec![],
                content_type: "application/json".into(),
                body: vec![],
            },
            "kie: unexpected answer (HTTP 200, not the API's JSON): (empty body)",
            "kie: unexpected answer (HTTP 200, not the API's JSON): (empty body)\n",
        ),
    ];
    for (reply, prefix, link_err) in cases {
        mock.script("GET", CREDIT, vec![reply.clone()]);
        let o = run(with_key(kie(&mock.base)).args(["credits", "--max-retries", "0"])).await;
        assert_eq!((o.code, o.stdout.as_str()), (1, ""), "{reply:?}");
        assert!(o.stderr.starts_with(prefix), "{reply:?}: {}", o.stderr);
        assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
        mock.script("POST", "/api/v1/common/download-url", vec![reply.clone()]);
        let o = run(with_key(kie(&mock.base)).args([
            "link",
            "https://x/files/a",
            "--max-retries",
            "0",
        ]))
        .await;
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (1, "", link_err),
            "{reply:?}"
        );
    }
}
