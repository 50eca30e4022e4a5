//! Agent identity: the Portcullis certificate authority, SPIFFE-style X.509 SVIDs
//! for agents, and verification of the client certificates agents present.
//!
//! This crate does no IO: keys and certificates come in and go out as PEM text;
//! the binary decides where they live.
#![forbid(unsafe_code)]

mod ca;
mod federation;
mod replay;
mod spiffe;
mod token;
mod totp;
mod verify;
pub mod webauthn;

pub use ca::{
    ADMIN_ORGANIZATION, CaError, CertificateAuthority, IssuedCertificate, MAX_ADMIN_TTL,
    MAX_AGENT_TTL, new_agent_key_and_csr,
};
pub use federation::{
    FederatedIssuer, IdToken, MAX_CLOCK_SKEW, PostureStatement, UserToken, claimed_issuer,
};
/// A JSON Web Key Set (RFC 7517), as OIDC issuers publish them.
pub use jsonwebtoken::jwk::JwkSet;
pub use replay::{ReplayCache, ReplayRefusal};
pub use spiffe::SpiffeId;
pub use token::{
    ASSERTION_CLOCK_SKEW, ASSERTION_TYPE, AccessClaims, Actor, AssertionClaims, Audience,
    AuthorizedGrant, CLIENT_SIGNING_ALGS, Confirmation, DEFAULT_TOKEN_TTL, DPOP_NONCE_STEP,
    DPOP_WINDOW, DelegatedUser, DpopClaims, DpopNonces, DpopProof, Ed25519Key,
    MAX_ASSERTION_LIFETIME, MAX_TOKEN_TTL, OAUTH_CLIENT_ACTOR, PublicJwk, TokenError, TokenIssuer,
    access_token_hash, assertion_client, assertion_kid, cert_thumbprint, ed25519_thumbprint,
    random_id, verify_assertion, verify_dpop_proof,
};
pub use totp::{TOTP_DIGITS, TOTP_SKEW_STEPS, TOTP_STEP, TotpError, TotpSecret, percent_encode};
pub use verify::{CertRejection, ClientCertChecker, DeferredClientAuth, PeerCertificate};
