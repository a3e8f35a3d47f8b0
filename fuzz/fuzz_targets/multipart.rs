//! Multipart upload parsing: the server's own field loop (`read_upload_form`) over
//! axum's multipart parser, with the file part kept in memory. Properties: never
//! panics; a part's file name never keeps a directory; text fields are non-empty and
//! bounded; a well-formed form built from the input round-trips exactly.
#![no_main]
use axum::body::Body;
use axum::extract::multipart::Field;
use axum::extract::{FromRequest, Multipart, Request};
use futures::StreamExt;
use kie_server::api::upload::{read_upload_form, PartSink, UploadForm};
use kie_server::http::ApiError;
use libfuzzer_sys::fuzz_target;

struct Mem;

impl PartSink for Mem {
    type Stored = Vec<u8>;
    fn store<'a>(
        &'a mut self,
        mut field: Field<'a>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, ApiError>> + Send + 'a {
        async move {
            let mut out = Vec::new();
            while let Some(c) = field.next().await {
                let c = c.map_err(|_| ApiError::validation("body"))?;
                out.extend_from_slice(&c);
                if out.len() > 1 << 20 {
                    return Err(ApiError::validation("too large"));
                }
            }
            Ok(out)
        }
    }
}

const BOUNDARY: &str = "XkieBOUNDARYx";

fn parse(body: Vec<u8>) -> (Result<(), ApiError>, UploadForm<Vec<u8>>) {
    let req = Request::builder()
        .method("POST")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body))
        .unwrap();
    futures::executor::block_on(async move {
        let mut mp = Multipart::from_request(req, &())
            .await
            .expect("content type");
        let mut form = UploadForm::default();
        let r = read_upload_form(&mut mp, &mut Mem, &mut form).await;
        (r, form)
    })
}

/// Characters a browser sends unescaped in a quoted multipart file name.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" ._-+=@~()".contains(&b))
}

fuzz_target!(|inp: (&[u8], &str, &str, &[u8])| {
    let (raw, path, name, content) = inp;
    // arbitrary bodies
    let (r, form) = parse(raw.to_vec());
    if let Some(f) = &form.file {
        if let Some(n) = &f.part_name {
            assert!(!n.contains(['/', '\\']), "{n:?}");
        }
    }
    for v in [&form.upload_path, &form.file_name].into_iter().flatten() {
        assert!(!v.is_empty() && v.len() <= 4096);
    }
    let _ = r;

    // a well-formed form round-trips
    let sep = format!("--{BOUNDARY}");
    if !path.is_empty()
        && !name.is_empty()
        && plain(path)
        && plain(name)
        && !content.windows(sep.len()).any(|w| w == sep.as_bytes())
    {
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "{sep}\r\nContent-Disposition: form-data; name=\"uploadPath\"\r\n\r\n{path}\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(
            format!(
                "{sep}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"dir/{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n{sep}--\r\n").as_bytes());
        let (r, form) = parse(body);
        if path.len() <= 4096 {
            assert!(r.is_ok());
            assert_eq!(form.upload_path.as_deref(), Some(path));
            let f = form.file.expect("file part");
            assert_eq!(&f.stored[..], content);
            assert_eq!(f.part_name.as_deref(), Some(name));
        }
    }
});
