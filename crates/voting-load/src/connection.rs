//! How the load generator reaches the services: extra trusted roots and pinned addresses,
//! shared by the vote client and the result checker so both see the same endpoints.
//!
//! A host name may be pinned to several addresses (one per edge node, as several DNS address
//! records would give): a new connection tries them in order, each for
//! [`CONNECT_TIMEOUT_PER_ADDRESS`], as browsers do, so a dead edge node costs a client one
//! connect timeout, not its vote.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// How long a connection attempt waits for one of several addresses of a host before it tries
/// the next.
pub const CONNECT_TIMEOUT_PER_ADDRESS: Duration = Duration::from_secs(1);

/// How long a connection attempt to a host with one address waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Trusted besides the public roots: a private or test CA (a local ACME server's root).
    roots: Vec<reqwest::Certificate>,
    /// Host names sent to fixed addresses instead of DNS (curl's `--resolve`), in the order
    /// they are tried.
    resolve: Vec<(String, Vec<IpAddr>)>,
}

impl Connection {
    /// `resolve`: host names and addresses; a host given more than once gets all its addresses.
    pub fn new(ca_certs: &[PathBuf], resolve: Vec<(String, Vec<IpAddr>)>) -> anyhow::Result<Self> {
        let mut pinned: Vec<(String, Vec<IpAddr>)> = Vec::new();
        for (host, addrs) in resolve {
            match pinned.iter_mut().find(|(known, _)| *known == host) {
                Some((_, known)) => known.extend(addrs),
                None => pinned.push((host, addrs)),
            }
        }
        let roots = ca_certs
            .iter()
            .map(|path| {
                let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { roots, resolve: pinned })
    }

    /// How long a new connection may take to open: [`CONNECT_TIMEOUT_PER_ADDRESS`] for each
    /// address of the host with the most (the client divides it evenly among a host's
    /// addresses), else 3 s; never longer than a whole request may take.
    pub fn connect_timeout(&self, request_timeout: Duration) -> Duration {
        let most_addresses = self.resolve.iter().map(|(_, addrs)| addrs.len()).max().unwrap_or(1);
        let timeout = match most_addresses {
            0 | 1 => CONNECT_TIMEOUT,
            n => CONNECT_TIMEOUT_PER_ADDRESS * n as u32,
        };
        timeout.min(request_timeout)
    }

    /// A client builder with these roots and addresses; callers add their own timeouts.
    pub fn client(&self) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder();
        for root in &self.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        for (host, ips) in &self.resolve {
            // The port is ignored: the URL's (or the scheme's) port is used.
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
            builder = builder.resolve_to_addrs(host, &addrs);
        }
        builder
    }
}

/// Parses `HOST:ADDR[,ADDR...]` (`vote.voting.test:10.89.0.50,10.89.0.51`).
pub fn parse_resolve(text: &str) -> Result<(String, Vec<IpAddr>), String> {
    let (host, addrs) =
        text.split_once(':').ok_or_else(|| format!("`{text}`: expected HOST:ADDR[,ADDR...]"))?;
    if host.is_empty() {
        return Err(format!("`{text}`: the host name is missing"));
    }
    let ips = addrs
        .split(',')
        .map(|addr| {
            let addr = addr.trim().trim_start_matches('[').trim_end_matches(']');
            addr.parse().map_err(|_| format!("`{addr}` is not an IP address"))
        })
        .collect::<Result<_, _>>()?;
    Ok((host.to_owned(), ips))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_pins_a_host_to_its_addresses() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_resolve("vote.voting.test:10.89.0.50").unwrap(),
            ("vote.voting.test".to_owned(), vec![ip("10.89.0.50")])
        );
        assert_eq!(parse_resolve("h:10.0.0.1,[::1]").unwrap().1, vec![ip("10.0.0.1"), ip("::1")]);
        assert_eq!(parse_resolve("h:[::1]").unwrap().1, vec![ip("::1")]);
        assert!(parse_resolve("vote.voting.test").is_err());
        assert!(parse_resolve(":10.0.0.1").is_err());
        assert!(parse_resolve("h:somewhere").is_err());
        assert!(parse_resolve("h:10.0.0.1,").is_err());
    }

    #[test]
    fn a_host_given_twice_gets_both_addresses_and_each_gets_its_own_connect_timeout() {
        let pinned = vec![parse_resolve("h:10.0.0.1").unwrap(), parse_resolve("h:10.0.0.2").unwrap()];
        let connection = Connection::new(&[], pinned).unwrap();
        assert_eq!(
            connection.resolve,
            vec![("h".to_owned(), vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()])]
        );
        assert_eq!(connection.connect_timeout(Duration::from_secs(5)), 2 * CONNECT_TIMEOUT_PER_ADDRESS);
        assert_eq!(Connection::default().connect_timeout(Duration::from_secs(5)), CONNECT_TIMEOUT);
        assert_eq!(Connection::default().connect_timeout(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
