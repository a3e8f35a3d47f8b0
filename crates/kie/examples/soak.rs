//! Soak client (run by `bench/soak.sh` against a release `kie serve`).
//!
//! Mixed load for a given time — credit reads, download-url, link downloads of a small
//! and a large file, uploads, and createTask with a callback to a local receiver — and
//! every 10 s a sample of the server process: RSS, open descriptors, threads, database
//! connections, and the requests and errors since the last sample. At the end: the RSS
//! slope after a one-minute warm-up (least squares, MiB per 10 minutes; also the
//! Theil–Sen slope, the median of the slopes between every two samples, which one
//! sample caught in a burst does not move), RSS per minute (the median of each
//! minute's samples), and the ranges of the other figures. With `--scrape`, `/metrics`
//! is fetched once a second.
//!
//! Usage: soak --base URL --key KEY --pid PID [--minutes 10] [--scrape]
//!             [--pg URL_OF_THE_SERVERS_DATABASE | --sqlite PATH_OF_kie.db]
//!             [--concurrency 16] [--tasks-per-sec 50] [--uploads-per-sec 10]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    /// intended: rate limiting (429)
    limited: AtomicU64,
    errors: AtomicU64,
    callbacks: AtomicU64,
}

struct Opts {
    base: String,
    key: String,
    pid: u32,
    minutes: f64,
    scrape: bool,
    pg: Option<String>,
    sqlite: Option<String>,
    concurrency: usize,
    tasks_per_sec: u64,
    uploads_per_sec: u64,
}

fn opts() -> Opts {
    let mut o = Opts {
        base: String::new(),
        key: String::new(),
        pid: 0,
        minutes: 10.0,
        scrape: false,
        pg: None,
        sqlite: None,
        concurrency: 16,
        tasks_per_sec: 50,
        uploads_per_sec: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--base" => o.base = val().trim_end_matches('/').to_string(),
            "--key" => o.key = val(),
            "--pid" => o.pid = val().parse().unwrap_or_else(|_| usage("--pid")),
            "--minutes" => o.minutes = val().parse().unwrap_or_else(|_| usage("--minutes")),
            "--scrape" => o.scrape = true,
            "--pg" => o.pg = Some(val()),
            "--sqlite" => o.sqlite = Some(val()),
            "--concurrency" => {
                o.concurrency = val().parse().unwrap_or_else(|_| usage("--concurrency"))
            }
            "--tasks-per-sec" => {
                o.tasks_per_sec = val().parse().unwrap_or_else(|_| usage("--tasks-per-sec"))
            }
            "--uploads-per-sec" => {
                o.uploads_per_sec = val().parse().unwrap_or_else(|_| usage("--uploads-per-sec"))
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if o.base.is_empty() || o.key.is_empty() || o.pid == 0 {
        usage("--base, --key and --pid are required");
    }
    o
}

fn usage(msg: &str) -> ! {
    eprintln!("soak: {msg}\nusage: soak --base URL --key KEY --pid PID [--minutes M] [--scrape] [--pg URL | --sqlite PATH] [--concurrency C] [--tasks-per-sec N] [--uploads-per-sec N]");
    std::process::exit(2)
}

/// A multipart body with one file part and `uploadPath`.
fn multipart(name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "soakboundary7MA4YWxkTrZu0gW";
    let mut b = Vec::new();
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\nsoak\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(data);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

async fn upload(c: &reqwest::Client, o: &Opts, name: &str, data: &[u8]) -> Result<String, String> {
    let (ct, body) = multipart(name, data);
    let r = c
        .post(format!("{}/api/file-stream-upload", o.base))
        .bearer_auth(&o.key)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    if v["code"] != 200 {
        return Err(v.to_string());
    }
    Ok(v["data"]["fileUrl"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

async fn link(c: &reqwest::Client, o: &Opts, file_url: &str) -> Result<String, u16> {
    let r = c
        .post(format!("{}/api/v1/common/download-url", o.base))
        .bearer_auth(&o.key)
        .json(&serde_json::json!({ "url": file_url }))
        .send()
        .await
        .map_err(|_| 0u16)?;
    let http = r.status().as_u16();
    let v: serde_json::Value = r.json().await.map_err(|_| http)?;
    match v["code"].as_u64() {
        Some(200) => Ok(v["data"].as_str().unwrap_or_default().to_string()),
        Some(c) => Err(c as u16),
        None => Err(http),
    }
}

/// How long a worker uses the large file's link before asking for a new one.
const LINK_REISSUE: Duration = Duration::from_secs(60);

fn record(counts: &Counts, code: u16) {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    match code {
        200 | 206 => {}
        429 => {
            counts.limited.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            counts.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Body code of an envelope answer (HTTP status when it is not one).
async fn envelope_code(r: Result<reqwest::Response, reqwest::Error>) -> u16 {
    match r {
        Ok(r) => {
            let http = r.status().as_u16();
            match r.json::<serde_json::Value>().await {
                Ok(v) => v["code"].as_u64().map_or(http, |c| c as u16),
                Err(_) => http,
            }
        }
        Err(_) => 0,
    }
}

/// Status of a download, its body read to the end.
async fn download(c: &reqwest::Client, url: &str) -> u16 {
    match c.get(url).send().await {
        Ok(mut r) => {
            let st = r.status().as_u16();
            loop {
                match r.chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return st,
                    Err(_) => return 0,
                }
            }
        }
        Err(_) => 0,
    }
}

struct Sample {
    t: f64,
    rss_kib: u64,
    anon_kib: u64,
    fds: u64,
    threads: u64,
    db_conns: Option<u64>,
}

fn proc_sample(pid: u32) -> Option<(u64, u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((
        field("VmRSS:")?,
        field("RssAnon:")?,
        fds,
        field("Threads:")?,
    ))
}

/// Connections to the server's database: PostgreSQL sessions on its database, or the
/// server's open descriptors of the SQLite file.
async fn db_conns(o: &Opts) -> Option<u64> {
    if let Some(url) = &o.pg {
        let db = url.rsplit('/').next()?.split('?').next()?.to_string();
        let out = tokio::process::Command::new("psql")
            .args([
                url.as_str(),
                "-Atc",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"),
            ])
            .output()
            .await
            .ok()?;
        return String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    }
    let path = std::fs::canonicalize(o.sqlite.as_ref()?).ok()?;
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{}/fd", o.pid))
        .ok()?
        .flatten()
    {
        if std::fs::read_link(e.path()).is_ok_and(|t| t == path) {
            n += 1;
        }
    }
    Some(n)
}

#[tokio::main]
async fn main() {
    let o = Arc::new(opts());
    let counts = Arc::new(Counts::default());
    let until = Instant::now() + Duration::from_secs_f64(o.minutes * 60.0);

    // the callback receiver
    let cb = counts.clone();
    let app = axum::Router::new().fallback(move || {
        let cb = cb.clone();
        async move {
            cb.callbacks.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency * 2)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // a small (4 KiB) and a large (16 MiB) file, uploaded through the API
    let small: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let large: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    let small_url = upload(&c, &o, "small.bin", &small)
        .await
        .unwrap_or_else(|e| {
            eprintln!("soak: upload of the small file failed: {e}");
            std::process::exit(1)
        });
    let large_url = upload(&c, &o, "large.bin", &large)
        .await
        .unwrap_or_else(|e| {
            eprintln!("soak: upload of the large file failed: {e}");
            std::process::exit(1)
        });
    drop(large);
    link(&c, &o, &large_url)
        .await
        .expect("link to the large file");
    println!(
        "soak: {} for {} min, {} workers, {} tasks/s, {} uploads/s, scraper {}",
        o.base,
        o.minutes,
        o.concurrency,
        o.tasks_per_sec,
        o.uploads_per_sec,
        if o.scrape { "on" } else { "off" }
    );

    let mut jobs = tokio::task::JoinSet::new();
    // reads, links, downloads
    for w in 0..o.concurrency {
        let (c, o, counts, small_url, large_url) = (
            c.clone(),
            o.clone(),
            counts.clone(),
            small_url.clone(),
            large_url.clone(),
        );
        jobs.spawn(async move {
            let mut i: u64 = w as u64;
            let mut small_link = String::new();
            // the large file's link, issued again once a minute: a link expires
            // (link_ttl, 20 min by default) and a soak may last longer
            let mut large_link: Option<(String, Instant)> = None;
            while Instant::now() < until {
                i += 1;
                let code = match i % 20 {
                    0..=9 => {
                        envelope_code(
                            c.get(format!("{}/api/v1/chat/credit", o.base))
                                .bearer_auth(&o.key)
                                .send()
                                .await,
                        )
                        .await
                    }
                    10..=14 => match link(&c, &o, &small_url).await {
                        Ok(l) => {
                            small_link = l;
                            200
                        }
                        Err(code) => code,
                    },
                    15..=18 if !small_link.is_empty() => download(&c, &small_link).await,
                    // one large download in 20 requests of one worker in 8
                    19 if w % 8 == 0 => match &large_link {
                        Some((l, at)) if at.elapsed() < LINK_REISSUE => download(&c, l).await,
                        _ => match link(&c, &o, &large_url).await {
                            Ok(l) => {
                                large_link = Some((l, Instant::now()));
                                200
                            }
                            Err(code) => code,
                        },
                    },
                    _ => continue,
                };
                record(&counts, code);
            }
        });
    }
    // tasks with callbacks, at a fixed rate
    if o.tasks_per_sec > 0 {
        let (c, o, counts, hook) = (c.clone(), o.clone(), counts.clone(), hook.clone());
        jobs.spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / o.tasks_per_sec as f64));
            let mut n = 0u64;
            while Instant::now() < until {
                tick.tick().await;
                n += 1;
                let body = serde_json::json!({
                    "model": "demo/text",
                    "input": {"prompt": format!("soak {n}")},
                    "callBackUrl": hook,
                });
                let r = c
                    .post(format!("{}/api/v1/jobs/createTask", o.base))
                    .bearer_auth(&o.key)
                    .json(&body)
                    .send()
                    .await;
                record(&counts, envelope_code(r).await);
            }
        });
    }
    // uploads, at a fixed rate
    if o.uploads_per_sec > 0 {
        let (c, o, counts) = (c.clone(), o.clone(), counts.clone());
        jobs.spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / o.uploads_per_sec as f64));
            let data = vec![42u8; 8192];
            while Instant::now() < until {
                tick.tick().await;
                let code = match upload(&c, &o, "up.bin", &data).await {
                    Ok(_) => 200,
                    Err(_) => 500,
                };
                record(&counts, code);
            }
        });
    }
    // the scraper
    if o.scrape {
        let (c, o) = (c.clone(), o.clone());
        jobs.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < until {
                tick.tick().await;
                if let Ok(r) = c.get(format!("{}/metrics", o.base)).send().await {
                    let _ = r.bytes().await;
                }
            }
        });
    }

    // the sampler
    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let (mut last_req, mut last_err, mut last_lim) = (0, 0, 0);
    println!(
        "   t(s)  rss(MiB)  anon(MiB)  fds  threads  db_conns  requests  errors  429s  callbacks"
    );
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        let Some((rss_kib, anon_kib, fds, threads)) = proc_sample(o.pid) else {
            eprintln!("soak: the server (pid {}) is gone", o.pid);
            std::process::exit(1);
        };
        let db = db_conns(&o).await;
        let req = counts.requests.load(Ordering::Relaxed);
        let err = counts.errors.load(Ordering::Relaxed);
        let lim = counts.limited.load(Ordering::Relaxed);
        println!(
            "{t:7.0}  {:8.1}  {:9.1}  {fds:3}  {threads:7}  {:>8}  {:8}  {:6}  {:4}  {:9}",
            rss_kib as f64 / 1024.0,
            anon_kib as f64 / 1024.0,
            db.map_or("-".to_string(), |d| d.to_string()),
            req - last_req,
            err - last_err,
            lim - last_lim,
            counts.callbacks.load(Ordering::Relaxed)
        );
        (last_req, last_err, last_lim) = (req, err, lim);
        samples.push(Sample {
            t,
            rss_kib,
            anon_kib,
            fds,
            threads,
            db_conns: db,
        });
        if Instant::now() >= until {
            break;
        }
    }
    while jobs.join_next().await.is_some() {}

    // after the warm-up: RSS slope (least squares) and ranges
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.t >= 60.0).collect();
    // least-squares slope of `f` (KiB) over the warm samples, in MiB per 10 minutes
    let slope = |f: &dyn Fn(&Sample) -> u64| {
        let n = warm.len() as f64;
        let (sx, sy) = warm
            .iter()
            .fold((0.0, 0.0), |(a, b), s| (a + s.t, b + f(s) as f64));
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = warm.iter().fold((0.0, 0.0), |(a, b), s| {
            (a + (s.t - mx) * (f(s) as f64 - my), b + (s.t - mx).powi(2))
        });
        if den > 0.0 {
            num / den * 600.0 / 1024.0
        } else {
            f64::NAN
        }
    };
    let slope_mib_per_10min = slope(&|s| s.rss_kib);
    let anon_slope = slope(&|s| s.anon_kib);
    // Theil–Sen: the median of the slopes between every two warm samples. A trend
    // (a leak) moves it exactly as it moves least squares; one sample caught in a
    // burst (a large download's buffers in flight) does not.
    let mut pair_slopes = Vec::new();
    for (i, a) in warm.iter().enumerate() {
        for b in &warm[i + 1..] {
            if b.t > a.t {
                pair_slopes.push((b.rss_kib as f64 - a.rss_kib as f64) / (b.t - a.t));
            }
        }
    }
    pair_slopes.sort_by(f64::total_cmp);
    let median_slope = match pair_slopes.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => pair_slopes[n / 2],
        n => (pair_slopes[n / 2 - 1] + pair_slopes[n / 2]) / 2.0,
    } * 600.0
        / 1024.0;
    // RSS per minute (median of the minute's samples), MiB
    let mut by_minute: Vec<Vec<u64>> = Vec::new();
    for s in &samples {
        let m = (s.t / 60.0) as usize;
        if by_minute.len() <= m {
            by_minute.resize_with(m + 1, Vec::new);
        }
        by_minute[m].push(s.rss_kib);
    }
    let per_minute: Vec<String> = by_minute
        .iter_mut()
        .take_while(|v| !v.is_empty())
        .map(|v| {
            v.sort_unstable();
            format!("{:.1}", v[v.len() / 2] as f64 / 1024.0)
        })
        .collect();
    println!("RSS per minute (median, MiB): {}", per_minute.join(" "));
    let range = |f: &dyn Fn(&Sample) -> u64| {
        let v: Vec<u64> = warm.iter().map(|s| f(s)).collect();
        (
            v.iter().min().copied().unwrap_or(0),
            v.iter().max().copied().unwrap_or(0),
        )
    };
    let (fmin, fmax) = range(&|s| s.fds);
    let (tmin, tmax) = range(&|s| s.threads);
    let (dmin, dmax) = range(&|s| s.db_conns.unwrap_or(0));
    let (rmin, rmax) = range(&|s| s.rss_kib);
    let total = counts.requests.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let limited = counts.limited.load(Ordering::Relaxed);
    println!(
        "SOAK slope {slope_mib_per_10min:.2} MiB/10min (anonymous {anon_slope:.2}, Theil-Sen {median_slope:.2}); rss {:.1}-{:.1} MiB; fds {fmin}-{fmax}; threads {tmin}-{tmax}; db conns {dmin}-{dmax}; requests {total} ({:.0}/s); errors {errors}; 429s {limited}; callbacks {}",
        rmin as f64 / 1024.0,
        rmax as f64 / 1024.0,
        total as f64 / start.elapsed().as_secs_f64(),
        counts.callbacks.load(Ordering::Relaxed)
    );
}
