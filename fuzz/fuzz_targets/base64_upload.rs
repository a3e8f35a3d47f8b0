//! Base64 upload decoding: data URLs and the chunked streaming decoder. Properties:
//! every chunk size gives the same answer as one decode; encode → decode round-trips
//! for both alphabets, with or without padding and with whitespace.
#![no_main]
use base64::Engine;
use futures::StreamExt;
use kie_server::api::upload::{decode_stream_chunked, split_data_url};
use libfuzzer_sys::fuzz_target;

fn decode(s: &str, chunk: usize) -> Result<Vec<u8>, String> {
    futures::executor::block_on(async {
        let mut out = Vec::new();
        let mut st = decode_stream_chunked(s, chunk);
        while let Some(c) = st.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    })
}

fuzz_target!(|inp: (&str, u8, &[u8], u8)| {
    let (s, chunk, raw, ws) = inp;
    let chunk = 4 * (chunk as usize % 8 + 1);
    if let Ok((mime, payload)) = split_data_url(s) {
        if let Some(m) = mime {
            assert!(!m.is_empty() && !m.contains(','));
        }
        let whole = decode(payload, usize::MAX / 2);
        let parts = decode(payload, chunk);
        assert_eq!(whole.is_ok(), parts.is_ok(), "{payload:?} chunk {chunk}");
        if let (Ok(a), Ok(b)) = (&whole, &parts) {
            assert_eq!(a, b);
        }
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for e in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        let mut enc = e.encode(raw);
        if ws > 0 && !enc.is_empty() {
            let at = ws as usize % enc.len();
            enc.insert_str(at, "\r\n ");
        }
        assert_eq!(decode(&enc, chunk).as_deref(), Ok(raw), "{enc}");
        let data_url = format!("data:application/x-test;base64,{enc}");
        let (m, p) = split_data_url(&data_url).unwrap();
        assert_eq!(m, Some("application/x-test"));
        assert_eq!(decode(p, chunk).as_deref(), Ok(raw));
    }
});
