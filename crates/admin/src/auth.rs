//! Admin credentials: random bearer tokens, of which the store keeps only SHA-256.

use sha2::{Digest, Sha256};

/// A new admin token: 32 bytes from the OS-seeded CSPRNG, hex, prefixed so
/// secret scanners recognise it (`pcadm_…`).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("pcadm_{}", hex::encode(bytes))
}

/// SHA-256 of a token, hex: what the store keeps.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time check of a presented token against the stored hashes.
pub fn token_matches(presented: &str, hashes: &[String]) -> bool {
    let digest = hash_token(presented);
    let mut any = false;
    for stored in hashes {
        let equal = stored.len() == digest.len()
            && stored
                .bytes()
                .zip(digest.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        any |= equal;
    }
    any
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
        let hashes = vec![hash_token(&a)];
        assert!(token_matches(&a, &hashes));
        assert!(!token_matches(&b, &hashes));
        assert!(!token_matches("", &hashes));
    }
}
