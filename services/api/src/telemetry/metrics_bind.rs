//! Where the metrics listener binds. A fixed `PR_METRICS_ADDR` suits one process; scaled
//! replicas get their addresses from Docker, so they name the internal metrics network instead
//! (`PR_METRICS_INTERFACE_NET`) and bind their own address inside it, never a wildcard that
//! would also listen on the edge network.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use ipnet::IpNet;

/// The address to bind: `configured` as is without a network, else this host's one interface
/// address inside `net` with `configured`'s port.
pub fn metrics_bind_addr(configured: SocketAddr, net: Option<&IpNet>) -> anyhow::Result<SocketAddr> {
    let Some(net) = net else { return Ok(configured) };
    let interfaces = if_addrs::get_if_addrs().context("listing the network interfaces (PR_METRICS_INTERFACE_NET)")?;
    let ip = select(net, interfaces.iter().map(|i| (i.name.as_str(), i.ip())))
        .map_err(|e| anyhow::anyhow!("PR_METRICS_INTERFACE_NET={net}: {e}"))?;
    Ok(SocketAddr::new(ip, configured.port()))
}

/// The one address of `interfaces` (name, address) inside `net`; an error naming what was
/// found when none or several are.
pub fn select<'a>(net: &IpNet, interfaces: impl IntoIterator<Item = (&'a str, IpAddr)>) -> Result<IpAddr, String> {
    let all: Vec<(&str, IpAddr)> = interfaces.into_iter().collect();
    let inside: Vec<&(&str, IpAddr)> = all.iter().filter(|(_, ip)| net.contains(ip)).collect();
    let list = |items: &mut dyn Iterator<Item = &(&str, IpAddr)>| {
        items.map(|(name, ip)| format!("{name} {ip}")).collect::<Vec<_>>().join(", ")
    };
    match inside.as_slice() {
        [(_, ip)] => Ok(*ip),
        [] => Err(format!(
            "no interface address is in this network (this host has: {}); attach the container to the \
             metrics network or correct the CIDR",
            list(&mut all.iter())
        )),
        several => Err(format!(
            "several interface addresses are in this network ({}); name a narrower CIDR or set \
             PR_METRICS_ADDR to one of them and leave PR_METRICS_INTERFACE_NET unset",
            list(&mut several.iter().copied())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    const HOST: [(&str, IpAddr); 4] = [
        ("lo", IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1))),
        ("eth0", IpAddr::V4(std::net::Ipv4Addr::new(172, 30, 8, 130))),
        ("eth1", IpAddr::V4(std::net::Ipv4Addr::new(172, 30, 9, 131))),
        ("eth1", IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9))),
    ];

    #[test]
    fn picks_the_one_address_inside_the_network() {
        assert_eq!(select(&net("172.30.9.0/24"), HOST), Ok("172.30.9.131".parse().unwrap()));
        assert_eq!(select(&net("127.0.0.0/8"), HOST), Ok("127.0.0.1".parse().unwrap()));
        assert_eq!(select(&net("fd00::/64"), HOST), Ok("fd00::9".parse().unwrap()));
    }

    #[test]
    fn no_address_inside_is_an_error_listing_what_the_host_has() {
        let err = select(&net("10.0.0.0/8"), HOST).unwrap_err();
        assert!(err.starts_with("no interface address"), "{err}");
        assert!(err.contains("eth0 172.30.8.130") && err.contains("eth1 172.30.9.131"), "{err}");
    }

    #[test]
    fn several_addresses_inside_are_an_error_naming_them() {
        let err = select(&net("172.30.0.0/16"), HOST).unwrap_err();
        assert!(err.starts_with("several interface addresses"), "{err}");
        assert!(err.contains("eth0 172.30.8.130, eth1 172.30.9.131"), "{err}");
        assert!(!err.contains("127.0.0.1"), "{err}");
    }

    #[test]
    fn without_a_network_the_configured_address_stands() {
        let configured: SocketAddr = "0.0.0.0:9100".parse().unwrap();
        assert_eq!(metrics_bind_addr(configured, None).unwrap(), configured);
    }

    #[test]
    fn the_port_comes_from_the_configured_address() {
        let bound = metrics_bind_addr("0.0.0.0:9123".parse().unwrap(), Some(&net("127.0.0.0/8"))).unwrap();
        assert_eq!(bound, "127.0.0.1:9123".parse().unwrap());
    }
}
