//! Envelope encryption: each value gets its own random AES-256-GCM data key,
//! and the data key is sealed under the KEK. Both seals bind associated data
//! naming the value (e.g. `secret:openai-key:v3`), so a ciphertext moved to
//! another row, name or version fails authentication instead of decrypting.
//!
//! Layout of both blobs: 12-byte random nonce ‖ AES-GCM ciphertext ‖ 16-byte tag.
//! A data key seals exactly one value, so random nonces never repeat under it.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use zeroize::Zeroizing;

use crate::kek::Kek;

const NONCE_LEN: usize = 12;
const DEK_LEN: usize = 32;

/// A sealed value: the wrapped data key and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The data key, sealed under the KEK.
    pub wrapped_key: Vec<u8>,
    /// The value, sealed under the data key.
    pub ciphertext: Vec<u8>,
}

/// A seal did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The authentication tag did not verify: a wrong key, or the bytes or their
    /// associated data were changed.
    #[error("authentication failed (wrong key or corrupted ciphertext)")]
    Authentication,
    /// Too short to be a seal.
    #[error("malformed ciphertext")]
    Malformed,
}

fn seal_with(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    // Encryption with a 32-byte key and a 12-byte nonce cannot fail except for
    // plaintexts over 64 GiB, which nothing here produces.
    let body = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + body.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out
}

fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(SealError::Malformed);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Malformed)?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| SealError::Authentication)
}

fn wrap_aad(aad: &[u8]) -> Vec<u8> {
    let mut out = b"portcullis data key\0".to_vec();
    out.extend_from_slice(aad);
    out
}

fn unwrap_key(
    kek: &Kek,
    aad: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; DEK_LEN]>, SealError> {
    let dek = open_with(kek.bytes(), &wrap_aad(aad), wrapped)?;
    let mut key = Zeroizing::new([0u8; DEK_LEN]);
    if dek.len() != DEK_LEN {
        return Err(SealError::Malformed);
    }
    key.copy_from_slice(&dek);
    Ok(key)
}

/// Seals `plaintext` under a fresh data key wrapped by `kek`.
pub fn seal(kek: &Kek, aad: &[u8], plaintext: &[u8]) -> Sealed {
    let mut dek = Zeroizing::new([0u8; DEK_LEN]);
    rand::fill(&mut dek[..]);
    Sealed {
        ciphertext: seal_with(&dek, aad, plaintext),
        wrapped_key: seal_with(kek.bytes(), &wrap_aad(aad), &dek[..]),
    }
}

/// Opens a seal made by [`seal`] with the same `aad`.
pub fn open(kek: &Kek, aad: &[u8], sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let dek = unwrap_key(kek, aad, &sealed.wrapped_key)?;
    open_with(&dek, aad, &sealed.ciphertext)
}

/// Re-wraps a data key from `old` to `new` without touching the ciphertext.
pub fn rewrap(old: &Kek, new: &Kek, aad: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, SealError> {
    let dek = unwrap_key(old, aad, wrapped)?;
    Ok(seal_with(new.bytes(), &wrap_aad(aad), &dek[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let kek = Kek::generate();
        let sealed = seal(&kek, b"secret:a:v1", b"hunter2");
        assert_eq!(
            open(&kek, b"secret:a:v1", &sealed).unwrap().as_slice(),
            b"hunter2"
        );
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        // Another name or version, another KEK, a flipped bit: all fail closed.
        assert_eq!(
            open(&kek, b"secret:a:v2", &sealed),
            Err(SealError::Authentication)
        );
        assert_eq!(
            open(&Kek::generate(), b"secret:a:v1", &sealed),
            Err(SealError::Authentication)
        );
        let mut bad = sealed.clone();
        let last = bad.ciphertext.len() - 1;
        bad.ciphertext[last] ^= 1;
        assert_eq!(
            open(&kek, b"secret:a:v1", &bad),
            Err(SealError::Authentication)
        );
        let short = Sealed {
            wrapped_key: vec![0; 5],
            ciphertext: vec![],
        };
        assert_eq!(open(&kek, b"x", &short), Err(SealError::Malformed));
    }

    #[test]
    fn rewrap_moves_only_the_data_key() {
        let (old, new) = (Kek::generate(), Kek::generate());
        let sealed = seal(&old, b"ctx", b"value");
        let moved = Sealed {
            wrapped_key: rewrap(&old, &new, b"ctx", &sealed.wrapped_key).unwrap(),
            ciphertext: sealed.ciphertext.clone(),
        };
        assert_eq!(open(&new, b"ctx", &moved).unwrap().as_slice(), b"value");
        assert_eq!(open(&old, b"ctx", &moved), Err(SealError::Authentication));
        assert_eq!(
            rewrap(&new, &old, b"ctx", &sealed.wrapped_key),
            Err(SealError::Authentication)
        );
    }
}
