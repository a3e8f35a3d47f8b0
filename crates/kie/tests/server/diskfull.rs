//! Issue 8 (disk full): the local store on a small tmpfs. Uploads that hit ENOSPC fail
//! cleanly (500 envelope with a request id found in the log), leave no partial file and
//! no record; earlier files still download intact; once space is freed uploads work.
//! `kie admin file add` fails the same way.

use crate::harness::*;
use rand::Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

async fn stream_upload(s: &Server, key: &str, name: &str, data: &[u8]) -> Value {
    let b = "dfBoundary";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\nfull\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    let r = client()
        .post(s.url("/api/file-stream-upload"))
        .bearer_auth(key)
        .header("content-type", format!("multipart/form-data; boundary={b}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn assert_server_error(s: &Server, v: &Value) {
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], 500, "{v}");
    assert_eq!(v["data"], Value::Null, "{v}");
    let msg = v["msg"].as_str().unwrap();
    let id = msg
        .strip_prefix("Server error (request id ")
        .and_then(|m| m.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{msg}"));
    // no paths or OS errors reach the client; the log has the cause under that id
    assert!(
        !msg.contains('/') && !msg.to_lowercase().contains("space"),
        "{msg}"
    );
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("request id {id} not in the log"));
    assert!(line.contains("No space left on device"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_local_store_fails_uploads_cleanly_and_recovers() {
    let tmp = TempDir::new();
    let mnt = tmp.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "2m");
    let store = mnt.join("store");
    std::fs::create_dir_all(&store).unwrap();
    // Ballast on the same file system, removed later to free space.
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![1u8; 600 * 1024]).unwrap();

    let s =
        Server::start(Opts::default().args(&["--storage", &format!("file://{}", store.display())]));
    let (_, key) = s.account_with_key("full", "1");
    let mut rng = rand::thread_rng();
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut failed = None;
    for i in 0..20 {
        let data: Vec<u8> = (0..256 * 1024).map(|_| rng.gen()).collect();
        let v = stream_upload(&s, &key, &format!("f{i}.bin"), &data).await;
        if v["success"] == true {
            stored.push((v["data"]["fileUrl"].as_str().unwrap().to_string(), data));
        } else {
            failed = Some(v);
            break;
        }
    }
    let failed = failed.expect("the 2 MiB store never filled up");
    assert!(stored.len() >= 2, "only {} uploads fit", stored.len());
    assert_server_error(&s, &failed);

    // base64 uploads fail the same way.
    use base64::Engine;
    let big = base64::engine::general_purpose::STANDARD.encode(vec![9u8; 400 * 1024]);
    let (_, _, v) = post_json(
        &s.url("/api/file-base64-upload"),
        Some(&key),
        &json!({"base64Data": big, "uploadPath": "full", "fileName": "b.bin"}),
    )
    .await;
    assert_server_error(&s, &v);

    // `kie admin file add` too: non-zero, one line, no record.
    let src = tmp.path().join("admin.bin");
    std::fs::write(&src, vec![3u8; 500 * 1024]).unwrap();
    let out = s.admin_raw(&[
        "--storage",
        &format!("file://{}", store.display()),
        "file",
        "add",
        "--account",
        "full",
        src.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "file add succeeded on a full disk");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Nothing partial under any name, no record for the failed uploads.
    let clean = eventually(Duration::from_secs(5), || async {
        stored_keys(&store) == s.live_storage_keys()
    })
    .await;
    assert!(
        clean.is_some(),
        "store {:?} vs records {:?}",
        stored_keys(&store),
        s.live_storage_keys()
    );
    assert_eq!(s.live_storage_keys().len(), stored.len());
    // Earlier files are intact.
    for (url, data) in &stored {
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == data[..], "{url} changed");
    }
    // Space freed: uploads work again.
    std::fs::remove_file(&ballast).unwrap();
    let data: Vec<u8> = (0..256 * 1024).map(|_| rng.gen()).collect();
    let v = stream_upload(&s, &key, "after.bin", &data).await;
    assert_eq!(v["success"], true, "{v}");
    let r = client()
        .get(v["data"]["fileUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == data[..]);
    let out = s.admin_raw(&[
        "--storage",
        &format!("file://{}", store.display()),
        "file",
        "add",
        "--account",
        "full",
        src.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored_keys(&store), s.live_storage_keys());
    drop(s);
}
