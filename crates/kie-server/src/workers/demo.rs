//! Built-in generators, run in-process through the worker protocol, so the embedded
//! default works end to end with no external AI, for every catalog model and the
//! `demo/*` models. Each task is generated from its input, deterministically (see
//! [`super::media`]):
//!
//! * image models: a PNG whose size follows `aspect_ratio` / `image_size` / `ratio`
//!   and `resolution` / `image_resolution` / `size` / `quality` when given (1K → 1024 px
//!   on the long side, 720p → 720 px on the short side, …; 1024×1024 otherwise; the
//!   `demo/image` model takes `width`/`height`, default 256×256);
//! * video models: an H.264 MP4 of `duration` seconds (1–5, default 3), 128 px on the
//!   long side, in the asked aspect ratio;
//! * audio models: a WAV (also where KIE.AI would answer MP3), about a second per
//!   three words of `text`/`prompt` (1–5 s, `duration_seconds` when given);
//! * text models: `resultObject = {"text": …}`.
//!
//! Input fields of type url / url[] (images, videos, audio, masks) are fetched through
//! the SSRF guard (the upload-by-URL policy) and their bytes feed the seed; a URL that
//! cannot be fetched fails the task with `failCode` 400 and a `failMsg` naming the
//! field. `demo_delay` (per model `delay`) keeps the task `generating` that long;
//! `demo_fail_rate` (per model `fail_rate`) fails that share of tasks on purpose.

use sha2::{Digest, Sha256};
use std::time::Duration;

use super::media;
use super::ClaimedTask;
use crate::config::{Model, ModelKind};
use crate::state::AppState;

/// Longest time to fetch one input file.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

fn str_of<'a>(input: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(|v| v.as_str())
}

fn num_of(input: &serde_json::Value, key: &str) -> Option<f64> {
    match input.get(key)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().trim_end_matches('s').parse().ok(),
        _ => None,
    }
}

/// `w:h`, or one of the named sizes of KIE.AI's schemas.
pub fn parse_ratio(s: &str) -> Option<(u32, u32)> {
    let s = s.trim().to_ascii_lowercase();
    if let Some((a, b)) = s.split_once(':') {
        let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        return (a > 0 && b > 0 && a <= 100 && b <= 100).then_some((a, b));
    }
    let named = |r: &str| -> Option<(u32, u32)> {
        let (a, b) = r.split_once('_')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    match s.as_str() {
        "square" | "square_hd" => Some((1, 1)),
        "landscape" => Some((16, 9)),
        "portrait" => Some((9, 16)),
        _ => {
            if let Some(r) = s.strip_prefix("landscape_") {
                named(r)
            } else if let Some(r) = s.strip_prefix("portrait_") {
                named(r).map(|(a, b)| (b, a))
            } else {
                None
            }
        }
    }
}

/// A resolution setting: the long side (`1K`, `2K`, `4K`) or the short side (`720p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Res {
    Long(u32),
    Short(u32),
}

pub fn parse_res(s: &str) -> Option<Res> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(k) = s.strip_suffix('k') {
        let k: f64 = k.parse().ok()?;
        return (k > 0.0 && k <= 8.0).then_some(Res::Long((k * 1024.0) as u32));
    }
    let n: u32 = s.strip_suffix('p').unwrap_or(&s).parse().ok()?;
    (64..=4320).contains(&n).then_some(Res::Short(n))
}

fn ratio_of(input: &serde_json::Value) -> Option<(u32, u32)> {
    ["aspect_ratio", "image_size", "ratio", "size"]
        .iter()
        .find_map(|k| str_of(input, k).and_then(parse_ratio))
}

/// Image size for a catalog model's input (see the module docs).
pub fn image_dims(input: &serde_json::Value) -> (u32, u32) {
    let (rw, rh) = ratio_of(input).unwrap_or((1, 1));
    let res = [
        "resolution",
        "image_resolution",
        "size",
        "quality",
        "output_resolution",
    ]
    .iter()
    .find_map(|k| {
        let v = input.get(*k)?;
        match v {
            serde_json::Value::String(s) => parse_res(s),
            serde_json::Value::Number(n) => parse_res(&n.to_string()),
            _ => None,
        }
    })
    .unwrap_or(Res::Long(1024));
    let (max, min) = (rw.max(rh) as u64, rw.min(rh) as u64);
    let (mut long, mut short) = match res {
        Res::Long(l) => (u64::from(l), u64::from(l) * min / max),
        Res::Short(s) => (u64::from(s) * max / min, u64::from(s)),
    };
    if long > 4096 {
        short = short * 4096 / long;
        long = 4096;
    }
    let (long, short) = (long.max(1) as u32, short.max(1) as u32);
    if rw >= rh {
        (long, short)
    } else {
        (short, long)
    }
}

/// Seconds of a generated video: `duration` (or `n_frames`, `duration_seconds`),
/// 1 to 5, default 3.
pub fn video_seconds(input: &serde_json::Value) -> u32 {
    ["duration", "n_frames", "duration_seconds"]
        .iter()
        .find_map(|k| num_of(input, k))
        .map(|s| s.round().clamp(1.0, 5.0) as u32)
        .unwrap_or(3)
}

fn audio_seconds(input: &serde_json::Value) -> f64 {
    if let Some(s) = num_of(input, "duration_seconds") {
        return s.clamp(0.5, 5.0);
    }
    let words = ["text", "prompt"]
        .iter()
        .find_map(|k| str_of(input, k))
        .map(|t| t.split_whitespace().count())
        .unwrap_or(3);
    (words as f64 / 3.0).clamp(1.0, 5.0)
}

fn demo_dim(input: &serde_json::Value, key: &str) -> u32 {
    input
        .get(key)
        .and_then(|v| v.as_u64())
        .map(|v| v.clamp(1, 1024) as u32)
        .unwrap_or(256)
}

/// A short text derived from `prompt`.
pub fn text_for(prompt: &str) -> serde_json::Value {
    let words = prompt.split_whitespace().count();
    serde_json::json!({
        "text": format!("Demo answer to \"{prompt}\" ({words} words)."),
    })
}

/// The URL inputs of a task (`input.image_urls[0]`, URL), in field order.
fn input_urls(model: &Model, input: &serde_json::Value) -> Vec<(String, String)> {
    let Some(spec) = &model.spec else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for f in &spec.input {
        match (f.ty.as_str(), input.get(&f.name)) {
            ("url", Some(serde_json::Value::String(u))) => {
                out.push((format!("input.{}", f.name), u.clone()))
            }
            ("url[]", Some(serde_json::Value::Array(a))) => {
                for (i, u) in a.iter().enumerate() {
                    if let Some(u) = u.as_str() {
                        out.push((format!("input.{}[{i}]", f.name), u.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Fetches one input file through the SSRF guard; the error says why, without the URL
/// (it may carry a signature).
async fn fetch(state: &AppState, raw: &str) -> Result<Vec<u8>, String> {
    let url = url::Url::parse(raw.trim()).map_err(|_| "not a valid URL".to_string())?;
    let policy = &state.files.fetch_policy;
    let mut resp = crate::net_guard::get(&state.files.fetch_client, policy, url, FETCH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!(
            "the server answered HTTP {}",
            resp.status().as_u16()
        ));
    }
    let limit = state.config.max_upload;
    let mut body = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| crate::net_guard::FetchError::from(e).to_string())?
    {
        body.extend_from_slice(&c);
        if body.len() as u64 > limit {
            return Err(format!("larger than {limit} bytes"));
        }
    }
    Ok(body)
}

/// Why a task is failed on purpose or by its inputs.
struct Failure(&'static str, String);

/// The result file (name, content type, bytes) or text of a task.
async fn generate(
    state: &AppState,
    model: &Model,
    t: &ClaimedTask,
) -> Result<Result<(&'static str, &'static str, Vec<u8>), serde_json::Value>, Failure> {
    let input = &t.input;
    let prompt = ["prompt", "text"]
        .iter()
        .find_map(|k| str_of(input, k))
        .unwrap_or_default()
        .to_string();
    // The seed: the prompt for `demo/*`, the whole input and the fetched files else.
    let seed: [u8; 32] = if model.spec.is_none() {
        Sha256::digest(prompt.as_bytes()).into()
    } else {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(input).unwrap_or_default());
        for (path, url) in input_urls(model, input) {
            let bytes = fetch(state, &url)
                .await
                .map_err(|why| Failure("400", format!("Could not fetch {path}: {why}")))?;
            h.update(Sha256::digest(&bytes));
        }
        h.finalize().into()
    };
    let spec = model.spec.is_some();
    Ok(match model.kind {
        ModelKind::DemoImage => {
            let (w, h) = if spec {
                image_dims(input)
            } else {
                (demo_dim(input, "width"), demo_dim(input, "height"))
            };
            let png = tokio::task::spawn_blocking(move || media::png(&seed, w, h))
                .await
                .map_err(|e| Failure("500", format!("image generation failed: {e}")))?;
            Ok(("image.png", "image/png", png))
        }
        ModelKind::DemoVideo => {
            let (w, h) = media::video_size(ratio_of(input).unwrap_or((16, 9)));
            let secs = video_seconds(input);
            let mp4 = tokio::task::spawn_blocking(move || media::mp4(&seed, w, h, secs))
                .await
                .map_err(|e| Failure("500", format!("video generation failed: {e}")))?
                .map_err(|e| Failure("500", e.to_string()))?;
            Ok(("video.mp4", "video/mp4", mp4))
        }
        ModelKind::DemoAudio => {
            let secs = if spec { audio_seconds(input) } else { 1.0 };
            Ok(("audio.wav", "audio/wav", media::wav(&seed, secs)))
        }
        ModelKind::DemoText => Err(text_for(&prompt)),
        ModelKind::External => return Err(Failure("500", "model is not a demo model".into())),
    })
}

/// Generates one claimed task and reports it through the protocol.
async fn run_one(state: &AppState, t: ClaimedTask) {
    let Some(model) = state.config.models.get(&t.model) else {
        let _ = super::fail(state, &t.task_id, "500", "model is not a demo model").await;
        return;
    };
    let delay = model.delay.unwrap_or(state.config.demo_delay);
    if !delay.is_zero() {
        let mut stop = state.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // left `generating`: the reaper times it out like a lost worker's task
            _ = stop.changed() => return,
        }
    }
    let rate = model.fail_rate.unwrap_or(state.config.demo_fail_rate);
    if rate > 0.0 && rand::random::<f64>() < rate {
        let msg = format!("Generation failed (simulated: demo fail rate {rate})");
        let _ = super::fail(state, &t.task_id, "500", &msg).await;
        return;
    }
    let result = match generate(state, model, &t).await {
        Err(Failure(code, msg)) => {
            let _ = super::fail(state, &t.task_id, code, &msg).await;
            return;
        }
        Ok(Ok((name, ct, bytes))) => {
            let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
            match super::upload_file(state, &t.task_id, name, ct, body).await {
                Ok(_) => super::complete(state, &t.task_id, None, None).await,
                Err(e) => Err(e),
            }
        }
        Ok(Err(text)) => super::complete(state, &t.task_id, None, Some(text)).await,
    };
    if let Err(e) = result {
        tracing::warn!(task_id = %t.task_id, error = %e, "demo worker could not finish a task");
        if !matches!(e, super::WorkerError::AlreadyFinished) {
            let _ = super::fail(state, &t.task_id, "500", "Internal server error").await;
        }
    }
}

/// One demo worker: claims tasks of the demo models until shutdown.
pub async fn worker_loop(state: AppState, index: u32) {
    let models: Vec<String> = state
        .config
        .models
        .values()
        .filter(|m| m.kind.is_demo())
        .map(|m| m.name.clone())
        .collect();
    if models.is_empty() {
        return;
    }
    let name = format!("demo-{index}");
    let mut stop = state.shutdown.clone();
    // claim errors (database unreachable) are logged once per outage
    let mut failing = false;
    loop {
        if *stop.borrow() {
            return;
        }
        match super::claim_many(&state, &models, super::MAX_WAIT, &name, 8).await {
            Ok(batch) => {
                if failing {
                    tracing::info!(worker = %name, "demo worker can claim again");
                    failing = false;
                }
                // Concurrently: their completions then share a group commit instead
                // of waiting for one fsync each.
                futures::future::join_all(batch.into_iter().map(|t| run_one(&state, t))).await;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(worker = %name, error = %e, "demo worker could not claim; retrying every second");
                    failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_size_follows_ratio_and_resolution() {
        assert_eq!(image_dims(&json!({})), (1024, 1024));
        assert_eq!(image_dims(&json!({"aspect_ratio": "16:9"})), (1024, 576));
        assert_eq!(
            image_dims(&json!({"aspect_ratio": "9:16", "resolution": "2K"})),
            (1152, 2048)
        );
        assert_eq!(
            image_dims(&json!({"image_size": "landscape_4_3"})),
            (1024, 768)
        );
        assert_eq!(
            image_dims(&json!({"image_size": "portrait_16_9", "resolution": "720p"})),
            (720, 1280)
        );
        assert_eq!(image_dims(&json!({"resolution": "4K"})), (4096, 4096));
    }

    #[test]
    fn video_seconds_from_input() {
        assert_eq!(video_seconds(&json!({})), 3);
        assert_eq!(video_seconds(&json!({"duration": "10"})), 5);
        assert_eq!(video_seconds(&json!({"duration": 2})), 2);
        assert_eq!(video_seconds(&json!({"n_frames": "10"})), 5);
    }
}
