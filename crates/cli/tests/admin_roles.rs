//! End-to-end tests of admin identities against the real binary: named
//! credentials with roles enforced on every admin route, rotation and
//! revocation in force on the next request, the one-time bootstrap owner,
//! and step-up windows (one TOTP confirmation, bound to the credential,
//! never spent by a refused or failed action).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use portcullis_admin::{ROLES, ROUTE_PERMISSIONS, Role};
use portcullis_identity::TotpSecret;
use serde_json::{Value, json};
use support::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (at most one step) until at least 8 s remain in the current TOTP step.
fn settle_in_step() {
    while now() % 30 > 22 {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the CLI with `token` as the admin credential; (ok, stdout, stderr).
fn as_admin(server: &Server, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg("--state-dir")
        .arg(server.state_dir())
        .env("PORTCULLIS_ADMIN_TOKEN", token)
        .env_remove("PORTCULLIS_USER")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `admin token create NAME --role ROLE` with the bootstrap owner; the token.
fn create(server: &Server, name: &str, role: &str) -> String {
    let (ok, out, err) = as_admin(
        server,
        server.admin_token().trim(),
        &["admin", "token", "create", name, "--role", role],
    );
    assert!(ok, "{err}");
    assert!(err.contains(&format!("`{name}` ({role})")), "{err}");
    let token = out.trim().to_string();
    assert!(token.starts_with("pcadm_"), "{out}");
    token
}

fn server_with(dir: tempfile::TempDir, admin: &str) -> Server {
    let cfg = dir.path().join("portcullis.toml");
    let routes = route("demo", "/demo", "builtin:demo", "public");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n{routes}\n"
        ),
    )
    .unwrap();
    Server::start(dir, Some(&cfg))
}

/// Sends `method path` with `token`; the status and the error code, if any.
async fn call(
    http: &reqwest::Client,
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
) -> (u16, String) {
    let url = format!("https://{}/admin/v1{path}", server.admin);
    let request = match method {
        "GET" => http.get(url),
        "POST" => http.post(url).json(&json!({})),
        "DELETE" => http.delete(url),
        other => panic!("no method {other} in the table's test"),
    };
    let response = request.bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// A concrete path for a route pattern: every parameter a name that exists
/// nowhere, so an allowed call is refused by its handler (not found, bad
/// request) and changes nothing.
fn concrete(route: &str) -> String {
    route
        .split('/')
        .map(|part| {
            if part.starts_with('{') {
                "nobody-here"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_is_refused_exactly_to_the_roles_without_its_permission() {
    install_crypto();
    let server = server_with(tempfile::tempdir().unwrap(), "");
    let http = client(&server.ca_pem(), None);
    let mut tokens = Vec::new();
    for role in ROLES {
        let token = if role == Role::Owner {
            server.admin_token().trim().to_string()
        } else {
            create(&server, &format!("as-{role}"), role.as_str())
        };
        tokens.push((role, token));
    }
    let mut checked = 0;
    for (method, route, permission) in ROUTE_PERMISSIONS {
        let path = concrete(route);
        for (role, token) in &tokens {
            let (status, code) = call(&http, &server, token, method, &path).await;
            let refused = status == 403 && code == "forbidden";
            assert_eq!(
                refused,
                !role.grants(*permission),
                "{role} {method} {path} ({permission:?}): {status} {code}"
            );
            checked += 1;
        }
    }
    assert!(checked >= ROUTE_PERMISSIONS.len() * 5);

    // Spelled out for the roles the issue names: the auditor reads and acts
    // on nothing; the approver decides and nothing else.
    let token = |r: Role| tokens.iter().find(|(x, _)| *x == r).unwrap().1.clone();
    let auditor = token(Role::Auditor);
    let (ok, out, err) = as_admin(&server, &auditor, &["agent", "list", "-o", "json"]);
    assert!(ok, "{err}");
    serde_json::from_str::<Value>(&out).unwrap();
    for args in [
        &["agent", "revoke", "anyone"][..],
        &["admin", "token", "create", "x", "--role", "owner"],
        &["policy", "rollback", "1"],
        &["approvals", "deny", "t-1"],
    ] {
        let (ok, _, err) = as_admin(&server, &auditor, args);
        assert!(!ok && err.contains("forbidden"), "{args:?}: {err}");
    }
    let approver = token(Role::Approver);
    let (status, code) = call(&http, &server, &approver, "POST", "/approvals/t-1/deny").await;
    assert_ne!((status, code.as_str()), (403, "forbidden"));
    let (ok, _, err) = as_admin(&server, &approver, &["agent", "revoke", "anyone"]);
    assert!(!ok && err.contains("`approver` role"), "{err}");

    // Refusals are recorded with the credential that was refused.
    let refused = server.wait_record("the auditor's refused call", |r| {
        r["principal"] == "as-auditor" && r["outcome"] == "deny"
    });
    // Recorded before it, so in the log by now.
    let records = server.audit(500);
    assert_eq!(refused["error_code"], "forbidden");
    assert_eq!(refused["credential"], "admin token `as-auditor` (auditor)");
    let created = records
        .iter()
        .find(|r| r["action"] == "admin_token.create" && r["resource"] == "as-approver")
        .expect("credential creation recorded");
    assert_eq!(created["principal"], "admin");
    let all = serde_json::to_string(&records).unwrap();
    for (_, t) in &tokens {
        assert!(!all.contains(t.as_str()), "a token reached the audit log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_and_revocation_are_in_force_on_the_next_request_and_the_bootstrap_is_one_time() {
    install_crypto();
    let server = server_with(tempfile::tempdir().unwrap(), "");
    let bootstrap = server.admin_token().trim().to_string();
    let ops = create(&server, "ops", "operator");
    let (ok, _, err) = as_admin(&server, &ops, &["agent", "list"]);
    assert!(ok, "{err}");

    // Rotate: the old token is refused at once, the new one works.
    let (ok, out, err) = as_admin(&server, &bootstrap, &["admin", "token", "rotate", "ops"]);
    assert!(ok, "{err}");
    let rotated = out.trim().to_string();
    assert_ne!(rotated, ops);
    let (ok, _, err) = as_admin(&server, &ops, &["agent", "list"]);
    assert!(!ok && err.contains("invalid_credential"), "{err}");
    let (ok, _, err) = as_admin(&server, &rotated, &["agent", "list"]);
    assert!(ok, "{err}");

    // Revoke: refused at once; a revoked name cannot be revoked again or reused.
    let (ok, _, err) = as_admin(&server, &bootstrap, &["admin", "token", "revoke", "ops"]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_admin(&server, &rotated, &["agent", "list"]);
    assert!(!ok && err.contains("invalid_credential"), "{err}");
    let (ok, _, err) = as_admin(&server, &bootstrap, &["admin", "token", "revoke", "ops"]);
    assert!(!ok && err.contains("not_found"), "{err}");
    let (ok, _, err) = as_admin(
        &server,
        &bootstrap,
        &["admin", "token", "create", "ops", "--role", "auditor"],
    );
    assert!(!ok && err.contains("conflict"), "{err}");

    // The bootstrap owner is revocable, but never the last owner.
    let (ok, _, err) = as_admin(&server, &bootstrap, &["admin", "token", "revoke", "admin"]);
    assert!(!ok && err.contains("last owner"), "{err}");
    let root = create(&server, "root", "owner");
    let (ok, _, err) = as_admin(&server, &root, &["admin", "token", "revoke", "admin"]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_admin(&server, &bootstrap, &["agent", "list"]);
    assert!(!ok && err.contains("invalid_credential"), "{err}");
    let (ok, out, err) = as_admin(&server, &root, &["admin", "token", "list", "-o", "json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let admin = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "admin")
        .unwrap();
    assert_eq!(
        (admin["status"].as_str(), admin["bootstrap"].as_bool()),
        (Some("revoked"), Some(true))
    );
    assert!(
        admin["revoked_at"].as_str().unwrap().ends_with('Z'),
        "{admin}"
    );
    assert!(!out.contains("pcadm_") && !out.contains("sha256"), "{out}");
    // The bootstrap token that `server.audit` reads is revoked: as root,
    // waiting (bounded) for the background writer.
    let mut revoked = None;
    for _ in 0..100 {
        let (ok, out, err) = as_admin(
            &server,
            &root,
            &["audit", "tail", "-n", "200", "-o", "json"],
        );
        assert!(ok, "{err}");
        let tail: Value = serde_json::from_str(&out).unwrap();
        revoked = tail["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["action"] == "admin_token.revoke" && r["resource"] == "admin")
            .cloned();
        if revoked.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(revoked.expect("recorded")["principal"], "root");

    // One-time: a restart without the token file makes no new owner.
    let dir = server.into_dir();
    std::fs::remove_file(dir.path().join("state/admin.token")).unwrap();
    let cfg = dir.path().join("portcullis.toml");
    let server = Server::start(dir, Some(&cfg));
    assert!(!server.state_dir().join("admin.token").exists());
    let (ok, _, err) = as_admin(&server, &bootstrap, &["agent", "list"]);
    assert!(!ok && err.contains("invalid_credential"), "{err}");
    let (ok, out, err) = as_admin(&server, &root, &["admin", "whoami", "-o", "json"]);
    assert!(ok, "{err}");
    let me: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("root"), Some("owner"))
    );
}

/// The step-up window of the test below, in seconds.
const STEP_UP_SECONDS: u64 = 12;

#[tokio::test(flavor = "multi_thread")]
async fn one_totp_confirmation_opens_a_step_up_window_for_that_credential_only() {
    install_crypto();
    // Long enough for the CLI calls that use the window on a loaded machine
    // (each spawns the debug binary); its end is waited for, not slept out.
    let server = server_with(
        tempfile::tempdir().unwrap(),
        &format!("step_up_seconds = {STEP_UP_SECONDS}"),
    );
    let owner = server.admin_token().trim().to_string();
    let ops = create(&server, "ops", "operator");
    let auditor = create(&server, "watcher", "auditor");
    for agent in ["a1", "a2", "a3", "a4"] {
        server.create_agent(agent, &["reader"]);
    }
    let (ok, out, err) = as_admin(&server, &owner, &["admin", "user", "add", "alice"]);
    assert!(ok, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): "))
        .unwrap();
    let secret = TotpSecret::from_base32(secret).unwrap();
    settle_in_step();
    let code = secret.code_at(now());
    let with_code = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--user".into(),
            "alice".into(),
            "--totp".into(),
            code.clone(),
        ]);
        v
    };
    let run = |token: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        as_admin(&server, token, &args)
    };

    // A caller whose role does not allow the action never reaches the code.
    let (ok, _, err) = run(&auditor, with_code(&["agent", "revoke", "a1"]));
    assert!(!ok && err.contains("forbidden"), "{err}");
    // An authorised but invalid action (no such agent) does not spend it.
    let (ok, _, err) = run(&owner, with_code(&["agent", "revoke", "ghost"]));
    assert!(!ok && err.contains("not_found"), "{err}");
    // So the same code still confirms a valid action, and opens the window.
    let (ok, _, err) = run(&owner, with_code(&["agent", "revoke", "a1"]));
    assert!(ok, "{err}");
    // Within the window, the owner credential needs no code…
    let (ok, _, err) = as_admin(&server, &owner, &["agent", "revoke", "a2"]);
    assert!(ok, "{err}");
    let (ok, out, err) = as_admin(&server, &owner, &["admin", "whoami", "-o", "json"]);
    assert!(ok, "{err}");
    let me: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(me["step_up"]["user"], "alice", "{me}");
    // …but another credential does (the window is bound to the credential),
    let (ok, _, err) = as_admin(&server, &ops, &["agent", "revoke", "a3"]);
    assert!(!ok && err.contains("mfa_required"), "{err}");
    // and the window does not stand in for another human.
    let response = client(&server.ca_pem(), None)
        .post(format!(
            "https://{}/admin/v1/agents/a3/revoke",
            server.admin
        ))
        .bearer_auth(&owner)
        .header("x-portcullis-user", "bob")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (_, body) = error_of(response).await;
    assert_eq!(body["code"], "mfa_required", "{body}");

    // The record names the human and how they confirmed.
    let mut record = None;
    for _ in 0..100 {
        record = server
            .audit(200)
            .into_iter()
            .find(|r| r["action"] == "agent.revoke" && r["resource"] == "a2");
        if record.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let record = record.expect("a2's revocation recorded");
    assert_eq!(record["principal"], "alice");
    assert_eq!(
        record["credential"],
        "admin token `admin` (owner) + step-up"
    );

    // Stepping down closes it.
    let (ok, _, err) = as_admin(&server, &owner, &["admin", "step-down"]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_admin(&server, &owner, &["agent", "revoke", "a3"]);
    assert!(!ok && err.contains("mfa_required"), "{err}");

    // `admin step-up` opens one with no other action; it expires on its own.
    let next = secret.code_at(now() + 30);
    let (ok, out, err) = as_admin(
        &server,
        &owner,
        &[
            "admin", "step-up", "--user", "alice", "--totp", &next, "-o", "json",
        ],
    );
    assert!(ok, "{err}");
    let opened: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(opened["step_up_seconds"], STEP_UP_SECONDS);
    assert!(
        opened["step_up"]["expires_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (ok, _, err) = as_admin(&server, &owner, &["agent", "revoke", "a3"]);
    assert!(ok, "{err}");
    // The window closes on its own: `whoami` stops showing it (bounded),
    // and an action needs a code again.
    let opened_at = Instant::now();
    loop {
        let (ok, out, err) = as_admin(&server, &owner, &["admin", "whoami", "-o", "json"]);
        assert!(ok, "{err}");
        let me: Value = serde_json::from_str(&out).unwrap();
        if me["step_up"].is_null() {
            break;
        }
        assert!(
            opened_at.elapsed() < Duration::from_secs(STEP_UP_SECONDS + 60),
            "the step-up window never closed: {me}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "the {STEP_UP_SECONDS} s window was seen closed {:.1} s after a3's revocation",
        opened_at.elapsed().as_secs_f64()
    );
    let (ok, _, err) = as_admin(&server, &owner, &["agent", "revoke", "a4"]);
    assert!(!ok && err.contains("mfa_required"), "{err}");
}

/// A client-certificate admin credential (`admin cert create`): the key is
/// made by the CLI, the Portcullis CA certifies it, and over mTLS on the
/// admin listener it authenticates with its role, audited with its name,
/// until it is revoked (refused on the very next request). A certificate
/// that is not an admin credential's (an agent's) authenticates nobody.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_client_certificate_acts_with_its_role_over_mtls_until_revoked() {
    install_crypto();
    let server = tokio::task::spawn_blocking(|| Server::start(tempfile::tempdir().unwrap(), None))
        .await
        .unwrap();
    let owner = server.admin_token();
    let out = server.path().join("admin-certs");
    let (ok, _, err) = as_admin(
        &server,
        &owner,
        &[
            "admin",
            "cert",
            "create",
            "certop",
            "--role",
            "operator",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("`certop` (operator)"), "{err}");
    let (crt, key) = (out.join("certop.crt"), out.join("certop.key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let cert_client = client(&server.ca_pem(), Some((&crt, &key)));
    let url = |path: &str| format!("https://{}/admin/v1{path}", server.admin);

    // With curl, as an operator would script it: the status of `/session`.
    let curl_status = || {
        let curl = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(server.state_dir().join("ca.crt"))
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg(url("/session"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&curl.stdout).into_owned()
    };
    assert_eq!(curl_status(), "200");

    // Who am I: the certificate's credential, its role, no token sent.
    let me: Value = cert_client
        .get(url("/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&me["name"], &me["role"], &me["kind"]),
        (&json!("certop"), &json!("operator"), &json!("certificate")),
        "{me}"
    );
    // Its role holds, exactly as a token's would.
    let r = cert_client
        .post(url("/admin-tokens"))
        .json(&json!({ "name": "x", "role": "owner" }))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    server.create_agent("victim", &["reader"]);
    let r = cert_client
        .post(url("/agents/victim/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let revoke = server.wait_record("agent.revoke of victim", |r| {
        r["action"] == "agent.revoke" && r["resource"] == "victim"
    });
    assert_eq!(revoke["principal"], "certop");
    assert_eq!(
        revoke["credential"], "admin certificate `certop` (operator)",
        "{revoke}"
    );
    // Listed with the tokens, as a certificate; not rotated.
    let list: Value = client(&server.ca_pem(), None)
        .get(url("/admin-tokens"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "certop")
        .unwrap();
    assert_eq!(listed["kind"], "certificate");
    assert!(listed["not_after"].as_i64().unwrap() > now() as i64);
    let (ok, _, err) = as_admin(&server, &owner, &["admin", "token", "rotate", "certop"]);
    assert!(
        !ok && err.contains("client-certificate credential"),
        "{err}"
    );

    // The CLI authenticates with it too (`--admin-cert`; the key beside it).
    let whoami = server.cli(&[
        "admin",
        "whoami",
        "-o",
        "json",
        "--admin-cert",
        crt.to_str().unwrap(),
    ]);
    assert!(
        whoami.status.success(),
        "{}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    let me: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(
        (&me["name"], &me["kind"]),
        (&json!("certop"), &json!("certificate"))
    );

    // A bearer token wins over the certificate the client presents.
    let r = cert_client
        .get(url("/session"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["role"], "owner");

    // An agent's certificate (same CA) is no admin credential.
    let (agent_crt, agent_key) = server.create_agent("bot", &["reader"]);
    let r = client(&server.ca_pem(), Some((&agent_crt, &agent_key)))
        .get(url("/session"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credential"))
    );

    // Revoked: refused on the next request, on the same connection too.
    let (ok, _, err) = as_admin(&server, &owner, &["admin", "token", "revoke", "certop"]);
    assert!(ok, "{err}");
    let r = cert_client.get(url("/session")).send().await.unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credential")),
        "{body}"
    );
    assert_eq!(curl_status(), "401");
}
