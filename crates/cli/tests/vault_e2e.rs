//! End-to-end tests of the vault: the real binary, a real upstream, secrets
//! stored through the CLI and injected by the gateway, and a final sweep that
//! greps everything the process wrote for the secret values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use support::*;

const SCHEMA: &str = include_str!("../../policy/defaults/schema.cedarschema");
const POLICIES: &str = r#"
@id("read") permit(principal in Role::"reader", action in Action::"read", resource);
@id("write") permit(principal in Role::"writer", action in Action::"write", resource);
@id("team-a-secrets") permit(principal in Role::"team-a", action == Action::"use_secret", resource)
  when { resource == Secret::"upstream-key" || resource == Secret::"jira-pass" };
@id("team-b-keys") permit(principal in Role::"team-b", action == Action::"use_secret", resource)
  when { resource == Secret::"maps-key" || resource == Secret::"bob-key" };
"#;

const HEADER_SECRET: &str = "sk-live-HEADERSECRET-8f3a9c";
const HEADER_SECRET_2: &str = "sk-live-ROTATEDSECRET-77d1e0";
const QUERY_SECRET: &str = "mapsQUERYSECRET4411";
const BASIC_SECRET: &str = "jiraBASICSECRET-0c9e";
const BOB_SECRET: &str = "sk-team-b-BOBSECRET-5521";

fn write_kek(path: &Path, byte: u8) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, [byte; 32]).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn write_config(dir: &Path, routes: &str) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(policies.join("test.cedar"), POLICIES).unwrap();
    let path = dir.join("portcullis.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"policies\"\n{routes}\n"
        ),
    )
    .unwrap();
    path
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_injected_by_policy_and_never_written_in_plaintext() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // The KEK and the files the values are read from live outside the
    // directory the server writes to, which is what gets searched at the end.
    let outside = tempfile::tempdir().unwrap();
    let kek = outside.path().join("kek");
    write_kek(&kek, 0x42);
    let kek_str = kek.to_str().unwrap().to_string();
    let kek_env = [("PORTCULLIS_KEK_FILE", kek_str.as_str())];
    let value_file = outside.path().join("value");

    // 1. Start without credential routes and store the secrets.
    let plain_routes = route("plain", "/plain", &format!("http://{upstream}"), "public");
    let cfg = write_config(dir.path(), &plain_routes);
    let cfg_path = cfg.clone();
    let k = kek_str.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(dir, Some(&cfg_path), &[("PORTCULLIS_KEK_FILE", &k)])
    })
    .await
    .unwrap();
    std::fs::write(&value_file, format!("{HEADER_SECRET}\n")).unwrap();
    let put = ok(server.cli(&[
        "secret",
        "put",
        "upstream-key",
        "--from-file",
        value_file.to_str().unwrap(),
        "--rotation-period",
        "30d",
    ]));
    assert!(put.contains("\"version\": 1"), "{put}");
    assert!(!put.contains(HEADER_SECRET));
    let put = server
        .cli(&["secret", "put", "maps-key", "--from-env", "MAPS_VALUE"])
        .status;
    assert!(!put.success(), "an unset variable is an error");
    let output = Command::new(BIN)
        .args([
            "secret",
            "put",
            "maps-key",
            "--from-env",
            "MAPS_VALUE",
            "--state-dir",
        ])
        .arg(server.state_dir())
        .env("MAPS_VALUE", QUERY_SECRET)
        .output()
        .unwrap();
    ok(output);
    std::fs::write(&value_file, BASIC_SECRET).unwrap();
    ok(server.cli(&[
        "secret",
        "put",
        "jira-pass",
        "--from-file",
        value_file.to_str().unwrap(),
    ]));
    std::fs::write(&value_file, BOB_SECRET).unwrap();
    ok(server.cli(&[
        "secret",
        "put",
        "bob-key",
        "--from-file",
        value_file.to_str().unwrap(),
    ]));
    std::fs::remove_file(&value_file).unwrap();

    // 2. A route naming an unknown secret is refused at start, before binding
    // (the server stopped first: one `serve` per state directory).
    let dir = server.into_dir();
    let state = dir.path().join("state");
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_cfg = write_config(
        bad_dir.path(),
        &format!(
            "{}credential = {{ secret = \"nope\", header = \"Authorization\", format = \"Bearer {{}}\" }}\n",
            route("r", "/r", &format!("http://{upstream}"), "public")
        ),
    );
    let err = serve_fails(&state, Some(&bad_cfg), &kek_env);
    assert!(err.contains("unknown secret `nope`"), "{err}");

    // 3. Restart with the credential routes.
    let routes = [
        format!(
            "{}credential = {{ secrets = [\"upstream-key\", \"bob-key\"], header = \"Authorization\", format = \"Bearer {{}}\" }}\ncapture = {{ retention = \"1d\" }}\n",
            route("hdr", "/hdr", &format!("http://{upstream}"), "public")
        ),
        format!(
            "{}credential = {{ secret = \"maps-key\", query = \"key\" }}\n",
            route("qry", "/qry", &format!("http://{upstream}"), "public")
        ),
        format!(
            "{}credential = {{ secret = \"jira-pass\", username = \"bot\" }}\n",
            route("basic", "/basic", &format!("http://{upstream}"), "public")
        ),
    ]
    .join("\n");
    let cfg = write_config(dir.path(), &routes);
    let k = kek_str.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(dir, Some(&cfg), &[("PORTCULLIS_KEK_FILE", &k)])
    })
    .await
    .unwrap();
    let (a_cert, a_key) = server.create_agent("alice", &["reader", "writer", "team-a"]);
    let (b_cert, b_key) = server.create_agent("bob", &["reader", "team-b"]);
    let alice = client(&server.ca_pem(), Some((&a_cert, &a_key)));
    let bob = client(&server.ca_pem(), Some((&b_cert, &b_key)));
    let (c_cert, c_key) = server.create_agent("carol", &["reader"]);
    let carol = client(&server.ca_pem(), Some((&c_cert, &c_key)));

    // Header form; the agent's own Authorization never reaches the upstream.
    let r = alice
        .get(server.url("/hdr/x"))
        .header("authorization", "Bearer agent-own-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["headers"]["authorization"],
        format!("Bearer {HEADER_SECRET}")
    );
    // Same route, another agent: policy gives bob his team's key instead.
    let r = bob.get(server.url("/hdr/x")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["headers"]["authorization"],
        format!("Bearer {BOB_SECRET}")
    );
    // And carol, allowed the route but no secret, is refused before forwarding.
    let r = carol.get(server.url("/hdr/x")).send().await.unwrap();
    let id = request_id(&r);
    let (status, err) = error_of(r).await;
    assert_eq!(status, 403);
    assert_eq!(err["code"], "forbidden");
    assert!(err["message"].as_str().unwrap().contains("upstream-key"));
    let record = server.audit_record(&id);
    assert_eq!(record["outcome"], "deny");
    // Bob may use the maps key: query form, his own `key=` replaced.
    let r = bob
        .get(server.url("/qry/x?key=agent-supplied&a=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["query"], format!("a=1&key={QUERY_SECRET}"));
    assert!(body["headers"].get("authorization").is_none());
    // Basic-auth form.
    let r = alice.get(server.url("/basic/x")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    let expect = base64::engine::general_purpose::STANDARD.encode(format!("bot:{BASIC_SECRET}"));
    assert_eq!(body["headers"]["authorization"], format!("Basic {expect}"));

    // Payload capture: sealed per record, readable by the admin, digests kept.
    let r = alice
        .post(server.url("/hdr/echo"))
        .body("conversation-body-XYZ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let _ = r.bytes().await.unwrap();
    let mut shown = None;
    for _ in 0..100 {
        let out = server.cli(&["capture", "show", &id, "-o", "json"]);
        if out.status.success() {
            shown = Some(String::from_utf8(out.stdout).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let shown: serde_json::Value = serde_json::from_str(&shown.expect("capture stored")).unwrap();
    let request = base64::engine::general_purpose::STANDARD
        .decode(shown["request_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(request, b"conversation-body-XYZ");
    use sha2::Digest;
    assert_eq!(
        shown["request_sha256"],
        hex::encode(sha2::Sha256::digest(b"conversation-body-XYZ"))
    );
    // The audit log keeps the same digests (and no body): the sealed capture
    // can be checked against the tamper-evident record.
    let record = server.audit_record(&id);
    assert_eq!(record["request_sha256"], shown["request_sha256"]);
    assert_eq!(record["response_sha256"], shown["response_sha256"]);

    // Rotation: the next request uses the new version.
    std::fs::write(&value_file, HEADER_SECRET_2).unwrap();
    let rotated = ok(server.cli(&[
        "secret",
        "rotate",
        "upstream-key",
        "--from-file",
        value_file.to_str().unwrap(),
    ]));
    std::fs::remove_file(&value_file).unwrap();
    assert!(rotated.contains("\"version\": 2"), "{rotated}");
    let r = alice.get(server.url("/hdr/x")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["headers"]["authorization"],
        format!("Bearer {HEADER_SECRET_2}")
    );
    // A stale expected version loses.
    let out = server.cli(&[
        "secret",
        "rotate",
        "upstream-key",
        "--from-env",
        "HOME",
        "--expected-version",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict"));
    // Listing shows versions and dates, never values; in-use secrets stay.
    let list = ok(server.cli(&["secret", "list", "-o", "json"]));
    assert!(
        list.contains("\"grace\"") && list.contains("rotation_due_at"),
        "{list}"
    );
    let out = server.cli(&["secret", "delete", "upstream-key"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by a configured route"));

    // Transit through the CLI.
    ok(server.cli(&["transit", "create", "app"]));
    let mut child = Command::new(BIN)
        .args(["transit", "encrypt", "app", "--state-dir"])
        .arg(server.state_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"transit plaintext")
        .unwrap();
    let token = ok(child.wait_with_output().unwrap()).trim().to_string();
    assert!(token.starts_with("gAAAAA"), "{token}");
    assert_eq!(
        ok(server.cli(&["transit", "decrypt", "app", &token])),
        "transit plaintext"
    );
    let out = server.cli(&["transit", "decrypt", "app", "gAAAAABnot-a-token"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_ciphertext"));

    // Rekey without downtime: requests keep working, the old KEK stops working.
    let new_kek = outside.path().join("kek2");
    ok(server.cli(&["vault", "rekey", "--generate", new_kek.to_str().unwrap()]));
    let r = alice.get(server.url("/hdr/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // 4. Stop, then search everything the process wrote.
    let mut server = server;
    let stdout_unused = server.terminate();
    assert!(stdout_unused.success());
    let logs = server.stderr.lock().unwrap().clone();
    let dir = server.into_dir();
    let err = serve_fails(
        &dir.path().join("state"),
        Some(&dir.path().join("portcullis.toml")),
        &kek_env,
    );
    assert!(err.contains("does not match this vault"), "{err}");
    let mut written = Vec::new();
    files(dir.path(), &mut written);
    assert!(written.iter().any(|p| p.ends_with("portcullis.db")));
    // Control: the search does find what the process did write in the clear
    // (agent names, secret names, request paths), so a miss below means something.
    for control in [&b"alice"[..], b"upstream-key", b"/hdr/echo"] {
        assert!(
            written
                .iter()
                .any(|f| contains(&std::fs::read(f).unwrap(), control)),
            "control `{}` not found: the search is broken",
            String::from_utf8_lossy(control)
        );
    }
    assert!(logs.contains("portcullis is up"), "the log was captured");
    let needles: Vec<Vec<u8>> = [
        HEADER_SECRET,
        HEADER_SECRET_2,
        QUERY_SECRET,
        BASIC_SECRET,
        BOB_SECRET,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        expect.as_bytes().to_vec(),
        b"conversation-body-XYZ".to_vec(),
    ])
    .collect();
    for needle in &needles {
        let shown = String::from_utf8_lossy(needle);
        assert!(
            !contains(logs.as_bytes(), needle),
            "`{shown}` in the server log"
        );
        for file in &written {
            let data = std::fs::read(file).unwrap();
            assert!(!contains(&data, needle), "`{shown}` in {}", file.display());
        }
    }
    assert!(!logs.contains("agent-own-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_generates_a_kek_file_and_a_wrong_kek_is_refused() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::spawn_blocking(move || Server::start_with_env(dir, None, &[]))
        .await
        .unwrap();
    let kek = server.state_dir().join("vault.kek");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kek).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A loud warning, once, at first start.
    assert!(server.stderr.lock().unwrap().contains("QUICKSTART ONLY"));
    let out = Command::new(BIN)
        .args(["secret", "put", "k", "--from-env", "V", "--state-dir"])
        .arg(server.state_dir())
        .env("V", "quickstart-secret-value")
        .output()
        .unwrap();
    ok(out);
    let dir = server.into_dir();
    let state = dir.path().join("state");
    let wrong = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let err = serve_fails(&state, None, &[("PORTCULLIS_KEK", &wrong)]);
    assert!(err.contains("does not match this vault"), "{err}");
    assert!(err.contains("nothing was decrypted or changed"), "{err}");
    let err = serve_fails(&state, None, &[("PORTCULLIS_KEK", "too-short")]);
    assert!(err.contains("must be 32 random bytes"), "{err}");
    // The generated file still opens it.
    let server = tokio::task::spawn_blocking(move || Server::start_with_env(dir, None, &[]))
        .await
        .unwrap();
    let list = ok(server.cli(&["secret", "list", "-o", "json"]));
    assert!(list.contains("\"name\": \"k\""), "{list}");
    assert!(!list.contains("quickstart-secret-value"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_kek_a_config_file_server_has_the_vault_off() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let server = tokio::task::spawn_blocking(move || Server::start(dir, Some(&cfg)))
        .await
        .unwrap();
    let out = server.cli(&["secret", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("vault_unavailable"));
    assert!(!server.state_dir().join("vault.kek").exists());
}

/// A corrupted ciphertext fails only the route that injects it, with
/// `secret_unavailable`; the rest of the vault keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn corrupted_ciphertext_fails_one_route_only() {
    install_crypto();
    let (upstream, _) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let kek = outside.path().join("kek");
    write_kek(&kek, 0x17);
    let kek_str = kek.to_str().unwrap().to_string();
    let cfg = write_config(
        dir.path(),
        &route("plain", "/plain", &format!("http://{upstream}"), "public"),
    );
    let k = kek_str.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(dir, Some(&cfg), &[("PORTCULLIS_KEK_FILE", &k)])
    })
    .await
    .unwrap();
    for (name, value) in [("upstream-key", HEADER_SECRET), ("jira-pass", BASIC_SECRET)] {
        let out = Command::new(BIN)
            .args(["secret", "put", name, "--from-env", "V", "--state-dir"])
            .arg(server.state_dir())
            .env("V", value)
            .output()
            .unwrap();
        ok(out);
    }
    let dir = server.into_dir();
    // Damage one stored ciphertext behind the server's back.
    let db = dir.path().join("state").join("portcullis.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE secret_versions SET ciphertext = CAST(zeroblob(48) AS BLOB) WHERE name = 'upstream-key'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let routes = [
        format!(
            "{}credential = {{ secret = \"upstream-key\", header = \"Authorization\", format = \"Bearer {{}}\" }}\n",
            route("hdr", "/hdr", &format!("http://{upstream}"), "public")
        ),
        format!(
            "{}credential = {{ secret = \"jira-pass\", username = \"bot\" }}\n",
            route("basic", "/basic", &format!("http://{upstream}"), "public")
        ),
    ]
    .join("\n");
    let cfg = write_config(dir.path(), &routes);
    let k = kek_str.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(dir, Some(&cfg), &[("PORTCULLIS_KEK_FILE", &k)])
    })
    .await
    .unwrap();
    let (cert, key) = server.create_agent("alice", &["reader", "team-a"]);
    let alice = client(&server.ca_pem(), Some((&cert, &key)));
    let r = alice.get(server.url("/hdr/x")).send().await.unwrap();
    let (status, err) = error_of(r).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (503, Some("secret_unavailable"))
    );
    let r = alice.get(server.url("/basic/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The server's stderr is read by a thread: wait (bounded) for the line.
    let mut logs = String::new();
    for _ in 0..100 {
        logs = server.stderr.lock().unwrap().clone();
        if logs.contains("failed authentication") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(logs.contains("failed authentication"), "{logs}");
    assert!(!logs.contains(HEADER_SECRET) && !logs.contains(BASIC_SECRET));

    // Not ready while a route's credential cannot be served, though another
    // route's is; a new version of the secret serves it, and readiness returns.
    let probe = support::client(&server.ca_pem(), None);
    let readyz = format!("https://{}/readyz", server.admin);
    let r = probe.get(&readyz).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reasons"], serde_json::json!(["vault_unavailable"]));
    let out = Command::new(BIN)
        .args([
            "secret",
            "rotate",
            "upstream-key",
            "--from-env",
            "V",
            "--state-dir",
        ])
        .arg(server.state_dir())
        .env("V", HEADER_SECRET)
        .output()
        .unwrap();
    ok(out);
    let r = alice.get(server.url("/hdr/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(probe.get(&readyz).send().await.unwrap().status(), 200);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs python3 `script` with `args`; its trimmed stdout.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `transit export` hands out a gateway-generated key only when it was
/// created `--exportable`, only with a human admin's fresh TOTP once admins
/// enrolled, and audits the export and its refusals without the key; the
/// exported versions open every token in Python's `MultiFernet`, and a key
/// imported by `transit rotate --import` is the newest version.
#[tokio::test(flavor = "multi_thread")]
async fn an_exportable_transit_key_leaves_only_by_a_stepped_up_export_and_opens_in_fernet() {
    install_crypto();
    let probe = Command::new("python3")
        .args(["-c", "import cryptography.fernet"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: transit export: python3 with `cryptography` is not installed (pip install -r requirements-test.txt)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let kek = outside.path().join("kek");
    write_kek(&kek, 0x24);
    let cfg = write_config(dir.path(), "");
    let k = kek.to_str().unwrap().to_string();
    let server = tokio::task::block_in_place(|| {
        Server::start_with_env(dir, Some(&cfg), &[("PORTCULLIS_KEK_FILE", &k)])
    });
    let encrypt = |key: &str, text: &str| {
        let mut child = Command::new(BIN)
            .args(["transit", "encrypt", key, "--state-dir"])
            .arg(server.state_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        ok(child.wait_with_output().unwrap()).trim().to_string()
    };

    ok(server.cli(&["transit", "create", "sealed"]));
    let created: serde_json::Value = serde_json::from_str(&ok(server.cli(&[
        "transit",
        "create",
        "portable",
        "--exportable",
    ])))
    .unwrap();
    assert_eq!(created["exportable"], true, "{created}");
    let t1 = encrypt("portable", "one");
    ok(server.cli(&["transit", "rotate", "portable"]));
    let t2 = encrypt("portable", "two");
    // A key made elsewhere becomes the newest version.
    let imported = python(
        "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())",
        &[],
    );
    let key_file = outside.path().join("imported.key");
    std::fs::write(&key_file, format!("{imported}\n")).unwrap();
    let rotated: serde_json::Value = serde_json::from_str(&ok(server.cli(&[
        "transit",
        "rotate",
        "portable",
        "--import",
        key_file.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(rotated["latest_version"], 3, "{rotated}");
    let t3 = encrypt("portable", "three");
    assert_eq!(
        python(
            "import sys; from cryptography.fernet import Fernet; print(Fernet(sys.argv[1].encode()).decrypt(sys.argv[2].encode()).decode())",
            &[&imported, &t3],
        ),
        "three"
    );

    // A human admin enrols: export now needs their fresh code.
    let out = ok(server.cli(&["admin", "user", "add", "alice"]));
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): "))
        .expect("secret printed");
    let secret = portcullis_identity::TotpSecret::from_base32(secret).unwrap();
    let out = server.cli(&["transit", "export", "portable"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mfa_required"), "{err}");
    while unix_now() % 30 > 22 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let code = secret.code_at(unix_now());
    // Not created exportable: refused even with a good code (which stays
    // unspent: a refused call gives its step back).
    let out = server.cli(&[
        "transit", "export", "sealed", "--user", "alice", "--totp", &code,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forbidden") && err.contains("not created exportable"),
        "{err}"
    );
    let exported: serde_json::Value = serde_json::from_str(&ok(server.cli(&[
        "transit", "export", "portable", "--user", "alice", "--totp", &code,
    ])))
    .unwrap();
    let keys: Vec<String> = exported["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect();
    let versions: Vec<i64> = exported["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1], "{exported}");
    assert_eq!(keys[0], imported);
    // Python opens every token with the exported versions, and what it
    // encrypts with the newest one opens in the gateway.
    let multi = "import sys; from cryptography.fernet import Fernet, MultiFernet; \
                 f = MultiFernet([Fernet(k.encode()) for k in sys.argv[1].split(',')]); \
                 print(' '.join(f.decrypt(t.encode()).decode() for t in sys.argv[2:]))";
    assert_eq!(
        python(multi, &[&keys.join(","), &t1, &t2, &t3]),
        "one two three"
    );
    let from_python = python(
        "import sys; from cryptography.fernet import Fernet; print(Fernet(sys.argv[1].encode()).encrypt(b'from python').decode())",
        &[&keys[0]],
    );
    assert_eq!(
        ok(server.cli(&["transit", "decrypt", "portable", &from_python])),
        "from python"
    );

    // Audited: the export with the admin who confirmed it, the refusals,
    // and never a key.
    let records = server.audit(50);
    let exports: Vec<(&str, &str, &str)> = records
        .iter()
        .filter(|r| r["action"] == "transit.export")
        .map(|r| {
            (
                r["resource"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or(""),
                r["principal"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        exports,
        [
            // Refusals name the credential that was refused.
            ("portable", "deny", "admin"),
            ("sealed", "deny", "admin"),
            ("portable", "allow", "alice"),
        ],
        "{records:?}"
    );
    let text = serde_json::to_string(&records).unwrap();
    for key in &keys {
        assert!(!text.contains(key.as_str()), "a key is in the audit log");
    }
}
