//! The scheme and host a client reached the gateway by, for absolute links (FHIR bundles,
//! the CapabilityStatement) and the session cookie's `Secure` flag.
//!
//! actix-web's `ConnectionInfo` believes `Forwarded`, `X-Forwarded-Host` and
//! `X-Forwarded-Proto` from anyone, so any client could make the gateway announce
//! `https://evil.example/...` or drop `Secure` from a cookie. [`origin`] believes them only
//! when the TCP peer is one of `http.trusted_proxies`; from anyone else the scheme is the
//! listener's own and the host the request's `Host` header (which a client can set only for
//! its own request, as it chose where to connect). Every use goes through [`origin`].

use std::net::IpAddr;
use std::str::FromStr;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use serde::Deserialize;

/// An address block: an IP address and a prefix length (`10.0.0.0/8`, `::1/128`; a bare
/// address is the block of that one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a.get(..whole) != b.get(..whole) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(whole), b.get(whole)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IP address or CIDR block (like 10.0.0.0/8)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whom to believe about forwarding, and the listener's own scheme (app data).
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    pub trusted_proxies: Vec<IpNet>,
    /// `https` when the listener terminates TLS itself.
    pub tls: bool,
}

impl Forwarding {
    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted_proxies.iter().any(|n| n.contains(ip)))
    }
}

/// How the client reached us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
}

impl Origin {
    /// `{scheme}://{host}`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    pub fn is_https(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("https")
    }
}

/// The scheme and host the client reached us by (see the module docs).
pub fn origin(req: &HttpRequest) -> Origin {
    let default = Forwarding::default();
    let forwarding = req
        .app_data::<web::Data<Forwarding>>()
        .map_or(&default, |f| f.get_ref());
    if forwarding.trusts(req.peer_addr().map(|a| a.ip())) {
        let info = req.connection_info();
        return Origin {
            scheme: info.scheme().to_owned(),
            host: info.host().to_owned(),
        };
    }
    let scheme = if forwarding.tls { "https" } else { "http" };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| req.app_config().host().to_owned());
    Origin {
        scheme: scheme.to_owned(),
        host,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use actix_web::test::TestRequest;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("192.168.0.0/23").contains(ip("192.168.1.255")));
        assert!(!net("192.168.0.0/23").contains(ip("192.168.2.0")));
        assert!(net("::1").contains(ip("::1")));
        assert!(!net("::1").contains(ip("127.0.0.1")));
        assert!(
            net("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
            "v4-mapped"
        );
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "x/8", "10.0.0.0/"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    fn forged(peer: &str) -> TestRequest {
        TestRequest::get()
            .uri("/x")
            .peer_addr(peer.parse().unwrap())
            .insert_header((header::HOST, "gw.local:8080"))
            .insert_header(("X-Forwarded-Proto", "https"))
            .insert_header(("X-Forwarded-Host", "evil.example"))
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let plain = Origin {
            scheme: "http".into(),
            host: "gw.local:8080".into(),
        };
        // No configuration at all: never trusted.
        assert_eq!(origin(&forged("127.0.0.1:5000").to_http_request()), plain);
        let cfg = Forwarding {
            trusted_proxies: vec![net("10.0.0.0/8")],
            tls: false,
        };
        let req = forged("127.0.0.1:5000")
            .app_data(web::Data::new(cfg.clone()))
            .to_http_request();
        assert_eq!(origin(&req), plain);
        let req = forged("10.1.2.3:5000")
            .app_data(web::Data::new(cfg))
            .to_http_request();
        assert_eq!(
            origin(&req),
            Origin {
                scheme: "https".into(),
                host: "evil.example".into()
            }
        );
        let tls = Forwarding {
            trusted_proxies: Vec::new(),
            tls: true,
        };
        let req = TestRequest::get()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header((header::HOST, "gw.local"))
            .insert_header(("X-Forwarded-Proto", "http"))
            .app_data(web::Data::new(tls))
            .to_http_request();
        assert!(origin(&req).is_https(), "the TLS listener's own scheme");
    }
}
