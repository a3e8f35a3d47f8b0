//! Issue 3: generated file URLs, temporary download links, retention and the File
//! Upload API — through HTTP and `kie admin` only.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

// ------------------------------------------------------------------ helpers

/// Every regular file under the server's store directory.
fn stored_files(s: &Server) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&s.data_dir.join("files"), &mut out);
    out
}

/// `kie admin file add` of `bytes` named `name`; returns the JSON answer.
fn add_file(s: &Server, account: &str, name: &str, bytes: &[u8], extra: &[&str]) -> Value {
    let src = s
        .tmp()
        .path()
        .join(format!("src-{}", rand::random::<u64>()));
    std::fs::write(&src, bytes).unwrap();
    let mut args = vec![
        "file",
        "add",
        "--account",
        account,
        src.to_str().unwrap(),
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    s.admin(&args)
}

async fn get_raw(
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    request_raw(reqwest::Method::GET, url, headers).await
}

async fn request_raw(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut rb = client().request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.bytes().await.unwrap().to_vec())
}

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

async fn link_answer(s: &Server, key: &str, body: Value) -> Value {
    post_json(&s.url("/api/v1/common/download-url"), Some(key), &body)
        .await
        .2
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn h<'a>(hm: &'a reqwest::header::HeaderMap, k: &str) -> &'a str {
    hm.get(k).map(|v| v.to_str().unwrap()).unwrap_or("")
}

/// A GET sent byte for byte as written: HTTP clients normalise `%2e%2e` and `..`
/// away before sending, which would hide what the server does with them.
async fn raw_path_get(s: &Server, path: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    c.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body_at = text.find("\r\n\r\n").unwrap() + 4;
    (status, buf[body_at..].to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

// ------------------------------------------------------- file URLs and links

#[tokio::test(flavor = "multi_thread")]
async fn admin_file_add_prints_a_file_url_served_inline() {
    let s = Server::start(Opts::default());
    let (acc, _) = s.account_with_key("ann", "1");
    let bytes = pattern(10_000);
    let f = add_file(&s, &acc, "picture.png", &bytes, &[]);
    let obj = f.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["contentType", "id", "size", "url"]);
    assert_eq!(f["size"], 10_000);
    assert_eq!(f["contentType"], "image/png");
    let id = f["id"].as_str().unwrap();
    assert!(
        id.len() >= 22 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    assert_eq!(f["url"], format!("{}/files/{id}/picture.png", s.base));

    // the content type can be given; the name defaults to the file's own
    let g = add_file(
        &s,
        &acc,
        "notes",
        b"hello",
        &["--content-type", "text/markdown"],
    );
    assert_eq!(g["contentType"], "text/markdown");

    let (status, hd, body) = get_raw(f["url"].as_str().unwrap(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
    assert_eq!(h(&hd, "content-type"), "image/png");
    assert_eq!(h(&hd, "content-length"), "10000");
    assert_eq!(
        h(&hd, "content-disposition"),
        "inline; filename=\"picture.png\"; filename*=UTF-8''picture.png"
    );
    assert_eq!(h(&hd, "accept-ranges"), "bytes");
    assert_eq!(h(&hd, "x-content-type-options"), "nosniff");
    let etag = h(&hd, "etag").to_string();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    // ranges work on the file URL too
    let (status, hd, body) = get_raw(f["url"].as_str().unwrap(), &[("range", "bytes=10-19")]).await;
    assert_eq!(status, 206);
    assert_eq!(body, &bytes[10..20]);
    assert_eq!(h(&hd, "content-range"), "bytes 10-19/10000");
    // a wrong name is no file
    let wrong = f["url"]
        .as_str()
        .unwrap()
        .replace("picture.png", "other.png");
    assert_eq!(get_raw(&wrong, &[]).await.0, 404);
    // unknown account
    let out = s.admin_raw(&["file", "add", "--account", "nobody", "/etc/hostname"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn links_serve_attachments_with_ranges_and_validators() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("bea", "1");
    let bytes = pattern(100_000);
    let f = add_file(&s, &acc, "résumé \"final\".pdf", &bytes, &[]);
    let file_url = f["url"].as_str().unwrap();
    let l = link(&s, &key, file_url).await;
    assert!(l.starts_with(&format!("{}/links/", s.base)), "{l}");
    assert!(l.contains(f["id"].as_str().unwrap()));

    // no API key needed
    let (status, hd, body) = get_raw(&l, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
    assert_eq!(h(&hd, "content-type"), "application/pdf");
    assert_eq!(h(&hd, "content-length"), "100000");
    assert_eq!(
        h(&hd, "content-disposition"),
        "attachment; filename=\"r_sum_ _final_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"
    );
    assert_eq!(h(&hd, "accept-ranges"), "bytes");
    let etag = h(&hd, "etag").to_string();
    let last_modified = h(&hd, "last-modified").to_string();
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");

    // HEAD: the same headers, no body
    let (status, hd, body) = request_raw(reqwest::Method::HEAD, &l, &[]).await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(h(&hd, "content-length"), "100000");
    assert_eq!(h(&hd, "etag"), etag);

    let cases: &[(&str, u16, &str, std::ops::Range<usize>)] = &[
        ("bytes=0-9", 206, "bytes 0-9/100000", 0..10),
        (
            "bytes=99990-",
            206,
            "bytes 99990-99999/100000",
            99_990..100_000,
        ),
        ("bytes=-5", 206, "bytes 99995-99999/100000", 99_995..100_000),
        ("bytes=50-200000", 206, "bytes 50-99999/100000", 50..100_000),
        ("bytes=0-1,5-6", 200, "", 0..100_000),
    ];
    for (range, want, content_range, slice) in cases {
        let (status, hd, body) = get_raw(&l, &[("range", range)]).await;
        assert_eq!(status, *want, "{range}");
        assert_eq!(h(&hd, "content-range"), *content_range, "{range}");
        assert_eq!(body, &bytes[slice.clone()], "{range}");
        assert_eq!(h(&hd, "content-length"), slice.len().to_string());
    }
    for range in ["bytes=100000-", "bytes=-0"] {
        let (status, hd, _) = get_raw(&l, &[("range", range)]).await;
        assert_eq!(status, 416, "{range}");
        assert_eq!(h(&hd, "content-range"), "bytes */100000");
    }

    // conditional requests
    let (status, hd, body) = get_raw(&l, &[("if-none-match", &etag)]).await;
    assert_eq!((status, body.len()), (304, 0));
    assert_eq!(h(&hd, "etag"), etag);
    assert_eq!(get_raw(&l, &[("if-none-match", "\"other\"")]).await.0, 200);
    let (status, _, body) = get_raw(&l, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!((status, body.len()), (206, 10));
    let (status, _, body) = get_raw(&l, &[("range", "bytes=0-9"), ("if-range", "\"stale\"")]).await;
    assert_eq!(
        (status, body.len()),
        (200, 100_000),
        "If-Range mismatch: whole file"
    );
    let (status, _, _) = get_raw(&l, &[("range", "bytes=0-9"), ("if-range", &last_modified)]).await;
    assert_eq!(status, 206);
    let (status, _, _) = get_raw(
        &l,
        &[
            ("range", "bytes=0-9"),
            ("if-range", "Mon, 01 Jan 2001 00:00:00 GMT"),
        ],
    )
    .await;
    assert_eq!(status, 200);

    // a link of ours is accepted by download-url and gives a fresh, working link
    let again = link(&s, &key, &l).await;
    assert!(again.starts_with(&format!("{}/links/", s.base)));
    assert_eq!(get_raw(&again, &[]).await.2, bytes);
    // query and fragment of a file URL are ignored
    let with_query = format!("{file_url}?download=1#top");
    link(&s, &key, &with_query).await;
    // the signature never reaches the log
    let sig = l.rsplit("s=").next().unwrap();
    assert!(!s.log().contains(sig));
}

#[tokio::test(flavor = "multi_thread")]
async fn download_url_validates_and_hides_other_files() {
    let s = Server::start(Opts::default().config("file_hosts = [\"files.example.com\"]\n"));
    let (acc, key) = s.account_with_key("cy", "1");
    let (other, other_key) = s.account_with_key("dee", "1");
    let f = add_file(&s, &acc, "a.txt", b"mine", &[]);
    let theirs = add_file(&s, &other, "b.txt", b"theirs", &[]);
    let id = f["id"].as_str().unwrap();

    let invalid: &[(Value, &str)] = &[
        (json!({}), "Missing required parameter: url"),
        (json!({"url": ""}), "Missing required parameter: url"),
        (json!({"url": null}), "Missing required parameter: url"),
        (json!({"url": 5}), "Invalid field 'url': expected a string"),
        (
            json!({"url": ["x"]}),
            "Invalid field 'url': expected a string",
        ),
        (
            json!({"url": "not a url"}),
            "Invalid URL: 'url' is not a valid URL",
        ),
        (
            json!({"url": "ftp://files.example.com/files/x/y"}),
            "Invalid URL: only http and https URLs are supported",
        ),
        (
            json!({"url": format!("https://evil.example.org/files/{id}/a.txt")}),
            "Invalid URL: external file URLs are not supported",
        ),
        (
            json!({"url": format!("http://files.example.com:8080/files/{id}/a.txt")}),
            "Invalid URL: external file URLs are not supported",
        ),
    ];
    for (body, msg) in invalid {
        let v = link_answer(&s, &key, body.clone()).await;
        assert_eq!(v, json!({"code": 422, "msg": msg, "data": null}), "{body}");
    }

    // Another host configured in file_hosts; case and default port normalised.
    for u in [
        format!("http://FILES.Example.COM/files/{id}/a.txt"),
        format!("http://files.example.com:80/files/{id}/a.txt"),
        format!("https://files.example.com:443/files/{id}/a.txt?x=1"),
        format!(
            "{}/files/{id}/a.txt#frag",
            s.base.to_uppercase().replace("HTTP://", "http://")
        ),
    ] {
        let v = link_answer(&s, &key, json!({ "url": u })).await;
        assert_eq!(v["code"], 200, "{u}: {v}");
    }

    // URLs of ours naming no file of the caller: one 404, whatever the reason.
    let not_found = json!({"code": 404, "msg": "File not found", "data": null});
    let base = &s.base;
    let tid = theirs["id"].as_str().unwrap();
    let fake = "Z".repeat(32);
    for u in [
        format!("{base}/files/{tid}/b.txt"),
        format!("{base}/files/{fake}/a.txt"),
        format!("{base}/files/{id}/other.txt"),
        format!("{base}/files/{id}"),
        format!("{base}/files/"),
        format!("{base}/"),
        format!("{base}/files/{id}/../{tid}/b.txt"),
        format!("{base}/files/{id}/%2e%2e/{tid}/b.txt"),
        format!("{base}/files/{id}/..%2F..%2F..%2Fetc%2Fpasswd"),
        format!("{base}/files/{id}/..%5C..%5Cwindows"),
        format!("{base}/files/{id}/a.txt%00.png"),
        format!("{base}/files/{id}/%252e%252e%252fetc"),
        format!("{base}/files/%2e%2e/%2e%2e/etc/passwd"),
        format!("{base}/files/{id}%2Fa.txt"),
        format!("{base}/links/{tid}/b.txt?e=1&k=x&s=y"),
    ] {
        let v = link_answer(&s, &key, json!({ "url": u })).await;
        assert_eq!(v, not_found, "{u}");
    }
    // the other account reaches its own file, not ours
    assert_eq!(
        link_answer(&s, &other_key, json!({"url": f["url"]})).await,
        not_found
    );
    link(&s, &other_key, theirs["url"].as_str().unwrap()).await;
    // raw file URLs with traversal encodings find nothing either
    for p in [
        format!("/files/{id}/%2e%2e"),
        format!("/files/{id}/a%2Fb"),
        format!("/files/{id}/a%5Cb"),
        format!("/files/{id}/a.txt%00"),
        format!("/files/{id}/%252e%252e"),
        format!("/files/{fake}/a.txt"),
        format!("/files/{id}/../{id}/a.txt"),
        format!("/links/{id}/%2e%2e?e=1&k=k&s=s"),
    ] {
        let (status, body) = raw_path_get(&s, &p).await;
        if p.starts_with("/links/") {
            assert_eq!(status, 403, "{p}");
            continue;
        }
        assert_eq!(status, 404, "{p}");
        assert_eq!(json_of(&body)["msg"], "file not found");
    }
    // no key → 401
    let (_, _, v) = post_json(
        &s.url("/api/v1/common/download-url"),
        None,
        &json!({"url": f["url"]}),
    )
    .await;
    assert_eq!(v["code"], 401);
}

/// Replaces the character at `i` of `s` by another one of the same class.
fn flip(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = match b[i] {
        b'0'..=b'8' | b'a'..=b'y' | b'A'..=b'Y' => b[i] + 1,
        b'9' => b'0',
        b'z' => b'a',
        b'Z' => b'A',
        b'-' => b'_',
        b'_' => b'-',
        b'.' => b'_',
        other => panic!("unexpected byte {other}"),
    };
    String::from_utf8(b).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_and_truncated_links_are_refused_with_403() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("eve", "1");
    let f = add_file(&s, &acc, "x.bin", &pattern(1000), &[]);
    let l = link(&s, &key, f["url"].as_str().unwrap()).await;
    assert_eq!(get_raw(&l, &[]).await.0, 200);

    let (path, query) = l.split_once('?').unwrap();
    let parts: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap())
        .collect();
    assert_eq!(
        parts.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["e", "k", "s"]
    );
    let (e, k, sig) = (parts[0].1, parts[1].1, parts[2].1);
    let mut tampered = Vec::new();
    for i in 0..sig.len() {
        tampered.push(format!("{path}?e={e}&k={k}&s={}", flip(sig, i)));
    }
    for i in 0..e.len() {
        tampered.push(format!("{path}?e={}&k={k}&s={sig}", flip(e, i)));
    }
    for i in 0..k.len() {
        tampered.push(format!("{path}?e={e}&k={}&s={sig}", flip(k, i)));
    }
    let tail_start = path.find("/links/").unwrap() + "/links/".len();
    for i in tail_start..path.len() {
        if path.as_bytes()[i] == b'/' {
            continue;
        }
        tampered.push(format!("{}?{query}", flip(path, i)));
    }
    // truncations
    tampered.push(format!("{path}?e={e}&k={k}&s={}", &sig[..sig.len() - 1]));
    tampered.push(format!("{path}?e={e}&k={k}&s="));
    tampered.push(format!("{path}?e={e}&k={k}"));
    tampered.push(format!("{path}?e={e}"));
    tampered.push(path.to_string());
    tampered.push(format!("{}?{query}", &path[..path.len() - 1]));
    tampered.push(format!("{}?{query}", &path[..path.rfind('/').unwrap()]));
    // a longer expiry with the old signature, a duplicated parameter
    tampered.push(format!("{path}?e=9{e}&k={k}&s={sig}"));
    tampered.push(format!("{path}?e={e}&k={k}&s={sig}&s={sig}"));
    for t in &tampered {
        let (status, hd, body) = get_raw(t, &[]).await;
        assert_eq!(status, 403, "{t}");
        assert_eq!(h(&hd, "content-type"), "application/json");
        let v = json_of(&body);
        assert_eq!(v["code"], 403);
        assert!(
            ["invalid link signature", "malformed link"].contains(&v["msg"].as_str().unwrap()),
            "{t}: {v}"
        );
        // HEAD agrees
        assert_eq!(
            request_raw(reqwest::Method::HEAD, t, &[]).await.0,
            403,
            "{t}"
        );
    }
    // mirror mode changes nothing: raw file endpoints always use real statuses
    let m = Server::start(Opts::default().args(&["--status-mode", "mirror"]));
    let (macc, mkey) = m.account_with_key("mo", "1");
    let mf = add_file(&m, &macc, "y.bin", b"y", &[]);
    let ml = link(&m, &mkey, mf["url"].as_str().unwrap()).await;
    assert_eq!(get_raw(&format!("{ml}x"), &[]).await.0, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn links_expire_after_link_ttl() {
    let s = Server::start(Opts::default().args(&["--link-ttl", "1s"]));
    let (acc, key) = s.account_with_key("fay", "1");
    let f = add_file(&s, &acc, "x.txt", b"soon gone", &[]);
    let l = link(&s, &key, f["url"].as_str().unwrap()).await;
    let e: i64 = l
        .split("e=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(e > now - 1 && e <= now + 2, "expiry {e} vs now {now}");
    let expired = eventually(Duration::from_secs(10), || {
        let l = l.clone();
        async move {
            let (status, _, body) = get_raw(&l, &[]).await;
            status == 403 && json_of(&body)["msg"] == "link expired"
        }
    })
    .await;
    assert!(expired.is_some(), "the link never expired");
    // a fresh link works again
    let fresh = link(&s, &key, &l).await;
    let (status, _, body) = get_raw(&fresh, &[]).await;
    // the fresh link may itself expire on a very slow machine; it is never a 404
    assert!(
        status == 200 && body == b"soon gone" || status == 403,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_signing_keys_keep_old_links_valid() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("gus", "1");
    let f = add_file(&s, &acc, "x.txt", b"rotating", &[]);
    let old = link(&s, &key, f["url"].as_str().unwrap()).await;
    let r = s.admin(&["signing-key", "rotate"]);
    let new_kid = r["id"].as_str().unwrap().to_string();
    // `kie admin` is another process: a SQLite server signs its next link with the new
    // key at once (asserted below), a PostgreSQL node once its cache bound has passed
    // (100 ms, tested in multinode::links_see_…): wait until it does.
    if backend_is_postgres() {
        let url = f["url"].as_str().unwrap();
        let signs_new = eventually(Duration::from_secs(5), || async {
            link(&s, &key, url).await.contains(&format!("k={new_kid}&"))
        })
        .await;
        assert!(signs_new.is_some(), "links never signed with {new_kid}");
    }
    assert_eq!(r["retired"].as_array().unwrap().len(), 1);
    let old_kid = r["retired"][0].as_str().unwrap();
    assert!(old.contains(&format!("k={old_kid}&")), "{old}");
    let new = link(&s, &key, f["url"].as_str().unwrap()).await;
    assert!(new.contains(&format!("k={new_kid}&")), "{new}");
    assert_eq!(get_raw(&old, &[]).await.2, b"rotating");
    assert_eq!(get_raw(&new, &[]).await.2, b"rotating");
    // the old signature under the new key id is not valid
    let swapped = old.replace(&format!("k={old_kid}"), &format!("k={new_kid}"));
    assert_eq!(get_raw(&swapped, &[]).await.0, 403);
    // keys never appear in admin output or logs
    let secret_like = s.log();
    assert!(!secret_like.contains("secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn priced_links_are_charged_and_refused_without_credits() {
    let s = Server::start(Opts::default().config("[pricing]\ndownload_url = \"0.4\"\n"));
    let (acc, key) = s.account_with_key("hal", "1");
    let f = add_file(&s, &acc, "x.txt", b"paid", &[]);
    let u = f["url"].as_str().unwrap();
    link(&s, &key, u).await;
    link(&s, &key, u).await;
    let credit = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2;
    assert_eq!(credit["data"], json!(0.2));
    let v = link_answer(&s, &key, json!({ "url": u })).await;
    assert_eq!(
        v,
        json!({"code": 402, "msg": "Credits insufficient", "data": null})
    );
    let credit = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2;
    assert_eq!(credit["data"], json!(0.2));
    let hist = s.admin(&["credits", "history", "--account", &acc]);
    let deducts: Vec<_> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "deduct")
        .collect();
    assert_eq!(deducts.len(), 2);
    assert_eq!(deducts[0]["amount"], json!(-0.4));
    // 404s are not charged
    let v = link_answer(
        &s,
        &key,
        json!({"url": format!("{}/files/{}/x.txt", s.base, "Q".repeat(32))}),
    )
    .await;
    assert_eq!(v["code"], 404);
    assert_eq!(
        get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["data"],
        json!(0.2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_result_urls_can_be_turned_off() {
    let s = Server::start(Opts::default().config("public_result_urls = false\n"));
    let (acc, key) = s.account_with_key("ida", "1");
    let f = add_file(&s, &acc, "x.txt", b"private", &[]);
    let u = f["url"].as_str().unwrap();
    let (status, _, body) = get_raw(u, &[]).await;
    assert_eq!(status, 403);
    assert!(json_of(&body)["msg"]
        .as_str()
        .unwrap()
        .contains("download-url"));
    assert_eq!(get_raw(&link(&s, &key, u).await, &[]).await.2, b"private");

    // and at runtime with the feature switch
    let s = Server::start(Opts::default());
    let (acc, _) = s.account_with_key("ida", "1");
    let f = add_file(&s, &acc, "x.txt", b"public", &[]);
    let u = f["url"].as_str().unwrap().to_string();
    assert_eq!(get_raw(&u, &[]).await.0, 200);
    s.admin(&["feature", "disable", "public-result-urls"]);
    let off = eventually(Duration::from_secs(5), || {
        let u = u.clone();
        async move { get_raw(&u, &[]).await.0 == 403 }
    })
    .await;
    assert!(off.is_some());
    s.admin(&["feature", "enable", "public-result-urls"]);
    let on = eventually(Duration::from_secs(5), || {
        let u = u.clone();
        async move { get_raw(&u, &[]).await.0 == 200 }
    })
    .await;
    assert!(on.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn sweeper_deletes_expired_files_and_orphan_bytes() {
    let s = Server::start(Opts::default().config(
        "retention_generated = \"3s\"\nretention_uploads = \"2s\"\nsweep_interval = \"200ms\"\norphan_grace = \"1s\"\n",
    ));
    let (acc, key) = s.account_with_key("jo", "1");
    let f = add_file(&s, &acc, "x.txt", b"short-lived", &[]);
    let u = f["url"].as_str().unwrap().to_string();
    let l = link(&s, &key, &u).await;
    let up = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "aGVsbG8=", "uploadPath": "tmp", "fileName": "h.txt"}),
    )
    .await
    .2;
    assert_eq!(up["success"], true, "{up}");
    let up_url = up["data"]["fileUrl"].as_str().unwrap().to_string();
    assert_eq!(stored_files(&s).len(), 2);
    // a stray object nobody records
    let stray_dir = s.data_dir.join("files").join("zz");
    std::fs::create_dir_all(&stray_dir).unwrap();
    std::fs::write(stray_dir.join("stray"), b"orphan").unwrap();

    let gone = eventually(Duration::from_secs(20), || {
        let (u, l, up_url) = (u.clone(), l.clone(), up_url.clone());
        let s = &s;
        async move {
            get_raw(&u, &[]).await.0 == 404
                && get_raw(&l, &[]).await.0 == 404
                && get_raw(&up_url, &[]).await.0 == 404
                && stored_files(s).is_empty()
        }
    })
    .await;
    assert!(gone.is_some(), "left: {:?}\n{}", stored_files(&s), s.log());
    // the expired file is no longer linkable
    let v = link_answer(&s, &key, json!({ "url": u })).await;
    assert_eq!(
        v,
        json!({"code": 404, "msg": "File not found", "data": null})
    );
}

// ------------------------------------------------------------------ uploads

/// One multipart part: field name, file name, content type, bytes.
type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "----kie-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, filename, ctype, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n")
                    .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes(),
            ),
        }
        if let Some(c) = ctype {
            body.extend_from_slice(format!("Content-Type: {c}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_multipart(s: &Server, key: Option<&str>, ctype: &str, body: Vec<u8>) -> (u16, Value) {
    let mut rb = client()
        .post(s.url("/api/file-stream-upload"))
        .header("content-type", ctype)
        .body(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, json_of(&r.bytes().await.unwrap()))
}

fn assert_iso_ms(s: &Value) -> i64 {
    let s = s.as_str().unwrap();
    assert_eq!(s.len(), 24, "{s}");
    assert!(s.ends_with('Z') && s.as_bytes()[19] == b'.', "{s}");
    let t = humantime::parse_rfc3339(s).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn assert_upload_ok(v: &Value, name: &str, path: &str, size: usize, mime: &str, base: &str) {
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["code"], 200);
    assert_eq!(v["msg"], "File uploaded successfully");
    let d = &v["data"];
    let mut keys: Vec<_> = d.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "downloadUrl",
            "expiresAt",
            "fileId",
            "fileName",
            "filePath",
            "fileSize",
            "fileUrl",
            "mimeType",
            "originalName",
            "uploadPath",
            "uploadTime",
            "uploadedAt"
        ]
    );
    assert_eq!(d["fileName"], name);
    assert_eq!(d["filePath"], path);
    // KIE.AI's second documented shape: the directory, the id, the time again
    assert_eq!(
        d["uploadPath"].as_str().unwrap(),
        path.strip_suffix(&format!("/{name}")).unwrap()
    );
    assert_eq!(d["uploadTime"], d["uploadedAt"]);
    let url = d["fileUrl"].as_str().unwrap();
    assert_eq!(
        d["fileId"].as_str().unwrap(),
        url.rsplit('/').nth(1).unwrap(),
        "fileId is the id in the file URL"
    );
    assert!(!d["originalName"].as_str().unwrap().is_empty());
    assert!(d["fileSize"].is_u64(), "fileSize is an integer");
    assert_eq!(d["fileSize"], size);
    assert_eq!(d["mimeType"], mime);
    assert_eq!(d["downloadUrl"], d["fileUrl"]);
    assert!(d["fileUrl"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{base}/files/")));
    let up = assert_iso_ms(&d["uploadedAt"]);
    let exp = assert_iso_ms(&d["expiresAt"]);
    assert_eq!(exp - up, 3 * 24 * 3600 * 1000, "uploads are kept 3 days");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_three_upload_kinds_store_files() {
    let s = Server::start(Opts::default().arg("--allow-private-targets"));
    let (_, key) = s.account_with_key("kim", "1");
    let png = pattern(300_000);

    // multipart, file part first (as curl -F file=@… -F uploadPath=… sends it)
    let (ct, body) = multipart(&[
        (
            "file",
            Some("C:\\Users\\kim\\shot.png"),
            Some("image/png"),
            &png,
        ),
        ("uploadPath", None, None, b"images/user-uploads"),
        ("extra", None, None, b"ignored"),
    ]);
    let (status, v) = post_multipart(&s, Some(&key), &ct, body).await;
    assert_eq!(status, 200);
    assert_upload_ok(
        &v,
        "shot.png",
        "images/user-uploads/shot.png",
        png.len(),
        "image/png",
        &s.base,
    );
    assert_eq!(v["data"]["originalName"], "shot.png");
    let url1 = v["data"]["fileUrl"].as_str().unwrap().to_string();
    assert_eq!(get_raw(&url1, &[]).await.2, png);
    // and a link for it
    assert_eq!(get_raw(&link(&s, &key, &url1).await, &[]).await.2, png);

    // the same name in the same path replaces the file
    let (ct, body) = multipart(&[
        ("uploadPath", None, None, b"images/user-uploads"),
        ("fileName", None, None, b"shot.png"),
        ("file", Some("other.png"), None, b"v2"),
    ]);
    let (_, v) = post_multipart(&s, Some(&key), &ct, body).await;
    assert_upload_ok(
        &v,
        "shot.png",
        "images/user-uploads/shot.png",
        2,
        "image/png",
        &s.base,
    );
    assert_eq!(
        v["data"]["originalName"], "other.png",
        "the part's own name"
    );
    let url2 = v["data"]["fileUrl"].as_str().unwrap().to_string();
    assert_ne!(url1, url2);
    assert_eq!(get_raw(&url1, &[]).await.0, 404);
    assert_eq!(get_raw(&url2, &[]).await.2, b"v2");

    // base64: plain and data URL
    let (_, _, v) = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "aGVsbG8gd29ybGQ=", "uploadPath": "docs", "fileName": "hello.txt"}),
    )
    .await;
    assert_upload_ok(&v, "hello.txt", "docs/hello.txt", 11, "text/plain", &s.base);
    assert_eq!(
        get_raw(v["data"]["fileUrl"].as_str().unwrap(), &[]).await.2,
        b"hello world"
    );
    let (_, _, v) = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": "data:image/gif;base64,R0lGODlhAQABAAAAACw=", "uploadPath": "img"}),
    )
    .await;
    assert_eq!(v["data"]["mimeType"], "image/gif", "{v}");
    let name = v["data"]["fileName"].as_str().unwrap();
    assert!(
        name.starts_with("upload-") && name.ends_with(".gif"),
        "{name}"
    );

    // URL upload from a tiny local server
    let hits = Arc::new(AtomicUsize::new(0));
    let src = source_server(hits.clone(), png.clone()).await;
    let (_, _, v) = post_json(
        &s.url("/api/file-url-upload"),
        Some(&key),
        &json!({"fileUrl": format!("{src}/assets/cat.png?size=large"), "uploadPath": "remote"}),
    )
    .await;
    assert_upload_ok(
        &v,
        "cat.png",
        "remote/cat.png",
        png.len(),
        "image/png",
        &s.base,
    );
    assert_eq!(
        get_raw(v["data"]["fileUrl"].as_str().unwrap(), &[]).await.2,
        png
    );
    // through a redirect, with an explicit name
    let (_, _, v) = post_json(
        &s.url("/api/file-url-upload"),
        Some(&key),
        &json!({"fileUrl": format!("{src}/redirect"), "uploadPath": "remote", "fileName": "via.png"}),
    )
    .await;
    assert_upload_ok(
        &v,
        "via.png",
        "remote/via.png",
        png.len(),
        "image/png",
        &s.base,
    );
    // the source's failure is reported without internals
    let (_, _, v) = post_json(
        &s.url("/api/file-url-upload"),
        Some(&key),
        &json!({"fileUrl": format!("{src}/missing"), "uploadPath": "remote"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"success": false, "code": 422, "msg": "fileUrl could not be fetched: the server answered HTTP 404", "data": null})
    );
}

/// A tiny file server: `/assets/*` serves `body` as PNG, `/redirect` redirects there,
/// `/to-loopback` redirects to another loopback address. Counts requests.
async fn source_server(hits: Arc<AtomicUsize>, body: Vec<u8>) -> String {
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    let body = Arc::new(body);
    let app = axum::Router::new()
        .route(
            "/assets/{name}",
            get(move || {
                let body = body.clone();
                async move { ([("content-type", "image/png")], (*body).clone()).into_response() }
            }),
        )
        .route(
            "/redirect",
            get(|| async { Redirect::temporary("/assets/x.png") }),
        )
        .route(
            "/to-loopback",
            get(|| async { Redirect::temporary("http://127.0.0.2:9/secret") }),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                hits.fetch_add(1, Ordering::SeqCst);
                async move { next.run(req).await }
            },
        ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn url_uploads_refuse_private_targets_without_the_flag() {
    let s = Server::start(Opts::default());
    let (_, key) = s.account_with_key("lee", "1");
    let hits = Arc::new(AtomicUsize::new(0));
    let src = source_server(hits.clone(), b"secret".to_vec()).await;
    let port = src.rsplit(':').next().unwrap().to_string();
    let targets = [
        format!("{src}/assets/a.png"),
        format!("http://localhost:{port}/assets/a.png"),
        format!("http://[::1]:{port}/assets/a.png"),
        format!("http://127.1:{port}/assets/a.png"),
        format!("http://2130706433:{port}/assets/a.png"),
        format!("http://0x7f000001:{port}/assets/a.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/assets/a.png"),
        format!("http://0.0.0.0:{port}/assets/a.png"),
        "http://127.1/".to_string(),
        "http://2130706433/".to_string(),
        "http://0x7f000001/".to_string(),
        "http://[::ffff:127.0.0.1]/".to_string(),
        "http://0.0.0.0/".to_string(),
    ];
    for t in &targets {
        let (_, _, v) = post_json(
            &s.url("/api/file-url-upload"),
            Some(&key),
            &json!({"fileUrl": t, "uploadPath": "x"}),
        )
        .await;
        assert_eq!(v["success"], false, "{t}: {v}");
        assert_eq!(v["code"], 422, "{t}: {v}");
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .starts_with("fileUrl is not allowed: the target address is not allowed"),
            "{t}: {v}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the target"
    );
    for bad in ["ftp://127.0.0.1/x", "file:///etc/passwd"] {
        let (_, _, v) = post_json(
            &s.url("/api/file-url-upload"),
            Some(&key),
            &json!({"fileUrl": bad, "uploadPath": "x"}),
        )
        .await;
        assert_eq!(
            v["msg"],
            "fileUrl is not allowed: only http and https URLs are supported"
        );
    }

    // A redirect from an allowed source to loopback is refused at the hop: the
    // operator allows exactly 127.0.0.1 (its "internal file server"), the redirect
    // goes to 127.0.0.2.
    let a = Server::start(Opts::default().config("allowed_private_targets = [\"127.0.0.1\"]\n"));
    let (_, akey) = a.account_with_key("lee", "1");
    let (_, _, v) = post_json(
        &a.url("/api/file-url-upload"),
        Some(&akey),
        &json!({"fileUrl": format!("{src}/assets/ok.png"), "uploadPath": "x"}),
    )
    .await;
    assert_eq!(v["success"], true, "the allowed address works: {v}");
    let before = hits.load(Ordering::SeqCst);
    let (_, _, v) = post_json(
        &a.url("/api/file-url-upload"),
        Some(&akey),
        &json!({"fileUrl": format!("{src}/to-loopback"), "uploadPath": "x"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"success": false, "code": 422, "msg": "fileUrl is not allowed: the target address is not allowed (loopback, private, link-local or reserved network)", "data": null})
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 1,
        "only the redirecting hop was fetched"
    );
    // nothing stored for the refused uploads
    assert!(stored_files(&s).is_empty());
    assert_eq!(stored_files(&a).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_and_store_nothing() {
    let s = Server::start(
        Opts::default()
            .arg("--allow-private-targets")
            .config("max_upload = 1048576\n"),
    );
    let (_, key) = s.account_with_key("max", "1");
    let b64 = s.url("/api/file-base64-upload");
    let urlup = s.url("/api/file-url-upload");
    let fail = |msg: &str| json!({"success": false, "code": 422, "msg": msg, "data": null});

    let cases: Vec<(&str, Value, Value)> = vec![
        (&b64, json!({"uploadPath": "a"}), fail("Missing required parameter: base64Data")),
        (&b64, json!({"base64Data": "aGk="}), fail("Missing required parameter: uploadPath")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": ""}), fail("Missing required parameter: uploadPath")),
        (&b64, json!({"base64Data": "not base64!", "uploadPath": "a"}), fail("Invalid parameter: base64Data is not valid base64")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": 7}), fail("Invalid field 'uploadPath': expected a string")),
        (&b64, json!({"base64Data": 7, "uploadPath": "a"}), fail("Invalid field 'base64Data': invalid type: integer `7`, expected a string")),
        (&b64, json!({"base64Data": "data:text/plain,hi", "uploadPath": "a"}), fail("Invalid parameter: base64Data data URL must be base64-encoded (';base64,')")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a/../b"}), fail("Invalid parameter: uploadPath must not contain '.' or '..' segments")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": ".."}), fail("Invalid parameter: uploadPath must not contain '.' or '..' segments")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "/abs"}), fail("Invalid parameter: uploadPath must not start or end with '/'")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a/"}), fail("Invalid parameter: uploadPath must not start or end with '/'")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a//b"}), fail("Invalid parameter: uploadPath must not contain empty segments ('//')")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a/%2e%2e"}), fail("Invalid parameter: uploadPath may contain only letters, digits, '/' and -_.~@+=")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a\\..\\b"}), fail("Invalid parameter: uploadPath may contain only letters, digits, '/' and -_.~@+=")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a", "fileName": "../x"}), fail("Invalid parameter: fileName must be 1 to 255 bytes without '/', '\\' or control characters")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a", "fileName": ".."}), fail("Invalid parameter: fileName must be 1 to 255 bytes without '/', '\\' or control characters")),
        (&b64, json!({"base64Data": "aGk=", "uploadPath": "a", "fileName": "a\u{0}b"}), fail("Invalid parameter: fileName must be 1 to 255 bytes without '/', '\\' or control characters")),
        (&urlup, json!({}), fail("Missing required parameters: fileUrl, uploadPath")),
        (&urlup, json!({"uploadPath": "a"}), fail("Missing required parameter: fileUrl")),
        (&urlup, json!({"fileUrl": "http://127.0.0.1:9/x"}), fail("Missing required parameter: uploadPath")),
        (&urlup, json!({"fileUrl": "::nope::", "uploadPath": "a"}), fail("Invalid parameter: fileUrl is not a valid URL")),
        (&urlup, json!({"fileUrl": "http://127.0.0.1:9/x", "uploadPath": "../a"}), fail("Invalid parameter: uploadPath must not contain '.' or '..' segments")),
    ];
    for (url, body, want) in &cases {
        let (_, _, v) = post_json(url, Some(&key), body).await;
        assert_eq!(&v, want, "{url} {body}");
    }
    // no key: 401 with success false
    let (_, _, v) = post_json(
        &b64,
        None,
        &json!({"base64Data": "aGk=", "uploadPath": "a"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"success": false, "code": 401, "msg": "You do not have access permissions", "data": null})
    );
    // malformed JSON
    let r = client()
        .post(&b64)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    let v = json_of(&r.bytes().await.unwrap());
    assert_eq!(
        (v["success"].clone(), v["code"].clone()),
        (json!(false), json!(422))
    );

    // multipart problems
    let (ct, body) = multipart(&[("uploadPath", None, None, b"a")]);
    assert_eq!(
        post_multipart(&s, Some(&key), &ct, body).await.1,
        fail("Missing required parameter: file")
    );
    let (ct, body) = multipart(&[("fileName", None, None, b"x")]);
    assert_eq!(
        post_multipart(&s, Some(&key), &ct, body).await.1,
        fail("Missing required parameters: file, uploadPath")
    );
    let (ct, body) = multipart(&[("file", Some("x.txt"), None, b"data")]);
    assert_eq!(
        post_multipart(&s, Some(&key), &ct, body).await.1,
        fail("Missing required parameter: uploadPath")
    );
    let (ct, body) = multipart(&[
        ("file", Some("x.txt"), None, b"data"),
        ("uploadPath", None, None, b"/etc"),
    ]);
    assert_eq!(
        post_multipart(&s, Some(&key), &ct, body).await.1,
        fail("Invalid parameter: uploadPath must not start or end with '/'")
    );
    let (ct, body) = multipart(&[
        ("file", Some("x.txt"), None, b"data"),
        ("uploadPath", None, None, b"a/.."),
        ("fileName", None, None, b"y"),
    ]);
    assert_eq!(
        post_multipart(&s, Some(&key), &ct, body).await.1,
        fail("Invalid parameter: uploadPath must not contain '.' or '..' segments")
    );
    let (_, v) = post_multipart(&s, Some(&key), "text/plain", b"x".to_vec()).await;
    assert_eq!(
        v,
        fail("Content-Type must be multipart/form-data with a boundary")
    );

    // oversized, all three kinds (limit 1 MiB); a little over, so the client finishes
    // sending before the server answers
    let big = pattern(1024 * 1024 + 200_000);
    let too_big = fail("File exceeds the upload limit of 1048576 bytes");
    let (ct, body) = multipart(&[
        ("uploadPath", None, None, b"big"),
        ("file", Some("big.bin"), None, &big),
    ]);
    assert_eq!(post_multipart(&s, Some(&key), &ct, body).await.1, too_big);
    use base64::Engine;
    let enc = base64::engine::general_purpose::STANDARD.encode(&big);
    let (_, _, v) = post_json(
        &b64,
        Some(&key),
        &json!({"base64Data": enc, "uploadPath": "big"}),
    )
    .await;
    assert_eq!(v, too_big);
    let hits = Arc::new(AtomicUsize::new(0));
    let src = source_server(hits, big.clone()).await;
    let (_, _, v) = post_json(
        &urlup,
        Some(&key),
        &json!({"fileUrl": format!("{src}/assets/big.bin"), "uploadPath": "big"}),
    )
    .await;
    assert_eq!(v, too_big);
    // exactly at the limit is fine
    let (_, _, v) = post_json(
        &b64,
        Some(&key),
        &json!({"base64Data": base64::engine::general_purpose::STANDARD.encode(&big[..1024 * 1024]), "uploadPath": "big"}),
    )
    .await;
    assert_eq!(v["success"], true, "{v}");

    // only the last upload left bytes behind, and no message leaked internals
    assert_eq!(stored_files(&s).len(), 1, "{:?}", stored_files(&s));
    let dir = s.data_dir.to_str().unwrap().to_string();
    for (url, body, _) in &cases {
        let v = post_json(url, Some(&key), body).await.2;
        let msg = v["msg"].as_str().unwrap();
        assert!(
            !msg.contains(&dir) && !msg.contains("SELECT") && !msg.contains("sqlx"),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn downloading_64_mib_keeps_server_memory_flat() {
    let s = Server::start(Opts::default());
    let (acc, key) = s.account_with_key("nia", "1");
    let size = 64 * 1024 * 1024;
    let f = add_file(&s, &acc, "big.bin", &pattern(size), &[]);
    let l = link(&s, &key, f["url"].as_str().unwrap()).await;
    let pid = s.child.as_ref().unwrap().id();
    let rss_kib = || -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        st.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap()
    };
    let mut r = client().get(&l).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut total = 0usize;
    let mut peak = rss_kib();
    let mut n = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        total += chunk.len();
        n += 1;
        if n % 64 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    peak = peak.max(rss_kib());
    assert_eq!(total, size);
    assert!(peak < 100 * 1024, "server RSS reached {peak} KiB");
}
