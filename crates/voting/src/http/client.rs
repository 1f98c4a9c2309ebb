//! Who a request comes from: the connection's peer, or, when the peer is a proxy we trust,
//! the client that proxy reports in `X-Forwarded-For`. Limits are keyed by [`ClientKey`]: an
//! IPv4 address, or an IPv6 /64 (one subscriber usually holds a whole /64, so limiting single
//! IPv6 addresses would limit nothing).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// A list of networks, from `TRUSTED_PROXIES`-style settings: comma-separated CIDRs or bare
/// addresses (`10.0.0.0/8,192.0.2.7,::1`); empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(Arc<[IpNet]>);

impl Cidrs {
    /// `127.0.0.0/8,::1`: this machine, the default for trusted proxies and exempt clients.
    pub fn loopback() -> Self {
        "127.0.0.0/8,::1".parse().expect("valid CIDRs")
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl FromStr for Cidrs {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("`{item}` is not an address or a CIDR such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|nets| Self(nets.into()))
    }
}

impl fmt::Display for Cidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a dual-stack socket reports IPv4
/// peers) is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// At most this many `X-Forwarded-For` hops are looked at: a real chain has a few.
const MAX_FORWARDED_HOPS: usize = 16;

/// The client of a request that arrived over a connection from `peer`.
///
/// A peer that is not a trusted proxy is the client, whatever headers it sends. A trusted
/// proxy's `X-Forwarded-For` is read from the right (the hop the proxy itself added) leftwards,
/// past further trusted proxies; the first address that is not one is the client. Whatever a
/// client writes into the header ends up to the left of that and is never reached.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &Cidrs) -> IpAddr {
    let peer = canonical(peer);
    if !trusted_proxies.contains(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
        let Ok(ip) = hop.trim().parse::<IpAddr>().map(canonical) else {
            // Not an address: nothing to its left can be vouched for.
            return client;
        };
        client = ip;
        if !trusted_proxies.contains(ip) {
            return ip;
        }
    }
    client
}

/// What limits are counted per: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4.to_bits()),
            IpAddr::V6(v6) => Self::V6Prefix((v6.to_bits() >> 64) as u64),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4(bits) => write!(f, "{}", Ipv4Addr::from_bits(bits)),
            Self::V6Prefix(prefix) => write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(prefix) << 64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted: Cidrs = "10.0.0.0/8".parse().unwrap();
        assert_eq!(client_ip(ip("198.51.100.7"), &forwarded(&["203.0.113.1"]), &trusted), ip("198.51.100.7"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_a_forged_hop_is_never_reached() {
        let trusted: Cidrs = "10.0.0.0/8,127.0.0.1".parse().unwrap();
        // The client forged the first hop; the edge proxy appended the real address; an inner
        // trusted proxy appended the edge's.
        let headers = forwarded(&["203.0.113.1, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &headers, &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(ip("10.9.9.9"), &forwarded(&[]), &trusted), ip("10.9.9.9"));
        assert_eq!(client_ip(ip("10.9.9.9"), &forwarded(&["junk"]), &trusted), ip("10.9.9.9"));
        assert_eq!(client_ip(ip("10.9.9.9"), &forwarded(&["junk, 10.1.1.1"]), &trusted), ip("10.1.1.1"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_by_the_ipv4_address() {
        let a = ClientKey::from(ip("2001:db8:1:2::1"));
        let b = ClientKey::from(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        let c = ClientKey::from(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(ClientKey::from(ip("::ffff:192.0.2.1")), ClientKey::from(ip("192.0.2.1")));
    }

    #[test]
    fn cidr_lists_parse_bare_addresses_and_refuse_junk() {
        let cidrs: Cidrs = " 10.0.0.0/8 , 192.0.2.7,::1 ".parse().unwrap();
        assert!(
            cidrs.contains(ip("10.200.0.1")) && cidrs.contains(ip("192.0.2.7")) && cidrs.contains(ip("::1"))
        );
        assert!(!cidrs.contains(ip("192.0.2.8")));
        assert!(cidrs.contains(ip("::ffff:10.0.0.1")));
        assert_eq!("".parse::<Cidrs>().unwrap(), Cidrs::default());
        assert!("10.0.0.0/33".parse::<Cidrs>().is_err() && "example.com".parse::<Cidrs>().is_err());
    }
}
