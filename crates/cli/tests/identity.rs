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

#[test]
fn sensitive_admin_actions_need_a_fresh_totp_once_an_admin_enrolled() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir, None);
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
    assert_eq!(revoke["credential"], "admin token + totp");
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
