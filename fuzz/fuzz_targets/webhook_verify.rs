//! Webhook verification, both schemes. Properties: never panics on any header or
//! body; verify(sign(x)) passes; a signature made with another key, or a changed body
//! or id, does not.
#![no_main]
use kie_wire::webhook::{
    kie_signature, standard_signature, task_id_of, verify_kie, verify_kie_for_task,
    verify_standard, VerifyError,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|inp: (&str, &str, &str, &str, &[u8], i64, i64)| {
    let (key, id, ts, sig, body, now, tol) = inp;
    // arbitrary input: no panic
    let _ = verify_standard(key, id, ts, sig, body, now, tol);
    let _ = verify_kie(key, ts, sig, body, now, tol);
    let _ = verify_kie_for_task(key, id, ts, sig);
    let _ = task_id_of(body);

    // round trips
    let tol = tol.rem_euclid(1000);
    let t = now.to_string();
    let std_sig = standard_signature(key, id, &t, body);
    assert_eq!(
        verify_standard(key, id, &t, &std_sig, body, now, tol),
        Ok(())
    );
    // several candidates, one right (key rotation)
    let multi = format!("v1,AAAA {std_sig} {sig}");
    assert_eq!(verify_standard(key, id, &t, &multi, body, now, tol), Ok(()));
    let other_key = format!("{key}x");
    if !key.is_empty() {
        let forged = standard_signature(&other_key, id, &t, body);
        if forged != std_sig {
            assert_eq!(
                verify_standard(key, id, &t, &forged, body, now, tol),
                Err(VerifyError::BadSignature)
            );
        }
    }
    let mut body2 = body.to_vec();
    body2.push(b' ');
    assert_eq!(
        verify_standard(key, id, &t, &std_sig, &body2, now, tol),
        Err(VerifyError::BadSignature)
    );
    // outside the tolerance
    if let Some(late) = now.checked_add(tol + 1) {
        assert_eq!(
            verify_standard(key, id, &t, &std_sig, body, late, tol),
            Err(VerifyError::TimestampOutOfRange)
        );
    }

    let kie = kie_signature(key, id, &t);
    let json = serde_json_body(id);
    assert_eq!(
        verify_kie(key, &t, &kie, json.as_bytes(), now, tol),
        Ok(id.to_string())
    );
    assert_eq!(verify_kie_for_task(key, id, &t, &kie), Ok(()));
    let forged = kie_signature(&other_key, id, &t);
    assert_eq!(
        verify_kie_for_task(key, id, &t, &forged),
        Err(VerifyError::BadSignature)
    );
});

fn serde_json_body(id: &str) -> String {
    // a JSON string literal of `id`
    let mut s = String::from("{\"taskId\":\"");
    for c in id.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push_str("\",\"data\":{}}");
    s
}
