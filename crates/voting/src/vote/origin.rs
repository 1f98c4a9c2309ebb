//! Refuses votes posted by other sites' pages. Without this any web page can make its
//! visitors vote (a form that posts to us and submits itself); the `SameSite=Lax` cookie does
//! not stop it, because a voter without a cookie is simply a new voter.
//!
//! Browsers say where a request comes from: `Sec-Fetch-Site`, and `Origin` on every POST
//! (the pages set `Referrer-Policy: same-origin`, under which a same-origin post carries its
//! real origin). A post is refused when `Sec-Fetch-Site` says `cross-site`, or when its
//! `Origin` (else its `Referer`) is neither the request's own host nor one of
//! `PUBLIC_ORIGINS`. Clients that send neither header (curl, ab, `voting load`) are not
//! browsers acting for someone else, and are accepted.

use std::str::FromStr;
use std::sync::Arc;

use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderMap, Uri, header};

use super::error::printable;

/// Origins besides the request's own host whose pages may post votes (`PUBLIC_ORIGINS`):
/// `https://vote.example.com,https://example.com`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicOrigins(Arc<[Origin]>);

impl FromStr for PublicOrigins {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let origins = list.split(',').map(str::trim).filter(|o| !o.is_empty()).map(|item| {
            Origin::parse(item)
                .ok_or_else(|| format!("`{item}` is not an origin such as https://vote.example.com"))
        });
        Ok(Self(origins.collect::<Result<Vec<_>, _>>()?.into()))
    }
}

/// A scheme, host and port, compared the way browsers do: case-insensitively, a default
/// port the same as none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// From an `Origin` value or any absolute URL (a `Referer`).
    fn parse(value: &str) -> Option<Self> {
        let uri: Uri = value.parse().ok()?;
        let https = match uri.scheme()? {
            s if *s == Scheme::HTTPS => true,
            s if *s == Scheme::HTTP => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        Some(Self::of(https, authority))
    }

    fn of(https: bool, authority: &Authority) -> Self {
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Self { https, host: authority.host().to_ascii_lowercase(), port }
    }

    /// Whether this is the origin of a request to `host` (its `Host` header), over this
    /// origin's own scheme: a proxy in front may have ended TLS, so the scheme the request
    /// came over is not known here, and a page on the same host and port is ours either way.
    fn is_host(&self, host: &str) -> bool {
        Authority::from_str(host).is_ok_and(|host| *self == Self::of(self.https, &host))
    }
}

/// Why a post was refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossSite {
    #[error("votes are accepted only from the pages of this site (the browser says this post is cross-site)")]
    FetchMetadata,
    #[error("votes are accepted only from the pages of this site (this post comes from `{0}`)")]
    Foreign(String),
}

/// Whether a state-changing request may proceed.
pub fn check(headers: &HeaderMap, public: &PublicOrigins) -> Result<(), CrossSite> {
    let text = |name| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if text("sec-fetch-site").is_some_and(|site| site.trim().eq_ignore_ascii_case("cross-site")) {
        return Err(CrossSite::FetchMetadata);
    }
    let Some(claimed) = text(header::ORIGIN.as_str()).or_else(|| text(header::REFERER.as_str())) else {
        return Ok(());
    };
    // `Origin: null` (a sandboxed frame, a `data:` page, a redirect) parses as nothing.
    let origin = Origin::parse(claimed.trim());
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let allowed = origin
        .is_some_and(|origin| host.is_some_and(|host| origin.is_host(host)) || public.0.contains(&origin));
    if allowed { Ok(()) } else { Err(CrossSite::Foreign(printable(&claimed, 80))) }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn request(host: &str, pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn own_origin_and_header_less_clients_pass() {
        let none = PublicOrigins::default();
        assert_eq!(check(&request("localhost:8080", &[]), &none), Ok(()));
        assert_eq!(check(&request("localhost:8080", &[("origin", "http://localhost:8080")]), &none), Ok(()));
        assert_eq!(check(&request("Vote.Example", &[("origin", "https://vote.example")]), &none), Ok(()));
        assert_eq!(check(&request("vote.example:443", &[("origin", "https://vote.example")]), &none), Ok(()));
        let referer = [("referer", "http://localhost:8080/?x=1"), ("sec-fetch-site", "same-origin")];
        assert_eq!(check(&request("localhost:8080", &referer), &none), Ok(()));
    }

    #[test]
    fn other_sites_null_origins_and_cross_site_fetches_are_refused() {
        let none = PublicOrigins::default();
        for pairs in [
            vec![("origin", "https://evil.example")],
            vec![("origin", "null")],
            vec![("origin", "http://localhost:8081")],
            vec![("referer", "https://evil.example/page")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "cross-site"), ("origin", "http://localhost:8080")],
        ] {
            assert!(check(&request("localhost:8080", &pairs), &none).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn public_origins_are_allowed_too() {
        let public: PublicOrigins = "https://example.com, https://www.example.com:8443".parse().unwrap();
        assert_eq!(
            check(&request("vote.internal:8080", &[("origin", "https://EXAMPLE.com:443")]), &public),
            Ok(())
        );
        assert_eq!(
            check(&request("vote.internal:8080", &[("origin", "https://www.example.com:8443")]), &public),
            Ok(())
        );
        assert!(check(&request("vote.internal:8080", &[("origin", "http://example.com")]), &public).is_err());
        assert!("example.com".parse::<PublicOrigins>().is_err());
    }
}
