//! Private keys at rest: sealed with AES-256-GCM under a key derived from the managers' secret,
//! so the database (and its backups) holds nothing that signs for the platform's names.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NONCE_LEN: usize = 12;
/// The secret is operator-made text (`openssl rand -hex 32`); shorter is refused.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the certificate secret must be at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
    #[error("a sealed value does not open with this secret (another secret sealed it, or it is damaged)")]
    WrongSecretOrDamaged,
}

impl Sealer {
    pub fn from_secret(secret: &str) -> Result<Self, SealError> {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SealError::ShortSecret);
        }
        // One fixed-purpose key from the secret (HMAC as the extract step of HKDF): the same
        // secret could one day key something else without the two keys being equal.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(b"voting certs: private keys at rest, v1");
        let key = mac.finalize().into_bytes();
        Ok(Self { cipher: Aes256Gcm::new_from_slice(&key).expect("32-byte key") })
    }

    /// `nonce || ciphertext`, the nonce random (96 bits: collisions are out of reach for the
    /// handful of keys sealed per year).
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce_bytes), plain)
            .expect("AES-GCM encrypts any message this size");
        [nonce_bytes.as_slice(), &sealed].concat()
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::WrongSecretOrDamaged);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| SealError::WrongSecretOrDamaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn what_is_sealed_opens_with_the_same_secret_only() {
        let sealer = Sealer::from_secret(SECRET).unwrap();
        let sealed = sealer.seal(b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"), "the plain text shows through");
        assert_eq!(sealer.open(&sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        let other = Sealer::from_secret("another secret, long enough to be accepted").unwrap();
        assert!(matches!(other.open(&sealed), Err(SealError::WrongSecretOrDamaged)));
    }

    #[test]
    fn a_damaged_value_is_refused_not_opened_to_garbage() {
        let sealer = Sealer::from_secret(SECRET).unwrap();
        let mut sealed = sealer.seal(b"key");
        *sealed.last_mut().unwrap() ^= 1;
        assert!(matches!(sealer.open(&sealed), Err(SealError::WrongSecretOrDamaged)));
        assert!(matches!(sealer.open(b"short"), Err(SealError::WrongSecretOrDamaged)));
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(matches!(Sealer::from_secret("too short"), Err(SealError::ShortSecret)));
    }
}
