//! Transit tokens: the Fernet specification
//! (<https://github.com/fernet/spec/blob/master/Spec.md>), so a token made here
//! opens with Python's `cryptography.fernet.Fernet` given the same key, and
//! the other way round. Crypto comes from the `fernet` crate on its pure-Rust
//! (RustCrypto) backend: AES-128-CBC, HMAC-SHA256, no OpenSSL.
//!
//! A transit key has versions; a token does not name its version (the format
//! has no room for it), so decryption tries the versions newest first, exactly
//! like `cryptography`'s `MultiFernet`. `rewrap` keeps the token's timestamp,
//! like `MultiFernet.rotate`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use zeroize::Zeroizing;

/// A Fernet key as its url-safe base64 text (32 bytes: signing ‖ encryption).
pub struct FernetKey(Zeroizing<String>);

impl std::fmt::Debug for FernetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FernetKey(..)")
    }
}

/// A token or key is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitError {
    /// The imported key is not url-safe base64 of 32 bytes.
    #[error("a Fernet key must be url-safe base64 of 32 bytes")]
    BadKey,
    /// No version of the key opens the token (tampered, foreign or malformed).
    #[error("the token is not valid for any version of this key")]
    InvalidToken,
}

impl FernetKey {
    /// A new random key.
    pub fn generate() -> Self {
        FernetKey(Zeroizing::new(fernet::Fernet::generate_key()))
    }

    /// Imports a key in Fernet's text form.
    pub fn parse(text: &str) -> Result<Self, TransitError> {
        let text = text.trim();
        fernet::Fernet::new(text).ok_or(TransitError::BadKey)?;
        Ok(FernetKey(Zeroizing::new(text.to_string())))
    }

    /// The key's text form (what `Fernet(key)` takes in Python).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn fernet(&self) -> Result<fernet::Fernet, TransitError> {
        fernet::Fernet::new(&self.0).ok_or(TransitError::BadKey)
    }
}

/// Encrypts with `key` at the current time.
pub fn encrypt(key: &FernetKey, plaintext: &[u8]) -> Result<String, TransitError> {
    Ok(key.fernet()?.encrypt(plaintext))
}

/// Opens `token` with the first of `keys` (newest first) that accepts it;
/// returns the plaintext and the index of that key.
pub fn decrypt<'a>(
    keys: impl IntoIterator<Item = &'a FernetKey>,
    token: &str,
) -> Result<(Zeroizing<Vec<u8>>, usize), TransitError> {
    for (i, key) in keys.into_iter().enumerate() {
        if let Ok(plain) = key.fernet()?.decrypt(token.trim()) {
            return Ok((Zeroizing::new(plain), i));
        }
    }
    Err(TransitError::InvalidToken)
}

/// The creation time (seconds) a token carries, read after it verified.
fn timestamp(token: &str) -> Option<u64> {
    let bytes = URL_SAFE.decode(token.trim()).ok()?;
    Some(u64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?))
}

/// Re-encrypts a token under `newest` (keeping its timestamp), after opening it
/// with any of `keys`.
pub fn rewrap<'a>(
    newest: &FernetKey,
    keys: impl IntoIterator<Item = &'a FernetKey>,
    token: &str,
) -> Result<String, TransitError> {
    let (plain, _) = decrypt(keys, token)?;
    let at = timestamp(token).ok_or(TransitError::InvalidToken)?;
    Ok(newest.fernet()?.encrypt_at_time(&plain, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_rewrap() {
        let (v1, v2) = (FernetKey::generate(), FernetKey::generate());
        let t1 = encrypt(&v1, b"hello").unwrap();
        let (plain, idx) = decrypt([&v2, &v1], &t1).unwrap();
        assert_eq!((plain.as_slice(), idx), (&b"hello"[..], 1));
        let t2 = rewrap(&v2, [&v2, &v1], &t1).unwrap();
        assert_eq!(timestamp(&t2), timestamp(&t1));
        assert_eq!(decrypt([&v2], &t2).unwrap().1, 0);
        assert_eq!(decrypt([&v1], &t2), Err(TransitError::InvalidToken));
        assert_eq!(
            decrypt([&v1], "not a token"),
            Err(TransitError::InvalidToken)
        );
        let mut tampered = t1.into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            decrypt([&v1], std::str::from_utf8(&tampered).unwrap()),
            Err(TransitError::InvalidToken)
        );
        assert_eq!(FernetKey::parse("short").unwrap_err(), TransitError::BadKey);
    }

    /// The specification's published vector
    /// (<https://github.com/fernet/spec/blob/master/generate.json>).
    #[test]
    fn spec_vector() {
        let key = FernetKey::parse("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=").unwrap();
        let token = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==";
        let f = key.fernet().unwrap();
        assert_eq!(f.decrypt_at_time(token, None, 499162800).unwrap(), b"hello");
    }
}
