//! The client commands of the real `kie` binary, run as a user would, against a real
//! `kie serve` (SQLite, or PostgreSQL with `KIE_TEST_BACKEND=postgres`): credits,
//! links, batch downloads, tasks with the demo models, uploads, monitor exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{client, eventually, wait_for_credit, Opts, Server, TempDir, KIE};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `kie ARGS` against `base` with `key` (or none) and, when given, `stdin`.
fn kie_at(base: &str, key: Option<&str>, args: &[&str], stdin: Option<&str>) -> Out {
    let mut c = Command::new(KIE);
    c.args(args)
        .env_remove("KIE_API_KEY")
        .env_remove("KIE_UPLOAD_BASE_URL")
        .env_remove("KIE_WEBHOOK_KEY")
        .env_remove("RUST_LOG")
        .env("KIE_BASE_URL", base)
        .env("KIE_RETRY_BASE", "1ms")
        .env("KIE_RETRY_AFTER_CAP", "1ms")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = key {
        c.env("KIE_API_KEY", k);
    }
    let mut child = c.spawn().expect("spawn kie");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(input.as_bytes()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let out = Out {
        code: o.status.code().expect("kie exited with a status"),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    };
    if let Some(k) = key {
        assert!(
            !out.stdout.contains(k) && !out.stderr.contains(k),
            "the API key leaked: {} {}",
            out.stdout,
            out.stderr
        );
    }
    out
}

fn kie(s: &Server, key: Option<&str>, args: &[&str]) -> Out {
    kie_at(&s.base, key, args, None)
}

fn json_of(o: &Out) -> Value {
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            o.stdout, o.stderr
        )
    })
}

/// Deterministic, non-repeating-looking bytes.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

/// Stores `bytes` as `name` for `account` with `kie admin file add`; returns the file URL.
fn add_file(s: &Server, account: &str, name: &str, bytes: &[u8]) -> String {
    let src = s
        .tmp()
        .path()
        .join(format!("src-{}", rand::random::<u64>()));
    std::fs::write(&src, bytes).unwrap();
    let f = s.admin(&[
        "file",
        "add",
        "--account",
        account,
        src.to_str().unwrap(),
        "--name",
        name,
    ]);
    f["url"].as_str().unwrap().to_string()
}

/// Every name in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn path_in(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_link_wrong_key_and_unreachable_server() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("cli-credits", "12.5");

    let o = kie(&s, Some(&key), &["credits"]);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (0, "12.5\n", "")
    );
    s.admin(&["credits", "deduct", "--account", &acc, "--amount", "0.02"]);
    // PostgreSQL: another process's change reaches the node within its stated bound
    wait_for_credit(&s, &key, &json!(12.48)).await;
    let o = kie(&s, Some(&key), &["credits", "--json"]);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (0, "{\"balance\":12.48}\n", "")
    );

    // a key of the right shape that the server does not know: one line, exit 1
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    for args in [
        &["credits"][..],
        &["credits", "--json"],
        &["link", "http://x/y"],
    ] {
        let o = kie(&s, Some(&wrong), args);
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (
                1,
                "",
                "kie: unauthorized: You do not have access permissions\n"
            ),
            "{args:?}"
        );
    }
    // no key at all is refused before any request
    let o = kie(&s, None, &["credits"]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "kie: configuration: no API key: set KIE_API_KEY or pass one (--api-key)\n"
        )
    );

    // nothing listening: a transport error on one line, after the retries
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let o = kie_at(&dead, Some(&key), &["credits", "--max-retries", "1"], None);
    assert_eq!((o.code, o.stdout.as_str()), (1, ""));
    assert!(
        o.stderr.starts_with("kie: transport error: ") && o.stderr.contains("onnect"),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);

    // links: the temporary link serves the stored bytes without a key
    let bytes = pattern(70_000, 3);
    let url = add_file(&s, &acc, "report 1.pdf", &bytes);
    let o = kie(&s, Some(&key), &["link", &url, "--json"]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let v = json_of(&o);
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let link = v["url"].as_str().unwrap().to_string();
    let id = url.split('/').nth_back(1).unwrap();
    assert!(
        link.starts_with(&format!("{}/links/{id}/report%201.pdf?", s.base)),
        "{link}"
    );
    let got = client().get(&link).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &bytes[..]);

    let o = kie(&s, Some(&key), &["link", &url]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.starts_with(&format!("{}/links/{id}/", s.base)));
    assert_eq!(o.stdout.lines().count(), 1);

    // another account's file and an external host
    let (_, other_key) = s.account_with_key("cli-other", "1");
    let o = kie(&s, Some(&other_key), &["link", &url]);
    assert_eq!((o.code, o.stdout.as_str()), (1, ""));
    assert!(o.stderr.starts_with("kie: not found: "), "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1);
    let o = kie(
        &s,
        Some(&key),
        &["link", "https://example.com/files/a/b.png"],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with("kie: invalid request: ") && o.stderr.contains("xternal"),
        "{}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn download_batches_skip_resume_and_report_per_file() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("cli-dl", "5");
    let a = pattern(1_300_000, 1);
    let b = pattern(1, 2);
    let c = pattern(250_000, 3);
    let ua = add_file(&s, &acc, "a.bin", &a);
    let ub = add_file(&s, &acc, "b.txt", &b);
    let uc = add_file(&s, &acc, "c d.png", &c);
    let tmp = TempDir::new();
    let dir = tmp.path().join("out");
    let d = dir.to_str().unwrap();

    let o = kie(
        &s,
        Some(&key),
        &["download", "-j", "4", "-o", d, "--json", &ua, &ub, &uc],
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{}", o.stdout);
    assert_eq!(
        json_of(&o),
        json!([
            {"url": ua, "path": path_in(&dir, "a.bin"), "bytes": a.len(), "ok": true, "error": null},
            {"url": ub, "path": path_in(&dir, "b.txt"), "bytes": 1, "ok": true, "error": null},
            {"url": uc, "path": path_in(&dir, "c d.png"), "bytes": c.len(), "ok": true, "error": null},
        ])
    );
    assert_eq!(listing(&dir), ["a.bin", "b.txt", "c d.png"]);
    assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b);
    assert_eq!(std::fs::read(dir.join("c d.png")).unwrap(), c);

    // a second run fetches nothing: every file is already complete
    let before = std::fs::metadata(dir.join("a.bin"))
        .unwrap()
        .modified()
        .unwrap();
    let o = kie(&s, Some(&key), &["download", "-o", d, &ua, &ub, &uc]);
    assert_eq!(
        (o.code, o.stdout, o.stderr.as_str()),
        (
            0,
            format!(
                "{}\t{} bytes\talready complete\n{}\t1 bytes\talready complete\n{}\t{} bytes\talready complete\n",
                path_in(&dir, "a.bin"),
                a.len(),
                path_in(&dir, "b.txt"),
                path_in(&dir, "c d.png"),
                c.len()
            ),
            ""
        )
    );
    let after = std::fs::metadata(dir.join("a.bin"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a complete file was rewritten");

    // a list on stdin with blanks, comments, surrounding spaces and duplicates; one
    // unknown file: it fails alone, the others arrive, the exit status says so
    let dir2 = tmp.path().join("out2");
    let d2 = dir2.to_str().unwrap();
    let missing = format!("{}/files/{}/missing.bin", s.base, "ab".repeat(16));
    let list = format!("\n  {ua}  \n\n# a comment\n{missing}\n{ua}\n   \n{uc}\n{missing}\n");
    let o = kie_at(
        &s.base,
        Some(&key),
        &["download", "-i", "-", "-o", d2, "-j", "2", "--json"],
        Some(&list),
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    let v = json_of(&o);
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    assert_eq!(
        v[0],
        json!({"url": ua, "path": path_in(&dir2, "a.bin"), "bytes": a.len(), "ok": true, "error": null})
    );
    assert_eq!(
        v[2],
        json!({"url": uc, "path": path_in(&dir2, "c d.png"), "bytes": c.len(), "ok": true, "error": null})
    );
    let err = format!("HTTP 404 from {missing}");
    assert_eq!(
        v[1],
        json!({"url": missing, "path": path_in(&dir2, "missing.bin"), "bytes": 0, "ok": false, "error": err})
    );
    assert_eq!(
        o.stderr,
        format!("kie: {missing}: {err}\nkie: 1 of 3 files failed\n")
    );
    // nothing under the failed file's name, no leftovers
    assert_eq!(listing(&dir2), ["a.bin", "c d.png"]);
    assert_eq!(std::fs::read(dir2.join("a.bin")).unwrap(), a);

    // an interrupted earlier run: half of the file in .part with the validator the
    // server gave; the rest is fetched with Range/If-Range
    let dir3 = tmp.path().join("out3");
    std::fs::create_dir_all(&dir3).unwrap();
    let head = client().head(&ua).send().await.unwrap();
    let etag = head.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"'), "strong ETag expected: {etag}");
    std::fs::write(dir3.join("a.bin.part"), &a[..600_000]).unwrap();
    std::fs::write(
        dir3.join("a.bin.part.meta"),
        serde_json::to_vec(&json!({ "validator": etag })).unwrap(),
    )
    .unwrap();
    let o = kie(
        &s,
        Some(&key),
        &["download", "-o", dir3.to_str().unwrap(), &ua],
    );
    assert_eq!(
        (o.code, o.stdout, o.stderr.as_str()),
        (
            0,
            format!("{}\t{} bytes\tresumed\n", path_in(&dir3, "a.bin"), a.len()),
            ""
        )
    );
    assert_eq!(std::fs::read(dir3.join("a.bin")).unwrap(), a);
    assert_eq!(listing(&dir3), ["a.bin"]);

    // a .part whose validator no longer matches (the file changed): started over
    let dir4 = tmp.path().join("out4");
    std::fs::create_dir_all(&dir4).unwrap();
    std::fs::write(dir4.join("c d.png.part"), vec![0u8; 1000]).unwrap();
    std::fs::write(
        dir4.join("c d.png.part.meta"),
        serde_json::to_vec(&json!({ "validator": "\"stale\"" })).unwrap(),
    )
    .unwrap();
    let o = kie(
        &s,
        Some(&key),
        &["download", "-o", dir4.to_str().unwrap(), &uc],
    );
    assert_eq!(
        (o.code, o.stdout, o.stderr.as_str()),
        (
            0,
            format!(
                "{}\t{} bytes\tdownloaded\n",
                path_in(&dir4, "c d.png"),
                c.len()
            ),
            ""
        )
    );
    assert_eq!(std::fs::read(dir4.join("c d.png")).unwrap(), c);
    assert_eq!(listing(&dir4), ["c d.png"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn download_gets_fresh_links_when_links_expire_or_urls_are_private() {
    let s = Server::start(Opts::default().args(&["--link-ttl", "1s"]));
    let (acc, key) = s.account_with_key("cli-links", "5");
    let bytes = pattern(400_000, 9);
    let url = add_file(&s, &acc, "clip.wav", &bytes);
    let tmp = TempDir::new();

    // a link that has expired by the time it is downloaded
    let o = kie(&s, Some(&key), &["link", &url]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let link = o.stdout.trim().to_string();
    let expired = eventually(Duration::from_secs(10), || {
        let link = link.clone();
        async move { client().get(&link).send().await.unwrap().status() == 403 }
    })
    .await;
    assert!(expired.is_some(), "the 1 s link never expired");
    let dir = tmp.path().join("expired");
    let d = dir.to_str().unwrap();
    let o = kie(&s, Some(&key), &["download", "-o", d, "--json", &link]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(
        json_of(&o),
        json!([{"url": link, "path": path_in(&dir, "clip.wav"), "bytes": bytes.len(), "ok": true, "error": null}])
    );
    assert_eq!(std::fs::read(dir.join("clip.wav")).unwrap(), bytes);

    // without a key no fresh link can be had: a clear per-file error, nothing written
    let dir2 = tmp.path().join("nokey");
    let d2 = dir2.to_str().unwrap();
    let o = kie(&s, None, &["download", "-o", d2, &link]);
    assert_eq!((o.code, o.stdout.as_str()), (1, ""));
    assert_eq!(
        o.stderr,
        format!(
            "kie: {link}: link refused (HTTP 403, expired?) and no fresh link could be had: \
             configuration: no API key: set KIE_API_KEY or pass one (--api-key)\n\
             kie: 1 of 1 files failed\n"
        )
    );
    assert_eq!(listing(&dir2), Vec::<String>::new());

    // result URLs not public: the file URL answers 403, the CLI swaps in a link
    s.admin(&["feature", "disable", "public-result-urls"]);
    let refused = eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move { client().get(&url).send().await.unwrap().status() == 403 }
    })
    .await;
    assert!(refused.is_some(), "public result URLs still served");
    let dir3 = tmp.path().join("private");
    let d3 = dir3.to_str().unwrap();
    let o = kie(&s, Some(&key), &["download", "-o", d3, &url]);
    assert_eq!(
        (o.code, o.stdout, o.stderr.as_str()),
        (
            0,
            format!(
                "{}\t{} bytes\tdownloaded\n",
                path_in(&dir3, "clip.wav"),
                bytes.len()
            ),
            ""
        )
    );
    assert_eq!(std::fs::read(dir3.join("clip.wav")).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_with_demo_models_and_uploads() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("cli-task", "5");
    let tmp = TempDir::new();
    let dir = tmp.path().join("results");
    let d = dir.to_str().unwrap();

    // image: create, wait and download in one command
    let o = kie(
        &s,
        Some(&key),
        &[
            "task",
            "create",
            "--model",
            "demo/image",
            "--input",
            r#"{"prompt": "a red fox", "width": 32, "height": 24}"#,
            "--wait",
            "--interval",
            "100ms",
            "--timeout",
            "60s",
            "--download",
            d,
            "--json",
        ],
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{}", o.stdout);
    let v = json_of(&o);
    assert_eq!(v["task"]["state"], "success");
    assert_eq!(v["task"]["model"], "demo/image");
    assert_eq!(v["task"]["consumeCredits"], json!(2));
    let result: Value = serde_json::from_str(v["task"]["resultJson"].as_str().unwrap()).unwrap();
    let png_url = result["resultUrls"][0].as_str().unwrap().to_string();
    let name = png_url.rsplit('/').next().unwrap().to_string();
    let downloads = v["downloads"].as_array().unwrap();
    assert_eq!(downloads.len(), 1, "{v}");
    let png = std::fs::read(dir.join(&name)).unwrap();
    assert_eq!(
        downloads[0],
        json!({"url": png_url, "path": path_in(&dir, &name), "bytes": png.len(), "ok": true, "error": null})
    );
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        png,
        client()
            .get(&png_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref()
    );
    assert_eq!(listing(&dir), [name.as_str()]);

    // text: create prints the id, wait and get read the record
    let o = kie(
        &s,
        Some(&key),
        &[
            "task",
            "create",
            "--model",
            "demo/text",
            "--input",
            "-",
            "--json",
        ],
    );
    // "-" reads standard input; with none given it is empty and rejected
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            1,
            "kie: --input is not valid JSON: EOF while parsing a value at line 1 column 0\n"
        )
    );
    let o = kie_at(
        &s.base,
        Some(&key),
        &[
            "task",
            "create",
            "--model",
            "demo/text",
            "--input",
            "-",
            "--json",
        ],
        Some(r#"{"prompt": "say hello"}"#),
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let v = json_of(&o);
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let task_id = v["taskId"].as_str().unwrap().to_string();
    let o = kie(
        &s,
        Some(&key),
        &["task", "wait", &task_id, "--interval", "100ms", "--json"],
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let v = json_of(&o);
    assert_eq!(v["task"]["taskId"], task_id.as_str());
    assert_eq!(v["task"]["state"], "success");
    assert_eq!(v["task"]["consumeCredits"], json!(0.5));
    assert_eq!(v["downloads"], json!([]));
    let text: Value = serde_json::from_str(v["task"]["resultJson"].as_str().unwrap()).unwrap();
    assert!(text["resultObject"]["text"]
        .as_str()
        .unwrap()
        .contains("say hello"));
    let o = kie(&s, Some(&key), &["task", "get", &task_id, "--json"]);
    assert_eq!(o.code, 0);
    assert_eq!(json_of(&o), v["task"]);
    // 5 - image 2 - text 0.5
    let o = kie(&s, Some(&key), &["credits"]);
    assert_eq!(o.stdout, "2.5\n");

    // an unknown task and a model the catalog lacks
    let o = kie(&s, Some(&key), &["task", "get", "nope_nope"]);
    assert_eq!((o.code, o.stdout.as_str()), (1, ""));
    assert!(o.stderr.starts_with("kie: not found: "), "{}", o.stderr);
    let o = kie(
        &s,
        Some(&key),
        &["task", "create", "--model", "no/such", "--input", "{}"],
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.starts_with("kie: invalid request: "),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.lines().count(), 1);

    // not enough credits: nothing held, a one-line error
    let (_, poor) = s.account_with_key("cli-poor", "0.2");
    let o = kie(
        &s,
        Some(&poor),
        &[
            "task",
            "create",
            "--model",
            "demo/image",
            "--input",
            r#"{"prompt": "p"}"#,
        ],
    );
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (1, "", "kie: insufficient credits: Credits insufficient\n")
    );

    // uploads: streamed and base64; the file URL downloads the same bytes
    let src = tmp.path().join("notes.txt");
    let up = pattern(90_000, 5);
    std::fs::write(&src, &up).unwrap();
    let o = kie(
        &s,
        Some(&key),
        &[
            "upload",
            src.to_str().unwrap(),
            "--path",
            "/cli/docs/",
            "--json",
        ],
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let v = json_of(&o);
    assert_eq!(v["fileName"], "notes.txt");
    assert_eq!(v["fileSize"], json!(up.len()));
    assert_eq!(v["filePath"], "cli/docs/notes.txt");
    assert_eq!(v["downloadUrl"], v["fileUrl"]);
    let file_url = v["fileUrl"].as_str().unwrap().to_string();
    let o = kie(
        &s,
        Some(&key),
        &[
            "upload",
            src.to_str().unwrap(),
            "--path",
            "cli",
            "--name",
            "b64.txt",
            "--base64",
        ],
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let b64_url = o.stdout.trim().to_string();
    assert!(b64_url.ends_with("/b64.txt"), "{b64_url}");
    let dl = tmp.path().join("uploaded");
    let o = kie(
        &s,
        Some(&key),
        &["download", "-o", dl.to_str().unwrap(), &file_url, &b64_url],
    );
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    assert_eq!(std::fs::read(dl.join("notes.txt")).unwrap(), up);
    assert_eq!(std::fs::read(dl.join("b64.txt")).unwrap(), up);
    // the uploaded file is the caller's own: a link can be had for it
    let o = kie(&s, Some(&key), &["link", &file_url]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = kie(
        &s,
        Some(&key),
        &["upload", "/no/such/file.txt", "--path", "cli"],
    );
    assert_eq!((o.code, o.stdout.as_str()), (1, ""));
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("/no/such/file.txt"), "{}", o.stderr);
    let _ = acc;
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_once_exit_status_follows_the_real_balance() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("cli-monitor", "100");
    let check = |key: &str| {
        kie(
            &s,
            Some(key),
            &[
                "monitor",
                "--once",
                "--warn",
                "50",
                "--critical",
                "10",
                "--max-retries",
                "0",
                "--json",
            ],
        )
    };
    let level_of = |o: &Out| json_of(o)["level"].as_str().unwrap().to_string();

    let o = check(&key);
    assert_eq!(
        (o.code, level_of(&o)),
        (0, "ok".to_string()),
        "{}",
        o.stderr
    );
    assert_eq!(json_of(&o)["balance"], json!(100));

    s.admin(&["credits", "deduct", "--account", &acc, "--amount", "50"]);
    wait_for_credit(&s, &key, &json!(50)).await;
    let o = check(&key);
    // exactly at the threshold is not yet below it
    assert_eq!(json_of(&o)["balance"], json!(50));
    assert_eq!((o.code, level_of(&o)), (0, "ok".to_string()));

    s.admin(&["credits", "deduct", "--account", &acc, "--amount", "0.01"]);
    wait_for_credit(&s, &key, &json!(49.99)).await;
    let o = check(&key);
    assert_eq!(json_of(&o)["balance"], json!(49.99));
    assert_eq!((o.code, level_of(&o)), (1, "warn".to_string()));

    s.admin(&["credits", "deduct", "--account", &acc, "--amount", "45"]);
    wait_for_credit(&s, &key, &json!(4.99)).await;
    let o = check(&key);
    assert_eq!(json_of(&o)["balance"], json!(4.99));
    assert_eq!((o.code, level_of(&o)), (2, "critical".to_string()));

    s.admin(&["credits", "grant", "--account", &acc, "--amount", "95.01"]);
    wait_for_credit(&s, &key, &json!(100)).await;
    let o = check(&key);
    assert_eq!((o.code, level_of(&o)), (0, "ok".to_string()));

    // the balance cannot be read: UNKNOWN (3), as Nagios-style checks expect
    let o = check("kie_not_a_real_key_at_all_0000000000");
    assert_eq!(o.code, 3);
    let v = json_of(&o);
    assert_eq!(v["level"], "unknown");
    assert_eq!(
        v["error"],
        "unauthorized: You do not have access permissions"
    );
    assert_eq!(
        o.stderr,
        "kie: cannot read the balance: unauthorized: You do not have access permissions\n"
    );
}
