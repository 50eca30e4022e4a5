//! Per-request cost of authenticating with a sender-constrained token, against
//! a bare Ed25519 signature verification measured in the same run.
//!
//! Run: `cargo bench -p portcullis-identity --bench tokens`
//!
//! - **baseline**: one `ed25519-dalek` `verify_strict` of a 300-byte message
//!   (the floor: a token check needs at least this).
//! - **access token**: `TokenIssuer::verify` (header, `kid`, EdDSA signature,
//!   `iss`/`aud`/`exp`/`nbf`/lifetime, `cnf`): the mTLS-bound (`Bearer`) path.
//! - **token + DPoP proof**: the above plus `verify_dpop_proof` (second
//!   signature, `htm`/`htu`/`iat`/`ath`) and the `jti` replay-cache insert:
//!   what the authenticate stage does per DPoP request.
//!
//! Measured on the 2-core development machine (2026-11-23), release profile,
//! other builds running on the machine (two runs):
//!
//! | path | µs per request | vs baseline |
//! | --- | --- | --- |
//! | baseline: one Ed25519 verify_strict | 31.1 / 32.6 | 1.00x |
//! | access token verify (mTLS-bound path) | 33.4 / 34.2 | 1.05–1.08x |
//! | access token + DPoP proof + jti cache | 74.8 / 74.7 | 2.29–2.41x |
//!
//! Signature verification dominates: a DPoP request checks two signatures
//! (token and proof), so ~2x the baseline is its floor; the rest (~10 µs) is
//! base64/JSON of two JWS headers and claims and the proof key's decoding.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use portcullis_identity::{Confirmation, Ed25519Key, ReplayCache, TokenIssuer, verify_dpop_proof};

const ROUNDS: usize = 20_000;

fn time<F: FnMut(usize)>(mut f: F) -> f64 {
    for i in 0..ROUNDS / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..ROUNDS {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64
}

fn main() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let issuer = TokenIssuer::new(Ed25519Key::generate(), "https://127.0.0.1:8443").unwrap();
    let agent = Ed25519Key::generate();
    let (token, _) = issuer
        .issue(
            "bench-bot",
            "spiffe://portcullis.local/agent/bench-bot",
            Confirmation {
                jkt: Some(agent.kid()),
                x5t_s256: None,
            },
            now,
            300,
        )
        .unwrap();
    let url = "https://127.0.0.1:8443/echo/items";
    // Distinct proofs, as real clients send: each jti is used once.
    let proofs: Vec<String> = (0..ROUNDS + ROUNDS / 10)
        .map(|_| {
            agent
                .sign_dpop_proof("GET", url, Some(&token), now)
                .unwrap()
        })
        .collect();

    let key = SigningKey::from_bytes(&[7; 32]);
    let message = vec![0x5a_u8; 300];
    let signature = key.sign(&message);
    let verifying = key.verifying_key();
    let baseline = time(|_| {
        verifying
            .verify_strict(black_box(&message), black_box(&signature))
            .unwrap();
    });
    let bearer = time(|_| {
        black_box(issuer.verify(black_box(&token), now).unwrap());
    });
    let cache = ReplayCache::new(1 << 20);
    let mut next = 0;
    let dpop = time(|_| {
        let claims = issuer.verify(black_box(&token), now).unwrap();
        let proof = verify_dpop_proof(&proofs[next], "GET", url, Some(&token), now).unwrap();
        next += 1;
        assert_eq!(Some(&proof.jkt), claims.cnf.jkt.as_ref());
        cache
            .check_and_insert(&proof.claims.jti, now + 60, now)
            .unwrap();
    });
    println!("| path | µs per request | vs baseline |");
    println!("| --- | --- | --- |");
    println!("| baseline: one Ed25519 verify_strict | {baseline:.1} | 1.00x |");
    println!(
        "| access token verify (mTLS-bound path) | {bearer:.1} | {:.2}x |",
        bearer / baseline
    );
    println!(
        "| access token + DPoP proof + jti cache | {dpop:.1} | {:.2}x |",
        dpop / baseline
    );
}
