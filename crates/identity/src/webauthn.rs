//! WebAuthn (passkeys) for human admins: the checks of the two ceremonies,
//! as pure functions over the bytes a browser hands back. The console
//! (`portcullis-admin`) issues the challenges, keeps them single-use and
//! stores the credentials; everything that decides whether an answer is
//! genuine is here.
//!
//! - Registration ([`verify_registration`]): the client data must be a
//!   `webauthn.create` for the issued challenge, from one of the console's
//!   origins, not cross-origin; the authenticator data must name the
//!   relying party (SHA-256 of its id), show user presence (and user
//!   verification when required) and carry the new credential with a
//!   COSE public key of an accepted algorithm. Attestation is `none` only:
//!   the console asks for none, so an authenticator's make and model are
//!   not verified (any FIDO2 authenticator the human holds is accepted).
//! - Assertion ([`verify_assertion`]): the same client-data and
//!   authenticator-data checks for `webauthn.get`, then the signature over
//!   `authenticatorData ‖ SHA-256(clientDataJSON)` with the stored key, then
//!   the signature counter: when either the stored or the new counter is
//!   non-zero, the new one must be greater (a counter that goes backwards
//!   or stands still betrays a cloned authenticator); both zero is how
//!   many passkeys work (they keep no counter) and is accepted.
//!
//! Algorithms: ES256 (ECDSA P-256 with SHA-256), EdDSA (Ed25519) and RS256
//! (RSASSA-PKCS1-v1_5 with SHA-256, 2048–8192-bit keys), all verified by
//! `ring`. CBOR is decoded with `minicbor`; indefinite-length items are
//! refused (authenticators emit the canonical form).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use minicbor::Decoder;
use minicbor::data::Type;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// COSE algorithm ES256 (ECDSA P-256, SHA-256).
pub const ES256: i64 = -7;
/// COSE algorithm EdDSA (Ed25519 here).
pub const EDDSA: i64 = -8;
/// COSE algorithm RS256 (RSASSA-PKCS1-v1_5, SHA-256).
pub const RS256: i64 = -257;
/// The algorithms accepted, in the order the console offers them.
pub const ALGORITHMS: [i64; 3] = [ES256, EDDSA, RS256];

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;

/// Why a ceremony's answer is refused. The messages name no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebauthnError {
    /// The client data is not the JSON a browser makes.
    #[error("the client data is malformed: {0}")]
    ClientData(String),
    /// A create answer where a get was expected, or the reverse.
    #[error("the client data is of type `{found}`, not `{expected}`")]
    WrongType {
        /// What the client data says.
        found: String,
        /// What the ceremony needs.
        expected: &'static str,
    },
    /// Not the challenge this ceremony issued.
    #[error("the challenge is not the one issued")]
    Challenge,
    /// Made for another origin, or inside a cross-origin frame.
    #[error("the origin `{0}` is not one of this console's")]
    Origin(String),
    /// The authenticator data names another relying party.
    #[error("the authenticator data is for another relying party")]
    RelyingParty,
    /// The user-present flag is not set.
    #[error("the authenticator did not show user presence")]
    UserPresence,
    /// The user-verified flag is not set and verification is required.
    #[error("the authenticator did not verify the user (PIN or biometric)")]
    UserVerification,
    /// The authenticator data cannot be read.
    #[error("the authenticator data is malformed: {0}")]
    AuthenticatorData(String),
    /// The attestation object cannot be read or is not `none`.
    #[error("the attestation is refused: {0}")]
    Attestation(String),
    /// The public key cannot be read or uses an algorithm not accepted.
    #[error("the public key is refused: {0}")]
    PublicKey(String),
    /// The signature does not verify with the stored key.
    #[error("the signature does not verify")]
    Signature,
    /// The signature counter did not increase.
    #[error(
        "the signature counter did not increase ({stored} stored, {seen} now): the authenticator may be cloned"
    )]
    Counter {
        /// The counter stored at the last use.
        stored: u32,
        /// The counter in this assertion.
        seen: u32,
    },
}

/// The parts of `clientDataJSON` that are checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClientData {
    /// `webauthn.create` or `webauthn.get`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The challenge, base64url without padding, as the browser saw it.
    pub challenge: String,
    /// The origin of the page that ran the ceremony.
    pub origin: String,
    /// Whether it ran in a cross-origin frame.
    #[serde(rename = "crossOrigin", default)]
    pub cross_origin: bool,
}

impl ClientData {
    /// Parses `clientDataJSON`.
    pub fn parse(json: &[u8]) -> Result<Self, WebauthnError> {
        serde_json::from_slice(json).map_err(|e| WebauthnError::ClientData(e.to_string()))
    }
}

/// What a ceremony's answer must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The challenge issued, base64url without padding.
    pub challenge: &'a str,
    /// The origin the console was opened at (`https://host:port`).
    pub origin: &'a str,
    /// The relying party id (the origin's host).
    pub rp_id: &'a str,
    /// Whether the user-verified flag is required.
    pub require_uv: bool,
}

/// A credential a registration made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The credential id (raw bytes).
    pub credential_id: Vec<u8>,
    /// Its COSE public key, as the authenticator encoded it.
    pub public_key: Vec<u8>,
    /// Its COSE algorithm.
    pub algorithm: i64,
    /// The signature counter at registration.
    pub sign_count: u32,
    /// Whether the user was verified.
    pub user_verified: bool,
}

/// What a verified assertion showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asserted {
    /// The new signature counter, to store.
    pub sign_count: u32,
    /// Whether the user was verified.
    pub user_verified: bool,
}

/// Base64url without padding, as WebAuthn's JSON forms use.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url (padding tolerated).
pub fn from_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

fn check_client_data(
    data: &ClientData,
    kind: &'static str,
    expected: &Expected<'_>,
) -> Result<(), WebauthnError> {
    if data.kind != kind {
        return Err(WebauthnError::WrongType {
            found: data.kind.clone(),
            expected: kind,
        });
    }
    if data.challenge.trim_end_matches('=') != expected.challenge {
        return Err(WebauthnError::Challenge);
    }
    if data.origin != expected.origin || data.cross_origin {
        return Err(WebauthnError::Origin(data.origin.clone()));
    }
    Ok(())
}

/// The fixed part of authenticator data and the attested credential.
struct AuthenticatorData {
    rp_id_hash: [u8; 32],
    flags: u8,
    sign_count: u32,
    /// (credential id, COSE key bytes) when the AT flag is set.
    credential: Option<(Vec<u8>, Vec<u8>)>,
}

fn parse_authenticator_data(bytes: &[u8]) -> Result<AuthenticatorData, WebauthnError> {
    let bad = |m: &str| WebauthnError::AuthenticatorData(m.to_string());
    if bytes.len() < 37 {
        return Err(bad("shorter than 37 bytes"));
    }
    let mut rp_id_hash = [0u8; 32];
    rp_id_hash.copy_from_slice(&bytes[..32]);
    let flags = bytes[32];
    let sign_count = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]);
    let credential = if flags & FLAG_AT != 0 {
        // AAGUID (16), id length (2), id, COSE key.
        let rest = &bytes[37..];
        if rest.len() < 18 {
            return Err(bad("the attested credential is truncated"));
        }
        let id_len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        let id = rest
            .get(18..18 + id_len)
            .ok_or_else(|| bad("the credential id is truncated"))?;
        let key_bytes = &rest[18 + id_len..];
        let mut d = Decoder::new(key_bytes);
        skip(&mut d).map_err(|_| bad("the credential public key is not CBOR"))?;
        Some((id.to_vec(), key_bytes[..d.position()].to_vec()))
    } else {
        None
    };
    Ok(AuthenticatorData {
        rp_id_hash,
        flags,
        sign_count,
        credential,
    })
}

fn check_authenticator_data(
    data: &AuthenticatorData,
    expected: &Expected<'_>,
) -> Result<(), WebauthnError> {
    let want: [u8; 32] = Sha256::digest(expected.rp_id.as_bytes()).into();
    if data.rp_id_hash != want {
        return Err(WebauthnError::RelyingParty);
    }
    if data.flags & FLAG_UP == 0 {
        return Err(WebauthnError::UserPresence);
    }
    if expected.require_uv && data.flags & FLAG_UV == 0 {
        return Err(WebauthnError::UserVerification);
    }
    Ok(())
}

/// Skips one data item, refusing indefinite-length ones.
fn skip(d: &mut Decoder<'_>) -> Result<(), minicbor::decode::Error> {
    match d.datatype()? {
        Type::BytesIndef | Type::StringIndef | Type::ArrayIndef | Type::MapIndef => Err(
            minicbor::decode::Error::message("indefinite-length items are refused"),
        ),
        Type::Array => {
            let n = d.array()?.unwrap_or_default();
            for _ in 0..n {
                skip(d)?;
            }
            Ok(())
        }
        Type::Map => {
            let n = d.map()?.unwrap_or_default();
            for _ in 0..n * 2 {
                skip(d)?;
            }
            Ok(())
        }
        Type::Tag => {
            d.tag()?;
            skip(d)
        }
        _ => d.skip(),
    }
}

/// One value of a COSE key map.
enum CoseValue<'b> {
    Int(i64),
    Bytes(&'b [u8]),
    Other,
}

fn is_int(t: Type) -> bool {
    matches!(
        t,
        Type::U8 | Type::U16 | Type::U32 | Type::U64 | Type::I8 | Type::I16 | Type::I32 | Type::I64
    )
}

/// A parsed COSE public key, ready to verify with.
enum PublicKey {
    /// SEC1 uncompressed point (65 bytes).
    Es256(Vec<u8>),
    /// 32 bytes.
    Ed25519(Vec<u8>),
    /// Modulus and exponent, big-endian.
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

/// Parses a COSE_Key (RFC 9053) of an accepted algorithm; returns it with
/// its algorithm.
fn parse_cose_key(bytes: &[u8]) -> Result<(PublicKey, i64), WebauthnError> {
    let bad = |m: &str| WebauthnError::PublicKey(m.to_string());
    let mut d = Decoder::new(bytes);
    let entries = d
        .map()
        .map_err(|_| bad("not a CBOR map"))?
        .ok_or_else(|| bad("an indefinite-length map"))?;
    let (mut kty, mut alg, mut crv) = (None, None, None);
    let (mut x, mut y, mut n, mut e) = (None, None, None, None);
    for _ in 0..entries {
        if !d.datatype().map(is_int).unwrap_or(false) {
            return Err(bad("a key label that is not an integer"));
        }
        let label = d.i64().map_err(|_| bad("a key label out of range"))?;
        let value = match d.datatype().map_err(|_| bad("truncated"))? {
            Type::Bytes => CoseValue::Bytes(d.bytes().map_err(|_| bad("truncated"))?),
            t if is_int(t) => CoseValue::Int(d.i64().map_err(|_| bad("an integer out of range"))?),
            _ => {
                skip(&mut d).map_err(|_| bad("truncated"))?;
                CoseValue::Other
            }
        };
        match (label, value) {
            (1, CoseValue::Int(v)) => kty = Some(v),
            (3, CoseValue::Int(v)) => alg = Some(v),
            (-1, CoseValue::Int(v)) => crv = Some(v),
            (-1, CoseValue::Bytes(v)) => n = Some(v),
            (-2, CoseValue::Bytes(v)) => {
                x = Some(v);
                e = Some(v);
            }
            (-3, CoseValue::Bytes(v)) => y = Some(v),
            _ => {}
        }
    }
    let alg = alg.ok_or_else(|| bad("no algorithm"))?;
    let key = match (kty, alg, crv) {
        // EC2, ES256, P-256.
        (Some(2), ES256, Some(1)) => {
            let (x, y) = (x.ok_or_else(|| bad("no x"))?, y.ok_or_else(|| bad("no y"))?);
            if x.len() != 32 || y.len() != 32 {
                return Err(bad("a P-256 coordinate is not 32 bytes"));
            }
            let mut point = vec![0x04];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            PublicKey::Es256(point)
        }
        // OKP, EdDSA, Ed25519.
        (Some(1), EDDSA, Some(6)) => {
            let x = x.ok_or_else(|| bad("no x"))?;
            if x.len() != 32 {
                return Err(bad("an Ed25519 key is not 32 bytes"));
            }
            PublicKey::Ed25519(x.to_vec())
        }
        // RSA, RS256.
        (Some(3), RS256, _) => PublicKey::Rs256 {
            n: n.ok_or_else(|| bad("no modulus"))?.to_vec(),
            e: e.ok_or_else(|| bad("no exponent"))?.to_vec(),
        },
        _ => {
            return Err(bad(&format!(
                "algorithm {alg} (key type {kty:?}, curve {crv:?}) is not accepted: use ES256, EdDSA (Ed25519) or RS256"
            )));
        }
    };
    Ok((key, alg))
}

impl PublicKey {
    fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), WebauthnError> {
        let verified = match self {
            PublicKey::Es256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
                    .verify(message, sig)
            }
            PublicKey::Ed25519(key) => {
                UnparsedPublicKey::new(&signature::ED25519, key).verify(message, sig)
            }
            PublicKey::Rs256 { n, e } => signature::RsaPublicKeyComponents { n, e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                sig,
            ),
        };
        verified.map_err(|_| WebauthnError::Signature)
    }
}

/// Checks a registration's answer (`clientDataJSON` and `attestationObject`,
/// raw bytes) against what the ceremony issued; returns the new credential.
pub fn verify_registration(
    client_data_json: &[u8],
    attestation_object: &[u8],
    expected: &Expected<'_>,
) -> Result<Registered, WebauthnError> {
    let client = ClientData::parse(client_data_json)?;
    check_client_data(&client, "webauthn.create", expected)?;
    let bad = |m: &str| WebauthnError::Attestation(m.to_string());
    let mut d = Decoder::new(attestation_object);
    let entries = d
        .map()
        .map_err(|_| bad("not a CBOR map"))?
        .ok_or_else(|| bad("an indefinite-length map"))?;
    let (mut fmt, mut statement_entries, mut auth_data) = (None, None, None);
    for _ in 0..entries {
        match d.str().map_err(|_| bad("a key that is not text"))? {
            "fmt" => fmt = Some(d.str().map_err(|_| bad("`fmt` is not text"))?),
            "attStmt" => {
                statement_entries = d.map().map_err(|_| bad("`attStmt` is not a map"))?;
                for _ in 0..statement_entries.unwrap_or_default() * 2 {
                    skip(&mut d).map_err(|_| bad("`attStmt` is truncated"))?;
                }
            }
            "authData" => auth_data = Some(d.bytes().map_err(|_| bad("`authData` is not bytes"))?),
            _ => skip(&mut d).map_err(|_| bad("truncated"))?,
        }
    }
    if fmt != Some("none") || statement_entries != Some(0) {
        return Err(bad(&format!(
            "format `{}`: only `none` is accepted (the console asks for no attestation)",
            fmt.unwrap_or("?")
        )));
    }
    let data = parse_authenticator_data(auth_data.ok_or_else(|| bad("no `authData`"))?)?;
    check_authenticator_data(&data, expected)?;
    let (credential_id, public_key) = data.credential.ok_or_else(|| {
        WebauthnError::AuthenticatorData("no attested credential in a registration".into())
    })?;
    if credential_id.is_empty() || credential_id.len() > 1023 {
        return Err(WebauthnError::AuthenticatorData(
            "the credential id is empty or longer than 1023 bytes".into(),
        ));
    }
    let (_, algorithm) = parse_cose_key(&public_key)?;
    Ok(Registered {
        credential_id,
        public_key,
        algorithm,
        sign_count: data.sign_count,
        user_verified: data.flags & FLAG_UV != 0,
    })
}

/// Checks an assertion (raw `clientDataJSON`, `authenticatorData` and
/// `signature`) with the credential's stored COSE key and counter.
pub fn verify_assertion(
    client_data_json: &[u8],
    authenticator_data: &[u8],
    sig: &[u8],
    public_key: &[u8],
    stored_count: u32,
    expected: &Expected<'_>,
) -> Result<Asserted, WebauthnError> {
    let client = ClientData::parse(client_data_json)?;
    check_client_data(&client, "webauthn.get", expected)?;
    let data = parse_authenticator_data(authenticator_data)?;
    check_authenticator_data(&data, expected)?;
    let (key, _) = parse_cose_key(public_key)?;
    let mut message = authenticator_data.to_vec();
    message.extend_from_slice(&Sha256::digest(client_data_json));
    key.verify(&message, sig)?;
    let seen = data.sign_count;
    if (seen != 0 || stored_count != 0) && seen <= stored_count {
        return Err(WebauthnError::Counter {
            stored: stored_count,
            seen,
        });
    }
    Ok(Asserted {
        sign_count: seen,
        user_verified: data.flags & FLAG_UV != 0,
    })
}

/// A software authenticator for tests: makes registrations and assertions
/// the way a browser and a FIDO2 authenticator would (other crates' tests
/// use it through the `testing` feature).
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, missing_docs)]
pub mod soft {
    use super::*;
    use minicbor::Encoder;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    pub enum Key {
        Es256(EcdsaKeyPair),
        Ed25519(Ed25519KeyPair),
    }

    pub struct Authenticator {
        pub key: Key,
        pub id: Vec<u8>,
        pub count: u32,
        pub flags: u8,
    }

    impl Authenticator {
        pub fn new(es256: bool) -> Self {
            let rng = SystemRandom::new();
            let key = if es256 {
                let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
                Key::Es256(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
            } else {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                Key::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
            };
            Authenticator {
                key,
                id: vec![7; 16],
                count: 0,
                flags: FLAG_UP | FLAG_UV,
            }
        }

        pub fn cose(&self) -> Vec<u8> {
            let mut e = Encoder::new(Vec::new());
            match &self.key {
                Key::Es256(k) => {
                    let p = k.public_key().as_ref();
                    e.map(5).unwrap();
                    e.i64(1).unwrap().i64(2).unwrap();
                    e.i64(3).unwrap().i64(ES256).unwrap();
                    e.i64(-1).unwrap().i64(1).unwrap();
                    e.i64(-2).unwrap().bytes(&p[1..33]).unwrap();
                    e.i64(-3).unwrap().bytes(&p[33..]).unwrap();
                }
                Key::Ed25519(k) => {
                    e.map(4).unwrap();
                    e.i64(1).unwrap().i64(1).unwrap();
                    e.i64(3).unwrap().i64(EDDSA).unwrap();
                    e.i64(-1).unwrap().i64(6).unwrap();
                    e.i64(-2).unwrap().bytes(k.public_key().as_ref()).unwrap();
                }
            }
            e.into_writer()
        }

        fn auth_data(&self, rp_id: &str, attested: bool) -> Vec<u8> {
            let mut out = Sha256::digest(rp_id.as_bytes()).to_vec();
            out.push(self.flags | if attested { FLAG_AT } else { 0 });
            out.extend_from_slice(&self.count.to_be_bytes());
            if attested {
                out.extend_from_slice(&[0; 16]);
                out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
                out.extend_from_slice(&self.id);
                out.extend_from_slice(&self.cose());
            }
            out
        }

        pub fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
            serde_json::json!({ "type": kind, "challenge": challenge, "origin": origin, "crossOrigin": false })
                .to_string()
                .into_bytes()
        }

        /// (clientDataJSON, attestationObject)
        pub fn register(&self, challenge: &str, origin: &str, rp_id: &str) -> (Vec<u8>, Vec<u8>) {
            let mut e = Encoder::new(Vec::new());
            e.map(3).unwrap();
            e.str("fmt").unwrap().str("none").unwrap();
            e.str("attStmt").unwrap().map(0).unwrap();
            e.str("authData")
                .unwrap()
                .bytes(&self.auth_data(rp_id, true))
                .unwrap();
            (
                Self::client_data("webauthn.create", challenge, origin),
                e.into_writer(),
            )
        }

        /// (clientDataJSON, authenticatorData, signature)
        pub fn assert(
            &mut self,
            challenge: &str,
            origin: &str,
            rp_id: &str,
        ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
            if self.count > 0 {
                self.count += 1;
            }
            let client = Self::client_data("webauthn.get", challenge, origin);
            let data = self.auth_data(rp_id, false);
            let mut message = data.clone();
            message.extend_from_slice(&Sha256::digest(&client));
            let sig = match &self.key {
                Key::Es256(k) => k
                    .sign(&SystemRandom::new(), &message)
                    .unwrap()
                    .as_ref()
                    .to_vec(),
                Key::Ed25519(k) => k.sign(&message).as_ref().to_vec(),
            };
            (client, data, sig)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::soft::Authenticator;
    use super::*;

    const ORIGIN: &str = "https://localhost:9443";
    const RP: &str = "localhost";

    fn expected(challenge: &str) -> Expected<'_> {
        Expected {
            challenge,
            origin: ORIGIN,
            rp_id: RP,
            require_uv: true,
        }
    }

    #[test]
    fn a_registration_and_its_assertions_verify_for_both_algorithms() {
        for es256 in [true, false] {
            let mut authenticator = Authenticator::new(es256);
            let (client, attestation) = authenticator.register("c1", ORIGIN, RP);
            let registered = verify_registration(&client, &attestation, &expected("c1")).unwrap();
            assert_eq!(registered.credential_id, authenticator.id);
            assert_eq!(registered.algorithm, if es256 { ES256 } else { EDDSA });
            assert!(registered.user_verified);
            let (c, d, s) = authenticator.assert("c2", ORIGIN, RP);
            let asserted =
                verify_assertion(&c, &d, &s, &registered.public_key, 0, &expected("c2")).unwrap();
            assert_eq!(asserted.sign_count, 0, "no counter: accepted");
            // Another key's signature does not verify.
            let other = Authenticator::new(es256);
            assert_eq!(
                verify_assertion(&c, &d, &s, &other.cose(), 0, &expected("c2")),
                Err(WebauthnError::Signature)
            );
        }
    }

    #[test]
    fn wrong_origin_challenge_type_relying_party_and_flags_are_refused() {
        let mut a = Authenticator::new(true);
        let (client, att) = a.register("c1", ORIGIN, RP);
        let key = verify_registration(&client, &att, &expected("c1"))
            .unwrap()
            .public_key;
        let check = |(c, d, s): (Vec<u8>, Vec<u8>, Vec<u8>)| {
            verify_assertion(&c, &d, &s, &key, 0, &expected("c2"))
        };
        assert_eq!(
            check(a.assert("c2", "https://evil.example", RP)),
            Err(WebauthnError::Origin("https://evil.example".into()))
        );
        // Another port of the same host is another origin.
        assert!(matches!(
            check(a.assert("c2", "https://localhost:8443", RP)),
            Err(WebauthnError::Origin(_))
        ));
        assert_eq!(
            check(a.assert("c-old", ORIGIN, RP)),
            Err(WebauthnError::Challenge)
        );
        assert_eq!(
            check(a.assert("c2", ORIGIN, "evil.example")),
            Err(WebauthnError::RelyingParty)
        );
        // A registration's answer is not an assertion.
        let (c, att) = a.register("c2", ORIGIN, RP);
        assert!(matches!(
            verify_assertion(&c, &att, &[], &key, 0, &expected("c2")),
            Err(WebauthnError::WrongType { .. })
        ));
        a.flags = FLAG_UP;
        assert_eq!(
            check(a.assert("c2", ORIGIN, RP)),
            Err(WebauthnError::UserVerification)
        );
        a.flags = FLAG_UV;
        assert_eq!(
            check(a.assert("c2", ORIGIN, RP)),
            Err(WebauthnError::UserPresence)
        );
        // A cross-origin frame is refused.
        a.flags = FLAG_UP | FLAG_UV;
        let (_, d, _) = a.assert("c2", ORIGIN, RP);
        let framed = serde_json::json!({ "type": "webauthn.get", "challenge": "c2", "origin": ORIGIN, "crossOrigin": true }).to_string();
        assert!(matches!(
            verify_assertion(framed.as_bytes(), &d, &[], &key, 0, &expected("c2")),
            Err(WebauthnError::Origin(_))
        ));
    }

    #[test]
    fn a_counter_that_does_not_increase_is_refused() {
        let mut a = Authenticator::new(false);
        a.count = 5;
        let (client, att) = a.register("c1", ORIGIN, RP);
        let registered = verify_registration(&client, &att, &expected("c1")).unwrap();
        assert_eq!(registered.sign_count, 5);
        let (c, d, s) = a.assert("c2", ORIGIN, RP);
        let key = &registered.public_key;
        assert_eq!(
            verify_assertion(&c, &d, &s, key, 5, &expected("c2"))
                .unwrap()
                .sign_count,
            6
        );
        // The same assertion again (a replay past the challenge check, or
        // a clone): the counter stands still.
        assert_eq!(
            verify_assertion(&c, &d, &s, key, 6, &expected("c2")),
            Err(WebauthnError::Counter { stored: 6, seen: 6 })
        );
        // A zero counter after a non-zero one went backwards.
        let mut zero = Authenticator::new(false);
        zero.key = a.key;
        zero.id = a.id;
        let (c, d, s) = zero.assert("c3", ORIGIN, RP);
        assert_eq!(
            verify_assertion(&c, &d, &s, key, 6, &expected("c3")),
            Err(WebauthnError::Counter { stored: 6, seen: 0 })
        );
    }

    #[test]
    fn attestation_other_than_none_and_malformed_input_are_refused() {
        let a = Authenticator::new(true);
        let (client, _) = a.register("c1", ORIGIN, RP);
        let mut e = minicbor::Encoder::new(Vec::new());
        e.map(3).unwrap();
        e.str("fmt").unwrap().str("packed").unwrap();
        e.str("attStmt").unwrap().map(1).unwrap();
        e.str("alg").unwrap().i64(-7).unwrap();
        e.str("authData").unwrap().bytes(&[0; 37]).unwrap();
        assert!(matches!(
            verify_registration(&client, &e.into_writer(), &expected("c1")),
            Err(WebauthnError::Attestation(_))
        ));
        for junk in [&b""[..], b"\xff", b"\xa1\x63fmt", &[0xbf, 0xff]] {
            assert!(verify_registration(&client, junk, &expected("c1")).is_err());
            assert!(verify_assertion(&client, junk, b"", &a.cose(), 0, &expected("c1")).is_err());
            assert!(parse_cose_key(junk).is_err());
        }
        assert!(ClientData::parse(b"{}").is_err());
    }
}
