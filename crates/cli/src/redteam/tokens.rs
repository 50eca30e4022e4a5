//! Token and DPoP replay: the agent gets a DPoP-bound access token the
//! ordinary way (a `private_key_jwt` assertion and a proof, no client
//! certificate), shows it works once, and then tries what a thief holding a
//! copy of a request would: the same proof again, the token without its
//! proof or as a bearer token, a proof for another request or from another
//! key, a forged or unsigned token, and the client assertion a second time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_identity::{ASSERTION_TYPE, Ed25519Key};
use serde_json::{Value, json};

use super::report::{Family, Probe};
use super::wire::{Answer, Tls};
use super::{Target, now};

const FAMILY: &str = "token-replay";

/// Asks the token endpoint for a DPoP-bound token; returns the assertion
/// used (for the replay probe) and the answer.
fn token_request(
    t: &Target,
    key: &Ed25519Key,
    endpoint: &str,
    assertion: &str,
) -> anyhow::Result<Answer> {
    let form = serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
    ])?;
    let proof = key.sign_dpop_proof("POST", endpoint, None, now())?;
    t.wire.request(
        Tls::Anonymous,
        "POST",
        "/oauth2/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("DPoP", &proof),
        ],
        &form,
    )
}

/// The token's parts with `f` applied to its claims, re-encoded.
fn claims_of(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

pub fn token_replay(t: &Target) -> Family {
    let key = &t.key;
    let meta = match t.wire.request(
        Tls::Anonymous,
        "GET",
        "/.well-known/oauth-authorization-server",
        &[],
        "",
    ) {
        Ok(a) if a.status == 200 => a.json(),
        Ok(a) => {
            return Family::skipped(
                FAMILY,
                format!("the gateway has no token endpoint (HTTP {})", a.status),
            );
        }
        Err(e) => return Family::skipped(FAMILY, format!("no token endpoint: {e:#}")),
    };
    let Some(endpoint) = meta["token_endpoint"].as_str() else {
        return Family::skipped(FAMILY, "the gateway's metadata names no token endpoint");
    };
    let assertion = match key.sign_assertion(&t.agent, endpoint, now(), 60) {
        Ok(a) => a,
        Err(e) => return Family::skipped(FAMILY, format!("cannot sign an assertion: {e}")),
    };
    let token = match token_request(t, key, endpoint, &assertion) {
        Ok(a) if a.status == 200 => match a.json()["access_token"].as_str() {
            Some(tok) => tok.to_string(),
            None => return Family::skipped(FAMILY, "the token endpoint sent no token"),
        },
        Ok(a) => {
            return Family::skipped(
                FAMILY,
                format!(
                    "the token endpoint refused this agent a token (HTTP {}, {})",
                    a.status,
                    a.code().unwrap_or_default()
                ),
            );
        }
        Err(e) => return Family::skipped(FAMILY, format!("token request failed: {e:#}")),
    };
    let path = format!("{}/rt-token", t.routes.open);
    let url = format!("{}{path}", t.wire.base);
    let dpop_auth = format!("DPoP {token}");
    let send = |headers: &[(&str, &str)]| t.wire.request(Tls::Anonymous, "GET", &path, headers, "");
    let proof = |htm: &str, htu: &str, ath: Option<&str>, at: i64, k: &Ed25519Key| {
        k.sign_dpop_proof(htm, htu, ath, at).unwrap_or_default()
    };
    // The honest request first: without it no refusal below means anything.
    let good = proof("GET", &url, Some(&token), now(), key);
    match send(&[("Authorization", &dpop_auth), ("DPoP", &good)]) {
        Ok(a) if a.status < 300 => {}
        Ok(a) => {
            return Family::skipped(
                FAMILY,
                format!(
                    "the token with a fresh proof was refused on `{path}` (HTTP {}, {}): nothing to replay",
                    a.status,
                    a.code().unwrap_or_default()
                ),
            );
        }
        Err(e) => return Family::skipped(FAMILY, format!("the token request failed: {e:#}")),
    }
    let other = Ed25519Key::generate();
    let mut cases: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "proof-replayed",
            vec![
                ("Authorization".into(), dpop_auth.clone()),
                ("DPoP".into(), good.clone()),
            ],
        ),
        (
            "bearer-without-proof",
            vec![("Authorization".into(), format!("Bearer {token}"))],
        ),
        (
            "dpop-without-proof",
            vec![("Authorization".into(), dpop_auth.clone())],
        ),
        (
            "proof-for-another-url",
            vec![
                ("Authorization".into(), dpop_auth.clone()),
                (
                    "DPoP".into(),
                    proof("GET", &format!("{url}-other"), Some(&token), now(), key),
                ),
            ],
        ),
        (
            "proof-for-another-method",
            vec![
                ("Authorization".into(), dpop_auth.clone()),
                ("DPoP".into(), proof("POST", &url, Some(&token), now(), key)),
            ],
        ),
        (
            "proof-from-another-key",
            vec![
                ("Authorization".into(), dpop_auth.clone()),
                (
                    "DPoP".into(),
                    proof("GET", &url, Some(&token), now(), &other),
                ),
            ],
        ),
        (
            "proof-without-token-hash",
            vec![
                ("Authorization".into(), dpop_auth.clone()),
                ("DPoP".into(), proof("GET", &url, None, now(), key)),
            ],
        ),
        (
            "proof-from-an-hour-ago",
            vec![
                ("Authorization".into(), dpop_auth.clone()),
                (
                    "DPoP".into(),
                    proof("GET", &url, Some(&token), now() - 3600, key),
                ),
            ],
        ),
    ];
    // Forgeries made from the real token's claims.
    if let Some(claims) = claims_of(&token) {
        let unsigned = format!(
            "{}.{}.",
            B64.encode(json!({"alg": "none", "typ": "at+jwt"}).to_string()),
            B64.encode(claims.to_string())
        );
        let mut roles = claims.clone();
        roles["roles"] = json!(["admin", "writer"]);
        let resigned = other.sign_compact(&json!({"alg": "EdDSA", "typ": "at+jwt"}), &roles);
        let mut tampered = token.clone();
        let last = tampered
            .pop()
            .map(|c| if c == 'A' { 'B' } else { 'A' })
            .unwrap_or('A');
        tampered.push(last);
        for (name, forged) in [
            ("unsigned-token", unsigned),
            ("token-signed-by-another-key", resigned),
            ("token-signature-altered", tampered),
        ] {
            let p = proof("GET", &url, Some(&forged), now(), key);
            cases.push((
                name,
                vec![
                    ("Authorization".into(), format!("DPoP {forged}")),
                    ("DPoP".into(), p),
                ],
            ));
        }
    }
    let mut probes: Vec<Probe> = cases
        .iter()
        .map(|(name, headers)| {
            let sent: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let request = format!(
                "GET {path} HTTP/1.1 (no client certificate) with {}",
                headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match send(&sent) {
                Err(e) => Probe::unanswered(name, &request, &e, true),
                Ok(a) => {
                    let held = a.status == 401 || a.status == 403;
                    let why = if held {
                        format!(
                            "refused: HTTP {} {}",
                            a.status,
                            a.code().unwrap_or_default()
                        )
                    } else {
                        format!("HTTP {}: the request was served", a.status)
                    };
                    Probe::from_answer(name, &request, &a, held, why)
                }
            }
        })
        .collect();
    // The client assertion, used once already, presented again.
    let request = "POST /oauth2/token with the client assertion already used".to_string();
    probes.push(match token_request(t, key, endpoint, &assertion) {
        Err(e) => Probe::unanswered("assertion-replayed", &request, &e, true),
        Ok(a) => {
            let held = a.status >= 400;
            let why = if held {
                format!(
                    "refused: HTTP {} {}",
                    a.status,
                    a.code().unwrap_or_default()
                )
            } else {
                "a second token was issued for the same assertion".to_string()
            };
            Probe::from_answer("assertion-replayed", &request, &a, held, why)
        }
    });
    Family::judged(FAMILY, probes)
}
