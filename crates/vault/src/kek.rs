//! The key-encryption key (KEK): 32 random bytes that wrap every data key.
//!
//! It comes from `PORTCULLIS_KEK_FILE` (a file of 32 raw bytes, or their
//! base64 on one line) or `PORTCULLIS_KEK` (base64), and is never stored in
//! the database. The database keeps only its [`Kek::fingerprint`], so a wrong
//! KEK is refused before anything is decrypted or written.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of a KEK in bytes (AES-256).
pub const KEK_LEN: usize = 32;

/// A key-encryption key. Zeroized when dropped; `Debug` shows only the fingerprint.
pub struct Kek {
    key: Zeroizing<[u8; KEK_LEN]>,
    fingerprint: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.fingerprint)
    }
}

/// The KEK could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The file could not be read.
    #[error("cannot read the key-encryption key file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Neither 32 raw bytes nor base64 of 32 bytes.
    #[error(
        "the key-encryption key from {origin} must be 32 random bytes (raw, or base64 on one line); got {len} bytes"
    )]
    BadLength {
        /// Where it came from.
        origin: String,
        /// How many bytes were found after decoding.
        len: usize,
    },
    /// The key file can be read by others.
    #[error(
        "the key-encryption key file `{0}` is readable by group or others; run `chmod 600` on it"
    )]
    Permissions(PathBuf),
}

impl Kek {
    /// A KEK from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEK_LEN]) -> Self {
        let key = Zeroizing::new(bytes);
        let mut h = Sha256::new();
        // Domain separation: the fingerprint is not a hash anyone else computes.
        h.update(b"portcullis kek fingerprint v1\0");
        h.update(key.as_slice());
        let fingerprint = hex::encode(&h.finalize()[..12]);
        Kek { key, fingerprint }
    }

    /// A fresh random KEK.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEK_LEN];
        rand::fill(&mut bytes);
        let kek = Kek::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        kek
    }

    /// Parses 32 raw bytes, or base64 of 32 bytes (surrounding whitespace ignored).
    pub fn parse(data: &[u8], origin: &str) -> Result<Self, KekError> {
        if data.len() == KEK_LEN {
            let mut bytes = [0u8; KEK_LEN];
            bytes.copy_from_slice(data);
            return Ok(Kek::from_bytes(bytes));
        }
        let text = std::str::from_utf8(data).unwrap_or("").trim();
        let decoded = Zeroizing::new(STANDARD.decode(text).unwrap_or_default());
        if decoded.len() != KEK_LEN {
            return Err(KekError::BadLength {
                origin: origin.to_string(),
                len: if decoded.is_empty() {
                    data.len()
                } else {
                    decoded.len()
                },
            });
        }
        let mut bytes = [0u8; KEK_LEN];
        bytes.copy_from_slice(&decoded);
        Ok(Kek::from_bytes(bytes))
    }

    /// Reads a KEK file. On Unix the file must not be readable by group or others.
    pub fn read_file(path: &Path) -> Result<Self, KekError> {
        let read_err = |source| KekError::Read {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(read_err)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KekError::Permissions(path.to_path_buf()));
            }
        }
        let data = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
        Kek::parse(&data, &format!("`{}`", path.display()))
    }

    /// The key's fingerprint: 24 hex digits of a domain-separated SHA-256.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The key as base64, for writing a new KEK file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.key.as_slice()))
    }

    pub(crate) fn bytes(&self) -> &[u8; KEK_LEN] {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(data: &[u8], expect: &str) {
        let got = match Kek::parse(data, "test") {
            Ok(k) => format!("ok {}", k.fingerprint().len()),
            Err(e) => e.to_string(),
        };
        assert!(got.contains(expect), "expected `{expect}` in `{got}`");
    }

    #[test]
    fn parses_raw_and_base64() {
        check(&[7u8; 32], "ok 24");
        check(
            format!("{}\n", STANDARD.encode([7u8; 32])).as_bytes(),
            "ok 24",
        );
        check(b"short", "got 5 bytes");
        check(STANDARD.encode([1u8; 16]).as_bytes(), "got 16 bytes");
        assert_eq!(
            Kek::parse(&[7u8; 32], "a").unwrap().fingerprint(),
            Kek::parse(STANDARD.encode([7u8; 32]).as_bytes(), "b")
                .unwrap()
                .fingerprint()
        );
        assert_ne!(Kek::generate().fingerprint(), Kek::generate().fingerprint());
    }

    #[test]
    fn debug_shows_no_key() {
        let k = Kek::from_bytes([0xAB; 32]);
        let shown = format!("{k:?}");
        assert!(!shown.to_lowercase().contains("abab"));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Kek::read_file(&path),
            Err(KekError::Permissions(_))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Kek::read_file(&path).is_ok());
    }
}
