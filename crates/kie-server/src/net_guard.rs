//! The SSRF guard for every request the server sends on a user's behalf (URL uploads,
//! webhook callbacks): a target must not be loopback, private, link-local, CGNAT,
//! unspecified, multicast, broadcast, reserved or a cloud metadata address — checked on
//! the address actually connected to, after DNS resolution, on every redirect hop —
//! unless the operator set `allow_private_targets`.
//!
//! How the check is bound to the connection (no time-of-check/time-of-use gap):
//! * host names are resolved by [`GuardedResolver`], installed as the client's DNS
//!   resolver: it resolves, drops forbidden addresses and hands reqwest only the checked
//!   ones, so the connection goes exactly where the check looked;
//! * IP literals never reach a resolver, so [`Policy::check_url`] checks them before
//!   each hop;
//! * redirects are never followed by reqwest (`Policy::none()`): [`get`] follows them
//!   itself (at most [`MAX_REDIRECTS`]) and checks every hop the same way;
//! * proxies are disabled: a proxy would resolve names where we cannot check them.
//!
//! This is the only SSRF guard: URL uploads (`api/upload.rs`, through [`get`]) and
//! webhook callbacks (`api/jobs.rs` at task creation with [`Policy::check_url`],
//! `webhooks/dispatch.rs` at delivery with a [`client`] and [`Policy::check_url`];
//! callbacks never follow redirects) both use it. Map reqwest errors with
//! [`is_forbidden`] to tell "refused by the guard" from other transport failures.
//!
//! A DNS answer mixing allowed and forbidden addresses is refused as a whole: it is an
//! attack pattern (DNS rebinding), not an accident.
//!
//! Testing names that resolve to loopback: the resolver is the system's
//! (`tokio::net::lookup_host`, i.e. getaddrinfo with /etc/hosts), and there is
//! deliberately no switch to replace it in a production build. Tests use `localhost`
//! and `localhost.` (resolved through /etc/hosts to 127.0.0.1 and/or ::1), and the unit
//! test `resolver_refuses_any_forbidden_answer` drives [`Policy::check_resolved`], the
//! function the resolver applies to every answer, with hand-made answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// Redirect hops followed by [`get`].
pub const MAX_REDIRECTS: usize = 5;

/// Why a target was refused. Messages are safe to show to API users: they name the
/// rule, not our network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("only http and https URLs are supported")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "the target address is not allowed (loopback, private, link-local or reserved network)"
    )]
    Forbidden,
    #[error("the host name could not be resolved")]
    Unresolvable,
    #[error("too many redirects (more than {MAX_REDIRECTS})")]
    TooManyRedirects,
    #[error("a redirect had no valid Location")]
    BadRedirect,
}

/// What the guard allows.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Guard off: every address is allowed (tests, private networks).
    pub allow_private: bool,
    /// Individual addresses allowed although they are in a forbidden range (an
    /// operator's internal file server, for instance). Exact matches only.
    pub allow: Vec<IpAddr>,
}

impl Policy {
    /// The operator's policy: `allow_private_targets` and `allowed_private_targets`.
    pub fn from_config(config: &crate::config::Config) -> Policy {
        Policy::new(
            config.allow_private_targets,
            config.allowed_private_targets.clone(),
        )
    }

    pub fn new(allow_private: bool, allow: Vec<IpAddr>) -> Policy {
        Policy {
            allow_private,
            allow,
        }
    }

    /// True when a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_private || !is_forbidden_ip(ip) || self.allow.contains(&canonical(ip))
    }

    /// Checks scheme and, for IP-literal hosts, the address. Host names are checked by
    /// the resolver at connection time.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::Scheme);
        }
        if url.cannot_be_a_base() {
            return Err(Refused::NoHost);
        }
        match url.host() {
            Some(url::Host::Domain("")) => Err(Refused::NoHost),
            None => Err(Refused::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                // `url` already turned every IPv4 spelling (127.1, 2130706433,
                // 0x7f000001) into Host::Ipv4; a domain that still parses as an
                // address would be one reqwest treats as a literal.
                match d.trim_matches(['[', ']']).parse::<IpAddr>() {
                    Ok(ip) => self.check_ip(ip),
                    Err(_) => Ok(()),
                }
            }
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(Refused::Forbidden)
        }
    }

    /// Parses `raw` and checks it with [`Policy::check_url`] (what task creation does
    /// with a `callBackUrl`).
    pub fn check_raw(&self, raw: &str) -> Result<Url, CheckError> {
        let url = Url::parse(raw).map_err(|_| CheckError::BadUrl)?;
        self.check_url(&url).map_err(|r| match r {
            Refused::Scheme | Refused::NoHost => CheckError::BadUrl,
            r => CheckError::Refused(r),
        })?;
        Ok(url)
    }

    /// The verdict on one DNS answer: the addresses to connect to, or a refusal when
    /// the answer is empty or any address in it is forbidden.
    pub fn check_resolved(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        if addrs.is_empty() {
            return Err(Refused::Unresolvable);
        }
        if addrs.iter().any(|a| !self.allows(a.ip())) {
            return Err(Refused::Forbidden);
        }
        Ok(addrs)
    }
}

/// Why [`Policy::check_raw`] refused a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Not an http(s) URL with a host.
    #[error("must be an http or https URL with a host")]
    BadUrl,
    #[error(transparent)]
    Refused(Refused),
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// True for every address a user-supplied URL must not reach.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    const NETS: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),          // "this network", includes 0.0.0.0
        ([10, 0, 0, 0], 8),         // private
        ([100, 64, 0, 0], 10),      // CGNAT
        ([127, 0, 0, 0], 8),        // loopback
        ([169, 254, 0, 0], 16),     // link-local, includes 169.254.169.254 (metadata)
        ([172, 16, 0, 0], 12),      // private
        ([192, 0, 0, 0], 24),       // IETF protocol assignments
        ([192, 168, 0, 0], 16),     // private
        ([198, 18, 0, 0], 15),      // benchmarking
        ([224, 0, 0, 0], 4),        // multicast
        ([240, 0, 0, 0], 4),        // reserved, includes 255.255.255.255 (broadcast)
        ([192, 88, 99, 0], 24),     // 6to4 relay anycast
        ([100, 100, 100, 200], 32), // Alibaba Cloud metadata (inside CGNAT anyway)
    ];
    NETS.iter().any(|(n, p)| in_v4(ip, *n, *p))
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    // Addresses that carry an IPv4 address are judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let s = ip.segments();
    // IPv4-compatible ::a.b.c.d (deprecated) — also covers :: and ::1.
    if s[..6] == [0; 6] {
        return true;
    }
    // NAT64 64:ff9b::/96 and 64:ff9b:1::/48: the embedded IPv4 address decides.
    if s[0] == 0x64 && s[1] == 0xff9b {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return s[2..6] != [0; 4] || is_forbidden_v4(v4);
    }
    // 6to4 2002:AABB:CCDD::/48: the embedded IPv4 address decides.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_forbidden_v4(v4);
    }
    let first = s[0];
    (first & 0xfe00) == 0xfc00 // unique local fc00::/7, includes fd00:ec2::254 (metadata)
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (first & 0xff00) == 0xff00 // multicast ff00::/8
        || (first == 0x2001 && s[1] == 0) // Teredo 2001::/32 tunnels to arbitrary IPv4
        || (first == 0x2001 && s[1] == 0x0db8) // documentation
        || first == 0x0100 && s[1..4] == [0; 3] // discard-only 100::/64
}

/// A DNS resolver that hands reqwest only addresses the policy allows.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<Policy>,
}

/// The error a [`GuardedResolver`] returns; find it in a reqwest error with
/// [`is_forbidden`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GuardError(pub Refused);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(a) => a.collect(),
                Err(_) => {
                    return Err(Box::new(GuardError(Refused::Unresolvable))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
            };
            let allowed = policy
                .check_resolved(addrs)
                .map_err(|r| Box::new(GuardError(r)) as Box<dyn std::error::Error + Send + Sync>)?;
            let it: Addrs = Box::new(allowed.into_iter());
            Ok(it)
        })
    }
}

/// A client whose connections obey `policy`: guarded DNS, no proxies, no automatic
/// redirects. `builder` carries the caller's timeouts and user agent.
pub fn client(builder: reqwest::ClientBuilder, policy: Policy) -> reqwest::Result<reqwest::Client> {
    builder
        .dns_resolver(Arc::new(GuardedResolver {
            policy: Arc::new(policy),
        }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The guard's verdict hidden in a reqwest error (from the resolver), if any.
pub fn is_forbidden(e: &reqwest::Error) -> Option<Refused> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(g) = s.downcast_ref::<GuardError>() {
            return Some(g.0.clone());
        }
        src = s.source();
    }
    None
}

/// Why a guarded fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Refused(Refused),
    #[error("timed out")]
    Timeout,
    #[error("could not connect or read: {0}")]
    Transport(String),
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> Self {
        if let Some(r) = is_forbidden(&e) {
            FetchError::Refused(r)
        } else if e.is_timeout() {
            FetchError::Timeout
        } else {
            // without the URL: it may carry credentials or a signature
            FetchError::Transport(e.without_url().to_string())
        }
    }
}

/// GET `url` through `client` (made by [`client`] with the same `policy`), following
/// up to [`MAX_REDIRECTS`] redirects, each hop checked. Returns the first non-redirect
/// response, whatever its status.
pub async fn get(
    client: &reqwest::Client,
    policy: &Policy,
    url: Url,
    timeout: Duration,
) -> Result<reqwest::Response, FetchError> {
    let mut url = url;
    for _ in 0..=MAX_REDIRECTS {
        policy.check_url(&url).map_err(FetchError::Refused)?;
        let resp = client.get(url.clone()).timeout(timeout).send().await?;
        if !resp.status().is_redirection() {
            return Ok(resp);
        }
        let next = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok())
            .ok_or(FetchError::Refused(Refused::BadRedirect))?;
        url = next;
    }
    Err(FetchError::Refused(Refused::TooManyRedirects))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_addresses() {
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::",
            "2001::1",
        ] {
            assert!(is_forbidden_ip(ip(a)), "{a} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!is_forbidden_ip(ip(a)), "{a} must be allowed");
        }
    }

    #[test]
    fn url_spellings_of_loopback_are_caught() {
        let p = Policy::default();
        for u in [
            "http://127.0.0.1:8080/x",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://0.0.0.0/",
            "http://0/",
            "https://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
        ] {
            let url = Url::parse(u).unwrap();
            assert_eq!(p.check_url(&url), Err(Refused::Forbidden), "{u}");
        }
        assert_eq!(
            p.check_url(&Url::parse("ftp://example.com/").unwrap()),
            Err(Refused::Scheme)
        );
        assert_eq!(
            p.check_url(&Url::parse("file:///etc/passwd").unwrap()),
            Err(Refused::Scheme)
        );
        // names are left to the resolver
        assert_eq!(
            p.check_url(&Url::parse("https://example.com/").unwrap()),
            Ok(())
        );
    }

    #[test]
    fn resolver_refuses_any_forbidden_answer() {
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let p = Policy::default();
        assert_eq!(
            p.check_resolved(vec![sa("93.184.216.34:80")]),
            Ok(vec![sa("93.184.216.34:80")])
        );
        for bad in [
            "127.0.0.1:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "0.0.0.0:80",
            "169.254.169.254:80",
            "10.0.0.1:80",
        ] {
            assert_eq!(
                p.check_resolved(vec![sa(bad)]),
                Err(Refused::Forbidden),
                "{bad}"
            );
            // a rebinding answer: one public, one forbidden address
            assert_eq!(
                p.check_resolved(vec![sa("93.184.216.34:80"), sa(bad)]),
                Err(Refused::Forbidden),
                "{bad}"
            );
        }
        assert_eq!(p.check_resolved(vec![]), Err(Refused::Unresolvable));
        let open = Policy::new(true, vec![]);
        assert!(open.check_resolved(vec![sa("127.0.0.1:80")]).is_ok());
    }

    #[test]
    fn check_raw_classifies() {
        let p = Policy::default();
        assert_eq!(p.check_raw("ftp://x/"), Err(CheckError::BadUrl));
        assert_eq!(p.check_raw("not a url"), Err(CheckError::BadUrl));
        assert_eq!(p.check_raw("http:/x"), Ok(Url::parse("http://x/").unwrap()));
        assert_eq!(p.check_raw("mailto:a@b"), Err(CheckError::BadUrl));
        assert_eq!(
            p.check_raw("http://127.0.0.1:9/x"),
            Err(CheckError::Refused(Refused::Forbidden))
        );
        assert!(Policy::new(true, vec![])
            .check_raw("http://127.0.0.1:9/x")
            .is_ok());
        assert!(p.check_raw("https://example.com/hook").is_ok());
    }

    #[test]
    fn allow_private_and_allow_list() {
        let open = Policy::new(true, vec![]);
        assert!(open.allows(ip("127.0.0.1")));
        let one = Policy::new(false, vec![ip("127.0.0.1")]);
        assert!(one.allows(ip("127.0.0.1")));
        assert!(one.allows(ip("::ffff:127.0.0.1")));
        assert!(!one.allows(ip("127.0.0.2")));
        assert!(!one.allows(ip("::1")));
    }

    /// A local server redirecting to another loopback address: with only the first
    /// address allowed, the hop is refused before any connection to the second.
    #[tokio::test]
    async fn redirect_hops_are_checked_and_names_resolved_through_the_guard() {
        use axum::response::Redirect;
        use axum::routing::get as route_get;
        let app = axum::Router::new()
            .route("/ok", route_get(|| async { "fine" }))
            .route(
                "/to-loopback",
                route_get(|| async { Redirect::temporary("http://127.0.0.2:9/secret") }),
            )
            .route("/to-ok", route_get(|| async { Redirect::permanent("/ok") }))
            .route(
                "/loop",
                route_get(|| async { Redirect::temporary("/loop") }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(l, app).await });

        let policy = Policy::new(false, vec![ip("127.0.0.1")]);
        let c = client(reqwest::Client::builder(), policy.clone()).unwrap();
        let t = Duration::from_secs(5);
        let base = format!("http://127.0.0.1:{port}");
        let r = get(
            &c,
            &policy,
            Url::parse(&format!("{base}/to-ok")).unwrap(),
            t,
        )
        .await
        .unwrap();
        assert_eq!(r.text().await.unwrap(), "fine");
        let e = get(
            &c,
            &policy,
            Url::parse(&format!("{base}/to-loopback")).unwrap(),
            t,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, FetchError::Refused(Refused::Forbidden)),
            "{e:?}"
        );
        let e = get(&c, &policy, Url::parse(&format!("{base}/loop")).unwrap(), t)
            .await
            .unwrap_err();
        assert!(
            matches!(e, FetchError::Refused(Refused::TooManyRedirects)),
            "{e:?}"
        );
        // a name resolving to loopback is refused by the resolver
        let strict = Policy::default();
        let c = client(reqwest::Client::builder(), strict.clone()).unwrap();
        let e = get(
            &c,
            &strict,
            Url::parse(&format!("http://localhost:{port}/ok")).unwrap(),
            t,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, FetchError::Refused(Refused::Forbidden)),
            "{e:?}"
        );
    }
}
