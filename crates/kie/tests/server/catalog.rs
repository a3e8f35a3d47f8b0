//! Issue 15 items 1-4: every catalog model runs end to end on the built-in generators
//! (result media checked by magic bytes, every MP4 probed by ffprobe), createTask
//! validates input like KIE.AI, the catalog endpoints and their 1 request/s limit,
//! generation delay, failure rate and input URLs that cannot be fetched.

use crate::harness::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A server that runs tasks at once and lets inputs be fetched from loopback.
fn opts() -> Opts {
    Opts::default().arg("--allow-private-targets").config(
        "task_rate = 100000\ndemo_workers = 4\ncatalog_rate_limit = 0\n\
         default_model_price = \"7.5\"\n\
         [models.\"z-image\"]\nfail_rate = 1.0\n\
         [models.\"google/imagen4-fast\"]\ndelay = \"3s\"\n",
    )
}

/// Serves input files on 127.0.0.1:0: `/missing` answers 404, any other path 200 with
/// a few bytes. Returns its base URL.
async fn file_host() -> String {
    let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
        use axum::response::IntoResponse;
        if uri.path() == "/missing" {
            (axum::http::StatusCode::NOT_FOUND, "gone").into_response()
        } else {
            (
                [("content-type", "application/octet-stream")],
                format!("input file {}", uri.path()),
            )
                .into_response()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    base
}

async fn api_get(s: &Server, key: &str, path: &str) -> Value {
    let (status, _, v) = get_json(&s.url(path), Some(key)).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

async fn create(s: &Server, key: &str, body: &Value) -> Value {
    post_json(&s.url("/api/v1/jobs/createTask"), Some(key), body)
        .await
        .2
}

async fn record(s: &Server, key: &str, id: &str) -> Value {
    api_get(s, key, &format!("/api/v1/jobs/recordInfo?taskId={id}")).await["data"].clone()
}

async fn finished(s: &Server, key: &str, id: &str, limit: Duration) -> Value {
    let done = eventually(limit, || async {
        matches!(
            record(s, key, id).await["state"].as_str(),
            Some("success" | "fail")
        )
    })
    .await;
    let last = record(s, key, id).await;
    assert!(done.is_some(), "task {id} did not finish: {last}");
    last
}

/// A value the schema accepts: its default, first enum value, minimum, or a plain one.
fn sample(schema: &Value, files: &str, name: &str) -> Value {
    if let Some(v) = schema.get("default") {
        return v.clone();
    }
    if let Some(e) = schema["enum"].as_array() {
        return e[0].clone();
    }
    let min_items = schema["minItems"].as_u64().unwrap_or(1).max(1) as usize;
    match schema["type"].as_str().unwrap_or("") {
        "string" if schema["format"] == "uri" => json!(format!("{files}/{name}.bin")),
        "string" => json!("a red fox jumps over the fence"),
        "integer" => json!(schema["minimum"].as_f64().map_or(5, |m| m as i64)),
        "number" => json!(schema["minimum"].as_f64().unwrap_or(5.0)),
        "boolean" => json!(false),
        "object" => minimal_input(schema, files),
        "array" => {
            let item = match schema["items"]["type"].as_str() {
                Some("array") => json!([0, 0, 10, 10]),
                _ => sample(&schema["items"], files, name),
            };
            Value::Array(vec![item; min_items])
        }
        _ => json!("x"),
    }
}

/// The required fields of a JSON Schema (and of its first accepted shape) filled in.
fn minimal_input(schema: &Value, files: &str) -> Value {
    let mut names: Vec<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    if let Some(first) = schema["anyOf"].as_array().and_then(|a| a.first()) {
        for n in first["required"].as_array().unwrap() {
            names.push(n.as_str().unwrap().to_string());
        }
    }
    let mut out = serde_json::Map::new();
    for n in names {
        let v = sample(&schema["properties"][&n], files, &n);
        out.insert(n, v);
    }
    Value::Object(out)
}

fn ffprobe(bytes: &[u8]) -> Value {
    let dir = TempDir::new();
    let path = dir.path().join("v.mp4");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", "-show_format", "-of", "json"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("ffprobe is needed to check the videos (scripts/install-test-tools installs it): {e}")
        });
    assert!(
        out.status.success(),
        "ffprobe refused the MP4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_catalog_model_succeeds_with_its_minimal_input_and_the_right_media() {
    // Fail (never skip) without the demuxer the videos are checked with.
    let probe = std::process::Command::new("ffprobe")
        .arg("-version")
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "ffprobe is missing: run scripts/install-test-tools (installs Debian's ffmpeg)"
    );
    let files = file_host().await;
    let s = Server::start(opts());
    let (_, key) = s.account_with_key("catalog", "1000000");
    let list = api_get(&s, &key, "/api/v1/models").await["data"].clone();
    let models: Vec<(String, String)> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap().to_string(),
                m["output"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(m, _)| m != "z-image") // configured to fail on purpose (see below)
        .collect();
    assert_eq!(list["total"], models.len() + 1);
    assert!(models.len() >= 149, "{}", models.len());
    let started = Instant::now();
    // Many tasks at once (24 in flight), each polled until it finishes.
    let tasks: Vec<(String, String, Value)> =
        futures::stream::iter(models.iter().map(|(m, out)| {
            let (s, key, files) = (&s, &key, &files);
            async move {
                let schema =
                    api_get(s, key, &format!("/api/v1/models/{m}/schema")).await["data"].clone();
                let input = minimal_input(&schema, files);
                let r = create(s, key, &json!({"model": m, "input": input})).await;
                assert_eq!(r["code"], 200, "{m} with {input}: {r}");
                let id = r["data"]["taskId"].as_str().unwrap().to_string();
                let rec = finished(s, key, &id, Duration::from_secs(240)).await;
                assert_eq!(rec["state"], "success", "{m} with {input}: {rec}");
                (m.clone(), out.clone(), rec)
            }
        }))
        .buffer_unordered(24)
        .collect()
        .await;
    eprintln!(
        "{} models end to end in {:?}",
        tasks.len(),
        started.elapsed()
    );
    let mut videos = 0;
    for (m, out, rec) in tasks {
        let result: Value = serde_json::from_str(rec["resultJson"].as_str().unwrap()).unwrap();
        if out == "text" {
            assert!(result["resultObject"]["text"].is_string(), "{m}: {result}");
            continue;
        }
        let url = result["resultUrls"][0]
            .as_str()
            .unwrap_or_else(|| panic!("{m}: {result}"));
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{m}: {url}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let b = r.bytes().await.unwrap();
        match out.as_str() {
            "image" => {
                assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{m}");
                assert_eq!(ct, "image/png", "{m}");
            }
            "audio" => {
                assert!(&b[..4] == b"RIFF" && &b[8..12] == b"WAVE", "{m}");
                assert_eq!(ct, "audio/wav", "{m}");
            }
            "video" => {
                assert_eq!(&b[4..8], b"ftyp", "{m}");
                assert_eq!(ct, "video/mp4", "{m}");
                let p = ffprobe(&b);
                let v = &p["streams"][0];
                assert_eq!(v["codec_type"], "video", "{m}: {p}");
                assert_eq!(v["codec_name"], "h264", "{m}: {p}");
                let secs: f64 = p["format"]["duration"].as_str().unwrap().parse().unwrap();
                assert!((1.0..=5.0).contains(&secs), "{m}: {secs} s");
                assert!(b.len() < 1_000_000, "{m}: {} bytes", b.len());
                videos += 1;
            }
            o => panic!("{m}: unknown output {o}"),
        }
    }
    assert!(videos >= 80, "{videos} videos");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_task_validates_input_like_kie() {
    let files = file_host().await;
    let s = Server::start(opts());
    let (_, key) = s.account_with_key("validation", "1000");
    let refused = |model: &str, input: Value| {
        let (s, key) = (&s, &key);
        let body = json!({"model": model, "input": input});
        async move {
            let (status, _, r) =
                post_json(&s.url("/api/v1/jobs/createTask"), Some(key), &body).await;
            assert_eq!(status, 200, "compat mode: HTTP 200 {r}");
            assert_eq!(r["code"], 422, "{body}: {r}");
            assert_eq!(r["data"], Value::Null);
            r["msg"].as_str().unwrap().to_string()
        }
    };
    // a missing required field, named
    assert_eq!(
        refused(
            "elevenlabs/text-to-speech-turbo-2-5",
            json!({"prompt": "hi"})
        )
        .await,
        "Invalid field 'input.text': required"
    );
    assert_eq!(
        refused("google/nano-banana-edit", json!({"prompt": "a hat"})).await,
        "Invalid field 'input.image_urls': required"
    );
    // a wrong enum value
    let msg = refused(
        "google/nano-banana",
        json!({"prompt": "a hat", "aspect_ratio": "7:5"}),
    )
    .await;
    assert!(
        msg.starts_with("Invalid field 'input.aspect_ratio': must be one of 1:1, 9:16"),
        "{msg}"
    );
    // wrong types
    assert_eq!(
        refused(
            "kling-2.6/text-to-video",
            json!({"prompt": "a", "sound": "yes", "aspect_ratio": "16:9", "duration": "5"})
        )
        .await,
        "Invalid field 'input.sound': must be a boolean, got string"
    );
    assert_eq!(
        refused("google/nano-banana", json!({"prompt": 42})).await,
        "Invalid field 'input.prompt': must be a string, got number"
    );
    assert_eq!(
        refused(
            "google/nano-banana-edit",
            json!({"prompt": "a", "image_urls": "http://x.test/a.png"})
        )
        .await,
        "Invalid field 'input.image_urls': must be an array, got string"
    );
    assert_eq!(
        refused(
            "google/nano-banana-edit",
            json!({"prompt": "a", "image_urls": ["not a url"]})
        )
        .await,
        "Invalid field 'input.image_urls[0]': must be an http(s) URL"
    );
    // nothing was created or held by the refusals
    let credit = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2;
    assert_eq!(credit["data"], 1000);

    // unknown fields are ignored; no prompt where the model requires none
    for (model, input) in [
        (
            "google/nano-banana",
            json!({"prompt": "a hat", "not_a_field": {"x": [1]}, "aspect_ratio": "16:9"}),
        ),
        ("grok-imagine/upscale", json!({"task_id": "task_123"})),
        (
            "elevenlabs/audio-isolation",
            json!({"audio_url": format!("{files}/voice.wav")}),
        ),
        (
            "wan/2-2-animate-move",
            json!({"video_url": format!("{files}/a.mp4"), "image_url": format!("{files}/b.png")}),
        ),
    ] {
        let r = create(&s, &key, &json!({"model": model, "input": input})).await;
        assert_eq!(r["code"], 200, "{model}: {r}");
        let id = r["data"]["taskId"].as_str().unwrap();
        let rec = finished(&s, &key, id, Duration::from_secs(60)).await;
        assert_eq!(rec["state"], "success", "{model}: {rec}");
    }
    // an image whose size follows aspect_ratio and resolution
    let r = create(
        &s,
        &key,
        &json!({"model": "nano-banana-pro", "input": {"prompt": "a hat", "aspect_ratio": "16:9", "resolution": "2K"}}),
    )
    .await;
    let rec = finished(
        &s,
        &key,
        r["data"]["taskId"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    let result: Value = serde_json::from_str(rec["resultJson"].as_str().unwrap()).unwrap();
    let png = client()
        .get(result["resultUrls"][0].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (2048, 1152));
    // the demo/* models keep needing a prompt
    assert_eq!(
        refused("demo/image", json!({})).await,
        "Invalid field 'input.prompt': a non-empty string is required"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_failure_rate_and_unfetchable_inputs() {
    let files = file_host().await;
    let s = Server::start(opts());
    let (_, key) = s.account_with_key("paths", "1000");
    // delay: the task is seen generating, then succeeds
    let r = create(
        &s,
        &key,
        &json!({"model": "google/imagen4-fast", "input": {"prompt": "slow"}}),
    )
    .await;
    let id = r["data"]["taskId"].as_str().unwrap().to_string();
    let seen = eventually(Duration::from_secs(10), || async {
        record(&s, &key, &id).await["state"] == "generating"
    })
    .await;
    assert!(seen.is_some(), "never seen generating");
    let rec = finished(&s, &key, &id, Duration::from_secs(30)).await;
    assert_eq!(rec["state"], "success", "{rec}");
    assert!(rec["costTime"].as_i64().unwrap() >= 3000, "{rec}");

    // failure rate 1: always fails, the hold is released
    let before = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["data"].clone();
    let r = create(
        &s,
        &key,
        &json!({"model": "z-image", "input": {"prompt": "x", "aspect_ratio": "1:1"}}),
    )
    .await;
    let rec = finished(
        &s,
        &key,
        r["data"]["taskId"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(rec["state"], "fail");
    assert_eq!(rec["failCode"], "500");
    assert_eq!(
        rec["failMsg"],
        "Generation failed (simulated: demo fail rate 1)"
    );
    assert_eq!(rec["consumeCredits"], 0);
    let after = get_json(&s.url("/api/v1/chat/credit"), Some(&key)).await.2["data"].clone();
    assert_eq!(before, after);

    // an input URL that cannot be fetched fails the task, naming the field
    let r = create(
        &s,
        &key,
        &json!({"model": "recraft/remove-background", "input": {"image": format!("{files}/missing")}}),
    )
    .await;
    let rec = finished(
        &s,
        &key,
        r["data"]["taskId"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(rec["state"], "fail");
    assert_eq!(rec["failCode"], "400");
    assert_eq!(
        rec["failMsg"],
        "Could not fetch input.image: the server answered HTTP 404"
    );
    // and through the SSRF guard: loopback is refused without the setting
    let strict = Server::start(Opts::default().config("task_rate = 100000\n"));
    let (_, key2) = strict.account_with_key("strict", "1000");
    let r = create(
        &strict,
        &key2,
        &json!({"model": "recraft/remove-background", "input": {"image": format!("{files}/ok.png")}}),
    )
    .await;
    let rec = finished(
        &strict,
        &key2,
        r["data"]["taskId"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(rec["state"], "fail");
    assert_eq!(
        rec["failMsg"],
        "Could not fetch input.image: the target address is not allowed (loopback, private, link-local or reserved network)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_endpoints() {
    let s = Server::start(opts());
    let (_, key) = s.account_with_key("endpoints", "1000");
    // no key
    let (_, _, r) = get_json(&s.url("/api/v1/models"), None).await;
    assert_eq!(r["code"], 401);

    let all = api_get(&s, &key, "/api/v1/models").await["data"].clone();
    let models = all["models"].as_array().unwrap();
    assert_eq!(all["total"], models.len());
    assert!(
        models.len() >= 153,
        "149 catalog models + demo/*: {}",
        models.len()
    );
    let nb = models
        .iter()
        .find(|m| m["model"] == "google/nano-banana")
        .unwrap();
    assert_eq!(nb["slug"], "google-nano-banana");
    assert_eq!(nb["provider"], "Google");
    assert_eq!(nb["taskType"], json!(["text-to-image"]));
    assert_eq!(nb["pricingDesc"], "4 credits: per image (USD 0.02)");
    for k in ["title", "description"] {
        assert!(!nb[k].as_str().unwrap().is_empty());
    }
    // filters: exactly the models of the full list that match
    let count = |f: &dyn Fn(&Value) -> bool| models.iter().filter(|m| f(m)).count();
    let kling = api_get(&s, &key, "/api/v1/models?provider=kling").await["data"].clone();
    assert_eq!(kling["total"], count(&|m| m["provider"] == "Kling"));
    assert!(kling["total"].as_u64().unwrap() >= 10);
    let t2v = api_get(&s, &key, "/api/v1/models?taskType=text-to-video").await["data"].clone();
    assert_eq!(
        t2v["total"],
        count(&|m| m["taskType"]
            .as_array()
            .unwrap()
            .contains(&json!("text-to-video")))
    );
    let both = api_get(
        &s,
        &key,
        "/api/v1/models?taskType=text-to-video&provider=Kling&q=2.6",
    )
    .await["data"]
        .clone();
    let names: Vec<&str> = both["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kling-2.6/text-to-video"]);
    let q = api_get(&s, &key, "/api/v1/models?q=NANO%20banana").await["data"].clone();
    assert!(q["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["model"].as_str().unwrap().contains("nano-banana")));
    assert!(q["total"].as_u64().unwrap() >= 4);

    // price: published, and the default where none is published
    let p = api_get(&s, &key, "/api/v1/models/google/nano-banana/price").await["data"].clone();
    assert_eq!(p["credits"], 4.0);
    assert_eq!(p["usd"], 0.02);
    assert_eq!(p["published"], true);
    let p = api_get(&s, &key, "/api/v1/models/bytedance/seedance-2/price").await["data"].clone();
    assert_eq!(
        (p["credits"].clone(), p["published"].clone()),
        (json!(7.5), json!(false))
    );
    let p = api_get(&s, &key, "/api/v1/models/seedream/4.5-edit/price").await["data"].clone();
    assert_eq!(p["credits"], 6.5);

    // schema
    let sc =
        api_get(&s, &key, "/api/v1/models/kling-2.6/text-to-video/schema").await["data"].clone();
    assert_eq!(sc["type"], "object");
    let mut req: Vec<&str> = sc["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    req.sort_unstable();
    assert_eq!(req, ["aspect_ratio", "duration", "prompt", "sound"]);
    assert_eq!(sc["properties"]["sound"]["type"], "boolean");
    assert_eq!(sc["properties"]["duration"]["enum"], json!(["5", "10"]));

    // unknown model and endpoint
    let r = get_json(&s.url("/api/v1/models/no/such-model/price"), Some(&key))
        .await
        .2;
    assert_eq!(r["code"], 404);
    let r = get_json(
        &s.url("/api/v1/models/google/nano-banana/other"),
        Some(&key),
    )
    .await
    .2;
    assert_eq!(r["code"], 404);

    // success rate: one success and one failure in the current bucket
    let sr = api_get(&s, &key, "/api/v1/models/z-image/success-rate").await["data"].clone();
    assert_eq!(sr["buckets"].as_array().unwrap().len(), 144);
    assert_eq!(sr["total"], 0);
    assert_eq!(sr["successRate"], Value::Null);
    for (model, input) in [
        ("z-image", json!({"prompt": "x", "aspect_ratio": "1:1"})),
        ("google/nano-banana", json!({"prompt": "x"})),
        ("google/nano-banana", json!({"prompt": "y"})),
    ] {
        let r = create(&s, &key, &json!({"model": model, "input": input})).await;
        finished(
            &s,
            &key,
            r["data"]["taskId"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    }
    let z = api_get(&s, &key, "/api/v1/models/z-image/success-rate").await["data"].clone();
    let nb =
        api_get(&s, &key, "/api/v1/models/google/nano-banana/success-rate").await["data"].clone();
    assert_eq!(
        (
            z["total"].clone(),
            z["fail"].clone(),
            z["successRate"].clone()
        ),
        (json!(1), json!(1), json!(0.0))
    );
    assert_eq!(
        (
            nb["total"].clone(),
            nb["success"].clone(),
            nb["successRate"].clone()
        ),
        (json!(2), json!(2), json!(1.0))
    );
    let buckets = nb["buckets"].as_array().unwrap();
    let filled: Vec<&Value> = buckets.iter().filter(|b| b["total"] != 0).collect();
    assert_eq!(
        filled.len(),
        1,
        "both tasks finished within one bucket or two: {filled:?}"
    );
    assert_eq!(filled[0]["successRate"], 1.0);
    assert_eq!(filled[0]["failRate"], 0.0);
    for b in buckets.iter().filter(|b| b["total"] == 0) {
        assert_eq!(
            (b["successRate"].clone(), b["failRate"].clone()),
            (Value::Null, Value::Null)
        );
        assert_eq!(
            b["end"].as_i64().unwrap() - b["start"].as_i64().unwrap(),
            600_000
        );
    }

    // documented in /openapi.json
    let doc = get_json(&s.url("/openapi.json"), None).await.2;
    for p in [
        "/api/v1/models",
        "/api/v1/models/{model}/price",
        "/api/v1/models/{model}/schema",
        "/api/v1/models/{model}/success-rate",
    ] {
        assert!(
            doc["paths"][p]["get"].is_object(),
            "{p} missing from /openapi.json"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_endpoints_allow_one_request_per_second_per_account() {
    // the default limit (1/s), KIE.AI's
    let s = Server::start(Opts::default());
    let (_, a) = s.account_with_key("a", "10");
    let (_, b) = s.account_with_key("b", "10");
    let paths = [
        "/api/v1/models",
        "/api/v1/models/google/nano-banana/price",
        "/api/v1/models/google/nano-banana/schema",
        "/api/v1/models/google/nano-banana/success-rate",
    ];
    for (i, second) in paths.iter().enumerate() {
        let first = paths[(i + 1) % paths.len()];
        // Two requests back to back: the first is answered once the account has its
        // token again (wait for that condition), the second must be refused; only a
        // pair taking a whole second or more could see it accepted.
        let ok = eventually(Duration::from_secs(5), || async {
            get_json(&s.url(first), Some(&a)).await.2["code"] == 200
        })
        .await;
        assert!(ok.is_some(), "the limit never let a request through");
        let t = Instant::now();
        let (status, _, r) = get_json(&s.url(second), Some(&a)).await;
        if t.elapsed() >= Duration::from_secs(1) {
            continue; // too slow to tell
        }
        assert_eq!(status, 200, "code 429 inside HTTP 200: {r}");
        assert_eq!(r["code"], 429, "{second}: {r}");
        assert_eq!(r["data"], Value::Null);
        // another account is not limited by this one
        let other = get_json(&s.url(second), Some(&b)).await.2;
        if i == 0 {
            assert_eq!(other["code"], 200, "{other}");
        }
    }
}
