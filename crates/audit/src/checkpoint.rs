//! Signed checkpoints of the audit log in the C2SP `tlog-checkpoint` format
//! (<https://c2sp.org/tlog-checkpoint>), carried in a signed note (see
//! [`crate::note`]) with an Ed25519 key.
//!
//! The signed text (the body) is exactly three lines:
//!
//! ```text
//! <origin>
//! <tree size in decimal, no leading zeros>
//! <base64 of the 32-byte RFC 9162 tree head>
//! ```
//!
//! Portcullis writes no extension lines and [`parse_and_verify`] refuses them:
//! the specification discourages them because monitors cannot audit them.
//! The body is read only after the signature has verified.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use thiserror::Error;

use crate::merkle::Hash;
use crate::note::{self, NoteError, VerifierKey};

/// A tree head of the log: which log, how many leaves, and their tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `portcullis.example.com/audit`. Non-empty, one
    /// line, no control characters.
    pub origin: String,
    /// The number of leaves (audit records) in the tree.
    pub size: u64,
    /// The RFC 9162 tree head of those leaves.
    pub root: Hash,
}

/// Why a checkpoint could not be signed, or was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// The origin is empty or holds a control character.
    #[error("invalid checkpoint origin `{0}`")]
    InvalidOrigin(String),
    /// The signed note is malformed, or not signed by the trusted key.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The signed text is not a checkpoint body.
    #[error("malformed checkpoint: {0}")]
    MalformedBody(&'static str),
}

impl Checkpoint {
    /// The checkpoint body: origin, size and base64 tree head, one per line.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Reads a checkpoint body; only the exact form [`body`](Self::body)
    /// writes is accepted. It does not check any signature.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let malformed = CheckpointError::MalformedBody;
        let lines = body
            .strip_suffix('\n')
            .ok_or(malformed("body does not end with a newline"))?;
        let mut lines = lines.split('\n');
        let (Some(origin), Some(size), Some(root), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(malformed("body is not exactly three lines"));
        };
        if !is_valid_origin(origin) {
            return Err(malformed("invalid origin"));
        }
        let canonical = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size = canonical
            .then(|| size.parse::<u64>().ok())
            .flatten()
            .ok_or(malformed("tree size is not a canonical decimal number"))?;
        // The base64 engine refuses missing padding and non-zero trailing bits,
        // so each tree head has exactly one accepted encoding.
        let root = STANDARD
            .decode(root)
            .ok()
            .and_then(|root| Hash::try_from(root).ok())
            .ok_or(malformed("root hash is not the base64 of 32 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// Signs `checkpoint` with `key` under the key name `name` and returns the
/// signed note. The name should usually be the origin.
pub fn sign(
    checkpoint: &Checkpoint,
    key: &SigningKey,
    name: &str,
) -> Result<String, CheckpointError> {
    if !is_valid_origin(&checkpoint.origin) {
        return Err(CheckpointError::InvalidOrigin(checkpoint.origin.clone()));
    }
    Ok(note::sign(&checkpoint.body(), key, name)?)
}

/// Checks that `note` is a checkpoint signed by the key in `verifier_key`
/// (`<name>+<hex key hash>+<base64 key>`) and returns it.
///
/// The caller must still check that the origin is the log it expects.
pub fn parse_and_verify(note: &str, verifier_key: &str) -> Result<Checkpoint, CheckpointError> {
    let verifier: VerifierKey = verifier_key.parse()?;
    let body = note::open(note, &verifier)?;
    Checkpoint::parse_body(body)
}

/// Splits a file of signed notes written one after another (the checkpoint
/// export file) into single notes. A note ends after its last signature line;
/// blank lines between notes are skipped. Each note is returned whole, to be
/// verified with [`parse_and_verify`].
pub fn split_notes(text: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let mut current = String::new();
    let mut signed = false;
    for line in text.split_inclusive('\n') {
        let is_signature = line.starts_with(note::SIGNATURE_PREFIX);
        if signed && !is_signature {
            notes.push(std::mem::take(&mut current));
            signed = false;
        }
        if current.is_empty() && line.trim().is_empty() {
            continue;
        }
        current.push_str(line);
        signed |= is_signature;
    }
    if !current.trim().is_empty() {
        notes.push(current);
    }
    notes
}

/// Whether `origin` can be a checkpoint's first line.
fn is_valid_origin(origin: &str) -> bool {
    !origin.is_empty() && !origin.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;

    /// A real checkpoint of the Go checksum database, retrieved from
    /// sum.golang.org/latest on 2024-09-23 (quoted in sigsum/sigsum-go's
    /// `TestGoSumDBCheckpoint`), and the database's published verifier key
    /// (golang/go `src/cmd/go/internal/modfetch/key.go`).
    const SUMDB_KEY: &str = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";
    const SUMDB_NOTE: &str = "go.sum database tree\n\
        30055305\n\
        mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n\
        \n\
        \u{2014} sum.golang.org Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevucFcAAlWFJJYle3EJlDCrQ+y3A8=\n";

    /// Another sum.golang.org checkpoint, cosigned by a test witness whose key
    /// we do not know (google/trillian-examples
    /// `witness/golang/cmd/addrwitness/README.md`).
    const SUMDB_COSIGNED_NOTE: &str = "go.sum database tree\n\
        15067302\n\
        gJyioq6dwR9n+NjEWORfYmH+ubeYm3kH42BBQ0bTpYI=\n\
        \n\
        \u{2014} sum.golang.org Az3grp1rvWOs5NKlr/xR4GLN/CDyzzakmt1o61uSxYKpK1SerqOP2ClbX/peKUZjYnyomH5Xz7GZG3TpB7OeKn4E2ww=\n\
        \u{2014} test.example.com qTGhC/xIPQ0AXKHK6Y+9ypRfuvMZWPjRXM8NiOg5M1WREn07VQXyuIXM3NRNav3ieVFLUqDRK77PWDmL6w8w84UqeAw=\n";

    const NAME: &str = "portcullis.test/audit";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn verifier_key() -> String {
        VerifierKey::new(NAME, key().verifying_key())
            .unwrap()
            .to_string()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: NAME.into(),
            size: 8,
            root: merkle::root(&[merkle::leaf_hash(b"a"), merkle::leaf_hash(b"b")]),
        }
    }

    fn check(note: &str, key: &str, expect: Result<Checkpoint, CheckpointError>) {
        assert_eq!(parse_and_verify(note, key), expect, "note {note:?}");
    }

    fn b64_hash(s: &str) -> Hash {
        STANDARD.decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn real_sumdb_checkpoints_verify() {
        let sumdb = |size, root| {
            Ok(Checkpoint {
                origin: "go.sum database tree".into(),
                size,
                root: b64_hash(root),
            })
        };
        check(
            SUMDB_NOTE,
            SUMDB_KEY,
            sumdb(30055305, "mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM="),
        );
        check(
            SUMDB_COSIGNED_NOTE,
            SUMDB_KEY,
            sumdb(15067302, "gJyioq6dwR9n+NjEWORfYmH+ubeYm3kH42BBQ0bTpYI="),
        );
        // One changed digit breaks Google's signature.
        let invalid = Err(CheckpointError::Note(NoteError::InvalidSignature {
            name: "sum.golang.org".into(),
            hash: 0x033de0ae,
        }));
        check(
            &SUMDB_NOTE.replace("30055305", "30055306"),
            SUMDB_KEY,
            invalid,
        );
    }

    #[test]
    fn signed_checkpoints_have_the_exact_format() {
        let cp = checkpoint();
        let note = sign(&cp, &key(), NAME).unwrap();
        let body = format!("{NAME}\n8\n{}\n", STANDARD.encode(cp.root));
        assert_eq!(cp.body(), body);
        let signature = note
            .strip_prefix(&format!("{body}\n\u{2014} {NAME} "))
            .unwrap()
            .strip_suffix('\n')
            .unwrap();
        let blob = STANDARD.decode(signature).unwrap();
        assert_eq!(blob.len(), 4 + 64);
        let verifier: VerifierKey = verifier_key().parse().unwrap();
        assert_eq!(blob[..4], verifier.key_hash().to_be_bytes());
        check(&note, &verifier_key(), Ok(cp));

        let empty = Checkpoint {
            origin: NAME.into(),
            size: 0,
            root: merkle::empty_root(),
        };
        check(
            &sign(&empty, &key(), NAME).unwrap(),
            &verifier_key(),
            Ok(empty),
        );
    }

    #[test]
    fn tampered_checkpoints_are_refused() {
        let note = sign(&checkpoint(), &key(), NAME).unwrap();
        let vkey = verifier_key();
        let invalid = || {
            Err(CheckpointError::Note(NoteError::InvalidSignature {
                name: NAME.into(),
                hash: vkey.parse::<VerifierKey>().unwrap().key_hash(),
            }))
        };
        check(&note.replacen("\n8\n", "\n9\n", 1), &vkey, invalid());
        check(&note.replacen("\n8\n", "\n08\n", 1), &vkey, invalid());
        check(
            &note.replacen("portcullis", "Portcullis", 1),
            &vkey,
            invalid(),
        );
        let (body, signature) = note.split_once("\n\n").unwrap();
        let root_line = body.lines().nth(2).unwrap();
        let other_root = STANDARD.encode(merkle::empty_root());
        check(&note.replacen(root_line, &other_root, 1), &vkey, invalid());

        // Flip one bit of the signature itself (past the key hash).
        let blob_b64 = signature.rsplit(' ').next().unwrap().trim_end();
        let mut blob = STANDARD.decode(blob_b64).unwrap();
        blob[10] ^= 1;
        check(
            &note.replacen(blob_b64, &STANDARD.encode(&blob), 1),
            &vkey,
            invalid(),
        );

        // Another key, or the same key under another name: not signed by it.
        let other = SigningKey::from_bytes(&[8; 32]);
        for (name, key) in [
            (NAME, other.verifying_key()),
            ("other.test/log", key().verifying_key()),
        ] {
            let v = VerifierKey::new(name, key).unwrap();
            let not_signed = CheckpointError::Note(NoteError::NotSigned {
                name: name.into(),
                hash: v.key_hash(),
            });
            check(&note, &v.to_string(), Err(not_signed));
        }

        // Missing signature line, trailing garbage, a broken verifier key.
        for (bad, key) in [
            (body.to_owned() + "\n", vkey.clone()),
            (format!("{body}\n\n"), vkey.clone()),
            (format!("{note}garbage\n"), vkey.clone()),
            (format!("{note}garbage"), vkey.clone()),
            (format!("{note}\n"), vkey.clone()),
            (note.trim_end().to_owned(), vkey.clone()),
        ] {
            assert!(
                matches!(
                    parse_and_verify(&bad, &key),
                    Err(CheckpointError::Note(NoteError::Malformed(_)))
                ),
                "note {bad:?}"
            );
        }
        assert!(matches!(
            parse_and_verify(&note, &vkey[1..]),
            Err(CheckpointError::Note(NoteError::VerifierKeyHashMismatch))
        ));
    }

    #[test]
    fn malformed_bodies_are_refused_even_when_signed() {
        let root = STANDARD.encode(checkpoint().root);
        // The last character before `=` ends with two zero padding bits: set one.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut noncanonical_root = root.clone().into_bytes();
        let i = noncanonical_root.len() - 2;
        let value = alphabet
            .iter()
            .position(|&c| c == noncanonical_root[i])
            .unwrap();
        noncanonical_root[i] = alphabet[value ^ 1];
        let noncanonical_root = String::from_utf8(noncanonical_root).unwrap();
        for body in [
            format!("{NAME}\n8\n{root}\nextension\n"),
            format!("{NAME}\n8\n"),
            format!("\n8\n{root}\n"),
            format!("{NAME}\n08\n{root}\n"),
            format!("{NAME}\n+8\n{root}\n"),
            format!("{NAME}\n 8\n{root}\n"),
            format!("{NAME}\n8.0\n{root}\n"),
            format!("{NAME}\n\n{root}\n"),
            format!("{NAME}\n18446744073709551616\n{root}\n"),
            format!("{NAME}\n8\n{}\n", root.trim_end_matches('=')),
            format!("{NAME}\n8\n{noncanonical_root}\n"),
            format!("{NAME}\n8\n{}\n", STANDARD.encode([0u8; 31])),
            format!("{NAME}\n8\n{root} \n"),
        ] {
            let note = note::sign(&body, &key(), NAME).unwrap();
            assert!(
                matches!(
                    parse_and_verify(&note, &verifier_key()),
                    Err(CheckpointError::MalformedBody(_))
                ),
                "body {body:?}"
            );
        }
        let max = format!("{NAME}\n18446744073709551615\n{root}\n");
        let note = note::sign(&max, &key(), NAME).unwrap();
        assert_eq!(
            parse_and_verify(&note, &verifier_key()).map(|cp| cp.size),
            Ok(u64::MAX)
        );
    }

    #[test]
    fn sign_refuses_bad_origins_and_names() {
        let mut cp = checkpoint();
        assert_eq!(
            sign(&cp, &key(), "a b"),
            Err(CheckpointError::Note(NoteError::InvalidKeyName(
                "a b".into()
            )))
        );
        for origin in ["", "two\nlines", "tab\there"] {
            cp.origin = origin.into();
            assert_eq!(
                sign(&cp, &key(), NAME),
                Err(CheckpointError::InvalidOrigin(origin.into()))
            );
        }
    }

    #[test]
    fn notes_written_one_after_another_split_back() {
        let one = sign(&checkpoint(), &key(), NAME).unwrap();
        let mut two_cp = checkpoint();
        two_cp.size = 9;
        let two = sign(&two_cp, &key(), NAME).unwrap();
        let file = format!("{one}\n{SUMDB_COSIGNED_NOTE}{two}");
        let notes = split_notes(&file);
        assert_eq!(notes, [one, SUMDB_COSIGNED_NOTE.to_owned(), two]);
        assert_eq!(
            parse_and_verify(&notes[2], &verifier_key()).unwrap().size,
            9
        );
        assert!(split_notes("\n\n").is_empty());
    }
}
