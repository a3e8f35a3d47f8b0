//! Pure functions on the server's hot paths, per request: link signing and
//! verification, request ids, bearer parsing + key digest, the metrics record, and the
//! success envelope as a response.
//!
//! `cargo bench -p kie-server --bench hot`

use axum::response::IntoResponse;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kie_server::files::links::{self, SigningKey};
use kie_server::http::ApiOk;
use kie_wire::{apikey, Credits};
use std::time::Duration;

fn link_tokens(c: &mut Criterion) {
    let key = SigningKey::from_secret("kAbCdEfGhIj", &[42u8; 32]).expect("32-byte secret");
    let base = url::Url::parse("http://127.0.0.1:8080/").unwrap();
    let id = "0123456789abcdefghijABCDEFGHIJ01";
    c.bench_function("link/sign", |b| {
        b.iter(|| links::sign(&base, &key, black_box(id), "picture 1.png", 1_790_000_000))
    });
    let link = links::sign(&base, &key, id, "picture 1.png", 1_790_000_000);
    let sig = link.rsplit_once("s=").unwrap().1.to_string();
    c.bench_function("link/check_signature", |b| {
        b.iter(|| links::check_signature(&key, black_box(id), 1_790_000_000, "picture 1.png", &sig))
    });
}

fn per_request(c: &mut Criterion) {
    c.bench_function("request id", |b| b.iter(kie_server::http::new_request_id));
    let key = apikey::generate();
    let header = format!("Bearer {key}");
    c.bench_function("auth/bearer+well_formed+digest", |b| {
        b.iter(|| {
            let t = kie_server::auth::bearer_token(black_box(header.as_bytes())).unwrap();
            let t = std::str::from_utf8(t).unwrap();
            apikey::is_well_formed(t).then(|| apikey::digest(t))
        })
    });
    kie_server::metrics::handle();
    let get = axum::http::Method::GET;
    c.bench_function("metrics/record_request", |b| {
        b.iter(|| {
            kie_server::metrics::record_request(
                &get,
                black_box("/api/v1/chat/credit"),
                200,
                Duration::from_micros(40),
            )
        })
    });
    c.bench_function("envelope/ApiOk(credits) into_response", |b| {
        b.iter(|| ApiOk(black_box(Credits(1098))).into_response())
    });
}

criterion_group!(benches, link_tokens, per_request);
criterion_main!(benches);
