//! Built-in demo models, run in-process through the worker protocol, so the embedded
//! default works end to end with no external AI:
//!
//! * `image`: a real PNG (RGB, `input.width`×`input.height`, default 256×256, at most
//!   1024 each): a diagonal gradient between two colours taken from a hash of the
//!   prompt, with a band whose position also comes from the hash.
//! * `audio`: a real WAV (PCM 16-bit mono, 16 kHz, 1 s): a tone whose pitch (220–880
//!   Hz) comes from a hash of the prompt, with short fades against clicks.
//! * `text`: `resultObject = {"text": …}` derived from the prompt.

use sha2::{Digest, Sha256};
use std::time::Duration;

use super::ClaimedTask;
use crate::app::AppState;
use crate::config::ModelKind;

fn prompt_of(t: &ClaimedTask) -> String {
    t.input
        .get("prompt")
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_string()
}

fn dim(t: &ClaimedTask, key: &str) -> u32 {
    t.input
        .get(key)
        .and_then(|v| v.as_u64())
        .map(|v| v.clamp(1, 1024) as u32)
        .unwrap_or(256)
}

/// zlib stream of `data` in stored (uncompressed) deflate blocks: valid for every
/// decoder, and needs no compression library.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 16);
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    // Adler-32 of the uncompressed data.
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// A PNG image derived from `prompt`.
pub fn png_for(prompt: &str, width: u32, height: u32) -> Vec<u8> {
    let h = Sha256::digest(prompt.as_bytes());
    let (c0, c1) = ([h[0], h[1], h[2]], [h[3], h[4], h[5]]);
    let band = u32::from(h[6]) * height / 256;
    let mut raw = Vec::with_capacity(((width * 3 + 1) * height) as usize);
    let span = (width + height).max(2) - 2;
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            let t = (x + y) * 255 / span.max(1);
            let in_band = y.abs_diff(band) < height / 16 + 1;
            for ch in 0..3 {
                let v = (u32::from(c0[ch]) * (255 - t) + u32::from(c1[ch]) * t) / 255;
                raw.push(if in_band { 255 - v as u8 } else { v as u8 });
            }
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

pub const WAV_RATE: u32 = 16_000;

/// The tone frequency for `prompt`, 220–880 Hz.
pub fn tone_hz(prompt: &str) -> f64 {
    let h = Sha256::digest(prompt.as_bytes());
    220.0 + f64::from(u16::from_be_bytes([h[0], h[1]])) / 65535.0 * 660.0
}

/// A one-second WAV tone derived from `prompt`.
pub fn wav_for(prompt: &str) -> Vec<u8> {
    let hz = tone_hz(prompt);
    let n = WAV_RATE as usize;
    let fade = n / 50;
    let data_len = (n * 2) as u32;
    let mut out = Vec::with_capacity(44 + n * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&WAV_RATE.to_le_bytes());
    out.extend_from_slice(&(WAV_RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        let env = (i.min(n - 1 - i) as f64 / fade as f64).min(1.0);
        let s = (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(WAV_RATE)).sin();
        let v = (s * env * 0.6 * f64::from(i16::MAX)) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A short text derived from `prompt`.
pub fn text_for(prompt: &str) -> serde_json::Value {
    let words = prompt.split_whitespace().count();
    serde_json::json!({
        "text": format!("Demo answer to \"{prompt}\" ({words} words)."),
    })
}

/// Generates one claimed task and reports it through the protocol.
async fn run_one(state: &AppState, t: ClaimedTask) {
    let kind = state.config.models.get(&t.model).map(|m| m.kind);
    let prompt = prompt_of(&t);
    let file = match kind {
        Some(ModelKind::DemoImage) => Some((
            "image.png",
            "image/png",
            png_for(&prompt, dim(&t, "width"), dim(&t, "height")),
        )),
        Some(ModelKind::DemoAudio) => Some(("audio.wav", "audio/wav", wav_for(&prompt))),
        Some(ModelKind::DemoText) => None,
        _ => {
            let _ = super::fail(state, &t.task_id, "500", "model is not a demo model").await;
            return;
        }
    };
    let result = match file {
        Some((name, ct, bytes)) => {
            let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
            match super::upload_file(state, &t.task_id, name, ct, body).await {
                Ok(_) => super::complete(state, &t.task_id, None, None).await,
                Err(e) => Err(e),
            }
        }
        None => super::complete(state, &t.task_id, None, Some(text_for(&prompt))).await,
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
        .filter(|m| {
            matches!(
                m.kind,
                ModelKind::DemoImage | ModelKind::DemoAudio | ModelKind::DemoText
            )
        })
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

    #[test]
    fn png_has_signature_and_size() {
        let p = png_for("a red fox", 33, 17);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&p[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(p[16..20].try_into().unwrap()), 33);
        assert_eq!(u32::from_be_bytes(p[20..24].try_into().unwrap()), 17);
        assert_ne!(png_for("a blue fox", 33, 17), p);
    }

    #[test]
    fn zlib_adler_matches_reference() {
        // Adler-32 of "Wikipedia" is 0x11E60398.
        let z = zlib_stored(b"Wikipedia");
        assert_eq!(&z[z.len() - 4..], &0x11E6_0398u32.to_be_bytes());
    }

    #[test]
    fn wav_header() {
        let w = wav_for("hum");
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(w.len(), 44 + 32_000);
        assert!((220.0..=880.0).contains(&tone_hz("hum")));
    }
}
