//! The client address: the TCP peer, unless the peer is a configured trusted proxy, in which case
//! the right-most untrusted address of `X-Forwarded-For` (or a valid `X-Real-IP`) is used.
//! Header values are parsed as IP addresses, so a forged header can never inject text.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer?);
        if self.0.is_empty() || !self.trusts(peer) {
            return Some(peer);
        }
        // Walk X-Forwarded-For from the nearest hop backwards; the first address not belonging
        // to a trusted proxy is the client. Anything unparsable stops the walk.
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(value) = value.to_str() else {
                return Some(peer);
            };
            hops.extend(value.split(',').map(str::trim));
        }
        let mut candidate = None;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    let ip = canonical(ip);
                    candidate = Some(ip);
                    if !self.trusts(ip) {
                        return Some(ip);
                    }
                }
                Err(_) => break,
            }
        }
        if let Some(ip) = candidate {
            return Some(ip);
        }
        headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .or(Some(peer))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let proxies = TrustedProxies::default();
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(proxies.client_ip(Some("9.9.9.9".parse().unwrap()), &h), Some("9.9.9.9".parse().unwrap()));
    }

    #[test]
    fn trusted_proxy_yields_rightmost_untrusted_hop() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer = Some("10.0.0.5".parse().unwrap());
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        assert_eq!(proxies.client_ip(peer, &h), Some("1.2.3.4".parse().unwrap()));
        let h = headers(&[("x-real-ip", "1.2.3.4")]);
        assert_eq!(proxies.client_ip(peer, &h), Some("1.2.3.4".parse().unwrap()));
        let h = headers(&[("x-forwarded-for", "\"><script>"), ("x-real-ip", "not an ip")]);
        assert_eq!(proxies.client_ip(peer, &h), peer);
    }
}
