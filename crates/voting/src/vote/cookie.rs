//! The `voter_id` cookie: the voter id and a MAC over it, so a cookie we did not issue is
//! refused rather than letting anyone vote as any voter id they pick.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use voting_core::VoterId;

pub const COOKIE_NAME: &str = "voter_id";

/// A year: a voter stays the same voter across visits.
const MAX_AGE_SECS: u64 = 365 * 24 * 3600;

/// The key the cookies are signed with. Every vote replica must have the same one
/// (`COOKIE_SECRET`), or a voter served by one is refused by another.
#[derive(Clone)]
pub struct CookieKey(Vec<u8>);

impl CookieKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    pub fn random() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }

    fn mac(&self, voter: &VoterId) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(voter.as_bytes());
        mac
    }

    /// `<voter hex>.<first 128 bits of HMAC-SHA256 hex>`.
    pub fn sign(&self, voter: &VoterId) -> String {
        let tag = self.mac(voter).finalize().into_bytes();
        format!("{voter}.{}", hex::encode(&tag[..16]))
    }

    /// The voter of a cookie value, if we issued it.
    pub fn verify(&self, value: &str) -> Result<VoterId, BadCookie> {
        let (voter, tag) = value.split_once('.').ok_or(BadCookie::Malformed)?;
        let voter: VoterId = voter.parse().map_err(|_| BadCookie::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| BadCookie::Malformed)?;
        if tag.len() != 16 {
            return Err(BadCookie::Malformed);
        }
        // Constant-time comparison of the truncated tag.
        self.mac(&voter).verify_truncated_left(&tag).map_err(|_| BadCookie::Forged)?;
        Ok(voter)
    }
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadCookie {
    #[error("the voter_id cookie is malformed")]
    Malformed,
    #[error("the voter_id cookie was not issued by this service")]
    Forged,
}

/// The raw `voter_id` cookie value of a request, if it sent one.
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The `Set-Cookie` value for a new voter.
pub fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={value}; Path=/; Max-Age={MAX_AGE_SECS}; HttpOnly; SameSite=Lax{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_cookie_verifies_and_a_tampered_one_does_not() {
        let key = CookieKey::random();
        let voter = VoterId::random();
        let cookie = key.sign(&voter);
        assert_eq!(key.verify(&cookie), Ok(voter));

        let other = VoterId::random();
        let forged = format!("{other}.{}", cookie.split_once('.').unwrap().1);
        assert_eq!(key.verify(&forged), Err(BadCookie::Forged));
        assert_eq!(CookieKey::random().verify(&cookie), Err(BadCookie::Forged));
        for malformed in ["", "abc", "abc.def", &format!("{voter}"), &format!("{voter}.zz")] {
            assert_eq!(key.verify(malformed), Err(BadCookie::Malformed), "{malformed}");
        }
    }

    #[test]
    fn the_cookie_is_http_only_and_secure_over_https() {
        let cookie = set_cookie("v", true);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.ends_with("Secure"));
        assert!(!set_cookie("v", false).contains("Secure"));
    }
}
