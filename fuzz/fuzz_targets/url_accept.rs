//! URL acceptance (SSRF guard, callback URLs, download-url lookups) and
//! percent-decoding of file names. Properties: a URL the default policy accepts never
//! names a forbidden IP literal; decoded names never contain separators, controls or
//! `.`/`..`; file URLs round-trip (a name is decoded exactly once).
#![no_main]
use kie_server::api::download_url::locate;
use kie_server::api::upload::name_from_url;
use kie_server::files::{file_url, serve::parse_id_and_name, validate_file_name};
use kie_server::net_guard::{is_forbidden_ip, Policy};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

const ID: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";

fn safe_name(n: &str) {
    assert!(validate_file_name(n).is_ok(), "unsafe decoded name {n:?}");
    assert!(!n.contains(['/', '\\']) && n != "." && n != "..");
}

fuzz_target!(|s: &str| {
    let strict = Policy::default();
    let _ = strict.check_raw(s);
    if let Ok(u) = url::Url::parse(s) {
        if strict.check_url(&u).is_ok() {
            assert!(matches!(u.scheme(), "http" | "https"));
            match u.host() {
                Some(url::Host::Ipv4(ip)) => assert!(!is_forbidden_ip(IpAddr::V4(ip)), "{s}"),
                Some(url::Host::Ipv6(ip)) => assert!(!is_forbidden_ip(IpAddr::V6(ip)), "{s}"),
                Some(url::Host::Domain(d)) => {
                    assert!(!d.is_empty());
                    if let Ok(ip) = d.trim_matches(['[', ']']).parse::<IpAddr>() {
                        assert!(!is_forbidden_ip(ip), "{s}");
                    }
                }
                None => panic!("accepted a URL without a host: {s}"),
            }
        }
        if let Some(n) = name_from_url(&u) {
            safe_name(&n);
        }
        for base in ["http://h/", "https://h/prefix/"] {
            let base = url::Url::parse(base).unwrap();
            if let Some((id, n)) = locate(&base, &u) {
                assert_eq!(id.len(), 32);
                safe_name(&n);
            }
        }
    }
    if let Some((_, n)) = parse_id_and_name(s) {
        safe_name(&n);
    }
    // a valid name survives file_url → URL parser → locate unchanged
    if validate_file_name(s).is_ok() {
        let base = url::Url::parse("https://h/prefix/").unwrap();
        let fu = file_url(&base, ID, s);
        let u = url::Url::parse(&fu).expect("file URL parses");
        let got = locate(&base, &u);
        assert_eq!(got, Some((ID.to_string(), s.to_string())), "{fu}");
    }
});
