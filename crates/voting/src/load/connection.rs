//! How the load generator reaches the services: extra trusted roots and pinned addresses,
//! shared by the vote client and the result checker so both see the same endpoints.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Trusted besides the public roots: a private or test CA (a local ACME server's root).
    roots: Vec<reqwest::Certificate>,
    /// Host names sent to a fixed address instead of DNS (curl's `--resolve`).
    resolve: Vec<(String, IpAddr)>,
}

impl Connection {
    pub fn new(ca_certs: &[PathBuf], resolve: Vec<(String, IpAddr)>) -> anyhow::Result<Self> {
        let roots = ca_certs
            .iter()
            .map(|path| {
                let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { roots, resolve })
    }

    /// A client builder with these roots and addresses; callers add their own timeouts.
    pub fn client(&self) -> reqwest::ClientBuilder {
        let mut builder = reqwest::Client::builder();
        for root in &self.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        for (host, ip) in &self.resolve {
            // The port is ignored: the URL's (or the scheme's) port is used.
            builder = builder.resolve(host, SocketAddr::new(*ip, 0));
        }
        builder
    }
}

/// Parses `HOST:ADDR` (`vote.voting.test:10.89.0.50`).
pub fn parse_resolve(text: &str) -> Result<(String, IpAddr), String> {
    let (host, addr) = text.split_once(':').ok_or_else(|| format!("`{text}`: expected HOST:ADDR"))?;
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let ip = addr.parse().map_err(|_| format!("`{addr}` is not an IP address"))?;
    if host.is_empty() {
        return Err(format!("`{text}`: the host name is missing"));
    }
    Ok((host.to_owned(), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_pins_a_host_to_an_address() {
        assert_eq!(
            parse_resolve("vote.voting.test:10.89.0.50").unwrap(),
            ("vote.voting.test".to_owned(), "10.89.0.50".parse().unwrap())
        );
        assert_eq!(parse_resolve("h:[::1]").unwrap().1, "::1".parse::<IpAddr>().unwrap());
        assert!(parse_resolve("vote.voting.test").is_err());
        assert!(parse_resolve(":10.0.0.1").is_err());
        assert!(parse_resolve("h:somewhere").is_err());
    }
}
