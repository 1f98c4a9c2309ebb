//! The `voter_id` cookie: the voter id and a MAC over it, so a cookie we did not issue is
//! refused rather than letting anyone vote as any voter id they pick.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use voting_core::VoterId;

pub const COOKIE_NAME: &str = "voter_id";

/// Entropy a cookie key must have: as much as the HMAC-SHA256 it keys.
pub const MIN_SECRET_BYTES: usize = 32;

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

    /// A key from a configured secret (`COOKIE_SECRET`), which must carry at least
    /// [`MIN_SECRET_BYTES`] bytes of entropy: 64 hex digits, 43 base64 characters, or, in
    /// any other form, 32 bytes. Its bytes are the key as given (not decoded), so a secret
    /// keeps signing the same cookies whatever form it was written in.
    pub fn from_secret(secret: &str) -> Result<Self, WeakSecret> {
        let len = secret.len();
        let is_hex = secret.bytes().all(|b| b.is_ascii_hexdigit());
        let is_base64 = secret
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'));
        let carries = if is_hex {
            len / 2
        } else if is_base64 {
            secret.trim_end_matches('=').len() * 3 / 4
        } else {
            len
        };
        if carries < MIN_SECRET_BYTES {
            return Err(WeakSecret { carries });
        }
        Ok(Self::new(secret.as_bytes()))
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

/// A cookie secret too short to sign cookies nobody can forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "COOKIE_SECRET carries {carries} bytes of entropy; it needs {MIN_SECRET_BYTES}: \
     64 hex digits (`openssl rand -hex 32`), 43 base64 characters, or 32 bytes"
)]
pub struct WeakSecret {
    carries: usize,
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
    fn a_secret_needs_32_bytes_of_entropy_in_whatever_form() {
        let hex32 = "0123456789abcdef".repeat(4);
        assert!(CookieKey::from_secret(&hex32).is_ok());
        assert!(CookieKey::from_secret(&hex32[..48]).is_err(), "24 bytes in hex");
        assert!(CookieKey::from_secret("sixteen chars!!!").is_err());
        assert!(
            CookieKey::from_secret("q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=").is_ok(),
            "32 bytes in base64"
        );
        assert!(CookieKey::from_secret("q83vEjRWeJq83vEjRWeJq83vEjRWeJ==").is_err(), "22 bytes in base64");
        assert!(CookieKey::from_secret("test cookie key, 32 bytes long!!").is_ok());
        let message = CookieKey::from_secret("short").unwrap_err().to_string();
        assert!(message.contains("32") && !message.contains("short"), "{message}");
    }

    proptest::proptest! {
        #[test]
        fn no_value_but_our_own_signature_verifies(value in ".{0,80}", voter in proptest::array::uniform16(0u8..), flip in 0usize..49) {
            let key = CookieKey::new(b"a key for property tests, 32 bytes!");
            proptest::prop_assert!(key.verify(&value).is_err());
            let voter: VoterId = hex::encode(voter).parse().unwrap();
            let cookie = key.sign(&voter);
            proptest::prop_assert_eq!(key.verify(&cookie), Ok(voter));
            // Any one character changed (but for hex case) and it is refused.
            let mut bytes = cookie.clone().into_bytes();
            bytes[flip] = if bytes[flip] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(bytes).unwrap();
            proptest::prop_assert!(key.verify(&tampered).is_err(), "{} verified", tampered);
        }
    }

    #[test]
    fn the_cookie_is_http_only_and_secure_over_https() {
        let cookie = set_cookie("v", true);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.ends_with("Secure"));
        assert!(!set_cookie("v", false).contains("Secure"));
    }
}
