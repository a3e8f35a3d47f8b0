//! Link token verification: `/links/{id}/{name}?e=&k=&s=` parsing and checking.
//! Properties: an arbitrary link never verifies unless its signature is the one the
//! server would issue (one spelling per link); a signed link verifies until it expires
//! and no longer once any byte of its signature changes; decoded names are safe.
#![no_main]
use kie_server::files::links::{
    check_link, parse_link, parse_query, sign, LinkRefused, SigningKey,
};
use kie_server::files::serve::parse_id_and_name;
use libfuzzer_sys::fuzz_target;

const NOW_MS: i64 = 1_700_000_000_000;
const ID: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";

fn path_and_query(link: &str) -> (&str, &str) {
    let rest = &link[link.find("/links/").expect("links path") + "/links/".len()..];
    rest.split_once('?').expect("query")
}

fuzz_target!(|inp: (&str, &str, &str, i64, u16)| {
    let (path, query, name, expiry, flip) = inp;
    let key = SigningKey::from_secret("kFUZZ", &[7u8; 32]).unwrap();
    let base = url::Url::parse("https://files.example/").unwrap();

    // 1. arbitrary input
    if let Some((id, dname)) = parse_id_and_name(path) {
        assert!(!dname.contains(['/', '\\']) && dname != "." && dname != "..");
        assert!(!dname.chars().any(char::is_control));
        if let Ok(q) = parse_query(Some(query)) {
            if let Ok(l) = parse_link(&q) {
                if l.key_id == "kFUZZ" && check_link(&key, id, &dname, &l, NOW_MS).is_ok() {
                    let canonical = sign(&base, &key, id, &dname, l.expiry);
                    let (_, cq) = path_and_query(&canonical);
                    let cs = parse_query(Some(cq)).unwrap().sig;
                    assert_eq!(q.sig, cs, "a second spelling of a signature verified");
                }
            }
        }
    }

    // 2. round trip of a link the server issues
    if kie_server::files::validate_file_name(name).is_ok() && expiry > 0 {
        let link = sign(&base, &key, ID, name, expiry);
        let (p, q) = path_and_query(&link);
        let (id, dname) = parse_id_and_name(p).expect("issued link path parses");
        assert_eq!((id, dname.as_str()), (ID, name));
        let pq = parse_query(Some(q)).expect("issued query parses");
        let l = parse_link(&pq).expect("issued link is well-formed");
        assert_eq!(l.expiry, expiry);
        let r = check_link(&key, id, &dname, &l, NOW_MS);
        if expiry.saturating_mul(1000) > NOW_MS {
            assert_eq!(r, Ok(()));
        } else {
            assert_eq!(r, Err(LinkRefused::Expired));
        }
        // another key does not verify it
        let other = SigningKey::from_secret("kFUZZ", &[8u8; 32]).unwrap();
        assert_eq!(
            check_link(&other, id, &dname, &l, NOW_MS),
            Err(LinkRefused::BadSignature)
        );
        // one changed signature character: refused
        let s = pq.sig.unwrap();
        let i = flip as usize % s.len();
        let mut b = s.as_bytes().to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let s2 = String::from_utf8(b).unwrap();
        let q2 = format!("e={expiry}&k=kFUZZ&s={s2}");
        if let Ok(l2) = parse_link(&parse_query(Some(&q2)).unwrap()) {
            assert_eq!(
                check_link(&key, id, &dname, &l2, NOW_MS),
                Err(LinkRefused::BadSignature)
            );
        }
        // another name or file id: refused
        let n2 = format!("{name}x");
        assert_eq!(
            check_link(&key, id, &n2, &l, NOW_MS),
            Err(LinkRefused::BadSignature)
        );
    }
});
