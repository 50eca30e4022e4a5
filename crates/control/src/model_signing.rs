//! Offline verification of model signatures and provenance, for the model
//! registry (`docs/governance.md`).
//!
//! A signature is an OpenSSF model-signing style bundle: a DSSE envelope
//! (bare, or as the `dsseEnvelope` of a Sigstore bundle) whose payload is an
//! in-toto statement naming the model artifact's SHA-256. It is verified
//! against keys pinned in `[models] trusted_keys` (ECDSA P-256 with SHA-256,
//! or Ed25519), with `ring`, the only crypto provider in the build.
//!
//! Why not the `sigstore` crate: its verification feature pulls in its
//! Fulcio and Rekor clients (`reqwest`), and its TLS features are
//! `native-tls` (OpenSSL) or `rustls-tls` (aws-lc-rs); both are excluded
//! here. What this module does not do, by design: no Rekor transparency-log
//! lookup or inclusion proof, no Fulcio certificate chain or OIDC identity
//! check, no online trust-root update. A bundle signed by a key that is not
//! pinned does not verify, whatever its certificate says.
//!
//! Provenance (an in-toto statement with a SLSA or other predicate, bare or
//! in a DSSE envelope) is checked only for shape and for naming the same
//! digest; it is then stored as evidence, not trusted for a decision.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey};
use serde_json::Value;

/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey,
/// prime256v1), followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo`, followed by the
/// 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key, a bundle or a statement was refused. Messages name what was
/// wrong, never key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    /// A pinned key does not parse.
    #[error("trusted key `{id}`: {problem}")]
    Key {
        /// The key's id in the configuration.
        id: String,
        /// What was wrong.
        problem: String,
    },
    /// The bundle or statement is not what it should be.
    #[error("{0}")]
    Malformed(String),
    /// No signature verified against any pinned key.
    #[error("no signature verifies against a pinned key in `[models] trusted_keys`")]
    Untrusted,
    /// The statement is validly signed but does not name this artifact.
    #[error("the signed statement does not name the digest `{0}`")]
    WrongSubject(String),
}

/// The algorithm of a pinned key.
#[derive(Clone, PartialEq, Eq)]
enum KeyKind {
    EcdsaP256,
    Ed25519,
}

/// A public key pinned in `[models] trusted_keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The name the registry records as the verifying key.
    pub id: String,
    kind: KeyKind,
    raw: Vec<u8>,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl TrustedKey {
    /// A key from a PEM `PUBLIC KEY` block (what `openssl pkey -pubout`,
    /// `cosign generate-key-pair` and `model_signing` write).
    pub fn from_pem(id: &str, pem: &str) -> Result<TrustedKey, SigningError> {
        let bad = |problem: &str| SigningError::Key {
            id: id.to_string(),
            problem: problem.to_string(),
        };
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PUBLIC KEY-----")
            .collect();
        if body.is_empty() {
            return Err(bad("expected a PEM `PUBLIC KEY` block"));
        }
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| bad("the PEM body is not base64"))?;
        let (kind, raw) = if let Some(point) = der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            (KeyKind::EcdsaP256, point)
        } else if let Some(key) = der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            (KeyKind::Ed25519, key)
        } else {
            return Err(bad(
                "only ECDSA P-256 and Ed25519 public keys are supported",
            ));
        };
        let expected = match kind {
            KeyKind::EcdsaP256 => 65,
            KeyKind::Ed25519 => 32,
        };
        if raw.len() != expected {
            return Err(bad("the public key has the wrong length"));
        }
        Ok(TrustedKey {
            id: id.to_string(),
            kind,
            raw: raw.to_vec(),
        })
    }

    /// `ecdsa-p256-sha256` or `ed25519`.
    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            KeyKind::EcdsaP256 => "ecdsa-p256-sha256",
            KeyKind::Ed25519 => "ed25519",
        }
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self.kind {
            KeyKind::EcdsaP256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.raw)
                .verify(message, signature)
                .is_ok(),
            KeyKind::Ed25519 => UnparsedPublicKey::new(&ED25519, &self.raw)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// A bundle that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The pinned key that verified it.
    pub key_id: String,
    /// The signed in-toto statement.
    pub statement: Value,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, SigningError> {
    [&STANDARD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text.as_bytes()).ok())
        .ok_or_else(|| SigningError::Malformed(format!("`{field}` is not base64")))
}

/// The DSSE envelope of `doc`: the document itself, or a Sigstore
/// bundle's `dsseEnvelope`.
fn envelope(doc: &Value) -> Option<&Value> {
    match doc.get("dsseEnvelope") {
        Some(e) => Some(e),
        None if doc.get("payload").is_some() => Some(doc),
        None => None,
    }
}

/// The envelope's payload, checked to be an in-toto statement.
fn envelope_statement(env: &Value) -> Result<(Vec<u8>, Value), SigningError> {
    let payload_type = env["payloadType"].as_str().unwrap_or_default();
    if payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(SigningError::Malformed(format!(
            "the envelope's payloadType is `{payload_type}`, not `{IN_TOTO_PAYLOAD_TYPE}`"
        )));
    }
    let payload = b64(
        "payload",
        env["payload"]
            .as_str()
            .ok_or_else(|| SigningError::Malformed("the envelope has no payload".into()))?,
    )?;
    let statement: Value = serde_json::from_slice(&payload)
        .map_err(|_| SigningError::Malformed("the payload is not JSON".into()))?;
    check_statement(&statement)?;
    Ok((payload, statement))
}

fn check_statement(statement: &Value) -> Result<(), SigningError> {
    let kind = statement["_type"].as_str().unwrap_or_default();
    if !kind.starts_with("https://in-toto.io/Statement/") {
        return Err(SigningError::Malformed(format!(
            "not an in-toto statement (`_type` is `{kind}`)"
        )));
    }
    if !statement["subject"].is_array() {
        return Err(SigningError::Malformed(
            "the statement has no `subject` list".into(),
        ));
    }
    Ok(())
}

/// Whether the statement names `hex` (a SHA-256): as a subject's
/// `digest.sha256`, or, as OpenSSF model-signing v1 writes for a model's
/// files, as a `predicate.resources[].digest` with algorithm `sha256`.
fn names_digest(statement: &Value, hex: &str) -> bool {
    let subject = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["digest"]["sha256"].as_str() == Some(hex));
    let resource = statement["predicate"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| {
            r["digest"].as_str() == Some(hex)
                && r["algorithm"].as_str().is_none_or(|a| a == "sha256")
        });
    subject || resource
}

/// Checks that `digest` is `sha256:` and 64 lower-case hex digits.
pub fn check_digest(digest: &str) -> Result<(), SigningError> {
    digest_hex(digest).map(|_| ())
}

/// The lower-case hex of `sha256:<hex>`.
fn digest_hex(digest: &str) -> Result<&str, SigningError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| {
            SigningError::Malformed(format!(
                "digest `{digest}` is not `sha256:` and 64 lower-case hex digits"
            ))
        })
}

/// Verifies `bundle` (JSON) for the artifact `digest` (`sha256:<hex>`)
/// against `keys`. Fails closed: any signature of the envelope may verify,
/// but the statement it signs must then name the digest.
pub fn verify_bundle(
    bundle: &[u8],
    digest: &str,
    keys: &[TrustedKey],
) -> Result<Verified, SigningError> {
    let hex = digest_hex(digest)?;
    let doc: Value = serde_json::from_slice(bundle)
        .map_err(|_| SigningError::Malformed("the signature bundle is not JSON".into()))?;
    let env = envelope(&doc).ok_or_else(|| {
        SigningError::Malformed("the signature bundle holds no DSSE envelope".into())
    })?;
    let (payload, statement) = envelope_statement(env)?;
    let signed = pae(IN_TOTO_PAYLOAD_TYPE, &payload);
    let mut key_id = None;
    for sig in env["signatures"].as_array().into_iter().flatten() {
        let Some(text) = sig["sig"].as_str() else {
            continue;
        };
        let raw = b64("sig", text)?;
        if let Some(key) = keys.iter().find(|k| k.verifies(&signed, &raw)) {
            key_id = Some(key.id.clone());
            break;
        }
    }
    let key_id = key_id.ok_or(SigningError::Untrusted)?;
    if !names_digest(&statement, hex) {
        return Err(SigningError::WrongSubject(digest.to_string()));
    }
    Ok(Verified { key_id, statement })
}

/// Checks a provenance document (an in-toto statement, bare or in a DSSE
/// envelope, unverified) and that it names `digest`; returns the statement.
pub fn check_provenance(doc: &[u8], digest: &str) -> Result<Value, SigningError> {
    let hex = digest_hex(digest)?;
    let doc: Value = serde_json::from_slice(doc)
        .map_err(|_| SigningError::Malformed("the provenance is not JSON".into()))?;
    let statement = match envelope(&doc) {
        Some(env) => envelope_statement(env)?.1,
        None => {
            check_statement(&doc)?;
            doc
        }
    };
    if !names_digest(&statement, hex) {
        return Err(SigningError::WrongSubject(digest.to_string()));
    }
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn pem(prefix: &[u8], raw: &[u8]) -> String {
        let der = [prefix, raw].concat();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }

    type Sign = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// A signer and its pinned key, for each supported algorithm.
    fn signers() -> Vec<(TrustedKey, Sign)> {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
            .unwrap();
        let ed_key =
            TrustedKey::from_pem("ed", &pem(&ED25519_SPKI_PREFIX, ed.public_key().as_ref()))
                .unwrap();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let ec_key =
            TrustedKey::from_pem("ec", &pem(&P256_SPKI_PREFIX, ec.public_key().as_ref())).unwrap();
        vec![
            (ed_key, Box::new(move |m| ed.sign(m).as_ref().to_vec())),
            (
                ec_key,
                Box::new(move |m| ec.sign(&SystemRandom::new(), m).unwrap().as_ref().to_vec()),
            ),
        ]
    }

    fn statement(hex: &str) -> Value {
        json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{ "name": "model", "digest": { "sha256": hex } }],
            "predicateType": "https://model_signing/signature/v1.0",
            "predicate": {},
        })
    }

    fn bundle(statement: &Value, sign: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let payload = serde_json::to_vec(statement).unwrap();
        let sig = sign(&pae(IN_TOTO_PAYLOAD_TYPE, &payload));
        serde_json::to_vec(&json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": { "publicKey": { "hint": "" } },
            "dsseEnvelope": {
                "payload": STANDARD.encode(payload),
                "payloadType": IN_TOTO_PAYLOAD_TYPE,
                "signatures": [{ "sig": STANDARD.encode(sig), "keyid": "" }],
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_bundle_verifies_only_with_its_pinned_key_and_digest() {
        let signers = signers();
        let keys: Vec<TrustedKey> = signers.iter().map(|(k, _)| k.clone()).collect();
        let hex = &DIGEST[7..];
        for (key, sign) in &signers {
            let good = bundle(&statement(hex), sign.as_ref());
            let ok = verify_bundle(&good, DIGEST, &keys).unwrap();
            assert_eq!(ok.key_id, key.id);
            // The other key alone does not verify it.
            let others: Vec<TrustedKey> = keys.iter().filter(|k| k.id != key.id).cloned().collect();
            assert_eq!(
                verify_bundle(&good, DIGEST, &others),
                Err(SigningError::Untrusted)
            );
            // Signed, but for another artifact.
            let other = format!("sha256:{}", "b".repeat(64));
            assert_eq!(
                verify_bundle(&good, &other, &keys),
                Err(SigningError::WrongSubject(other.clone()))
            );
            // A payload changed after signing.
            let mut doc: Value = serde_json::from_slice(&good).unwrap();
            let forged = serde_json::to_vec(&statement(&other[7..])).unwrap();
            doc["dsseEnvelope"]["payload"] = json!(STANDARD.encode(forged));
            let tampered = serde_json::to_vec(&doc).unwrap();
            assert_eq!(
                verify_bundle(&tampered, &other, &keys),
                Err(SigningError::Untrusted)
            );
            // A bare envelope is accepted too.
            let bare = serde_json::to_vec(&doc_of(&good)["dsseEnvelope"]).unwrap();
            assert!(verify_bundle(&bare, DIGEST, &keys).is_ok());
        }
    }

    fn doc_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn model_signing_resources_name_the_digest() {
        let (key, sign) = signers().remove(0);
        let mut st = statement(&"c".repeat(64));
        st["predicate"]["resources"] =
            json!([{ "name": "model.safetensors", "algorithm": "sha256", "digest": &DIGEST[7..] }]);
        let ok = verify_bundle(&bundle(&st, sign.as_ref()), DIGEST, &[key]).unwrap();
        assert_eq!(ok.key_id, "ed");
    }

    #[test]
    fn malformed_input_is_refused_with_a_reason() {
        let keys: Vec<TrustedKey> = signers().into_iter().map(|(k, _)| k).collect();
        for (bundle, digest, want) in [
            (&b"not json"[..], DIGEST, "not JSON"),
            (&b"{}"[..], DIGEST, "no DSSE envelope"),
            (
                &br#"{"payload":"e30=","payloadType":"text/plain","signatures":[]}"#[..],
                DIGEST,
                "payloadType",
            ),
            (&b"{}"[..], "sha256:ABC", "64 lower-case hex"),
        ] {
            let err = verify_bundle(bundle, digest, &keys)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        assert!(TrustedKey::from_pem("k", "nope").is_err());
        let rsa_like = pem(&[0x30, 0x82, 0x01, 0x22], &[0; 10]);
        let err = TrustedKey::from_pem("k", &rsa_like)
            .unwrap_err()
            .to_string();
        assert!(err.contains("P-256 and Ed25519"), "{err}");
    }

    #[test]
    fn provenance_must_name_the_digest() {
        let hex = &DIGEST[7..];
        let mut st = statement(hex);
        st["predicateType"] = json!("https://slsa.dev/provenance/v1");
        assert!(check_provenance(&serde_json::to_vec(&st).unwrap(), DIGEST).is_ok());
        let other = format!("sha256:{}", "d".repeat(64));
        assert!(matches!(
            check_provenance(&serde_json::to_vec(&st).unwrap(), &other),
            Err(SigningError::WrongSubject(_))
        ));
        assert!(check_provenance(br#"{"_type":"x","subject":[]}"#, DIGEST).is_err());
    }
}
