//! Cost of the built-in video generator: encodes videos the way a video task does
//! (H.264 PCM intra frames + MP4 mux) and prints the CPU time per second of video and
//! the bytes per second of video. Used by bench/video.sh.
//!
//!   cargo run --release -p kie-server --example video_cost [VIDEOS=40] [SECONDS=5]

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let videos: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let seconds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    for (label, ratio) in [("16:9", (16, 9)), ("9:16", (9, 16)), ("1:1", (1, 1))] {
        let (w, h) = kie_server::workers::media::video_size(ratio);
        let started = Instant::now();
        let mut bytes = 0usize;
        for i in 0..videos {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            bytes += kie_server::workers::media::mp4(&seed, w, h, seconds)
                .expect("encodes")
                .len();
        }
        let total_secs = f64::from(videos * seconds);
        let ms_per_video_second = started.elapsed().as_secs_f64() * 1000.0 / total_secs;
        println!(
            "SUMMARY video generator {label} {w}x{h} {}fps: {:.2} ms CPU per second of video, {:.0} KB per second of video ({} videos of {} s)",
            kie_server::workers::media::VIDEO_FPS,
            ms_per_video_second,
            bytes as f64 / total_secs / 1000.0,
            videos,
            seconds
        );
    }
}
