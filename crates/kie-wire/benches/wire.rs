//! Pure hot functions of the wire crate: API key shape check and digest (every
//! authenticated request), envelope serialisation (every answer), webhook signatures.
//!
//! `cargo bench -p kie-wire --bench wire`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kie_wire::{apikey, webhook, Credits, Envelope};

fn api_key(c: &mut Criterion) {
    let key = apikey::generate();
    c.bench_function("apikey/is_well_formed", |b| {
        b.iter(|| apikey::is_well_formed(black_box(&key)))
    });
    c.bench_function("apikey/digest (sha256 hex)", |b| {
        b.iter(|| apikey::digest(black_box(&key)))
    });
    c.bench_function("apikey/parse+digest", |b| {
        b.iter(|| {
            let k = black_box(key.as_str());
            apikey::is_well_formed(k).then(|| apikey::digest(k))
        })
    });
}

fn envelope(c: &mut Criterion) {
    c.bench_function("envelope/credit ok to_vec", |b| {
        b.iter(|| serde_json::to_vec(&Envelope::ok(black_box(Credits(1098)))).unwrap())
    });
    let link = "http://127.0.0.1:8080/links/0123456789abcdefghijABCDEFGHIJ01/picture.png?e=1790000000&k=kAbCdEfGhIj&s=c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dQ";
    c.bench_function("envelope/link ok to_vec", |b| {
        b.iter(|| serde_json::to_vec(&Envelope::ok(black_box(link))).unwrap())
    });
}

fn webhooks(c: &mut Criterion) {
    let key = webhook::generate_key();
    let body = br#"{"code":200,"msg":"success","data":{"taskId":"task_0123456789abcdef","state":"success","resultJson":"{\"resultUrls\":[\"http://h/files/x/y.png\"]}"}}"#;
    c.bench_function("webhook/kie_signature", |b| {
        b.iter(|| webhook::kie_signature(black_box(&key), "task_0123456789abcdef", "1790000000"))
    });
    c.bench_function("webhook/standard_signature", |b| {
        b.iter(|| {
            webhook::standard_signature(black_box(&key), "msg_1", "1790000000", black_box(body))
        })
    });
}

criterion_group!(benches, api_key, envelope, webhooks);
criterion_main!(benches);
