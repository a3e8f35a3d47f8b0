//! The SSRF guard for callback targets (SPEC §6): a callback may only reach public
//! addresses, checked after DNS resolution, unless `allow_private_targets` is set.
//! The connection is then pinned to the checked addresses, so a second DNS answer
//! cannot swap in a private one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::Url;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("callback URL must be http or https with a host")]
    BadUrl,
    #[error("callback host does not resolve")]
    Unresolvable,
    #[error("callback target is a loopback, private, link-local or otherwise non-public address")]
    Refused,
}

/// True for addresses a callback must not reach: loopback, private, link-local
/// (including the 169.254.169.254 metadata service), CGNAT, unspecified, multicast,
/// broadcast, reserved and documentation ranges, and IPv6 forms embedding them.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (includes fd00:ec2::254)
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0) // IPv4-compatible ::a.b.c.d
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 embeds IPv4
        || s[0] == 0x2002 // 6to4 embeds IPv4
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
}

/// Syntax check done when a task is created: http(s), a host, and — for a literal IP
/// — a permitted address (hostnames are resolved and checked at delivery time).
pub fn check_syntax(raw: &str, allow_private: bool) -> Result<Url, TargetError> {
    let url = Url::parse(raw).map_err(|_| TargetError::BadUrl)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(TargetError::BadUrl);
    }
    if !allow_private {
        match url.host() {
            Some(url::Host::Ipv4(ip)) if forbidden_v4(ip) => return Err(TargetError::Refused),
            Some(url::Host::Ipv6(ip)) if forbidden_v6(ip) => return Err(TargetError::Refused),
            _ => {}
        }
    }
    Ok(url)
}

/// Resolves the callback URL's host and returns the addresses to connect to, refusing
/// the whole target when any of them is forbidden (a mixed answer is an attack
/// pattern, not an accident). With `allow_private` nothing is refused.
pub async fn check_callback_url(
    raw: &str,
    allow_private: bool,
) -> Result<(Url, Vec<SocketAddr>), TargetError> {
    let url = check_syntax(raw, allow_private)?;
    let host = url.host_str().ok_or(TargetError::BadUrl)?;
    let port = url.port_or_known_default().ok_or(TargetError::BadUrl)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| TargetError::Unresolvable)?
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable);
    }
    if !allow_private && addrs.iter().any(|a| is_forbidden(a.ip())) {
        return Err(TargetError::Refused);
    }
    Ok((url, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_ranges() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_forbidden(s.parse().unwrap()), "{s} must be refused");
        }
        for s in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "100.128.0.1"] {
            assert!(!is_forbidden(s.parse().unwrap()), "{s} must be allowed");
        }
    }

    #[test]
    fn syntax() {
        assert_eq!(check_syntax("ftp://x/", false), Err(TargetError::BadUrl));
        assert_eq!(check_syntax("not a url", false), Err(TargetError::BadUrl));
        assert_eq!(
            check_syntax("http://127.0.0.1:9/x", false),
            Err(TargetError::Refused)
        );
        assert!(check_syntax("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_syntax("https://example.com/hook", false).is_ok());
    }

    #[tokio::test]
    async fn resolved_loopback_is_refused() {
        assert_eq!(
            check_callback_url("http://localhost:9/x", false)
                .await
                .unwrap_err(),
            TargetError::Refused
        );
        let (_, addrs) = check_callback_url("http://localhost:9/x", true)
            .await
            .unwrap();
        assert!(addrs.iter().all(|a| a.port() == 9));
    }
}
