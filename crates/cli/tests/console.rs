//! The web console in a real browser: Debian's Chromium driven by Playwright
//! for Python (`tests/console/browser.py`) against the real binary. Logs in,
//! sees a held call appear, approves it, watches the retry go through in the
//! live view, revokes an agent, checks the CSP and the session cookie, and
//! that a form without a CSRF token is refused; once a human admin has
//! enrolled, approving needs her TOTP code (step-up) exactly as in the API;
//! an auditor sees no form to act with and her forged forms (with her
//! session's valid CSRF token) are refused 403 and audited; screenshots go to
//! `<target>/tmp/console-screenshots/`. Skips, saying so, only when Chromium
//! is absent (`apt-get install chromium`; `.ci/run` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, client};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/browser.py");
const PASSKEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/passkeys.py");
const REPLICAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/replicas.py");

const POLICIES: &str = r#"
@id("transfers") @obligation("approval")
permit (principal in Role::"payer", action == Action::"POST", resource == Route::"bank");
"#;

/// Debian's Chromium (or `PORTCULLIS_CHROMIUM`); `None` when absent.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PORTCULLIS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: console browser test: no Chromium at {} (apt-get install chromium; or set PORTCULLIS_CHROMIUM)",
            path.display()
        );
        None
    }
}

/// A config in `dir` with one route, `/bank`, whose POSTs are held for
/// approval; `admin` is the `[admin]` table's body.
fn bank_config(dir: &Path, admin: &str) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(policies.join("main.cedar"), POLICIES).unwrap();
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\n{admin}\n[policy]\ndir = \"{}\"\n\
             [[routes]]\nname = \"bank\"\npath_prefix = \"/bank\"\nupstream = \"builtin:demo\"\nclassification = \"confidential\"\n",
            policies.display(),
        ),
    )
    .unwrap();
    config
}

fn bank_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = bank_config(dir.path(), "listen = \"127.0.0.1:0\"");
    Server::start(dir, Some(&config))
}

/// Runs a browser script with its JSON configuration; the JSON line it
/// printed last. Bounded: every wait in the scripts is 20 s at most.
async fn run_script(script: &'static str, cfg: Value, server: &Server) -> Value {
    let shots = cfg["artefacts"].clone();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .arg(script)
            .arg(cfg.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(180) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed (screenshots in {shots}):\nstdout: {stdout}\nstderr: {stderr}\nserver: {}",
        server.stderr.lock().unwrap()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap()
}

/// Chromium and Playwright for Python, or a visible skip (no Chromium) or
/// a failure (Chromium without Playwright).
fn browser_ready() -> Option<PathBuf> {
    let chromium = chromium()?;
    let probe = Command::new("python3")
        .args(["-c", "import playwright.sync_api, httpx, cryptography"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "Chromium is installed but Playwright for Python is not: pip install -r requirements-test.txt ({probe:?})"
    );
    Some(chromium)
}

fn artefacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// Passkeys (`tests/console/passkeys.py`): registered after a TOTP
/// step-up with a CDP virtual authenticator, then used to open the step-up
/// window that approves a held call; replayed, wrong-origin, unverified and
/// counter-standing-still assertions are refused at the API level.
#[tokio::test(flavor = "multi_thread")]
async fn passkeys_in_a_real_browser() {
    let Some(chromium) = browser_ready() else {
        return;
    };
    support::install_crypto();
    let server = tokio::task::spawn_blocking(bank_server).await.unwrap();
    let (payer_cert, payer_key) = server.create_agent("pay-bot", &["payer"]);
    let ca = server.path().join("ca-for-browser-test.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let shots = artefacts().with_file_name("console-passkeys-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let cfg = json!({
        "admin": format!("https://{}", server.admin),
        // Browsers refuse WebAuthn at an IP address: the console's
        // `localhost` origin (a loopback listener's default).
        "console": format!("https://localhost:{}", server.admin.port()),
        "gateway": format!("https://{}", server.gateway),
        "token": server.admin_token(),
        "ca": ca,
        "payer_cert": payer_cert,
        "payer_key": payer_key,
        "chromium": chromium,
        "artefacts": shots,
    });
    let found = run_script(PASSKEYS, cfg, &server).await;
    eprintln!(
        "passkeys browser test: {found}\nscreenshots: {}",
        shots.display()
    );
    for shot in [
        "p1-step-up-page",
        "p2-passkey-registered",
        "p3-passkey-step-up",
        "p4-approved-with-passkey",
        "p5-passkey-login-no-role",
        "p6-passkey-login",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}");
    }
    let ticket = found["ticket"].as_str().unwrap();
    let records = server.audit(400);
    let by_alice = |action: &str, outcome: &str| {
        records.iter().any(|r| {
            r["action"] == action
                && r["outcome"] == outcome
                && r["principal"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("alice"))
        })
    };
    assert!(by_alice("admin.passkey_add", "allow"), "passkey_add");
    // The passkey step-up is recorded as such, and the approval it allowed
    // (no code was given) is alice's.
    assert!(
        records.iter().any(|r| r["action"] == "admin.step_up"
            && r["outcome"] == "allow"
            && r["credential"]
                .as_str()
                .is_some_and(|c| c.contains("+ webauthn `laptop`"))),
        "admin.step_up by passkey"
    );
    assert!(
        records.iter().any(|r| r["action"] == "approval.approve"
            && r["resource"].as_str() == Some(&format!("approval:{ticket}"))
            && r["outcome"] == "allow"
            && r["principal"] == "admin:alice"),
        "approved by alice in her passkey's window"
    );
    // The refused assertions are audited as refused step-ups.
    let refused = records
        .iter()
        .filter(|r| {
            r["action"] == "admin.step_up"
                && r["outcome"] == "deny"
                && r["error_code"] == "invalid_credential"
        })
        .count();
    assert!(refused >= 4, "{refused} refused step-ups recorded");
    // Her passkey logins: as her credential, with its role, saying how; the
    // refused ones (no credential, another's name, replayed, forged) too.
    assert_eq!(found["login"], "alice (approver)");
    let logins = records
        .iter()
        .filter(|r| {
            r["action"] == "console.login"
                && r["outcome"] == "allow"
                && r["principal"] == "alice"
                && r["credential"].as_str().is_some_and(|c| {
                    c.starts_with("passkey `laptop` of `alice` as admin token `alice` (approver)")
                })
        })
        .count();
    assert!(logins >= 3, "{logins} passkey logins recorded");
    let refused_logins = records
        .iter()
        .filter(|r| {
            r["action"] == "console.login"
                && r["outcome"] == "deny"
                && r["credential"] == "passkey login"
        })
        .count();
    assert!(
        refused_logins >= 7,
        "{refused_logins} refused passkey logins recorded"
    );

    // The CLI lists her passkey and removes it, with step-up like the API.
    let cli = |args: &[&str]| {
        let out = server.cli(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = cli(&["admin", "passkey", "list", "-o", "json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let key = &listed["passkeys"][0];
    assert_eq!(
        (key["admin"].as_str(), key["label"].as_str()),
        (Some("alice"), Some("laptop"))
    );
    assert!(key.get("public_key").is_none(), "{key}");
    let id = key["credential_id"].as_str().unwrap().to_string();
    let (ok, table, _) = cli(&["admin", "passkey", "list", "--admin", "alice"]);
    assert!(
        ok && table.contains("laptop") && table.contains("ES256"),
        "{table}"
    );
    let (ok, _, err) = cli(&["admin", "step-down"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["admin", "passkey", "remove", &id]);
    assert!(!ok && err.contains("mfa_required"), "{err}");
    // A code of a later step than the one the script spent.
    let secret =
        portcullis_identity::TotpSecret::from_base32(found["totp_secret"].as_str().unwrap())
            .unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let spent = found["totp_step"].as_u64().unwrap();
    for _ in 0..70 {
        if now() / 30 > spent && now() % 30 <= 22 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let code = secret.code_at(now());
    let (ok, out, err) = cli(&[
        "admin", "passkey", "remove", &id, "--user", "alice", "--totp", &code,
    ]);
    assert!(
        ok && out.contains("removed passkey `laptop` of admin `alice`"),
        "{out}{err}"
    );
    let (ok, out, _) = cli(&["admin", "passkey", "list", "-o", "json"]);
    assert!(
        ok && serde_json::from_str::<Value>(&out).unwrap()["passkeys"] == json!([]),
        "{out}"
    );
    let records = server.audit(500);
    assert!(
        records.iter().any(|r| r["action"] == "admin.passkey_remove"
            && r["outcome"] == "allow"
            && r["resource"] == "passkey:alice/laptop"
            && r["principal"] == "alice"),
        "passkey removal audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_real_browser() {
    let Some(chromium) = browser_ready() else {
        return;
    };
    support::install_crypto();
    let server = tokio::task::spawn_blocking(bank_server).await.unwrap();
    let (payer_cert, payer_key) = server.create_agent("pay-bot", &["payer"]);
    server.create_agent("victim", &["payer"]);
    let ca = server.path().join("ca-for-browser-test.pem");
    std::fs::write(&ca, server.ca_pem()).unwrap();
    let _ = std::fs::remove_dir_all(artefacts());
    // An auditor credential, made before anyone enrols (then it needs no code).
    let auditor: Value = client(&server.ca_pem(), None)
        .post(format!("https://{}/admin/v1/admin-tokens", server.admin))
        .bearer_auth(server.admin_token())
        .json(&json!({ "name": "audrey", "role": "auditor" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cfg = json!({
        "auditor_token": auditor["token"],
        "auditor_name": "audrey",
        "admin": format!("https://{}", server.admin),
        "gateway": format!("https://{}", server.gateway),
        "token": server.admin_token(),
        "ca": ca,
        "payer_cert": payer_cert,
        "payer_key": payer_key,
        "victim": "victim",
        "chromium": chromium,
        "artefacts": artefacts(),
    });
    let found = run_script(SCRIPT, cfg, &server).await;
    eprintln!(
        "console browser test: {found}\nscreenshots: {}",
        artefacts().display()
    );
    for shot in [
        "01-login",
        "03-approval-held",
        "05-live-allow",
        "07-revoked",
        "16-auditor-agents",
        "17-auditor-approvals",
        "18-auditor-forged-refused",
    ] {
        assert!(artefacts().join(format!("{shot}.png")).exists(), "{shot}");
    }

    // What the browser did went through the admin API's own handlers: the
    // same audit records as the CLI's calls, and the same effect.
    let ticket = found["ticket"].as_str().unwrap();
    let records = server.audit(400);
    let has = |action: &str, resource: &str| {
        records.iter().any(|r| {
            r["action"] == action
                && r["resource"].as_str() == Some(resource)
                && r["outcome"] == "allow"
        })
    };
    assert!(
        has("approval.approve", &format!("approval:{ticket}")),
        "approval.approve"
    );
    // Decided with step-up: the enrolled admin is the record's principal.
    assert!(
        records.iter().any(|r| r["action"] == "approval.approve"
            && r["principal"] == "admin:alice"
            && r["outcome"] == "allow"),
        "approved by alice"
    );
    // The attempt without her code was refused like an API call without it.
    assert!(
        records.iter().any(|r| r["action"] == "admin.post"
            && r["outcome"] == "deny"
            && r["resource"]
                .as_str()
                .is_some_and(|p| p.ends_with(&format!("/approvals/{ticket}/approve")))),
        "the refused approval is audited"
    );
    assert!(has("agent.revoke", "victim"), "agent.revoke");
    assert!(
        records.iter().any(|r| r["action"] == "console.form"
            && r["outcome"] == "deny"
            && r["error_code"] == "forbidden"),
        "the refused CSRF-less form is audited"
    );
    // The auditor's forged forms: refused, recorded with her as principal,
    // and nothing changed (the agent is live, the ticket still pending).
    let forged: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["action"] == "console.form"
                && r["outcome"] == "deny"
                && r["principal"] == "audrey"
                && r["error_code"] == "forbidden"
        })
        .collect();
    assert!(
        forged
            .iter()
            .any(|r| r["resource"] == "/console/agents/pay-bot/revoke")
            && forged.iter().any(|r| r["resource"]
                == format!(
                    "/console/approvals/{}/approve",
                    found["auditor_ticket"].as_str().unwrap()
                )),
        "the auditor's forged forms are audited: {forged:?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["action"] == "agent.revoke" && r["resource"] == "pay-bot"),
        "pay-bot was not revoked"
    );
    let retry = server.audit_record(found["retry_request_id"].as_str().unwrap());
    assert_eq!(
        (retry["outcome"].as_str(), retry["approval_ticket"].as_str()),
        (Some("allow"), Some(ticket))
    );
    let admin = client(&server.ca_pem(), None);
    let victim: Value = admin
        .get(format!("https://{}/admin/v1/agents/victim", server.admin))
        .bearer_auth(server.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(victim["status"], "revoked", "{victim}");
}

/// The value of cookie `name` in a response's `Set-Cookie` headers, with the
/// whole header.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let value = v.strip_prefix(&format!("{name}="))?;
            Some((value.split(';').next()?.to_string(), v.to_string()))
        })
}

/// Without a browser: pages need a session, the login form its nonce, every
/// form its CSRF token, every answer carries the CSP; and an open live
/// stream ends when shutdown begins instead of holding up the drain (it held
/// it for the whole `drain_timeout`, 30 s, before).
#[tokio::test(flavor = "multi_thread")]
async fn console_sessions_forms_and_the_live_stream_at_shutdown() {
    support::install_crypto();
    let mut server = tokio::task::spawn_blocking(bank_server).await.unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(support::tls_config(&server.ca_pem(), None))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = |path: &str| format!("https://{}{path}", server.admin);

    // No session: the login page, and the CSP on every answer.
    let r = http.get(url("/console/agents")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // The login form's nonce: without it (or with another) no session.
    let r = http.get(url("/console/login")).send().await.unwrap();
    let (nonce, header) = set_cookie(&r, "__Host-portcullis-login").unwrap();
    assert!(
        header.contains("HttpOnly")
            && header.contains("Secure")
            && header.contains("SameSite=Strict"),
        "{header}"
    );
    let token = server.admin_token();
    let login = |cookie: String, field: String| {
        http.post(url("/console/login"))
            .header("cookie", format!("__Host-portcullis-login={cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&login_nonce={field}"))
            .send()
    };
    let r = login(nonce.clone(), "0".repeat(64)).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = login(nonce.clone(), nonce.clone()).await.unwrap();
    assert_eq!(r.status(), 303);
    let (session, header) = set_cookie(&r, "__Host-portcullis-console").unwrap();
    assert!(
        header.contains("HttpOnly")
            && header.contains("Secure")
            && header.contains("SameSite=Strict")
            && header.contains("Path=/"),
        "{header}"
    );
    let cookie = format!("__Host-portcullis-console={session}");

    // A page renders; a form without its token is refused and changes nothing.
    let r = http
        .get(url("/console/agents"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = http
        .post(url("/console/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(url("/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the session survived the refused logout");
    assert_eq!(csrf.len(), 64);

    // An open live stream does not hold up shutdown.
    let stream = http
        .get(url("/console/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?} with a live stream open",
        started.elapsed()
    );
    drop(stream);
}

/// Logs into the console with `token`; the session cookie header.
async fn console_login(http: &reqwest::Client, admin: std::net::SocketAddr, token: &str) -> String {
    let url = |path: &str| format!("https://{admin}{path}");
    let r = http.get(url("/console/login")).send().await.unwrap();
    let (nonce, _) = set_cookie(&r, "__Host-portcullis-login").unwrap();
    let r = http
        .post(url("/console/login"))
        .header("cookie", format!("__Host-portcullis-login={nonce}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&login_nonce={nonce}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "login");
    let (session, _) = set_cookie(&r, "__Host-portcullis-console").unwrap();
    format!("__Host-portcullis-console={session}")
}

/// The status of a console page for a session cookie (303: to the login).
async fn page_status(http: &reqwest::Client, admin: std::net::SocketAddr, cookie: &str) -> u16 {
    http.get(format!("https://{admin}/console/agents"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Console sessions live in the store: a session survives a restart of the
/// gateway, ends at once when its credential is revoked or rotated (on the
/// replica that made the change), and a logout deletes it (the cookie is
/// refused afterwards, after a restart too).
#[tokio::test(flavor = "multi_thread")]
async fn console_sessions_survive_a_restart_and_end_with_their_credential() {
    support::install_crypto();
    let server = tokio::task::spawn_blocking(bank_server).await.unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(support::tls_config(&server.ca_pem(), None))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let owner = server.admin_token();
    let api = client(&server.ca_pem(), None);
    let mut tokens = Vec::new();
    for (name, role) in [("ops", "operator"), ("aud", "auditor")] {
        let issued: Value = api
            .post(format!("https://{}/admin/v1/admin-tokens", server.admin))
            .bearer_auth(&owner)
            .json(&json!({ "name": name, "role": role }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(issued["token"].as_str().unwrap().to_string());
    }
    let ops = console_login(&http, server.admin, &tokens[0]).await;
    let aud = console_login(&http, server.admin, &tokens[1]).await;
    let mine = console_login(&http, server.admin, &owner).await;
    assert_eq!(page_status(&http, server.admin, &ops).await, 200);

    // A restart: the same cookies still work.
    let dir = server.into_dir();
    let config = dir.path().join("portcullis.toml");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&config)))
        .await
        .unwrap();
    for cookie in [&ops, &aud, &mine] {
        assert_eq!(
            page_status(&http, server.admin, cookie).await,
            200,
            "survived the restart"
        );
    }
    // Revoked, rotated: their sessions end on the next page.
    let api = client(&server.ca_pem(), None);
    for path in ["/admin-tokens/ops/revoke", "/admin-tokens/aud/rotate"] {
        let r = api
            .post(format!("https://{}/admin/v1{path}", server.admin))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert_eq!(page_status(&http, server.admin, &ops).await, 303, "revoked");
    assert_eq!(page_status(&http, server.admin, &aud).await, 303, "rotated");
    assert_eq!(page_status(&http, server.admin, &mine).await, 200);

    // Logout deletes the session: refused now, and after a restart.
    let page = http
        .get(format!("https://{}/console", server.admin))
        .header("cookie", &mine)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = http
        .post(format!("https://{}/console/logout", server.admin))
        .header("cookie", &mine)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(page_status(&http, server.admin, &mine).await, 303);
    let dir = server.into_dir();
    let config = dir.path().join("portcullis.toml");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&config)))
        .await
        .unwrap();
    assert_eq!(page_status(&http, server.admin, &mine).await, 303);
}

/// Console login with an admin client certificate (mTLS on the admin
/// listener): the certificate's credential logs in with its role, no token
/// pasted; a connection without one, or with a certificate that is no admin
/// credential's, logs nobody in; revoking the credential ends the session.
#[tokio::test(flavor = "multi_thread")]
async fn console_login_with_an_admin_client_certificate() {
    support::install_crypto();
    let server = tokio::task::spawn_blocking(bank_server).await.unwrap();
    let out = server.path().join("admin-certs");
    let made = server.cli(&[
        "admin",
        "cert",
        "create",
        "certaud",
        "--role",
        "auditor",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (crt, key) = (out.join("certaud.crt"), out.join("certaud.key"));
    let (agent_crt, agent_key) = server.create_agent("bot", &["payer"]);
    let browser = |identity: Option<(&std::path::Path, &std::path::Path)>| {
        reqwest::Client::builder()
            .tls_backend_preconfigured(support::tls_config(&server.ca_pem(), identity))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    let url = |path: &str| format!("https://{}{path}", server.admin);
    // Loads the login page and posts its certificate form: the answer.
    let log_in = |http: reqwest::Client| async move {
        let r = http.get(url("/console/login")).send().await.unwrap();
        let (nonce, _) = set_cookie(&r, "__Host-portcullis-login").unwrap();
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("/console/login/certificate")
        );
        http.post(url("/console/login/certificate"))
            .header("cookie", format!("__Host-portcullis-login={nonce}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("login_nonce={nonce}"))
            .send()
            .await
            .unwrap()
    };
    let r = log_in(browser(None)).await;
    assert_eq!(r.status(), 401);
    assert!(set_cookie(&r, "__Host-portcullis-console").is_none());
    let r = log_in(browser(Some((&agent_crt, &agent_key)))).await;
    assert_eq!(r.status(), 401, "an agent's certificate is no admin's");
    // Without the form's nonce: refused even with the certificate.
    let cert_browser = browser(Some((&crt, &key)));
    let r = cert_browser
        .post(url("/console/login/certificate"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("login_nonce=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = log_in(cert_browser.clone()).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console");
    let (session, _) = set_cookie(&r, "__Host-portcullis-console").unwrap();
    let cookie = format!("__Host-portcullis-console={session}");
    let page = |http: reqwest::Client, cookie: String| async move {
        http.get(url("/console/agents"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
    };
    let r = page(cert_browser.clone(), cookie.clone()).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("certaud (auditor)"),
        "the session is the certificate's credential"
    );
    assert!(
        !html.contains("/revoke\""),
        "an auditor gets no revoke form"
    );
    let records = server.audit(100);
    assert!(
        records.iter().any(|r| r["action"] == "console.login"
            && r["outcome"] == "allow"
            && r["principal"] == "certaud"
            && r["credential"] == "admin certificate `certaud` (auditor)"),
        "the certificate login is audited"
    );
    assert!(
        records
            .iter()
            .filter(|r| r["action"] == "console.login" && r["outcome"] == "deny")
            .count()
            >= 3,
        "refused certificate logins are audited"
    );
    // Revoked: the session ends on its next page.
    let revoked = server.cli(&["admin", "token", "revoke", "certaud"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let r = page(cert_browser, cookie).await;
    assert_eq!(r.status(), 303, "the session ended with its credential");
}

/// The console on two replicas of one PostgreSQL store
/// (`tests/console/replicas.py`): a passkey login whose challenge replica
/// A issued is finished by replica B, and a call held on A is approved in
/// B's console and goes through on A once. Skips, saying so, when Chromium
/// or PostgreSQL is absent.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_and_an_approval_cross_replicas_in_a_real_browser() {
    let Some(chromium) = browser_ready() else {
        return;
    };
    let Some(db) = portcullis_store::testing::TestDb::postgres().await else {
        return;
    };
    support::install_crypto();
    // Both consoles' origins on both replicas, as replicas behind one load
    // balancer list its: the admin ports are chosen first.
    let ports = [support::free_port(), support::free_port()];
    let admin = |port: u16| {
        format!(
            "listen = \"127.0.0.1:{port}\"\nconsole_origins = [\"https://localhost:{}\", \"https://localhost:{}\"]\n\
             [audit]\nfail_closed_after_ms = 10000",
            ports[0], ports[1]
        )
    };
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = bank_config(dir_a.path(), &admin(ports[0]));
    let a = support::cluster::start_replica(dir_a, cfg_a, &db.url(), &[]).await;
    let dir_b = support::cluster::provisioned_like(&a);
    let cfg_b = bank_config(dir_b.path(), &admin(ports[1]));
    let b = support::cluster::start_replica(dir_b, cfg_b, &db.url(), &[]).await;
    let (payer_cert, payer_key) =
        tokio::task::block_in_place(|| a.create_agent("pay-bot", &["payer"]));
    let ca = a.path().join("ca-for-browser-test.pem");
    std::fs::write(&ca, a.ca_pem()).unwrap();
    let shots = artefacts().with_file_name("console-replicas-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let cfg = json!({
        "admin_a": format!("https://{}", a.admin),
        "console_a": format!("https://localhost:{}", ports[0]),
        "console_b": format!("https://localhost:{}", ports[1]),
        "gateway_a": format!("https://{}", a.gateway),
        "gateway_b": format!("https://{}", b.gateway),
        "token": a.admin_token(),
        "ca": ca,
        "payer_cert": payer_cert,
        "payer_key": payer_key,
        "chromium": chromium,
        "artefacts": shots,
    });
    let found = run_script(REPLICAS, cfg, &b).await;
    eprintln!(
        "console across replicas: {found}\nscreenshots: {}",
        shots.display()
    );
    for shot in [
        "r1-passkey-registered-on-a",
        "r2-logged-in-finished-on-b",
        "r3-held-call-on-b",
        "r4-approved-on-b",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "{shot}");
    }
    assert_eq!(found["login"], "alice (approver)");
    assert_eq!(found["retry"], 200);
    assert_eq!(found["again"], json!([403, 403]));
    // One audit log: the login B finished and the approval B decided are
    // recorded, as alice's, next to A's records.
    let ticket = found["ticket"].as_str().unwrap();
    let records = a.audit(400);
    assert!(
        records.iter().any(|r| r["action"] == "console.login"
            && r["outcome"] == "allow"
            && r["principal"] == "alice"),
        "alice's passkey login"
    );
    assert!(
        records.iter().any(|r| r["action"] == "approval.approve"
            && r["resource"].as_str() == Some(&format!("approval:{ticket}"))
            && r["outcome"] == "allow"
            && r["principal"] == "admin:alice"),
        "approved by alice on B"
    );
    drop(b);
}
