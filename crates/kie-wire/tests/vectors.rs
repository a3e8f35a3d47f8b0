//! The independently computed webhook vectors in `fixtures/webhook-vectors.json`.

use kie_wire::webhook::*;
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/webhook-vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap()
}

#[test]
fn kie_scheme_matches_vectors() {
    let v = vectors();
    let (key, task, ts) = (s(&v, "/key"), s(&v, "/taskId"), s(&v, "/timestamp"));
    assert_eq!(kie_signature(key, task, ts), s(&v, "/kie_signature"));
    let now: i64 = ts.parse().unwrap();
    let body = s(&v, "/body").as_bytes();
    assert_eq!(
        verify_kie(key, ts, s(&v, "/kie_signature"), body, now, 300).unwrap(),
        task
    );
    for neg in [
        "/negative/kie_signature_other_task",
        "/negative/kie_signature_other_timestamp",
    ] {
        assert_eq!(
            verify_kie(key, ts, s(&v, neg), body, now, 300),
            Err(VerifyError::BadSignature),
            "{neg}"
        );
    }
}

#[test]
fn standard_scheme_matches_vectors() {
    let v = vectors();
    let (key, ts, id, body) = (
        s(&v, "/key"),
        s(&v, "/timestamp"),
        s(&v, "/webhook_id"),
        s(&v, "/body"),
    );
    assert_eq!(
        standard_signature(key, id, ts, body.as_bytes()),
        s(&v, "/standard_signature")
    );
    let now: i64 = ts.parse().unwrap();
    let good = s(&v, "/standard_signature");
    assert_eq!(
        verify_standard(key, id, ts, good, body.as_bytes(), now, 300),
        Ok(())
    );
    // a header carrying several signatures passes when any one matches
    let multi = format!("v1,AAAA {good}");
    assert_eq!(
        verify_standard(key, id, ts, &multi, body.as_bytes(), now, 300),
        Ok(())
    );
    let tampered = s(&v, "/negative/standard_signature_tampered_body");
    assert_eq!(
        verify_standard(key, id, ts, tampered, body.as_bytes(), now, 300),
        Err(VerifyError::BadSignature)
    );
    let mut changed = body.as_bytes().to_vec();
    changed[10] ^= 1;
    assert_eq!(
        verify_standard(key, id, ts, good, &changed, now, 300),
        Err(VerifyError::BadSignature)
    );
}
