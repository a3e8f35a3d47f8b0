//! The API key format: `kie_` + 32 base62 characters of OS randomness (~190 bits) + a
//! 6-character base62 CRC-32 checksum of everything before it.
//!
//! The checksum lets both the server and the CLI reject a mistyped key without a
//! database round trip. Only the SHA-256 digest of a key is ever stored.

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "kie_";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
/// How many characters of a key are shown to identify it (`kie_` + 8).
pub const DISPLAY_PREFIX_LEN: usize = PREFIX.len() + 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` as exactly `N` base62 digits, most significant first (ASCII order, so equal
/// widths sort like the numbers; digits beyond `N` are dropped).
pub fn base62_fixed<const N: usize>(mut n: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Draws `n` base62 characters from the OS RNG without modulo bias.
pub fn random_base62(n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        OsRng.fill_bytes(&mut buf);
        for &b in buf.iter() {
            // 248 = 4 * 62: reject the top values so every symbol is equally likely.
            if b < 248 && out.len() < n {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    out
}

fn checksum(body: &str) -> String {
    let mut v = u64::from(crc32fast::hash(body.as_bytes()));
    let mut s = [b'0'; CHECKSUM_LEN];
    for slot in s.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    String::from_utf8(s.to_vec()).expect("ascii")
}

/// Generates a fresh API key.
pub fn generate() -> String {
    let body = format!("{PREFIX}{}", random_base62(RANDOM_LEN));
    let sum = checksum(&body);
    body + &sum
}

/// True when `key` has the right shape and its checksum matches. Says nothing about
/// whether the key exists.
pub fn is_well_formed(key: &str) -> bool {
    if key.len() != KEY_LEN || !key.starts_with(PREFIX) {
        return false;
    }
    let rest = &key[PREFIX.len()..];
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, sum) = key.split_at(KEY_LEN - CHECKSUM_LEN);
    // Not secret-dependent in a useful way: the checksum is public information about
    // the key, so a plain comparison leaks nothing an attacker could not compute.
    checksum(body) == sum
}

/// The recognisable, non-secret part of a key used in listings and logs.
pub fn display_prefix(key: &str) -> &str {
    let end = DISPLAY_PREFIX_LEN.min(key.len());
    // Keys are ASCII when well-formed; guard against slicing inside a UTF-8 char.
    if key.is_char_boundary(end) {
        &key[..end]
    } else {
        ""
    }
}

/// Operator tokens (the credential of `/api/v1/admin/…`): `kieop_` + 40 base62
/// characters (~238 bits). Stored, like keys, only as their [`digest`].
pub const OPERATOR_PREFIX: &str = "kieop_";
const OPERATOR_RANDOM_LEN: usize = 40;
/// How many characters of an operator token identify it (`kieop_` + 8).
pub const OPERATOR_DISPLAY_LEN: usize = OPERATOR_PREFIX.len() + 8;

/// Generates a fresh operator token.
pub fn generate_operator_token() -> String {
    format!("{OPERATOR_PREFIX}{}", random_base62(OPERATOR_RANDOM_LEN))
}

/// True when `token` has the shape of an operator token (says nothing about whether
/// it exists).
pub fn is_operator_token(token: &str) -> bool {
    token.len() == OPERATOR_PREFIX.len() + OPERATOR_RANDOM_LEN
        && token.starts_with(OPERATOR_PREFIX)
        && token[OPERATOR_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Hex SHA-256 of the key: the only form in which a key is stored.
pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_tokens_have_their_own_shape() {
        let t = generate_operator_token();
        assert!(is_operator_token(&t), "{t}");
        assert_ne!(t, generate_operator_token());
        assert!(!is_well_formed(&t), "an operator token is not an API key");
        assert!(
            !is_operator_token(&generate()),
            "an API key is not an operator token"
        );
        assert!(!is_operator_token(&t[..t.len() - 1]));
        assert!(!is_operator_token(&format!("{}!", &t[..t.len() - 1])));
    }

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_LEN);
        assert!(a.starts_with("kie_"));
        assert!(is_well_formed(&a));
        assert_eq!(display_prefix(&a).len(), 12);
    }

    #[test]
    fn typos_are_rejected_by_the_checksum() {
        let k = generate();
        let mut bytes = k.clone().into_bytes();
        let i = 10;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert!(!is_well_formed(&typo));
        assert!(!is_well_formed(&k[..k.len() - 1]));
        assert!(!is_well_formed(""));
        assert!(!is_well_formed(&format!("xyz_{}", &k[4..])));
    }

    #[test]
    fn digest_is_hex_sha256() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
