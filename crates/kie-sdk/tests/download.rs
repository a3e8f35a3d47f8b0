//! The downloader against a mock file server with real Range/ETag/If-Range semantics.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{content, Mock, TempDir};
use kie_sdk::download::{meta_path, part_path, plan_downloads};
use kie_sdk::{Client, DownloadItem, DownloadStatus, Downloader, Error, Progress, RetryPolicy};

fn client(base: &str, key: Option<&str>) -> Client {
    let mut b = Client::builder().base_url(base).retry_policy(RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    });
    if let Some(k) = key {
        b = b.api_key(k);
    }
    b.build().unwrap()
}

fn item(url: &str, dir: &TempDir, name: &str) -> DownloadItem {
    DownloadItem {
        url: url.to_string(),
        dest: dir.path().join(name),
    }
}

fn write_part(dest: &std::path::Path, bytes: &[u8], validator: Option<&str>) {
    std::fs::write(part_path(dest), bytes).unwrap();
    if let Some(v) = validator {
        std::fs::write(
            meta_path(dest),
            serde_json::json!({ "validator": v }).to_string(),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn fresh_download_streams_to_part_then_renames_and_reports_progress() {
    let mock = Mock::start().await;
    let data = content(300_000, 1);
    let url = mock.add_file("big.bin", data.clone());
    let dir = TempDir::new("dl-fresh");
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let dl = Downloader::new(client(&mock.base, Some("k")))
        .on_progress(move |p| ev.lock().unwrap().push(p.clone()));
    let r = dl.download(0, &item(&url, &dir, "big.bin")).await;
    assert_eq!(r.result.unwrap(), DownloadStatus::Downloaded);
    assert_eq!(r.bytes, 300_000);
    assert_eq!(std::fs::read(dir.path().join("big.bin")).unwrap(), data);
    assert!(!part_path(&dir.path().join("big.bin")).exists());
    assert!(!meta_path(&dir.path().join("big.bin")).exists());

    let events = events.lock().unwrap();
    assert!(matches!(
        &events[0],
        Progress::Started {
            index: 0,
            total: Some(300_000),
            offset: 0,
            ..
        }
    ));
    let advanced: u64 = events
        .iter()
        .map(|e| {
            if let Progress::Advanced { bytes, .. } = e {
                *bytes
            } else {
                0
            }
        })
        .sum();
    assert_eq!(advanced, 300_000);
    assert!(matches!(
        events.last(),
        Some(Progress::Finished { index: 0, ok: true })
    ));
    // file links never get the API key
    let get = &mock.requests("GET", "/files/big.bin")[0];
    assert_eq!(get.header("authorization"), None);
    assert_eq!(get.header("range"), None);
}

#[tokio::test]
async fn a_part_file_is_continued_with_range_and_if_range() {
    let mock = Mock::start().await;
    let data = content(10_000, 2);
    let url = mock.add_file("r.bin", data.clone());
    let dir = TempDir::new("dl-resume");
    let dest = dir.path().join("r.bin");
    write_part(&dest, &data[..4000], Some(&mock.etag("r.bin")));

    let r = Downloader::new(client(&mock.base, None))
        .download(0, &item(&url, &dir, "r.bin"))
        .await;
    assert_eq!(r.result.unwrap(), DownloadStatus::Resumed);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = mock.requests("GET", "/files/r.bin");
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].header("range"), Some("bytes=4000-"));
    assert_eq!(
        gets[0].header("if-range"),
        Some(mock.etag("r.bin").as_str())
    );
    assert_eq!(gets[0].status, 206);
}

#[tokio::test]
async fn a_changed_file_restarts_from_zero() {
    let mock = Mock::start().await;
    let data = content(10_000, 3);
    let url = mock.add_file("c.bin", data.clone());
    let dir = TempDir::new("dl-changed");
    let dest = dir.path().join("c.bin");
    // bytes of an older version, validated by an ETag the server no longer has
    write_part(&dest, &[0xAA; 6000], Some("\"old-version\""));

    let r = Downloader::new(client(&mock.base, None))
        .download(0, &item(&url, &dir, "c.bin"))
        .await;
    assert_eq!(r.result.unwrap(), DownloadStatus::Downloaded);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = mock.requests("GET", "/files/c.bin");
    assert_eq!(
        (gets.len(), gets[0].header("range"), gets[0].status),
        (1, Some("bytes=6000-"), 200)
    );
}

#[tokio::test]
async fn a_part_without_validator_is_not_trusted() {
    let mock = Mock::start().await;
    let data = content(5_000, 4);
    let url = mock.add_file("n.bin", data.clone());
    let dir = TempDir::new("dl-novalidator");
    let dest = dir.path().join("n.bin");
    write_part(&dest, &[0xBB; 2000], None);
    let r = Downloader::new(client(&mock.base, None))
        .download(0, &item(&url, &dir, "n.bin"))
        .await;
    assert_eq!(r.result.unwrap(), DownloadStatus::Downloaded);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        mock.requests("GET", "/files/n.bin")[0].header("range"),
        None
    );
}

#[tokio::test]
async fn a_cut_transfer_resumes_where_it_stopped() {
    let mock = Mock::start().await;
    let data = content(50_000, 5);
    let url = mock.add_file("cut.bin", data.clone());
    mock.cut("cut.bin", 1, 20_000);
    let dir = TempDir::new("dl-cut");
    let r = Downloader::new(client(&mock.base, None))
        .download(0, &item(&url, &dir, "cut.bin"))
        .await;
    assert_eq!(r.result.unwrap(), DownloadStatus::Resumed);
    assert_eq!(std::fs::read(dir.path().join("cut.bin")).unwrap(), data);
    let gets = mock.requests("GET", "/files/cut.bin");
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].header("range"), Some("bytes=20000-"));
    assert_eq!(
        gets[1].header("if-range"),
        Some(mock.etag("cut.bin").as_str())
    );
}

#[tokio::test]
async fn a_transfer_cut_every_time_fails_without_a_final_file() {
    let mock = Mock::start().await;
    let url = mock.add_file("bad.bin", content(50_000, 6));
    mock.cut("bad.bin", 100, 0);
    let dir = TempDir::new("dl-cut-always");
    let r = Downloader::new(client(&mock.base, None))
        .attempts(3)
        .download(0, &item(&url, &dir, "bad.bin"))
        .await;
    // the body ends before Content-Length: said as such, not as a bare socket error
    assert!(
        matches!(
            r.result,
            Err(Error::Incomplete {
                received: 0,
                expected: 50_000
            })
        ),
        "{:?}",
        r.result
    );
    assert_eq!(mock.count("GET", "/files/bad.bin"), 3);
    assert!(
        !dir.path().join("bad.bin").exists(),
        "nothing under the final name"
    );
}

#[tokio::test]
async fn an_expired_link_is_replaced_and_the_transfer_continues() {
    let mock = Mock::start().await;
    let data = content(8_000, 7);
    mock.add_file("e.bin", data.clone());
    let expired = mock.expired_link("e.bin");
    let dir = TempDir::new("dl-expired");
    let dest = dir.path().join("e.bin");
    write_part(&dest, &data[..3000], Some(&mock.etag("e.bin")));

    let r = Downloader::new(client(&mock.base, Some("k")))
        .download(0, &item(&expired, &dir, "e.bin"))
        .await;
    assert_eq!(r.result.unwrap(), DownloadStatus::Resumed);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    let seen: Vec<(String, String, u16)> = mock
        .seen()
        .into_iter()
        .map(|s| (s.method, s.path, s.status))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("GET".into(), "/links/expired/e.bin".into(), 403),
            ("POST".into(), "/api/v1/common/download-url".into(), 200),
            ("GET".into(), "/links/t1/e.bin".into(), 206),
        ]
    );
    let asked: serde_json::Value =
        serde_json::from_slice(&mock.requests("POST", "/api/v1/common/download-url")[0].body)
            .unwrap();
    assert_eq!(asked, serde_json::json!({ "url": expired }));
}

#[tokio::test]
async fn an_expired_link_without_api_key_is_a_clear_failure() {
    let mock = Mock::start().await;
    mock.add_file("x.bin", content(10, 8));
    let dir = TempDir::new("dl-nokey");
    let r = Downloader::new(client(&mock.base, None))
        .download(0, &item(&mock.expired_link("x.bin"), &dir, "x.bin"))
        .await;
    let err = r.result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "link refused (HTTP 403, expired?) and no fresh link could be had: configuration: no API key: set KIE_API_KEY or pass one (--api-key)"
    );
    assert_eq!(
        mock.count("GET", "/links/expired/x.bin"),
        1,
        "a 403 is not retried as such"
    );
}

#[tokio::test]
async fn complete_files_are_skipped_and_different_ones_replaced() {
    let mock = Mock::start().await;
    let data = content(7_000, 9);
    let url = mock.add_file("s.bin", data.clone());
    let dir = TempDir::new("dl-skip");
    let dest = dir.path().join("s.bin");
    std::fs::write(&dest, &data).unwrap();
    let dl = Downloader::new(client(&mock.base, None));
    let r = dl.download(0, &item(&url, &dir, "s.bin")).await;
    assert_eq!(
        (r.result.unwrap(), r.bytes),
        (DownloadStatus::AlreadyComplete, 7000)
    );
    assert_eq!(
        (
            mock.count("HEAD", "/files/s.bin"),
            mock.count("GET", "/files/s.bin")
        ),
        (1, 0)
    );

    std::fs::write(&dest, b"short").unwrap();
    let r = dl.download(0, &item(&url, &dir, "s.bin")).await;
    assert_eq!(r.result.unwrap(), DownloadStatus::Downloaded);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test]
async fn not_found_is_not_retried_and_leaves_nothing() {
    let mock = Mock::start().await;
    let dir = TempDir::new("dl-404");
    let url = format!("{}/files/missing.bin?sig=SECRET", mock.base);
    let r = Downloader::new(client(&mock.base, None))
        .download(0, &item(&url, &dir, "missing.bin"))
        .await;
    let err = r.result.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("HTTP 404 from {}/files/missing.bin", mock.base)
    );
    assert_eq!(mock.count("GET", "/files/missing.bin"), 1);
    assert!(!dir.path().join("missing.bin").exists());
}

#[tokio::test]
async fn batch_concurrency_is_bounded_and_order_kept() {
    let mock = Mock::start().await;
    let urls: Vec<String> = (0..6)
        .map(|i| mock.add_file(&format!("f{i}.bin"), content(1000 + i, i as u8)))
        .collect();
    // every file GET waits for a partner: passes only if exactly 2 run at once
    mock.hold_file_gets_in_groups_of(2);
    let dir = TempDir::new("dl-batch");
    let items = plan_downloads(&urls, dir.path());
    let reports = tokio::time::timeout(
        Duration::from_secs(20),
        Downloader::new(client(&mock.base, None))
            .concurrency(2)
            .download_all(&items),
    )
    .await
    .expect("downloads stuck: fewer than 2 at once");
    assert_eq!(mock.max_in_flight(), 2);
    let got: Vec<(String, u64)> = reports
        .iter()
        .map(|r| {
            (
                r.path.file_name().unwrap().to_string_lossy().into_owned(),
                r.bytes,
            )
        })
        .collect();
    let want: Vec<(String, u64)> = (0..6)
        .map(|i| (format!("f{i}.bin"), 1000 + i as u64))
        .collect();
    assert_eq!(got, want);
    assert!(reports.iter().all(|r| r.is_ok()));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_is_reported_as_such() {
    let mock = Mock::start().await;
    let url = mock.add_file("full.bin", content(100_000, 10));
    let dir = TempDir::new("dl-full");
    let dest = dir.path().join("full.bin");
    // every write to /dev/full fails with ENOSPC
    std::os::unix::fs::symlink("/dev/full", part_path(&dest)).unwrap();
    let r = Downloader::new(client(&mock.base, None))
        .download(0, &item(&url, &dir, "full.bin"))
        .await;
    let err = r.result.unwrap_err();
    assert!(matches!(&err, Error::DiskFull { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("disk full while writing {}", part_path(&dest).display())
    );
    assert!(!dest.exists());
    assert_eq!(
        mock.count("GET", "/files/full.bin"),
        1,
        "a full disk is not retried"
    );
}
