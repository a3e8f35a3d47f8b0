//! Finds credentials in text, for the test suite's log scan (`scripts/test` runs
//! `cargo run -p kie --example scan-secrets` over every log the suite wrote): API keys
//! (`kie_` + base62) and operator tokens (`kieop_` + base62), webhook keys (`whsec_` + base64) and signing-key material or link
//! signatures (exactly 43 base64url characters, the unpadded form of 32 bytes).
//!
//! Heuristic on purpose: it may flag a random-looking 43-character token that is not a
//! secret (fix the log line, or shorten what it prints); it cannot miss a full key of
//! the formats above.

/// A secret string (a token from configuration) whose `Debug` and `Display` never show
/// it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// What kind of secret a [`Finding`] looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `kie_` (an API key) or `kieop_` (an operator token) followed by at least 32
    /// base62 characters.
    ApiKey,
    /// `whsec_` followed by at least 20 base64 characters.
    WebhookKey,
    /// A bounded run of exactly 43 base64url characters in both letter cases.
    KeyMaterial,
}

/// One secret found at byte `offset` of the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: SecretKind,
    pub offset: usize,
    pub len: usize,
}

fn run_len(b: &[u8], ok: impl Fn(u8) -> bool) -> usize {
    b.iter().take_while(|&&c| ok(c)).count()
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Every secret-looking token in `text`.
pub fn scan(text: &str) -> Vec<Finding> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if let Some(p) = [&b"kie_"[..], &b"kieop_"[..]]
            .into_iter()
            .find(|p| rest.starts_with(p))
        {
            let n = run_len(&rest[p.len()..], |c| c.is_ascii_alphanumeric());
            if n >= 32 {
                out.push(Finding {
                    kind: SecretKind::ApiKey,
                    offset: i,
                    len: p.len() + n,
                });
                i += p.len() + n;
                continue;
            }
        }
        if rest.starts_with(b"whsec_") {
            let n = run_len(&rest[6..], |c| {
                c.is_ascii_alphanumeric() || b"+/=".contains(&c)
            });
            if n >= 20 {
                out.push(Finding {
                    kind: SecretKind::WebhookKey,
                    offset: i,
                    len: 6 + n,
                });
                i += 6 + n;
                continue;
            }
        }
        // a token of base64url characters, starting at a boundary
        if is_b64url(b[i]) && (i == 0 || !is_b64url(b[i - 1])) {
            let n = run_len(rest, is_b64url);
            let tok = &rest[..n];
            // random base64url has both cases (a 43-character token without one of
            // them is a ~1e-10 event); identifiers in logs are rarely mixed-case
            if n == 43
                && tok.iter().any(u8::is_ascii_uppercase)
                && tok.iter().any(u8::is_ascii_lowercase)
            {
                out.push(Finding {
                    kind: SecretKind::KeyMaterial,
                    offset: i,
                    len: n,
                });
            }
            // keep scanning inside the token for an embedded kie_/whsec_ prefix
        }
        i += 1;
    }
    out
}

/// `text` with every [`scan`] finding replaced by `<redacted>`.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    let found = scan(text);
    if found.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in found {
        if f.offset < at {
            continue; // overlapping finding, already redacted
        }
        out.push_str(&text[at..f.offset]);
        out.push_str("<redacted>");
        at = f.offset + f.len;
    }
    out.push_str(&text[at..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn kinds(s: &str) -> Vec<SecretKind> {
        scan(s).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn finds_every_kind_of_secret() {
        let api = crate::apikey::generate();
        let wh = crate::webhook::generate_key();
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let sk = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            kinds(&format!("auth failed for {api}")),
            [SecretKind::ApiKey]
        );
        assert_eq!(kinds(&format!("Bearer {api}\n")), [SecretKind::ApiKey]);
        let op = crate::apikey::generate_operator_token();
        assert_eq!(kinds(&format!("token {op}.")), [SecretKind::ApiKey]);
        assert_eq!(kinds(&format!("key=\"{wh}\"")), [SecretKind::WebhookKey]);
        assert_eq!(sk.len(), 43);
        assert_eq!(
            kinds(&format!("secret {sk} rotated")),
            [SecretKind::KeyMaterial]
        );
        assert_eq!(
            kinds(&format!("/links/x/y?e=1&k=kA&s={sk}")),
            [SecretKind::KeyMaterial]
        );
        // real generated material is always found
        for _ in 0..200 {
            let k = crate::webhook::generate_key();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&k["whsec_".len()..])
                .unwrap();
            let m = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            assert_eq!(kinds(&format!("x {m} y")), [SecretKind::KeyMaterial], "{m}");
        }
        assert_eq!(
            kinds(&format!(
                "{{\"msg\":\"x\",\"apiKey\":\"{api}\",\"w\":\"{wh}\"}}"
            )),
            [SecretKind::ApiKey, SecretKind::WebhookKey]
        );
        // a key glued to other text is still found
        assert_eq!(kinds(&format!("xx{api}yy")), [SecretKind::ApiKey]);
    }

    #[test]
    fn redact_replaces_every_finding() {
        let api = crate::apikey::generate();
        let wh = crate::webhook::generate_key();
        assert_eq!(redact("/api/v1/chat/credit"), "/api/v1/chat/credit");
        assert_eq!(
            redact(&format!("/x/{api}/y/{wh}")),
            "/x/<redacted>/y/<redacted>"
        );
    }

    #[test]
    fn secret_never_formats_its_value() {
        let s: Secret = "tok-123-very-secret".parse().unwrap();
        assert_eq!(s.expose(), "tok-123-very-secret");
        assert_eq!(
            format!("{s:?} {s} {:?}", Some(&s)),
            "Secret(<redacted>) <redacted> Some(Secret(<redacted>))"
        );
        let d: Secret = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(d.expose(), "abc");
    }

    #[test]
    fn ordinary_log_lines_are_clean() {
        for line in [
            r#"{"timestamp":"2026-11-24T22:36:20.123Z","level":"INFO","fields":{"message":"request","method":"POST","path":"/api/v1/jobs/createTask","status":200,"key":"kie_AbCdEfGh","request_id":"6f1c0c6f6f0e4f7bb6d4f4b8c2f0a1b2"}}"#,
            "task ee9c2715375b7837f8bb51d641ff5863 finished",
            "file AbCdEfGhIjKlMnOpQrStUvWxYz012345 sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "whsec_ keys are generated with kie admin webhook-key generate",
            "kie_server::webhooks::dispatch: callback target refused",
            "retention_uploads_and_retention_generated_x",
        ] {
            assert_eq!(scan(line), [], "{line}");
        }
    }
}
