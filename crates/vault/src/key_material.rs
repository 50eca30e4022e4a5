//! A cluster's key material (the CA, the signing and sealing keys) sealed
//! under the KEK for the `sealed_keys` table, so that a replica needs only
//! the KEK and the database URL (docs/cluster.md).
//!
//! The seal is the vault's own envelope: a fresh AES-256-GCM data key per
//! version, wrapped under the KEK, both bound to `cluster-key:<name>:v<n>`,
//! so a row copied to another name or version fails to open rather than
//! handing out the wrong key. The row names the KEK by fingerprint, so a
//! replica with another KEK is told so before any decryption is tried.

use portcullis_store::SealedKeyRow;
use zeroize::Zeroizing;

use crate::envelope::{self, Sealed};
use crate::kek::Kek;

/// A sealed key could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyMaterialError {
    /// The row is sealed under another KEK than the one given.
    #[error(
        "`{name}` is sealed under the KEK with fingerprint {sealed_under}, and this KEK's fingerprint is {given}"
    )]
    OtherKek {
        /// The key's name.
        name: String,
        /// The fingerprint recorded with the row.
        sealed_under: String,
        /// The fingerprint of the KEK given.
        given: String,
    },
    /// The KEK is the one recorded, yet the seal does not open: the row
    /// was changed, or moved from another name or version.
    #[error(
        "`{name}` version {version} does not open under its KEK: the row is damaged or was moved"
    )]
    Damaged {
        /// The key's name.
        name: String,
        /// Its version.
        version: i64,
    },
}

/// The associated data both seals of a key's version bind.
pub fn aad(name: &str, version: i64) -> Vec<u8> {
    format!("cluster-key:{name}:v{version}").into_bytes()
}

/// Seals `material` as version `version` of `name` (`sealed_at` in seconds).
pub fn seal(kek: &Kek, name: &str, version: i64, material: &[u8], sealed_at: i64) -> SealedKeyRow {
    let sealed = envelope::seal(kek, &aad(name, version), material);
    SealedKeyRow {
        name: name.to_string(),
        version,
        kek_id: kek.fingerprint().to_string(),
        wrapped_key: sealed.wrapped_key,
        ciphertext: sealed.ciphertext,
        sealed_at,
    }
}

/// Opens a row sealed by [`seal`].
pub fn open(kek: &Kek, row: &SealedKeyRow) -> Result<Zeroizing<Vec<u8>>, KeyMaterialError> {
    if row.kek_id != kek.fingerprint() {
        return Err(KeyMaterialError::OtherKek {
            name: row.name.clone(),
            sealed_under: row.kek_id.clone(),
            given: kek.fingerprint().to_string(),
        });
    }
    let sealed = Sealed {
        wrapped_key: row.wrapped_key.clone(),
        ciphertext: row.ciphertext.clone(),
    };
    envelope::open(kek, &aad(&row.name, row.version), &sealed).map_err(|_| {
        KeyMaterialError::Damaged {
            name: row.name.clone(),
            version: row.version,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_under_its_kek_name_and_version() {
        let kek = Kek::generate();
        let row = seal(&kek, "ca", 1, b"-----BEGIN PRIVATE KEY-----", 7);
        assert_eq!(row.kek_id, kek.fingerprint());
        assert!(!row.ciphertext.windows(11).any(|w| w == b"BEGIN PRIVA"));
        assert_eq!(
            open(&kek, &row).unwrap().as_slice(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        let other = Kek::generate();
        assert!(matches!(
            open(&other, &row),
            Err(KeyMaterialError::OtherKek { .. })
        ));
        // Moved to another name or version: the bound data no longer matches.
        for moved in [
            SealedKeyRow {
                name: "token_key".into(),
                ..row.clone()
            },
            SealedKeyRow {
                version: 2,
                ..row.clone()
            },
        ] {
            assert!(matches!(
                open(&kek, &moved),
                Err(KeyMaterialError::Damaged { .. })
            ));
        }
        // A row claiming the right KEK but sealed under another.
        let forged = SealedKeyRow {
            kek_id: kek.fingerprint().to_string(),
            ..seal(&other, "ca", 1, b"x", 7)
        };
        assert!(matches!(
            open(&kek, &forged),
            Err(KeyMaterialError::Damaged { .. })
        ));
    }
}
