//! Admin bearer tokens: 256 random bits, of which the store keeps only SHA-256
//! (a slow hash adds nothing to a secret this long).

use sha2::{Digest, Sha256};

/// A new admin token: 32 bytes from the OS-seeded CSPRNG, hex, prefixed so
/// secret scanners recognise it (`pcadm_…`).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("pcadm_{}", hex::encode(bytes))
}

/// SHA-256 of a token, hex: what the store keeps.
pub fn hash_token(token: &str) -> String {
    hash_bytes(token.as_bytes())
}

/// SHA-256 of bytes, hex (a certificate's fingerprint).
pub fn hash_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with("pcadm_") && a.len() == 6 + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
