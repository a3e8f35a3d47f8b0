//! Media of the built-in generators, deterministic from a 32-byte seed (a digest of the
//! task's input and of the files it names):
//!
//! * PNG: a diagonal gradient between two colours of the seed with an inverted band,
//!   deflated (Sub filter, so the gradient compresses to almost nothing).
//! * MP4: H.264 (Constrained Baseline-compatible lossless PCM intra frames from the
//!   pure-Rust `less-avc` encoder) muxed by the `mp4` crate: a gradient background
//!   with a square sweeping across, [`VIDEO_FPS`] frames per second, small (the long
//!   side is [`VIDEO_LONG_SIDE`] px whatever resolution was asked for; every frame is
//!   a key frame).
//! * WAV: PCM 16-bit mono 16 kHz tone whose pitch comes from the seed.

use std::io::Cursor;

/// Frames per second of generated videos.
pub const VIDEO_FPS: u32 = 8;
/// Long side of generated videos in pixels.
pub const VIDEO_LONG_SIDE: u32 = 128;

fn rgb_of(seed: &[u8; 32], at: usize) -> [u8; 3] {
    [seed[at], seed[at + 1], seed[at + 2]]
}

/// A PNG of `width`×`height` derived from `seed`.
pub fn png(seed: &[u8; 32], width: u32, height: u32) -> Vec<u8> {
    let (c0, c1) = (rgb_of(seed, 0), rgb_of(seed, 3));
    let band = u32::from(seed[6]) * height / 256;
    let row_len = (width * 3 + 1) as usize;
    let mut raw = Vec::with_capacity(row_len * height as usize);
    let span = (width + height).max(2) - 2;
    let mut row = vec![0u8; width as usize * 3];
    for y in 0..height {
        let in_band = y.abs_diff(band) < height / 16 + 1;
        for x in 0..width {
            let t = (x + y) * 255 / span.max(1);
            for ch in 0..3 {
                let v = (u32::from(c0[ch]) * (255 - t) + u32::from(c1[ch]) * t) / 255;
                row[(x * 3) as usize + ch] = if in_band { 255 - v as u8 } else { v as u8 };
            }
        }
        // filter 1 (Sub): each byte minus the one 3 bytes left
        raw.push(1);
        for i in 0..row.len() {
            let left = if i >= 3 { row[i - 3] } else { 0 };
            raw.push(row[i].wrapping_sub(left));
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filters, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 3),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// Video frame size for an aspect ratio `w:h` (even, long side [`VIDEO_LONG_SIDE`]).
pub fn video_size(ratio: (u32, u32)) -> (u32, u32) {
    let (rw, rh) = (ratio.0.max(1), ratio.1.max(1));
    let l = VIDEO_LONG_SIDE;
    let (w, h) = if rw >= rh {
        (l, (l * rh / rw).max(16))
    } else {
        ((l * rw / rh).max(16), l)
    };
    (w & !1, h & !1)
}

fn plane(data: &[u8], stride: usize) -> less_avc::ycbcr_image::DataPlane<'_> {
    less_avc::ycbcr_image::DataPlane {
        data,
        stride,
        bit_depth: less_avc::BitDepth::Depth8,
    }
}

fn ycbcr(c: [u8; 3]) -> (u8, u8, u8) {
    let (r, g, b) = (f64::from(c[0]), f64::from(c[1]), f64::from(c[2]));
    let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    (y.round() as u8, cb.round() as u8, cr.round() as u8)
}

#[derive(Debug, thiserror::Error)]
#[error("video encoding failed: {0}")]
pub struct VideoError(String);

/// A playable MP4 (H.264) of `seconds` seconds, `width`×`height` (even), from `seed`.
pub fn mp4(seed: &[u8; 32], width: u32, height: u32, seconds: u32) -> Result<Vec<u8>, VideoError> {
    let err = |e: &dyn std::fmt::Debug| VideoError(format!("{e:?}"));
    let (pw, ph) = (width.div_ceil(16) * 16, height.div_ceil(16) * 16);
    let frames = (seconds.max(1) * VIDEO_FPS) as usize;
    let (top, bottom, square) = (rgb_of(seed, 0), rgb_of(seed, 3), rgb_of(seed, 6));
    let side = (height / 3).max(8) & !1;
    let sq = ycbcr(square);
    let mut y = vec![0u8; (pw * ph) as usize];
    let mut cb = vec![0u8; (pw * ph / 4) as usize];
    let mut cr = vec![0u8; (pw * ph / 4) as usize];
    // the background: a vertical gradient, the same in every frame
    let bg: Vec<(u8, u8, u8)> = (0..ph)
        .map(|row| {
            let t = row.min(height - 1) * 255 / (height - 1).max(1);
            let mix = |a: u8, b: u8| ((u32::from(a) * (255 - t) + u32::from(b) * t) / 255) as u8;
            ycbcr([
                mix(top[0], bottom[0]),
                mix(top[1], bottom[1]),
                mix(top[2], bottom[2]),
            ])
        })
        .collect();
    let sq_y = ((height - side) / 2) & !1;
    let mut encoder: Option<less_avc::LessEncoder> = None;
    let mut sps_pps = None;
    let mut samples: Vec<Vec<u8>> = Vec::with_capacity(frames);
    for f in 0..frames {
        // the square sweeps left to right and back
        let travel = (width - side) as usize;
        let period = (frames.max(2) - 1) * 2;
        let p = f * 2 * travel / period.max(1);
        let sq_x = (if p > travel { 2 * travel - p } else { p } as u32) & !1;
        for row in 0..ph {
            let inside_row = row >= sq_y && row < sq_y + side;
            for col in 0..pw {
                let inside = inside_row && col >= sq_x && col < sq_x + side;
                let (yy, u, v) = if inside { sq } else { bg[row as usize] };
                y[(row * pw + col) as usize] = yy;
                if row % 2 == 0 && col % 2 == 0 {
                    let i = ((row / 2) * (pw / 2) + col / 2) as usize;
                    cb[i] = u;
                    cr[i] = v;
                }
            }
        }
        let image = less_avc::ycbcr_image::YCbCrImage {
            planes: less_avc::ycbcr_image::Planes::YCbCr((
                plane(&y, pw as usize),
                plane(&cb, (pw / 2) as usize),
                plane(&cr, (pw / 2) as usize),
            )),
            width,
            height,
        };
        let nal = match encoder.as_mut() {
            None => {
                let (initial, enc) = less_avc::LessEncoder::new(&image).map_err(|e| err(&e))?;
                encoder = Some(enc);
                sps_pps = Some((initial.sps.to_nal_unit(), initial.pps.to_nal_unit()));
                initial.frame.to_nal_unit()
            }
            Some(enc) => enc.encode(&image).map_err(|e| err(&e))?.to_nal_unit(),
        };
        let mut sample = Vec::with_capacity(nal.len() + 4);
        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        sample.extend_from_slice(&nal);
        samples.push(sample);
    }
    let (sps, pps) = sps_pps.ok_or_else(|| VideoError("no frames".into()))?;
    let brand = |s: &str| s.parse::<mp4::FourCC>().expect("four characters");
    let config = mp4::Mp4Config {
        major_brand: brand("isom"),
        minor_version: 512,
        compatible_brands: vec![brand("isom"), brand("iso2"), brand("avc1"), brand("mp41")],
        timescale: 1000,
    };
    let mut w =
        mp4::Mp4Writer::write_start(Cursor::new(Vec::new()), &config).map_err(|e| err(&e))?;
    w.add_track(&mp4::TrackConfig {
        track_type: mp4::TrackType::Video,
        timescale: VIDEO_FPS * 1000,
        language: "und".into(),
        media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
            width: width as u16,
            height: height as u16,
            seq_param_set: sps,
            pic_param_set: pps,
        }),
    })
    .map_err(|e| err(&e))?;
    for (i, s) in samples.into_iter().enumerate() {
        w.write_sample(
            1,
            &mp4::Mp4Sample {
                start_time: i as u64 * 1000,
                duration: 1000,
                rendering_offset: 0,
                is_sync: true,
                bytes: bytes::Bytes::from(s),
            },
        )
        .map_err(|e| err(&e))?;
    }
    w.write_end().map_err(|e| err(&e))?;
    Ok(w.into_writer().into_inner())
}

pub const WAV_RATE: u32 = 16_000;

/// The tone frequency for `seed`, 220–880 Hz.
pub fn tone_hz(seed: &[u8; 32]) -> f64 {
    220.0 + f64::from(u16::from_be_bytes([seed[0], seed[1]])) / 65535.0 * 660.0
}

/// A WAV tone of `seconds` derived from `seed`.
pub fn wav(seed: &[u8; 32], seconds: f64) -> Vec<u8> {
    let hz = tone_hz(seed);
    let n = ((f64::from(WAV_RATE) * seconds) as usize).max(2);
    let fade = (n / 50).max(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_signature_and_size() {
        let p = png(&[7; 32], 33, 17);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(u32::from_be_bytes(p[16..20].try_into().unwrap()), 33);
        assert_eq!(u32::from_be_bytes(p[20..24].try_into().unwrap()), 17);
        let big = png(&[9; 32], 1024, 1024);
        assert!(big.len() < 200_000, "gradient compresses: {}", big.len());
    }

    #[test]
    fn mp4_has_boxes_and_sizes_follow_ratio() {
        assert_eq!(video_size((16, 9)), (128, 72));
        assert_eq!(video_size((9, 16)), (72, 128));
        assert_eq!(video_size((1, 1)), (128, 128));
        let (w, h) = video_size((16, 9));
        let v = mp4(&[3; 32], w, h, 2).unwrap();
        assert_eq!(&v[4..8], b"ftyp");
        let has = |b: &[u8]| v.windows(4).any(|x| x == b);
        assert!(has(b"moov") && has(b"mdat") && has(b"avcC"));
        let mut other = [3; 32];
        other[0] = 200;
        assert_ne!(mp4(&other, w, h, 2).unwrap(), v);
        if let Ok(p) = std::env::var("KIE_WRITE_TEST_MP4") {
            std::fs::write(p, &v).unwrap();
        }
    }

    #[test]
    fn wav_header() {
        let w = wav(&[1; 32], 1.0);
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(&w[8..16], b"WAVEfmt ");
        assert_eq!(w.len(), 44 + 32_000);
    }
}
