//! End-to-end tests of identity in depth against the real binary: human admins
//! with TOTP confirming sensitive actions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use portcullis_identity::TotpSecret;
use support::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn run(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = server.cli(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (at most one step) until at least 8 s remain in the current TOTP
/// step, so codes computed now are still in the window the server checks.
fn settle_in_step() {
    while now() % 30 > 22 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The quickstart's two routes in a config on ephemeral ports, with step-up
/// windows off: these tests hold every sensitive action to its own code
/// (`admin_roles.rs` tests the windows).
fn quickstart_config(dir: &std::path::Path) -> std::path::PathBuf {
    let routes = route("demo", "/demo", "builtin:demo", "public")
        + &route("payroll", "/payroll", "builtin:demo", "confidential");
    let path = config(dir, &routes, "");
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[admin]\n",
        "[admin]\nstep_up_seconds = 0\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sensitive_admin_actions_need_a_fresh_totp_once_an_admin_enrolled() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    // The quickstart's routes on ephemeral ports: the built-in quickstart's
    // fixed ports collide with other tests running in parallel.
    let cfg = quickstart_config(dir.path());
    let server = Server::start(dir, Some(&cfg));
    for agent in ["a1", "a2", "a3"] {
        server.create_agent(agent, &["reader"]);
    }

    // Nobody enrolled: the admin token alone may revoke (a fresh install must
    // be able to contain an agent).
    let (ok, _, err) = run(&server, &["agent", "revoke", "a1"]);
    assert!(ok, "{err}");

    let (ok, out, err) = run(&server, &["admin", "user", "add", "alice"]);
    assert!(ok, "{err}");
    let secret_text = out
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): "))
        .expect("secret printed")
        .to_string();
    assert!(
        out.contains("otpauth://totp/Portcullis:alice?secret="),
        "{out}"
    );
    let secret = TotpSecret::from_base32(&secret_text).unwrap();

    // Enrolled: the token alone no longer suffices.
    let (ok, _, err) = run(&server, &["agent", "revoke", "a2"]);
    assert!(!ok);
    assert!(err.contains("mfa_required"), "{err}");
    // A wrong code, and a right code for someone else, are refused.
    settle_in_step();
    let right = secret.code_at(now());
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let (ok, _, err) = run(
        &server,
        &["agent", "revoke", "a2", "--user", "alice", "--totp", wrong],
    );
    assert!(!ok);
    assert!(err.contains("invalid_totp"), "{err}");
    let (ok, _, err) = run(
        &server,
        &["agent", "revoke", "a2", "--user", "bob", "--totp", &right],
    );
    assert!(!ok);
    assert!(err.contains("invalid_totp"), "{err}");
    // The right code works once.
    let (ok, _, err) = run(
        &server,
        &["agent", "revoke", "a2", "--user", "alice", "--totp", &right],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &server,
        &["agent", "revoke", "a3", "--user", "alice", "--totp", &right],
    );
    assert!(!ok);
    assert!(err.contains("already used"), "{err}");
    // The next step's code (within the ±1 step window) is fresh. With one
    // admin enrolled, --user may be left out.
    let next = secret.code_at(now() + 30);
    let (ok, _, err) = run(&server, &["agent", "revoke", "a3", "--totp", &next]);
    assert!(ok, "{err}");

    // Enrolling a second admin needs the first one's TOTP.
    let (ok, _, err) = run(&server, &["admin", "user", "add", "bob"]);
    assert!(!ok);
    assert!(err.contains("mfa_required"), "{err}");

    let (ok, out, err) = run(&server, &["admin", "user", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("alice") && !out.contains(&secret_text),
        "{out}"
    );

    // The revocation is recorded with the human who confirmed it; nothing in
    // the log carries the secret or a code.
    let records = server.audit(100);
    let revoke = records
        .iter()
        .find(|r| r["action"] == "agent.revoke" && r["resource"] == "a2")
        .expect("revocation recorded");
    assert_eq!(revoke["principal"], "alice");
    assert_eq!(revoke["credential"], "admin token `admin` (owner) + totp");
    let first = records
        .iter()
        .find(|r| r["action"] == "agent.revoke" && r["resource"] == "a1")
        .unwrap();
    assert_eq!(first["principal"], "admin");
    let refused = records
        .iter()
        .filter(|r| r["outcome"] == "deny" && r["kind"] == "admin")
        .count();
    assert!(refused >= 4, "refused admin calls are recorded");
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(&secret_text) && !all.contains(&right));
    // The database holds the secret sealed, never in clear.
    let db = std::fs::read(server.state_dir().join("portcullis.db")).unwrap();
    let raw = secret.as_bytes();
    assert!(!db.windows(raw.len()).any(|w| w == raw));
    assert!(
        !db.windows(secret_text.len())
            .any(|w| w == secret_text.as_bytes())
    );
}

mod delegation {
    use super::*;
    use portcullis_identity::Ed25519Key;
    use serde_json::{Value, json};

    fn now_i() -> i64 {
        now() as i64
    }

    const IDP: &str = "https://idp.test";

    fn jwks(keys: &[&Ed25519Key]) -> String {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| {
                let mut jwk = k.public().to_json();
                jwk["kid"] = json!(k.kid());
                jwk["alg"] = json!("EdDSA");
                jwk
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn user_token(
        idp: &Ed25519Key,
        sub: &str,
        groups: &[&str],
        amr: &[&str],
        tweak: Value,
    ) -> String {
        let mut claims = json!({
            "iss": IDP, "aud": "portcullis", "sub": sub, "iat": now_i(),
            "exp": now_i() + 600, "groups": groups, "amr": amr,
        });
        for (k, v) in tweak.as_object().unwrap() {
            claims[k] = v.clone();
        }
        idp.sign_compact(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": idp.kid()}),
            &claims,
        )
    }

    /// `agent token NAME [--on-behalf-of FILE]`: Ok(token) or Err(stderr).
    fn exchange(server: &Server, agent: &str, subject: Option<&str>) -> Result<String, String> {
        let creds = server.path().join("creds");
        let mut args = vec![
            "agent".to_string(),
            "token".into(),
            agent.into(),
            "--creds".into(),
            creds.to_str().unwrap().into(),
        ];
        if let Some(subject) = subject {
            let file = server.path().join(format!("subject-{}", rand_suffix()));
            std::fs::write(&file, subject).unwrap();
            args.push("--on-behalf-of".into());
            args.push(file.to_str().unwrap().into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = server.cli(&args);
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn rand_suffix() -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        N.fetch_add(1, Ordering::Relaxed).to_string()
    }

    fn claims_of(token: &str) -> Value {
        use base64::Engine;
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    }

    /// GET `path` with a DPoP-bound token of `agent`: (status, code, request id).
    async fn call(server: &Server, agent: &str, token: &str, path: &str) -> (u16, String, String) {
        let key = Ed25519Key::from_private_jwk(
            &std::fs::read_to_string(server.path().join("creds").join(format!("{agent}.jwk")))
                .unwrap(),
        )
        .unwrap();
        let url = server.url(path);
        let proof = key
            .sign_dpop_proof("GET", &url, Some(token), now_i())
            .unwrap();
        let response = client(&server.ca_pem(), None)
            .get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
            .await
            .unwrap();
        let id = request_id(&response);
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            id,
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn agents_act_for_federated_users_within_what_the_user_may_do() {
        install_crypto();
        let (upstream, gate) = start_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let idp = Ed25519Key::generate();
        std::fs::write(dir.path().join("idp.jwks"), jwks(&[&idp])).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(
            policies.join("schema.cedarschema"),
            portcullis_policy::DEFAULT_SCHEMA,
        )
        .unwrap();
        std::fs::write(
            policies.join("p.cedar"),
            r#"
@id("assistants-read") permit(principal in Role::"assistant", action in Action::"read", resource);
@id("finance-payroll") permit(principal in Role::"finance", action in Action::"read", resource == Route::"payroll");
@id("users-api") permit(principal is User, action in Action::"read", resource == Route::"api");
@id("payroll-needs-mfa") forbid(principal, action, resource == Route::"payroll") when { context has delegation && !context.auth.mfa };
@id("short-chains-only-for-payroll") forbid(principal, action, resource == Route::"payroll") when { context has delegation && context.delegation.depth > 1 && !context.delegation.chain.contains("helper") };
"#,
        )
        .unwrap();
        let up = format!("http://{upstream}");
        let sections = format!(
            "{}{}[policy]\ndir = \"policies\"\n[identity]\nmax_delegation_depth = 2\n[[identity.oidc]]\nissuer = \"{IDP}\"\naudience = \"portcullis\"\njwks_file = \"idp.jwks\"\nclock_skew_seconds = 30\n",
            route("api", "/api", &up, "public"),
            route("payroll", "/payroll", &up, "confidential"),
        );
        let cfg = config(dir.path(), &sections, "");
        let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
            .await
            .unwrap();
        for agent in ["helper", "helper2", "helper3"] {
            server.create_agent(agent, &["assistant"]);
        }

        // The agent on its own may read payroll.
        let own = exchange(&server, "helper", None).unwrap();
        assert_eq!(call(&server, "helper", &own, "/payroll/x").await.0, 200);

        // Alice (finance, with a second factor) through the helper: allowed,
        // and the token says who acts for whom.
        let alice = user_token(&idp, "alice", &["finance"], &["pwd", "otp"], json!({}));
        let for_alice = exchange(&server, "helper", Some(&alice)).unwrap();
        let claims = claims_of(&for_alice);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["client_id"], "helper");
        assert_eq!(
            claims["act"]["sub"],
            "spiffe://portcullis.local/agent/helper"
        );
        assert_eq!(claims["amr"], json!(["mfa"]));
        let (status, _, id) = call(&server, "helper", &for_alice, "/payroll/x").await;
        assert_eq!(status, 200);
        let record = server.audit_record(&id);
        assert_eq!(record["principal"], "helper");
        assert!(
            record["credential"]
                .as_str()
                .unwrap()
                .contains("on behalf of alice"),
            "{record}"
        );

        // Bob is not in finance: the agent may, Bob may not, so it is denied,
        // naming the user's decision. Bob may read the api route.
        let bob = user_token(&idp, "bob", &[], &["otp"], json!({}));
        let for_bob = exchange(&server, "helper", Some(&bob)).unwrap();
        let (status, code, id) = call(&server, "helper", &for_bob, "/payroll/x").await;
        assert_eq!((status, code.as_str()), (403, "forbidden"));
        let record = server.audit_record(&id);
        assert_eq!(record["policies"], json!(["user:default-deny"]), "{record}");
        assert_eq!(call(&server, "helper", &for_bob, "/api/x").await.0, 200);

        // Carol is in finance but signed in without a second factor.
        let carol = user_token(&idp, "carol", &["finance"], &["pwd"], json!({}));
        let for_carol = exchange(&server, "helper", Some(&carol)).unwrap();
        let (status, _, id) = call(&server, "helper", &for_carol, "/payroll/x").await;
        assert_eq!(status, 403);
        assert_eq!(
            server.audit_record(&id)["policies"],
            json!(["payroll-needs-mfa"])
        );

        // Chains: helper2 acts for alice via helper (depth 2, allowed by the
        // cap, and policy sees the chain); a third hop exceeds the cap.
        let via_two = exchange(&server, "helper2", Some(&for_alice)).unwrap();
        let claims = claims_of(&via_two);
        assert_eq!(
            claims["act"]["act"]["sub"],
            "spiffe://portcullis.local/agent/helper"
        );
        assert_eq!(
            call(&server, "helper2", &via_two, "/payroll/x").await.0,
            200
        );
        let err = exchange(&server, "helper3", Some(&via_two)).unwrap_err();
        assert!(
            err.contains("invalid_grant") && err.contains("max_delegation_depth"),
            "{err}"
        );
        // No loops: helper cannot extend a chain it is already in.
        let err = exchange(&server, "helper", Some(&via_two)).unwrap_err();
        assert!(err.contains("already in the chain"), "{err}");
        // An agent's own token does not stand for a user.
        let err = exchange(&server, "helper2", Some(&own)).unwrap_err();
        assert!(err.contains("does not stand for a user"), "{err}");

        // Bad user tokens are refused at the exchange.
        for (what, token) in [
            (
                "wrong audience",
                user_token(&idp, "alice", &[], &[], json!({"aud": "other"})),
            ),
            (
                "expired",
                user_token(&idp, "alice", &[], &[], json!({"exp": now_i() - 60})),
            ),
            (
                "not yet valid",
                user_token(&idp, "alice", &[], &[], json!({"nbf": now_i() + 120})),
            ),
            (
                "unknown issuer",
                user_token(&idp, "alice", &[], &[], json!({"iss": "https://evil"})),
            ),
            (
                "alg none",
                idp.sign_compact(
                    &json!({"alg": "none", "kid": idp.kid()}),
                    &claims_of(&alice),
                ),
            ),
            (
                "HS256",
                idp.sign_compact(
                    &json!({"alg": "HS256", "kid": idp.kid()}),
                    &claims_of(&alice),
                ),
            ),
            (
                "foreign key",
                user_token(&Ed25519Key::generate(), "alice", &[], &[], json!({})),
            ),
        ] {
            let err = exchange(&server, "helper", Some(&token)).unwrap_err();
            assert!(err.contains("invalid_grant"), "{what}: {err}");
        }

        // Key rotation at the provider: a token with a new `kid` is accepted
        // after the gateway re-reads the keys (at most once a second).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let rotated = Ed25519Key::generate();
        std::fs::write(server.path().join("idp.jwks"), jwks(&[&idp, &rotated])).unwrap();
        let dave = user_token(&rotated, "dave", &["finance"], &["otp"], json!({}));
        exchange(&server, "helper", Some(&dave)).expect("rotated key accepted");

        // Disabling a user stops their delegated tokens at the next request
        // and refuses new exchanges; enabling restores them.
        let (ok, _, err) = run(&server, &["user", "disable", "alice", "--reason", "left"]);
        assert!(ok, "{err}");
        let (status, code, _) = call(&server, "helper", &for_alice, "/api/x").await;
        assert_eq!((status, code.as_str()), (401, "invalid_token"));
        let err = exchange(&server, "helper", Some(&alice)).unwrap_err();
        assert!(err.contains("disabled"), "{err}");
        let (ok, _, err) = run(&server, &["user", "enable", "alice"]);
        assert!(ok, "{err}");
        assert_eq!(call(&server, "helper", &for_alice, "/api/x").await.0, 200);

        // Revoking one token by `jti` stops it at once; the agent's other
        // tokens keep working.
        let jti = claims_of(&own)["jti"].as_str().unwrap().to_string();
        let (ok, _, err) = run(&server, &["token", "revoke", &jti, "--reason", "leaked"]);
        assert!(ok, "{err}");
        let (status, code, _) = call(&server, "helper", &own, "/api/x").await;
        assert_eq!((status, code.as_str()), (401, "invalid_token"));
        let fresh = exchange(&server, "helper", None).unwrap();
        assert_eq!(call(&server, "helper", &fresh, "/api/x").await.0, 200);
        let records = server.audit(300);
        for action in ["user.disable", "user.enable", "token.revoke"] {
            assert!(
                records.iter().any(|r| r["action"] == action),
                "{action} recorded"
            );
        }
        drop(gate);
    }
}

mod posture {
    use super::*;
    use portcullis_identity::Ed25519Key;
    use serde_json::{Value, json};

    const ATTESTOR: &str = "https://attestor.test";

    fn statement(key: &Ed25519Key, sub: &str, digest: &str) -> String {
        let now = now() as i64;
        key.sign_compact(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid()}),
            &json!({"iss": ATTESTOR, "aud": "portcullis-posture", "sub": sub,
                    "digest": digest, "iat": now, "exp": now + 300}),
        )
    }

    fn token(server: &Server, agent: &str, statement: Option<&str>) -> Result<String, String> {
        let creds = server.path().join("creds");
        let mut args = vec![
            "agent".to_string(),
            "token".into(),
            agent.into(),
            "--creds".into(),
            creds.to_str().unwrap().into(),
        ];
        if let Some(s) = statement {
            let file = server.path().join("posture.jwt");
            std::fs::write(&file, s).unwrap();
            args.push("--posture".into());
            args.push(file.to_str().unwrap().into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = server.cli(&args);
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    async fn get(server: &Server, agent: &str, token: &str, path: &str) -> u16 {
        let key = Ed25519Key::from_private_jwk(
            &std::fs::read_to_string(server.path().join("creds").join(format!("{agent}.jwk")))
                .unwrap(),
        )
        .unwrap();
        let url = server.url(path);
        let proof = key
            .sign_dpop_proof("GET", &url, Some(token), now() as i64)
            .unwrap();
        client(&server.ca_pem(), None)
            .get(&url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn confidential_routes_can_require_an_attested_pinned_workload() {
        install_crypto();
        let (upstream, gate) = start_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let attestor = Ed25519Key::generate();
        let mut jwk = attestor.public().to_json();
        jwk["kid"] = json!(attestor.kid());
        std::fs::write(
            dir.path().join("attestor.jwks"),
            json!({ "keys": [jwk] }).to_string(),
        )
        .unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(
            policies.join("schema.cedarschema"),
            portcullis_policy::DEFAULT_SCHEMA,
        )
        .unwrap();
        std::fs::write(
            policies.join("p.cedar"),
            r#"
@id("workers-read") permit(principal in Role::"worker", action in Action::"read", resource);
@id("confidential-needs-attested-workload") forbid(principal, action in [Action::"read", Action::"write"], resource is Route)
  when { resource.classification_level >= 2 }
  unless { context.posture.attested && context.posture.matches_pin };
"#,
        )
        .unwrap();
        let up = format!("http://{upstream}");
        let sections = format!(
            "{}{}[policy]\ndir = \"policies\"\n[identity.posture_attestor]\nissuer = \"{ATTESTOR}\"\naudience = \"portcullis-posture\"\njwks_file = \"attestor.jwks\"\n",
            route("api", "/api", &up, "public"),
            route("payroll", "/payroll", &up, "confidential"),
        );
        let cfg = config(dir.path(), &sections, "");
        let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
            .await
            .unwrap();
        server.create_agent("worker", &["worker"]);
        server.create_agent("other", &["worker"]);
        let spiffe = "spiffe://portcullis.local/agent/worker";
        let good = format!("sha256:{}", "ab".repeat(32));
        let bad = format!("sha256:{}", "cd".repeat(32));

        // No attestation: public data only.
        let plain = token(&server, "worker", None).unwrap();
        assert_eq!(get(&server, "worker", &plain, "/api/x").await, 200);
        assert_eq!(get(&server, "worker", &plain, "/payroll/x").await, 403);

        // Attested but not pinned yet: still no.
        let attested = token(
            &server,
            "worker",
            Some(&statement(&attestor, spiffe, &good)),
        )
        .unwrap();
        assert_eq!(get(&server, "worker", &attested, "/payroll/x").await, 403);

        // Pinned to the digest, on loopback: the attested token is let in (the
        // pin is read at request time), a token attesting another digest is not.
        let (ok, _, err) = run(
            &server,
            &[
                "agent",
                "pin",
                "worker",
                "--digest",
                &good,
                "--network",
                "127.0.0.0/8",
            ],
        );
        assert!(ok, "{err}");
        assert_eq!(get(&server, "worker", &attested, "/payroll/x").await, 200);
        let wrong = token(&server, "worker", Some(&statement(&attestor, spiffe, &bad))).unwrap();
        assert_eq!(get(&server, "worker", &wrong, "/payroll/x").await, 403);

        // Statements that must be refused at the token endpoint.
        let err = token(&server, "other", Some(&statement(&attestor, spiffe, &good))).unwrap_err();
        assert!(err.contains("attests another workload"), "{err}");
        let forged = statement(&Ed25519Key::generate(), spiffe, &good);
        let err = token(&server, "worker", Some(&forged)).unwrap_err();
        assert!(err.contains("posture statement refused"), "{err}");
        let err = token(
            &server,
            "worker",
            Some(&statement(&attestor, spiffe, "sha256:zz")),
        )
        .unwrap_err();
        assert!(err.contains("digest"), "{err}");

        // Moved to a network the pin does not allow: no new tokens, and the
        // token in hand no longer matches the pin.
        let (ok, _, err) = run(
            &server,
            &[
                "agent",
                "pin",
                "worker",
                "--digest",
                &good,
                "--network",
                "10.0.0.0/8",
            ],
        );
        assert!(ok, "{err}");
        let err = token(
            &server,
            "worker",
            Some(&statement(&attestor, spiffe, &good)),
        )
        .unwrap_err();
        assert!(err.contains("pinned networks"), "{err}");
        assert_eq!(get(&server, "worker", &attested, "/payroll/x").await, 403);
        assert_eq!(get(&server, "worker", &attested, "/api/x").await, 200);
        let (ok, _, err) = run(
            &server,
            &["agent", "pin", "worker", "--digest", "sha256:12"],
        );
        assert!(!ok && err.contains("64 hex"), "{err}");
        let pinned: Vec<Value> = server
            .audit(200)
            .into_iter()
            .filter(|r| r["action"] == "agent.pin")
            .collect();
        assert_eq!(pinned.len(), 2);
        drop(gate);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn whoami_and_agent_list_show_how_the_gateway_sees_agents() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cfg = quickstart_config(dir.path());
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    server.create_agent("seen-bot", &["reader", "ops"]);
    server.create_agent("idle-bot", &["reader"]);
    let creds = server.path().join("creds");
    let creds = creds.to_str().unwrap();

    // The certificate, as the gateway sees it (this also makes it "seen").
    let (ok, out, err) = run(&server, &["whoami", "--name", "seen-bot", "--creds", creds]);
    assert!(ok, "{err}");
    let me: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(me["agent"], "seen-bot");
    assert_eq!(me["auth"]["method"], "mtls");
    assert_eq!(me["auth"]["binding"], "mtls");
    assert_eq!(me["roles"], serde_json::json!(["reader", "ops"]));
    assert_eq!(me["posture"]["attested"], false);
    assert!(me["expires_at"].as_i64().unwrap() > now() as i64);

    // A token: method, age, expiry.
    let out = server.cli(&["agent", "token", "seen-bot", "--creds", creds]);
    assert!(out.status.success());
    let token_file = server.path().join("seen.token");
    std::fs::write(&token_file, &out.stdout).unwrap();
    let (ok, out, err) = run(
        &server,
        &[
            "whoami",
            "--name",
            "seen-bot",
            "--creds",
            creds,
            "--token",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let me: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(me["auth"]["method"], "token");
    assert_eq!(me["auth"]["binding"], "dpop");
    assert!(me["credential"].as_str().unwrap().contains("cnf=dpop"));

    // The list: credential kinds, expiry, last seen only for the one seen.
    let (ok, out, err) = run(&server, &["agent", "list"]);
    assert!(ok, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not in {out}"))
            .to_string()
    };
    let seen = line("seen-bot");
    assert!(
        seen.contains("mtls,token") && seen.contains("reader,ops") && seen.ends_with("active"),
        "{out}"
    );
    let idle = line("idle-bot");
    let cols: Vec<&str> = idle.split_whitespace().collect();
    assert_eq!(cols[4], "-", "never seen: {idle}");
    assert_ne!(seen.split_whitespace().nth(4).unwrap(), "-", "{seen}");

    // A revoked agent: whoami says why every request of it is refused.
    let (ok, _, err) = run(&server, &["agent", "revoke", "idle-bot"]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&server, &["whoami", "--name", "idle-bot", "--creds", creds]);
    assert!(!ok);
    assert!(err.contains("agent_revoked"), "{err}");
    let (ok, out, _) = run(&server, &["agent", "list"]);
    assert!(
        ok && line_of(&out, "idle-bot").ends_with("revoked"),
        "{out}"
    );
}

fn line_of(out: &str, name: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap()
        .to_string()
}

/// A JWKS served over HTTP on loopback (as an identity provider publishes
/// it), fetched at start and again when a token names an unknown key.
#[tokio::test(flavor = "multi_thread")]
async fn oidc_keys_are_fetched_from_the_jwks_url_and_refreshed_on_rotation() {
    use portcullis_identity::Ed25519Key;
    use serde_json::json;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    install_crypto();
    let jwks = |keys: &[&Ed25519Key]| {
        let keys: Vec<_> = keys
            .iter()
            .map(|k| {
                let mut j = k.public().to_json();
                j["kid"] = json!(k.kid());
                j
            })
            .collect();
        json!({ "keys": keys }).to_string()
    };
    let first = Ed25519Key::generate();
    let served = Arc::new(Mutex::new(jwks(&[&first])));
    let fetches = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    {
        let (served, fetches) = (served.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let body = served.lock().unwrap().clone();
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        "[[identity.oidc]]\nissuer = \"https://idp.url.test\"\naudience = \"portcullis\"\njwks_url = \"http://{jwks_addr}/jwks\"\n"
    );
    let cfg = config(dir.path(), &sections, "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "fetched at start"
    );
    server.create_agent("helper", &["reader"]);
    let creds = server.path().join("creds");
    let exchange = |key: &Ed25519Key| {
        let t = now() as i64;
        let token = key.sign_compact(
            &json!({"alg": "EdDSA", "kid": key.kid()}),
            &json!({"iss": "https://idp.url.test", "aud": "portcullis", "sub": "erin", "iat": t, "exp": t + 300}),
        );
        let file = server.path().join("erin.jwt");
        std::fs::write(&file, token).unwrap();
        server.cli(&[
            "agent",
            "token",
            "helper",
            "--creds",
            creds.to_str().unwrap(),
            "--on-behalf-of",
            file.to_str().unwrap(),
        ])
    };
    assert!(exchange(&first).status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = Ed25519Key::generate();
    *served.lock().unwrap() = jwks(&[&second]);
    let out = exchange(&second);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one refresh"
    );
    // The retired key no longer verifies once the provider dropped it.
    let out = exchange(&first);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_grant"));
}
