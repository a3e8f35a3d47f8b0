//! S3 storage (`--storage s3://bucket/prefix`) against real S3-compatible servers,
//! installed into `target/test-tools` by `scripts/install-test-tools` (which
//! `scripts/test` runs; the helper below runs it too when a server is missing, and
//! fails — never skips — when it cannot be installed):
//! - moto's standalone server (PyPI `moto[server]`): every test but one, each with its
//!   own moto on a free port;
//! - s3rver (npm): the link-expiry test;
//! - s3s-fs (crates.io, `binary` feature): the one here that verifies SigV4 — of every
//!   request object_store sends and of the presigned links — and their expiry.
//!
//! moto 5.2.5 checks that a presigned URL carries credentials but verifies neither the
//! signature nor `X-Amz-Expires` (a URL with a bogus signature and a 2020 date answers
//! 200). So with moto the links are checked through their signed parameters: the test
//! recomputes the SigV4 signature with the credentials the server was given, which
//! proves `X-Amz-Date`/`X-Amz-Expires` (= `--link-ttl`) are covered by it. s3rver 3.7.1
//! does refuse expired presigned URLs (403 "Request has expired"), though it does not
//! verify V4 signatures either; `s3_link_expires_after_link_ttl` polls until it does.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{client, eventually, get_json, post_json, Opts, Server, KIE};

const ACCESS_KEY: &str = "KIETESTACCESSKEY";
// '/' and '+' exercise the encoding of the signing key material
const SECRET_KEY: &str = "kie/test+SECRET/key0123456789abcdefghij";
const REGION: &str = "eu-west-3";
const PREFIX: &str = "tenant/kie";

// ------------------------------------------------------------------ moto

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A test tool under `target/test-tools` (or `$KIE_TEST_TOOLS`), installed by
/// `scripts/install-test-tools` (which takes a file lock) when missing. Fails, never
/// skips, when it cannot be installed.
fn tool(rel: &str) -> PathBuf {
    let tools = std::env::var_os("KIE_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/test-tools"));
    let bin = tools.join(rel);
    if !bin.exists() {
        let out = Command::new(workspace().join("scripts/install-test-tools"))
            .env("KIE_TEST_TOOLS", &tools)
            .output()
            .expect("run scripts/install-test-tools");
        assert!(
            out.status.success() && bin.exists(),
            "the S3 tests need {}; scripts/install-test-tools failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

fn moto_bin() -> PathBuf {
    tool("venv/bin/moto_server")
}

/// A running moto server (killed on drop).
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        let mut child = Command::new(moto_bin())
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moto_server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("Running on http://") {
                    let _ = tx.send(line[i + "Running on ".len()..].trim().to_string());
                }
                // keep draining: moto logs every request here
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto_server did not start within 60 s");
        Moto { child, endpoint }
    }

    /// Creates a bucket in `REGION` (moto accepts this unauthenticated).
    async fn bucket(&self) -> String {
        let name = format!("kie-{}", rand_name());
        let r = client()
            .put(format!("{}/{name}", self.endpoint))
            .body(format!(
                "<CreateBucketConfiguration><LocationConstraint>{REGION}</LocationConstraint></CreateBucketConfiguration>"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "create bucket");
        name
    }

    /// Object keys in the bucket under `prefix` (a signed ListObjectsV2).
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let u = presign(
            "GET",
            &format!(
                "{}/{bucket}?list-type=2&prefix={}",
                self.endpoint,
                enc(prefix)
            ),
            60,
        );
        let r = client().get(u).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let xml = r.text().await.unwrap();
        xml.split("<Key>")
            .skip(1)
            .map(|p| p.split("</Key>").next().unwrap().to_string())
            .collect()
    }

    /// Multipart uploads started and neither completed nor aborted.
    async fn pending_uploads(&self, bucket: &str) -> usize {
        let u = presign("GET", &format!("{}/{bucket}?uploads=", self.endpoint), 60);
        let r = client().get(u).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap().matches("<Upload>").count()
    }

    /// Writes an object directly (a signed PUT).
    async fn put(&self, bucket: &str, key: &str, body: &'static [u8]) {
        let u = presign("PUT", &format!("{}/{bucket}/{key}", self.endpoint), 60);
        let r = client().put(u).body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible server in a child process, on its own directory (killed on drop).
struct ChildStore {
    child: Child,
    endpoint: String,
    _dir: crate::harness::TempDir,
}

impl ChildStore {
    /// Runs `cmd` (its data directory `dir`) and waits for the line of its standard
    /// output that carries `marker` followed by its address.
    fn run(mut cmd: Command, dir: crate::harness::TempDir, marker: &'static str) -> ChildStore {
        let what = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.split(marker).nth(1) {
                    let a = a.trim();
                    let _ = tx.send(match a.starts_with("http") {
                        true => a.to_string(),
                        false => format!("http://{a}"),
                    });
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{what} did not start within 60 s"));
        ChildStore {
            child,
            endpoint,
            _dir: dir,
        }
    }
}

impl Drop for ChildStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// s3rver (npm), which — unlike moto — refuses presigned URLs after their
/// `X-Amz-Expires` (it accepts only the access key `S3RVER`), with `bucket`.
fn s3rver(bucket: &str) -> ChildStore {
    let dir = crate::harness::TempDir::new();
    let mut cmd = Command::new(tool("node/node_modules/.bin/s3rver"));
    cmd.arg("-d").arg(dir.path()).args([
        "-a",
        "127.0.0.1",
        "-p",
        "0",
        "--configure-bucket",
        bucket,
    ]);
    ChildStore::run(cmd, dir, "listening on ")
}

/// s3s-fs (crates.io), which verifies the SigV4 signature of every request, presigned
/// URLs included, against `ACCESS_KEY`/`SECRET_KEY`, with one empty `bucket`.
fn s3s_fs(bucket: &str) -> ChildStore {
    let dir = crate::harness::TempDir::new();
    std::fs::create_dir(dir.path().join(bucket)).unwrap();
    let mut cmd = Command::new(tool("s3s-fs"));
    cmd.args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(dir.path())
        .env("RUST_LOG", "s3s_fs=info")
        .env("NO_COLOR", "1");
    ChildStore::run(cmd, dir, "server is running at ")
}

fn rand_name() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..12)
        .map(|_| (b'a' + r.gen_range(0..26)) as char)
        .collect()
}

fn s3_env(moto: &Moto, bucket: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", REGION.to_string()),
        ("KIE_STORAGE", format!("s3://{bucket}/{PREFIX}")),
        ("KIE_S3_ENDPOINT", moto.endpoint.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn s3_server(moto: &Moto, bucket: &str, opts: Opts) -> Server {
    let mut opts = opts;
    opts.env.extend(s3_env(moto, bucket));
    let s = Server::start(opts);
    assert!(!s.log().contains(SECRET_KEY));
    s
}

// ------------------------------------------------------------------ SigV4 (test side)

/// AWS `UriEncode`: unreserved characters stay, everything else is %XX.
fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The SigV4 signature of a presigned request: `params` are the decoded query
/// parameters without `X-Amz-Signature`.
fn signature(method: &str, u: &reqwest::Url, params: &[(String, String)]) -> String {
    signature_with(method, u, params, SECRET_KEY)
}

fn signature_with(
    method: &str,
    u: &reqwest::Url,
    params: &[(String, String)],
    secret: &str,
) -> String {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let stamp = get("X-Amz-Date");
    let cred = get("X-Amz-Credential");
    let scope = cred.split_once('/').unwrap().1.to_string();
    let mut q: Vec<(String, String)> = params.iter().map(|(k, v)| (enc(k), enc(v))).collect();
    q.sort();
    let query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let host = match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap()),
        None => u.host_str().unwrap().to_string(),
    };
    let canonical = format!(
        "{method}\n{}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD",
        u.path()
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hexs(&Sha256::digest(canonical.as_bytes()))
    );
    let parts: Vec<&str> = scope.split('/').collect();
    let mut k = hmac(format!("AWS4{secret}").as_bytes(), parts[0]);
    for p in &parts[1..] {
        k = hmac(&k, p);
    }
    hexs(&hmac(&k, &to_sign))
}

fn amz_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

/// Presigns `url` (which may carry query parameters) with the test credentials.
fn presign(method: &str, url: &str, ttl: u64) -> String {
    presign_with(method, url, ttl, SECRET_KEY)
}

/// Presigns `url` with the test access key and `secret`.
fn presign_with(method: &str, url: &str, ttl: u64, secret: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap();
    let stamp = amz_now();
    let mut params: Vec<(String, String)> = u.query_pairs().into_owned().collect();
    for (k, v) in [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256".to_string()),
        (
            "X-Amz-Credential",
            format!("{ACCESS_KEY}/{}/{REGION}/s3/aws4_request", &stamp[..8]),
        ),
        ("X-Amz-Date", stamp.clone()),
        ("X-Amz-Expires", ttl.to_string()),
        ("X-Amz-SignedHeaders", "host".to_string()),
    ] {
        params.push((k.to_string(), v));
    }
    let sig = signature_with(method, &u, &params, secret);
    let mut out = u.clone();
    out.set_query(None);
    {
        let mut qp = out.query_pairs_mut();
        for (k, v) in &params {
            qp.append_pair(k, v);
        }
        qp.append_pair("X-Amz-Signature", &sig);
    }
    out.to_string()
}

/// A link the server issued, checked as S3 would check it: a GET presigned with our
/// credentials and region for `ttl` seconds, issued just now, with a valid signature.
/// Returns its decoded query parameters.
fn assert_presigned(link: &str, moto: &Moto, ttl: u64) -> Vec<(String, String)> {
    assert!(
        link.starts_with(&format!("{}/", moto.endpoint)),
        "not a URL of the store: {link}"
    );
    let u = reqwest::Url::parse(link).unwrap();
    let all: Vec<(String, String)> = u.query_pairs().into_owned().collect();
    let get = |k: &str| {
        all.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{k} missing in {link}"))
    };
    assert_eq!(get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert_eq!(get("X-Amz-Expires"), ttl.to_string());
    assert_eq!(get("X-Amz-SignedHeaders"), "host");
    let stamp = get("X-Amz-Date").to_string();
    assert_eq!(
        get("X-Amz-Credential"),
        format!("{ACCESS_KEY}/{}/{REGION}/s3/aws4_request", &stamp[..8])
    );
    // issued now (±60 s: same clock, loaded machine)
    let issued = humantime::parse_rfc3339(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    ))
    .unwrap();
    let skew = match SystemTime::now().duration_since(issued) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew < Duration::from_secs(60), "X-Amz-Date {stamp}");
    let unsigned: Vec<(String, String)> = all
        .iter()
        .filter(|(k, _)| k != "X-Amz-Signature")
        .cloned()
        .collect();
    assert_eq!(
        get("X-Amz-Signature"),
        signature("GET", &u, &unsigned),
        "signature of {link}"
    );
    // the expiry is covered by the signature: a longer-lived copy does not verify
    let longer: Vec<(String, String)> = unsigned
        .iter()
        .map(|(k, v)| {
            if k == "X-Amz-Expires" {
                (k.clone(), "604800".to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    assert_ne!(get("X-Amz-Signature"), signature("GET", &u, &longer));
    all
}

fn param<'a>(params: &'a [(String, String)], k: &str) -> &'a str {
    params
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ API helpers

async fn link(s: &Server, key: &str, file_url: &str) -> String {
    let (_, _, v) = post_json(
        &s.url("/api/v1/common/download-url"),
        Some(key),
        &json!({ "url": file_url }),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    v["data"].as_str().unwrap().to_string()
}

async fn fetch(url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.bytes().await.unwrap().to_vec())
}

/// A server storing in `bucket` of the store at `endpoint` with these credentials
/// (key id, secret, region), links living 3 s.
fn short_link_server(endpoint: &str, bucket: &str, cred: [&str; 3]) -> Server {
    let mut opts = Opts::default().args(&["--link-ttl", "3s"]);
    opts.env.extend(
        [
            ("AWS_ACCESS_KEY_ID", cred[0].to_string()),
            ("AWS_SECRET_ACCESS_KEY", cred[1].to_string()),
            ("AWS_REGION", cred[2].to_string()),
            ("KIE_STORAGE", format!("s3://{bucket}/{PREFIX}")),
            ("KIE_S3_ENDPOINT", endpoint.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    Server::start(opts)
}

/// A file `name` added for a new account of `s` (`kie admin file add`) and a link to
/// it, checked to be a 3 s link of `store`: (the account's key, the link, when issued).
async fn short_link(
    s: &Server,
    store: &ChildStore,
    bucket: &str,
    name: &str,
    bytes: &[u8],
) -> (String, String, Instant) {
    let (acc, key) = s.account_with_key("ana", "5");
    let path = s.tmp().path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let f = s.admin(&["file", "add", "--account", &acc, path.to_str().unwrap()]);
    let l = link(s, &key, f["url"].as_str().unwrap()).await;
    let issued = Instant::now();
    assert!(
        l.starts_with(&format!("{}/{bucket}/{PREFIX}/", store.endpoint)),
        "{l}"
    );
    assert!(l.contains("X-Amz-Expires=3&"), "{l}");
    (key, l, issued)
}

/// Polls `link` until the store refuses it (403; at most 20 s); asserts that it did,
/// not before 2 s after `issued` (X-Amz-Date has whole seconds: a 3 s link lives
/// between 2 and 3 s), and returns the store's last answer.
async fn until_expired(link: &str, issued: Instant) -> String {
    let last = std::sync::Mutex::new(String::new());
    let expired = eventually(Duration::from_secs(20), || async {
        let (status, _, body) = fetch(link).await;
        *last.lock().unwrap() = String::from_utf8_lossy(&body).into_owned();
        status == 403
    })
    .await;
    let after = issued.elapsed();
    let last = last.into_inner().unwrap();
    assert!(expired.is_some(), "still served after 20 s: {last}");
    assert!(after >= Duration::from_secs(2), "expired after {after:?}");
    last
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The stored object key of a file URL `…/files/{id}/{name}`.
fn object_key(file_url: &str) -> String {
    let id = file_url
        .split("/files/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    format!("{PREFIX}/{}/{id}", &id[..2])
}

/// A multipart body with `uploadPath` and one `file` part (`application/x-test`).
fn multipart_file(upload_path: &str, name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----kie-s3-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\n{upload_path}\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/x-test\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn patterned(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread")]
async fn s3_file_add_link_and_public_url() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let s = s3_server(&moto, &bucket, Opts::default().args(&["--link-ttl", "90s"]));
    let (_, _, ready) = get_json(&s.url("/readyz"), None).await;
    assert_eq!(
        ready,
        json!({"status": "ready", "database": true, "store": true})
    );

    let (acc, key) = s.account_with_key("ana", "5");
    let path = s.tmp().path().join("report.txt");
    std::fs::write(&path, b"quarterly numbers\n").unwrap();
    let f = s.admin(&[
        "file",
        "add",
        "--account",
        &acc,
        path.to_str().unwrap(),
        "--name",
        "Bericht März \"Q1\".txt",
        "--content-type",
        "text/plain; charset=utf-8",
    ]);
    assert_eq!(f["size"], 18);
    let url = f["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&s.url("/files/")), "{url}");
    // the bytes are in the bucket, under the prefix, keyed by the file id only
    assert_eq!(moto.keys(&bucket, PREFIX).await, vec![object_key(&url)]);

    let l = link(&s, &key, &url).await;
    let params = assert_presigned(&l, &moto, 90);
    assert_eq!(
        param(&params, "response-content-disposition"),
        "attachment; filename=\"Bericht M_rz _Q1_.txt\"; filename*=UTF-8''Bericht%20M%C3%A4rz%20%22Q1%22.txt"
    );
    let (status, h, body) = fetch(&l).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"quarterly numbers\n");
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        h["content-disposition"].to_str().unwrap(),
        "attachment; filename=\"Bericht M_rz _Q1_.txt\"; filename*=UTF-8''Bericht%20M%C3%A4rz%20%22Q1%22.txt"
    );
    // no key needed, but the store refuses the object without a signature
    let bare = l.split('?').next().unwrap();
    assert_eq!(fetch(bare).await.0, 403);

    // the public file URL redirects to an inline presigned URL of the store
    let r = no_redirects().get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let p = assert_presigned(&to, &moto, 90);
    assert!(param(&p, "response-content-disposition").starts_with("inline; "));
    let (status, h, body) = fetch(&url).await; // followed
    assert_eq!(status, 200);
    assert_eq!(body, b"quarterly numbers\n");
    assert!(h["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("inline; "));

    // another account cannot link it
    let (_, other) = s.account_with_key("bo", "5");
    let (_, _, v) = post_json(
        &s.url("/api/v1/common/download-url"),
        Some(&other),
        &json!({ "url": url }),
    )
    .await;
    assert_eq!(v["code"], 404);

    // readiness follows the store
    drop(moto);
    let down = eventually(Duration::from_secs(30), || async {
        let r = client().get(s.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        status == 503 && v["store"] == false && v["database"] == true
    })
    .await;
    assert!(down.is_some(), "{}", s.log());
    assert!(!s.log().contains(SECRET_KEY));
}

/// `kie admin file add` beside a server on S3 writes into the server's bucket without
/// being told (the server records its storage at start), and refuses a different
/// `--storage` in one line instead of writing bytes the server would answer 404 for.
#[tokio::test(flavor = "multi_thread")]
async fn s3_admin_file_add_uses_the_servers_storage() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let s = s3_server(&moto, &bucket, Opts::default());
    let (acc, _) = s.account_with_key("ola", "1");
    let path = s.tmp().path().join("notes.txt");
    std::fs::write(&path, b"from admin\n").unwrap();

    // no KIE_STORAGE, no --storage, no endpoint: only the AWS credentials
    let out = s
        .admin_cmd(&["file", "add", "--account", &acc, path.to_str().unwrap()])
        .env_remove("KIE_STORAGE")
        .env_remove("KIE_S3_ENDPOINT")
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = f["url"].as_str().unwrap().to_string();
    assert_eq!(moto.keys(&bucket, PREFIX).await, vec![object_key(&url)]);
    let (st, _, body) = fetch(&url).await;
    assert_eq!((st, body.as_slice()), (200, b"from admin\n".as_slice()));
    // nothing was written to the local directory
    assert!(
        !s.data_dir.join("files").exists()
            || crate::harness::stored_keys(&s.data_dir.join("files")).is_empty()
    );

    // told another storage: refused, one line, nothing recorded
    let other = s.tmp().path().join("elsewhere");
    let out = s
        .admin_cmd(&["file", "add", "--account", &acc, path.to_str().unwrap()])
        .env_remove("KIE_STORAGE")
        .args(["--storage", &format!("file://{}", other.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "the server serves files from s3://{bucket}/{PREFIX}, not file://"
        )),
        "{err}"
    );
    assert!(!other.exists());
    let n = s.sql(&format!(
        "SELECT count(*) FROM files WHERE account_id = '{acc}'"
    ));
    assert_eq!(n, vec![vec!["1".to_string()]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_link_ttl_is_the_signed_expiry() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let s = s3_server(&moto, &bucket, Opts::default().args(&["--link-ttl", "2s"]));
    let (acc, key) = s.account_with_key("ana", "5");
    let path = s.tmp().path().join("a.bin");
    std::fs::write(&path, b"abc").unwrap();
    let f = s.admin(&["file", "add", "--account", &acc, path.to_str().unwrap()]);
    let url = f["url"].as_str().unwrap();
    let l = link(&s, &key, url).await;
    // X-Amz-Expires = link TTL, issued now, covered by the signature (see the module
    // doc: moto does not enforce it, a real S3 answers 403 after it)
    assert_presigned(&l, &moto, 2);
    assert_eq!(fetch(&l).await.2, b"abc");
    // a link of a link: a fresh one, again for 2 s
    let l2 = link(&s, &key, &l).await;
    assert_presigned(&l2, &moto, 2);
    assert_eq!(fetch(&l2).await.2, b"abc");
    // … for its owner only; other objects of the store are not links of ours
    let (_, other) = s.account_with_key("bo", "5");
    for (k, u, code) in [
        (&other, l.clone(), 404),
        (
            &key,
            format!("{}/{bucket}/{PREFIX}/notes/readme.txt", moto.endpoint),
            422,
        ),
        (
            &key,
            format!("{}/other-bucket/{}", moto.endpoint, object_key(url)),
            422,
        ),
    ] {
        let (_, _, v) = post_json(
            &s.url("/api/v1/common/download-url"),
            Some(k),
            &json!({ "url": u }),
        )
        .await;
        assert_eq!(v["code"], code, "{u}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_uploads_stream_base64_and_url() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let s = s3_server(
        &moto,
        &bucket,
        Opts::default()
            .args(&["--allow-private-targets"])
            .config("max_upload = 12582912\n"),
    );
    let (_, key) = s.account_with_key("ana", "5");

    // multipart stream upload larger than one part (8 MiB): an S3 multipart upload
    let big = patterned(9 * 1024 * 1024 + 123);
    let (ctype, body) = multipart_file("in/big", "big.bin", &big);
    let r = client()
        .post(s.url("/api/file-stream-upload"))
        .bearer_auth(&key)
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["data"]["fileSize"], big.len());
    let big_url = v["data"]["fileUrl"].as_str().unwrap().to_string();
    let l = link(&s, &key, &big_url).await;
    let (status, h, got) = fetch(&l).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/x-test");
    assert!(got == big, "big upload differs ({} bytes)", got.len());

    // base64
    let v = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "data:text/plain;base64,aGVsbG8gczM=", "uploadPath": "in/b64", "fileName": "h.txt"}),
    )
    .await
    .2;
    assert_eq!(v["success"], true, "{v}");
    let b64_url = v["data"]["fileUrl"].as_str().unwrap().to_string();
    assert_eq!(fetch(&link(&s, &key, &b64_url).await).await.2, b"hello s3");

    // URL upload, fetching the big file back from the store's own presigned URL
    let v = post_json(
        &s.url("/api/file-url-upload"),
        Some(&key),
        &json!({"fileUrl": l, "uploadPath": "in/url", "fileName": "copy.bin"}),
    )
    .await
    .2;
    assert_eq!(v["success"], true, "{v}");
    let copy_url = v["data"]["fileUrl"].as_str().unwrap().to_string();
    let got = fetch(&link(&s, &key, &copy_url).await).await.2;
    assert!(got == big, "URL upload differs ({} bytes)", got.len());

    // same name in the same path replaces the file, and its object
    let v = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "c2Vjb25k", "uploadPath": "in/b64", "fileName": "h.txt"}),
    )
    .await
    .2;
    assert_eq!(v["success"], true, "{v}");
    let mut keys = moto.keys(&bucket, PREFIX).await;
    keys.sort();
    let mut want: Vec<String> = [&big_url, &copy_url, v["data"]["fileUrl"].as_str().unwrap()]
        .iter()
        .map(|u| object_key(u))
        .collect();
    want.sort();
    assert_eq!(keys, want);

    // too large (max_upload = 12 MiB): refused, nothing stays in the store and the
    // multipart upload is aborted
    let huge = patterned(13 * 1024 * 1024);
    let (ctype, body) = multipart_file("in/huge", "huge.bin", &huge);
    let r = client()
        .post(s.url("/api/file-stream-upload"))
        .bearer_auth(&key)
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], 422, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("12582912"), "{v}");
    let mut after = moto.keys(&bucket, PREFIX).await;
    after.sort();
    assert_eq!(after, keys);
    assert_eq!(moto.pending_uploads(&bucket).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_task_result_lands_in_the_bucket() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let s = s3_server(&moto, &bucket, Opts::default());
    let (_, key) = s.account_with_key("ana", "10");
    let (_, _, v) = post_json(
        &s.url("/api/v1/jobs/createTask"),
        Some(&key),
        &json!({"model": "demo/image", "input": {"prompt": "a red fox", "width": 64, "height": 48}}),
    )
    .await;
    assert_eq!(v["code"], 200, "{v}");
    let id = v["data"]["taskId"].as_str().unwrap().to_string();
    let record = || async {
        get_json(
            &s.url(&format!("/api/v1/jobs/recordInfo?taskId={id}")),
            Some(&key),
        )
        .await
        .2["data"]
            .clone()
    };
    let done = eventually(Duration::from_secs(30), || async {
        matches!(record().await["state"].as_str(), Some("success" | "fail"))
    })
    .await;
    let rec = record().await;
    assert!(done.is_some(), "task did not finish: {rec}\n{}", s.log());
    assert_eq!(rec["state"], "success", "{rec}");
    let result: Value = serde_json::from_str(rec["resultJson"].as_str().unwrap()).unwrap();
    let url = result["resultUrls"][0].as_str().unwrap().to_string();
    assert_eq!(moto.keys(&bucket, PREFIX).await, vec![object_key(&url)]);
    let l = link(&s, &key, &url).await;
    assert_presigned(&l, &moto, 1200);
    let (status, h, png) = fetch(&l).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 64);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 48);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_sweeper_deletes_expired_and_orphan_objects() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let s = s3_server(
        &moto,
        &bucket,
        Opts::default().config(
            "retention_uploads = \"2s\"\nsweep_interval = \"200ms\"\norphan_grace = \"1s\"\n",
        ),
    );
    let (_, key) = s.account_with_key("ana", "5");
    let v = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "aGVsbG8=", "uploadPath": "tmp", "fileName": "h.txt"}),
    )
    .await
    .2;
    assert_eq!(v["success"], true, "{v}");
    let url = v["data"]["fileUrl"].as_str().unwrap().to_string();
    // an object of our key shape that no record names, and one that is not ours
    let stray_id = format!("zz{}", "q".repeat(30));
    let stray = format!("{PREFIX}/zz/{stray_id}");
    let foreign = format!("{PREFIX}/notes/readme.txt");
    moto.put(&bucket, &stray, b"orphan").await;
    moto.put(&bucket, &foreign, b"someone else's").await;
    // (the stray's PUT answered 200; it is not listed here because the sweeper may
    // already have taken it: S3 times are whole seconds, so a 1 s grace can end at once)
    let keys = moto.keys(&bucket, PREFIX).await;
    assert!(keys.contains(&object_key(&url)), "{keys:?}");
    assert!(keys.contains(&foreign), "{keys:?}");

    let start = Instant::now();
    let swept = eventually(Duration::from_secs(30), || async {
        moto.keys(&bucket, PREFIX).await == vec![foreign.clone()]
    })
    .await;
    assert!(
        swept.is_some(),
        "left after {:?}: {:?}\n{}",
        start.elapsed(),
        moto.keys(&bucket, PREFIX).await,
        s.log()
    );
    let (_, _, v) = post_json(
        &s.url("/api/v1/common/download-url"),
        Some(&key),
        &json!({ "url": url }),
    )
    .await;
    assert_eq!(v["code"], 404);
    assert_eq!(fetch(&url).await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_startup_errors_are_one_line() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    // a closed port
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cases = [
        (
            format!("s3://{bucket}/p"),
            format!("http://127.0.0.1:{closed}"),
            format!(
                "kie serve: cannot open storage s3://{bucket}/p: the S3 endpoint http://127.0.0.1:{closed} is not reachable"
            ),
        ),
        (
            "s3://no-such-bucket/p".to_string(),
            moto.endpoint.clone(),
            format!(
                "kie serve: cannot open storage s3://no-such-bucket/p: bucket 'no-such-bucket' does not exist at {}",
                moto.endpoint
            ),
        ),
        (
            format!("s3://{bucket}/p"),
            "http://192.0.2.1:9000".to_string(),
            "kie serve: cannot open storage: S3 endpoint 'http://192.0.2.1:9000' is plain http to another host: use https, or set AWS_ALLOW_HTTP=true".to_string(),
        ),
        (
            "s3://".to_string(),
            moto.endpoint.clone(),
            "kie serve: cannot open storage: invalid storage 's3://': use s3://bucket/prefix"
                .to_string(),
        ),
        (
            format!("s3://{bucket}/p"),
            "ftp://127.0.0.1:21".to_string(),
            "kie serve: cannot open storage: invalid S3 endpoint 'ftp://127.0.0.1:21': use http(s)://HOST[:PORT]"
                .to_string(),
        ),
    ];
    for (storage, endpoint, want) in cases {
        let dir = crate::harness::TempDir::new();
        let out = tokio::task::spawn_blocking({
            let dir = dir.path().to_path_buf();
            move || {
                Command::new(KIE)
                    .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
                    .arg(&dir)
                    .args(["--storage", &storage, "--s3-endpoint", &endpoint])
                    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                    .env("AWS_REGION", REGION)
                    .env("KIE_LOG", "warn")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        // the error is the last line, whole (object_store may log retries before it)
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert_eq!(last, want, "stderr: {err}");
        assert!(!err.contains(SECRET_KEY), "{err}");
        assert!(
            out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_link_expires_after_link_ttl() {
    let bucket = format!("kie-{}", rand_name());
    let store = s3rver(&bucket);
    let s = short_link_server(&store.endpoint, &bucket, ["S3RVER", "S3RVER", "us-east-1"]);
    let (key, l, issued) = short_link(&s, &store, &bucket, "clip.wav", b"RIFF....WAVE").await;
    let (status, h, body) = fetch(&l).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"RIFF....WAVE");
    assert_eq!(h["content-type"], "audio/wav");

    // the store itself refuses the link once X-Amz-Expires has passed
    let last = until_expired(&l, issued).await;
    assert!(last.contains("Request has expired"), "{last}");

    // a fresh link for the expired one works again
    let l2 = link(&s, &key, &l).await;
    assert_ne!(l2, l);
    assert_eq!(fetch(&l2).await.0, 200);
}

/// Against a store that checks signatures itself: object_store's requests (the upload's
/// PUT, the start-up listing) and the links it presigns — with the response headers
/// under the signature — are accepted; a link whose signed parameters were changed, or
/// signed with another secret, is refused; an expired one too.
#[tokio::test(flavor = "multi_thread")]
async fn s3_signatures_verified_by_the_store() {
    let bucket = format!("kie-{}", rand_name());
    let store = s3s_fs(&bucket);
    let s = short_link_server(&store.endpoint, &bucket, [ACCESS_KEY, SECRET_KEY, REGION]);
    let (_, l, issued) =
        short_link(&s, &store, &bucket, "Bericht März.txt", b"signed bytes\n").await;
    assert!(l.contains("response-content-disposition="), "{l}");
    let (status, _, body) = fetch(&l).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"signed bytes\n");

    // the signature covers the response headers asked for and the lifetime
    let u = reqwest::Url::parse(&l).unwrap();
    let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
    for (name, value) in [
        ("response-content-disposition", "inline"),
        ("response-content-type", "text/html"),
        ("X-Amz-Expires", "604800"),
    ] {
        let mut t = u.clone();
        t.query_pairs_mut().clear().extend_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), if k == name { value } else { v.as_str() })),
        );
        let (status, _, body) = fetch(t.as_str()).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 403, "{name} changed: {body}");
        assert!(
            body.contains("SignatureDoesNotMatch"),
            "{name} changed: {body}"
        );
    }
    // the same link signed with another secret is refused too
    let other = presign_with("GET", l.split('?').next().unwrap(), 60, "not-the-secret");
    let (status, _, body) = fetch(&other).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    // and the original, once X-Amz-Expires has passed
    let last = until_expired(&l, issued).await;
    assert!(last.contains("Request has expired"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_nodes_share_the_bucket() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let public = "http://files.kie.test";
    let a = s3_server(
        &moto,
        &bucket,
        Opts::default().args(&["--public-url", public]),
    );
    let b = a.second_node();
    let (_, key) = a.account_with_key("ana", "5");
    // uploaded through node A …
    let v = post_json(
        &a.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "c2hhcmVk", "uploadPath": "x", "fileName": "s.txt"}),
    )
    .await
    .2;
    assert_eq!(v["success"], true, "{v}");
    let url = v["data"]["fileUrl"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{public}/files/")), "{url}");
    // … linked through node B, fetched from the store
    let l = link(&b, &key, &url).await;
    assert_presigned(&l, &moto, 1200);
    assert_eq!(fetch(&l).await.2, b"shared");
    // and B's readiness covers the same bucket
    let (status, _, ready) = get_json(&b.url("/readyz"), None).await;
    assert_eq!((status, ready["store"].clone()), (200, json!(true)));
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_cli_download_fetches_from_the_store() {
    let moto = Moto::start();
    let bucket = moto.bucket().await;
    let s = s3_server(&moto, &bucket, Opts::default());
    let (acc, key) = s.account_with_key("ana", "5");
    let data = patterned(3 * 1024 * 1024 + 7);
    let path = s.tmp().path().join("src.bin");
    std::fs::write(&path, &data).unwrap();
    let f = s.admin(&[
        "file",
        "add",
        "--account",
        &acc,
        path.to_str().unwrap(),
        "--name",
        "große datei.bin",
    ]);
    let url = f["url"].as_str().unwrap().to_string();
    let l = link(&s, &key, &url).await;
    let out_dir = s.tmp().path().join("out");
    let (base, k, od) = (s.base.clone(), key.clone(), out_dir.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(KIE)
            .args(["download", "--json", "-o"])
            .arg(&od)
            .args([&url, &l])
            .env("KIE_BASE_URL", &base)
            .env("KIE_API_KEY", &k)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = report.as_array().unwrap();
    assert_eq!(items.len(), 2, "{report}");
    for item in items {
        assert_eq!(item["ok"], true, "{report}");
        assert_eq!(item["bytes"], data.len(), "{report}");
        let got = std::fs::read(item["path"].as_str().unwrap()).unwrap();
        assert!(got == data, "{item}");
    }
}
