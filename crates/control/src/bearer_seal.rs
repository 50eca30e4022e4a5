//! Store rows only the bearer of a secret can find and read: a ceremony in
//! progress (an OIDC login by its `state`, an authorization page by its
//! login id, an authorization code) is kept in the shared store so any
//! replica may continue it, keyed by a hash of the secret and sealed
//! (AES-256-GCM) under a key derived from it. The secret itself travels
//! only with the browser or client, so a reader of the database learns
//! neither a usable secret nor what the row holds. `label` keeps the uses
//! apart: the same secret gives another key and another cipher per label.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The store key of the row `secret` opens: SHA-256, hex.
pub fn key(label: &str, secret: &str) -> String {
    hex::encode(Sha256::digest(format!("portcullis {label}\0{secret}")))
}

fn cipher(label: &str, secret: &str) -> Aes256Gcm {
    let key = Sha256::digest(format!("portcullis {label} seal\0{secret}"));
    Aes256Gcm::new(&key)
}

/// `plain` sealed for `secret`, base64url: a random nonce, then the
/// ciphertext. `None` only if encryption fails.
pub fn seal(label: &str, secret: &str, plain: &[u8]) -> Option<String> {
    let nonce: [u8; 12] = rand::random();
    let sealed = cipher(label, secret)
        .encrypt(&Nonce::from(nonce), plain)
        .ok()?;
    Some(B64.encode([nonce.as_slice(), &sealed].concat()))
}

/// Opens what [`seal`] made for `secret` under `label`; `None` when it was
/// made for another secret or label, or altered.
pub fn open(label: &str, secret: &str, sealed: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = B64.decode(sealed).ok()?;
    if bytes.len() <= 12 {
        return None;
    }
    let (nonce, body) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    cipher(label, secret)
        .decrypt(&Nonce::from(nonce), body)
        .ok()
        .map(Zeroizing::new)
}

/// A value serialized as JSON and sealed for `secret`.
pub fn seal_json<T: serde::Serialize>(label: &str, secret: &str, value: &T) -> Option<String> {
    let plain = Zeroizing::new(serde_json::to_vec(value).ok()?);
    seal(label, secret, &plain)
}

/// Opens and parses what [`seal_json`] made.
pub fn open_json<T: serde::de::DeserializeOwned>(
    label: &str,
    secret: &str,
    sealed: &str,
) -> Option<T> {
    serde_json::from_slice(&open(label, secret, sealed)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_and_label_open_a_row() {
        let sealed = seal_json("l", "s3cret", &vec!["alice"]).unwrap();
        assert!(!sealed.contains("alice"));
        assert_eq!(
            open_json::<Vec<String>>("l", "s3cret", &sealed),
            Some(vec!["alice".to_string()])
        );
        assert!(open_json::<Vec<String>>("l", "other", &sealed).is_none());
        assert!(open_json::<Vec<String>>("m", "s3cret", &sealed).is_none());
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(open("l", "s3cret", std::str::from_utf8(&altered).unwrap()).is_none());
        assert_ne!(key("l", "s3cret"), key("m", "s3cret"));
        assert_eq!(key("l", "s3cret").len(), 64);
    }
}
