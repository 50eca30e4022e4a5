//! Operating the gateway, end to end against the real binary: offline
//! `secret put` and `agent create` (state lock free), `serve --check` with
//! `serve`'s own messages and no writes, the quickstart's KEK file following
//! `vault rekey`, `policy explain` refusing unknown and revoked agents,
//! `audit verify`'s exit codes, and every shipped example configuration
//! passing `serve --check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

/// Runs the CLI on `state` with extra environment; never the quickstart's ports.
fn run(args: &[&str], state: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("PORTCULLIS_KEK_FILE")
        .env_remove("PORTCULLIS_KEK")
        .env("PORTCULLIS_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The `error: …` line `main` prints.
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"))
        .to_string()
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A KEK file outside the state directory (base64 of 32 bytes).
fn kek_file(dir: &Path, byte: u8) -> String {
    use base64::Engine;
    let path = dir.join(format!("kek-{byte}"));
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode([byte; 32]),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_string()
}

fn audit_records(server: &Server, n: u32) -> Vec<serde_json::Value> {
    server.audit(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_agents_are_created_offline_and_serve_check_tells_why_serve_would_refuse() {
    install_crypto();
    let (upstream, _gate) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let kek = kek_file(outside.path(), 7);
    let env = [("PORTCULLIS_KEK_FILE", kek.as_str()), ("V", "s3cr3t-value")];
    let up = format!("http://{upstream}");
    let routes = format!(
        "{}credential = {{ secret = \"upstream-key\", header = \"X-Key\" }}\n{}",
        route("api", "/api", &up, "public"),
        route("open", "/open", &up, "public"),
    );
    let cfg = config(dir.path(), &routes, "");
    let cfg_s = cfg.to_str().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();

    // The route names a secret the vault does not hold: check and serve
    // refuse with the same message, and the check wrote nothing.
    let before = snapshot(&state);
    let checked = run(&["serve", "--check", "--config", cfg_s], &state, &env);
    assert!(!checked.status.success());
    let check_err = error_line(&text(&checked.stderr));
    assert!(
        check_err.contains("unknown secret `upstream-key`"),
        "{check_err}"
    );
    assert_eq!(snapshot(&state), before, "serve --check wrote to the state");
    let serve_err = error_line(&serve_fails(&state, Some(&cfg), &env));
    assert_eq!(check_err, serve_err);

    // No server: the secret goes straight into the state directory.
    let put = run(
        &["secret", "put", "upstream-key", "--from-env", "V"],
        &state,
        &env,
    );
    let shown = ok(&put);
    assert!(
        text(&put.stderr).contains("no server is running"),
        "{}",
        text(&put.stderr)
    );
    assert!(shown.contains("\"name\": \"upstream-key\""), "{shown}");
    assert!(!shown.contains("s3cr3t-value"));
    let out = run(&["serve", "--check", "--config", cfg_s], &state, &env);
    let report = ok(&out);
    assert!(report.contains("would start"), "{report}");
    // A KEK that does not open the vault is caught by the check, as by serve.
    let wrong = kek_file(outside.path(), 9);
    let out = run(
        &["serve", "--check", "--config", cfg_s],
        &state,
        &[("PORTCULLIS_KEK_FILE", wrong.as_str())],
    );
    assert!(!out.status.success());
    let check_err = error_line(&text(&out.stderr));
    assert!(
        check_err.contains("does not match this vault"),
        "{check_err}"
    );
    let serve_err = error_line(&serve_fails(
        &state,
        Some(&cfg),
        &[("PORTCULLIS_KEK_FILE", wrong.as_str())],
    ));
    assert_eq!(check_err, serve_err);

    // Now it starts. With a server up, the same commands use its admin API.
    let k = kek.clone();
    let cfg2 = cfg.clone();
    let mut server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(dir, Some(&cfg2), &[("PORTCULLIS_KEK_FILE", &k)])
    })
    .await
    .unwrap();
    let put = run(
        &["secret", "put", "second", "--from-env", "V"],
        &state,
        &env,
    );
    ok(&put);
    assert!(!text(&put.stderr).contains("no server is running"));
    // A check next to a running server: read-only, and it passes.
    ok(&run(
        &["serve", "--check", "--config", cfg_s],
        &state,
        &[("PORTCULLIS_KEK_FILE", kek.as_str())],
    ));
    // A second serve is refused by the state lock.
    let refused = serve_fails(&state, Some(&cfg), &env);
    assert!(refused.contains("is locked by pid"), "{refused}");
    assert!(server.terminate().success());

    // Stopped: an agent is created offline by the state directory's CA ...
    let creds = server.path().join("creds");
    let out = run(
        &[
            "agent",
            "create",
            "late-bot",
            "--role",
            "reader",
            "--out",
            creds.to_str().unwrap(),
        ],
        &state,
        &[],
    );
    let agent: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        agent["spiffe_id"],
        "spiffe://portcullis.local/agent/late-bot"
    );
    // ... and its certificate works once the server is back.
    let dir = server.into_dir();
    let k = kek.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(dir, Some(&cfg), &[("PORTCULLIS_KEK_FILE", &k)])
    })
    .await
    .unwrap();
    let client = client(
        &server.ca_pem(),
        Some((&creds.join("late-bot.crt"), &creds.join("late-bot.key"))),
    );
    let r = client.get(server.url("/open/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let listed = text(&server.cli(&["agent", "list"]).stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("late-bot ") && l.ends_with("active")),
        "{listed}"
    );

    // Both offline changes are in the audit log, and the log verifies.
    let records = tokio::task::block_in_place(|| audit_records(&server, 50));
    for (action, resource) in [("secret.put", "upstream-key"), ("agent.create", "late-bot")] {
        let r = records
            .iter()
            .find(|r| r["action"] == action && r["resource"] == resource)
            .unwrap_or_else(|| panic!("no {action} record: {records:?}"));
        assert_eq!(r["credential"], "offline (state directory lock)");
    }
    ok(&server.cli(&["audit", "checkpoint", "--sign"]));
    let verified = server.cli(&["audit", "verify"]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        text(&verified.stderr)
    );
}

#[test]
fn serve_check_refuses_a_bad_policy_with_serves_message() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(
        policies.join("bad.cedar"),
        "permit (principal, action, resource",
    )
    .unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"policies\"\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let out = run(
        &["serve", "--check", "--config", cfg.to_str().unwrap()],
        &state,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let check_err = error_line(&text(&out.stderr));
    assert!(check_err.contains("bad.cedar"), "{check_err}");
    assert!(!state.exists(), "serve --check created the state directory");
    assert_eq!(check_err, error_line(&serve_fails(&state, Some(&cfg), &[])));
    // An unknown key in the config: the same.
    std::fs::write(&cfg, "[gateway]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n").unwrap();
    let out = run(
        &["serve", "--check", "--config", cfg.to_str().unwrap()],
        &state,
        &[],
    );
    assert!(!out.status.success());
    assert_eq!(
        error_line(&text(&out.stderr)),
        error_line(&serve_fails(&state, Some(&cfg), &[]))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_kek_file_follows_a_rekey() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::spawn_blocking(move || Server::start(dir, None))
        .await
        .unwrap();
    let state = server.state_dir();
    ok(&run(
        &["secret", "put", "k", "--from-env", "V"],
        &state,
        &[("V", "quickstart-value")],
    ));
    let new = server.path().join("new.kek");
    let out = server.cli(&["vault", "rekey", "--generate", new.to_str().unwrap()]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("updated"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(state.join("vault.kek"))
            .unwrap()
            .trim(),
        std::fs::read_to_string(&new).unwrap().trim()
    );
    // The next quickstart start opens the vault with it.
    let dir = server.into_dir();
    ok(&run(&["serve", "--check"], &state, &[]));
    let server = tokio::task::spawn_blocking(move || Server::start(dir, None))
        .await
        .unwrap();
    let list = ok(&server.cli(&["secret", "list", "-o", "json"]));
    assert!(list.contains("\"name\": \"k\""), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_refuses_unknown_and_revoked_agents() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::spawn_blocking(move || Server::start(dir, None))
        .await
        .unwrap();
    tokio::task::block_in_place(|| server.create_agent("bot", &["reader"]));
    let explain = |agent: &str| {
        server.cli(&[
            "policy",
            "explain",
            "--agent",
            agent,
            "--action",
            "GET",
            "--resource",
            "demo",
        ])
    };
    let out = explain("bot");
    assert!(
        ok(&out).contains("decision: allow"),
        "{}",
        text(&out.stdout)
    );
    let out = explain("ghost");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not_found"),
        "{}",
        text(&out.stderr)
    );
    ok(&server.cli(&["agent", "revoke", "bot"]));
    let out = explain("bot");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("agent_revoked"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_exits_0_ok_1_tampered_2_unreadable() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::spawn_blocking(move || Server::start(dir, None))
        .await
        .unwrap();
    tokio::task::block_in_place(|| server.create_agent("bot", &["reader"]));
    ok(&server.cli(&["audit", "checkpoint", "--sign"]));
    assert_eq!(server.cli(&["audit", "verify"]).status.code(), Some(0));
    let log = server.path().join("log.jsonl");
    ok(&server.cli(&["audit", "export", "--out", log.to_str().unwrap()]));
    let checkpoints = format!("{}.checkpoints", log.display());
    let offline = |export: &Path| {
        server.cli(&[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--checkpoint",
            &checkpoints,
        ])
    };
    assert_eq!(offline(&log).status.code(), Some(0));
    // One record changed: tampered, exit 1.
    let original = std::fs::read_to_string(&log).unwrap();
    let tampered = original.replacen("\"bot\"", "\"bob\"", 1);
    assert_ne!(tampered, original);
    let bad = server.path().join("tampered.jsonl");
    std::fs::write(&bad, tampered).unwrap();
    let out = offline(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("FAILED"),
        "{}",
        text(&out.stderr)
    );
    // Nothing to read: exit 2, not a verdict.
    let out = offline(&server.path().join("absent.jsonl"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(&["audit", "verify"], &server.path().join("no-state"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Every `examples/*.toml` passes `serve --check` after the offline set-up
/// its header describes: its secrets put into a fresh state directory (no
/// server), the API key in the environment.
#[test]
fn every_example_configuration_passes_serve_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let kek = kek_file(dir.path(), 3);
        let env = [
            ("PORTCULLIS_KEK_FILE", kek.as_str()),
            ("OPENAI_API_KEY", "sk-example"),
            ("V", "example-value"),
        ];
        let config = std::fs::read_to_string(&file).unwrap();
        let secrets = config
            .split("secret = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next());
        for secret in secrets {
            ok(&run(
                &["secret", "put", secret, "--from-env", "V"],
                &state,
                &env,
            ));
        }
        let out = run(
            &["serve", "--check", "--config", file.to_str().unwrap()],
            &state,
            &env,
        );
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("would start"),
            "{}",
            file.display()
        );
    }
}
