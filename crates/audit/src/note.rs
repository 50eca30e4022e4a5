//! Signed notes in the C2SP `signed-note` format (<https://c2sp.org/signed-note>,
//! the format of Go's `golang.org/x/mod/sumdb/note`), with Ed25519 keys only.
//!
//! A note is a text ending in a newline, a blank line, and one or more
//! signature lines `— <key name> <base64(key hash || signature)>` (an em dash,
//! U+2014, then a space). The key hash is the first four bytes of
//! `SHA-256(key name || 0x0A || 0x01 || Ed25519 public key)`, read big-endian;
//! `0x01` is the Ed25519 signature type. A verifier key is written
//! `<key name>+<key hash as 8 hex digits>+<base64(0x01 || public key)>`.
//!
//! [`open`] follows the specification: it ignores well-formed signatures from
//! other keys (witness cosignatures, for example), rejects the note when the
//! trusted key's signature is bad, and rejects it when that key did not sign.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The signature type byte of Ed25519 signatures in signed notes.
pub const ED25519_SIGNATURE_TYPE: u8 = 0x01;

/// What starts every signature line: an em dash and a space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The most signature lines [`open`] reads (the specification asks for at least
/// 16; Go's implementation also stops at 100).
const MAX_SIGNATURES: usize = 100;

/// Why a note could not be signed or opened, or a verifier key not read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// Key names must be non-empty and contain no whitespace and no `+`.
    #[error("invalid key name `{0}`")]
    InvalidKeyName(String),
    /// The text to sign does not end in a newline or holds a control character.
    #[error("note text must end with a newline and contain no control characters but newlines")]
    InvalidText,
    /// The verifier key is not `<name>+<8 hex digits>+<base64 Ed25519 key>`.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(&'static str),
    /// The verifier key's hash does not match its name and public key.
    #[error("verifier key hash does not match its name and public key")]
    VerifierKeyHashMismatch,
    /// The note does not follow the signed-note format.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// The trusted key's signature on the note does not verify.
    #[error("invalid signature from key `{name}+{hash:08x}`")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key hash.
        hash: u32,
    },
    /// The note carries no signature from the trusted key.
    #[error("note is not signed by key `{name}+{hash:08x}`")]
    NotSigned {
        /// The key name.
        name: String,
        /// The key hash.
        hash: u32,
    },
}

/// Whether `name` may name a key: non-empty, with no whitespace and no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key hash (key ID) of an Ed25519 key:
/// `SHA-256(name || 0x0A || 0x01 || public key)[..4]`, read big-endian.
pub fn key_hash(name: &str, key: &VerifyingKey) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ED25519_SIGNATURE_TYPE])
        .chain_update(key.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A trusted Ed25519 key with its name, as written in a verifier key string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    hash: u32,
    key: VerifyingKey,
}

impl VerifierKey {
    /// The verifier key for `key` under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            hash: key_hash(name, &key),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash that signature lines carry.
    pub fn key_hash(&self) -> u32 {
        self.hash
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;

    /// Reads `<name>+<8 hex digits>+<base64(0x01 || public key)>`.
    fn from_str(s: &str) -> Result<Self, NoteError> {
        let malformed = NoteError::MalformedVerifierKey;
        // The name holds no `+`, the hash is hex, and base64 may hold `+`.
        let (name, rest) = s.split_once('+').ok_or(malformed("missing key hash"))?;
        let (hash, key) = rest.split_once('+').ok_or(malformed("missing key"))?;
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName(name.to_owned()));
        }
        if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("key hash is not 8 hex digits"));
        }
        let hash = u32::from_str_radix(hash, 16).map_err(|_| malformed("key hash is not hex"))?;
        let key = STANDARD
            .decode(key)
            .map_err(|_| malformed("key is not base64"))?;
        let key = match key.split_first() {
            Some((&ED25519_SIGNATURE_TYPE, key)) => key,
            Some(_) => return Err(malformed("key is not an Ed25519 key")),
            None => return Err(malformed("key is empty")),
        };
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| malformed("Ed25519 key is not 32 bytes"))?;
        let key =
            VerifyingKey::from_bytes(&key).map_err(|_| malformed("Ed25519 key is not valid"))?;
        let verifier = Self::new(name, key)?;
        if verifier.hash != hash {
            return Err(NoteError::VerifierKeyHashMismatch);
        }
        Ok(verifier)
    }
}

impl fmt::Display for VerifierKey {
    /// Writes `<name>+<8 hex digits>+<base64(0x01 || public key)>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = [0u8; 33];
        key[0] = ED25519_SIGNATURE_TYPE;
        key[1..].copy_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.hash,
            STANDARD.encode(key)
        )
    }
}

/// Signs `text` with `key` under the key name `name` and returns the note: the
/// text, a blank line and one signature line.
pub fn sign(text: &str, key: &SigningKey, name: &str) -> Result<String, NoteError> {
    if !text.ends_with('\n') || has_control_characters(text) {
        return Err(NoteError::InvalidText);
    }
    let verifier = VerifierKey::new(name, key.verifying_key())?;
    let signature = ed25519_dalek::Signer::sign(key, text.as_bytes());
    let mut blob = Vec::with_capacity(4 + Signature::BYTE_SIZE);
    blob.extend_from_slice(&verifier.hash.to_be_bytes());
    blob.extend_from_slice(&signature.to_bytes());
    Ok(format!(
        "{text}\n{SIGNATURE_PREFIX}{name} {}\n",
        STANDARD.encode(blob)
    ))
}

/// Checks that `note` is a well-formed signed note carrying a valid signature
/// from `verifier`, and returns its text (with its final newline).
///
/// Signatures from other keys are checked for form only and otherwise
/// ignored, as the specification requires.
pub fn open<'a>(note: &'a str, verifier: &VerifierKey) -> Result<&'a str, NoteError> {
    let malformed = NoteError::Malformed;
    if has_control_characters(note) {
        return Err(malformed("control character"));
    }
    // The text is separated from the signatures by the last blank line.
    let split = note
        .rfind("\n\n")
        .ok_or(malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    let signatures = signatures
        .strip_suffix('\n')
        .ok_or(malformed("missing signature line or final newline"))?;
    let mut signed = false;
    for (count, line) in signatures.split('\n').enumerate() {
        if count == MAX_SIGNATURES {
            return Err(malformed("too many signatures"));
        }
        let line = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(malformed("line after the blank line is not a signature"))?;
        let (name, blob) = line
            .split_once(' ')
            .ok_or(malformed("signature line has no signature"))?;
        if !is_valid_key_name(name) {
            return Err(malformed("invalid key name in signature line"));
        }
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| malformed("signature is not base64"))?;
        let (hash, signature) = match blob.split_first_chunk::<4>() {
            Some((hash, signature)) if !signature.is_empty() => {
                (u32::from_be_bytes(*hash), signature)
            }
            _ => return Err(malformed("signature is too short")),
        };
        if name != verifier.name || hash != verifier.hash {
            continue;
        }
        let invalid = || NoteError::InvalidSignature {
            name: verifier.name.clone(),
            hash,
        };
        let signature = Signature::from_slice(signature).map_err(|_| invalid())?;
        verifier
            .key
            .verify_strict(text.as_bytes(), &signature)
            .map_err(|_| invalid())?;
        signed = true;
    }
    if !signed {
        return Err(NoteError::NotSigned {
            name: verifier.name.clone(),
            hash: verifier.hash,
        });
    }
    Ok(text)
}

/// Whether `s` holds an ASCII control character other than a newline.
fn has_control_characters(s: &str) -> bool {
    s.chars().any(|c| c < ' ' && c != '\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test keys and notes of Go's golang.org/x/mod/sumdb/note (note_test.go).
    const PETER_SIGNER: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    /// The signing key of Go's `PRIVATE+KEY+…` string (the seed follows `0x01`).
    fn peter_key() -> SigningKey {
        let b64 = PETER_SIGNER.splitn(5, '+').nth(4).unwrap();
        let blob = STANDARD.decode(b64).unwrap();
        assert_eq!(blob[0], ED25519_SIGNATURE_TYPE);
        SigningKey::from_bytes(&blob[1..].try_into().unwrap())
    }

    fn verifier(key: &str) -> VerifierKey {
        key.parse().unwrap()
    }

    fn check(note: &str, key: &str, expect: Result<&str, NoteError>) {
        assert_eq!(open(note, &verifier(key)), expect, "note {note:?}");
    }

    #[test]
    fn go_sumdb_note_vectors() {
        let note = format!("{TEXT}\n{PETER_SIG}");
        assert_eq!(sign(TEXT, &peter_key(), "PeterNeumann").unwrap(), note);
        let ours = VerifierKey::new("PeterNeumann", peter_key().verifying_key()).unwrap();
        assert_eq!(ours.to_string(), PETER);
        assert_eq!(ours.key_hash(), 0xc74f20a3);
        assert_eq!(verifier(ENOCH).key_hash(), 0xaf0cfe78);

        check(&note, PETER, Ok(TEXT));
        // A signature from another key is ignored, in either order.
        let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        check(&both, PETER, Ok(TEXT));
        check(&both, ENOCH, Ok(TEXT));
        check(&format!("{TEXT}\n{ENOCH_SIG}"), ENOCH, Ok(TEXT));
        let not_signed = |name: &str, hash| {
            Err(NoteError::NotSigned {
                name: name.into(),
                hash,
            })
        };
        check(
            &format!("{TEXT}\n{ENOCH_SIG}"),
            PETER,
            not_signed("PeterNeumann", 0xc74f20a3),
        );
        // A wrong key name, or a wrong key hash, is another key.
        let misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego");
        check(
            &format!("{TEXT}\n{misnamed}"),
            PETER,
            not_signed("PeterNeumann", 0xc74f20a3),
        );
        let wrong_hash = PETER_SIG.replace("x08g", "xxxx");
        check(
            &format!("{TEXT}\n{wrong_hash}"),
            PETER,
            not_signed("PeterNeumann", 0xc74f20a3),
        );
        // A bad signature from the trusted key rejects the note.
        let tampered = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        let invalid = Err(NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            hash: 0xc74f20a3,
        });
        check(&tampered, PETER, invalid.clone());
        check(
            &format!("{}\n{PETER_SIG}", TEXT.replace("answer", "Answer")),
            PETER,
            invalid,
        );
    }

    #[test]
    fn malformed_notes() {
        let sig = PETER_SIG;
        for note in [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &sig[..sig.len() - 1]),
            format!("\x01{TEXT}\n{sig}"),
            format!(
                "{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
            ),
            format!("{TEXT}\n{sig}Unexpected line.\n"),
            format!("{TEXT}\n{sig}\n"),
            format!("{TEXT}\n{}", sig.replace('\u{2014}', "-")),
            format!("{TEXT}\n\u{2014} PeterNeumann\n"),
            format!("{TEXT}\n\u{2014} PeterNeumann x08g\n"),
            format!("{TEXT}\n\u{2014} PeterNeumann not*base64\n"),
            format!("{TEXT}\n{}", sig.repeat(101)),
        ] {
            assert!(
                matches!(open(&note, &verifier(PETER)), Err(NoteError::Malformed(_))),
                "note {note:?}"
            );
        }
        // Duplicate good signatures are accepted, up to the limit.
        check(&format!("{TEXT}\n{}", sig.repeat(100)), PETER, Ok(TEXT));
    }

    #[test]
    fn sign_refuses_bad_input() {
        let key = peter_key();
        assert_eq!(sign("abc", &key, "a"), Err(NoteError::InvalidText));
        assert_eq!(sign("a\tb\n", &key, "a"), Err(NoteError::InvalidText));
        for name in ["", "a b", "a+b", "a\nb"] {
            assert_eq!(
                sign(TEXT, &key, name),
                Err(NoteError::InvalidKeyName(name.into()))
            );
        }
    }

    #[test]
    fn verifier_key_manglings_are_refused() {
        // Go's TestNewVerifier: every proper substring and every one-byte
        // change of a good key is refused.
        let b = PETER.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let s = &PETER[i..j];
                    assert!(s.parse::<VerifierKey>().is_err(), "{s:?}");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            let s = String::from_utf8(m).unwrap();
            assert!(s.parse::<VerifierKey>().is_err(), "{s:?}");
        }
        for (key, expect) in [
            // Go's wrong-length and unknown-algorithm keys (with adjusted key
            // hashes). Go's lenient base64 decodes the first; this strict one
            // refuses its non-zero padding bits, so a second wrong-length key
            // reaches the length check.
            (
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
                NoteError::MalformedVerifierKey("key is not base64"),
            ),
            (
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWAAAA",
                NoteError::MalformedVerifierKey("Ed25519 key is not 32 bytes"),
            ),
            (
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                NoteError::MalformedVerifierKey("key is not an Ed25519 key"),
            ),
            (
                "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                NoteError::VerifierKeyHashMismatch,
            ),
            (
                "PeterNeumann++74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                NoteError::MalformedVerifierKey("key hash is not 8 hex digits"),
            ),
        ] {
            assert_eq!(key.parse::<VerifierKey>(), Err(expect), "{key}");
        }
    }
}
