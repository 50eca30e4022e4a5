//! End-to-end tests of the policy lifecycle against the real binary: versions
//! pushed, listed, diffed and rolled back through the CLI; decisions switching
//! with the active version and naming it in the audit record; a watched
//! directory hot-reloaded, with invalid changes refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{Server, client, request_id};

/// The quickstart's routes and seeded policies, on ephemeral ports (the
/// built-in quickstart listens on fixed ports, which parallel tests share).
fn quickstart() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let route = |name: &str, class: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"builtin:demo\"\nclassification = \"{class}\"\n"
        )
    };
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}{}",
            route("demo", "public"),
            route("payroll", "confidential"),
        ),
    )
    .unwrap();
    Server::start(dir, Some(&config))
}

/// Writes a policy directory: the shipped schema plus `files`.
fn policy_dir(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cedar") {
            std::fs::remove_file(path).unwrap();
        }
    }
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

const WRITERS_ONLY: &str = "@id(\"writers-write-public\")\npermit (principal in Role::\"writer\", action in Action::\"write\", resource)\nwhen { resource.classification == \"public\" };\n";

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// GETs `/demo/x` as the client; returns (status, the audit record).
async fn get_demo(server: &Server, http: &reqwest::Client) -> (u16, Value) {
    let response = http.get(server.url("/demo/x")).send().await.unwrap();
    let status = response.status().as_u16();
    let id = request_id(&response);
    drop(response.bytes().await);
    (status, server.audit_record(&id))
}

fn admin_records(server: &Server, action: &str) -> Vec<Value> {
    server
        .audit(500)
        .into_iter()
        .filter(|r| r["action"] == action)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_list_diff_rollback_and_restart() {
    support::install_crypto();
    let server = quickstart();
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let http = client(&server.ca_pem(), Some((&cert, &key)));

    // First start: the quickstart directory is version 1, and decides.
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (200, Some(1)));
    assert_eq!(record["policies"][0], "readers-read-low");

    // Push a set without the readers' permit: version 2, active at once.
    let next = server.path().join("next");
    policy_dir(&next, &[("main.cedar", WRITERS_ONLY)]);
    let out = ok(&server.cli(&[
        "policy",
        "push",
        next.to_str().unwrap(),
        "-m",
        "drop reader access",
        "--author",
        "alice",
    ]));
    assert!(out.contains("pushed version 2"), "{out}");
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (403, Some(2)));
    assert_eq!(record["policies"][0], "default-deny");

    // The same content again changes nothing.
    let out = ok(&server.cli(&["policy", "push", next.to_str().unwrap()]));
    assert!(out.contains("unchanged"), "{out}");

    let list = ok(&server.cli(&["policy", "list"]));
    let active: Vec<&str> = list.lines().filter(|l| l.contains(" active ")).collect();
    assert_eq!(active.len(), 1, "{list}");
    assert!(
        active[0].contains("alice") && active[0].contains("drop reader access"),
        "{list}"
    );
    assert!(list.lines().any(|l| l.starts_with("1 ")), "{list}");

    let diff = ok(&server.cli(&["policy", "diff", "1", "2"]));
    assert!(diff.contains("--- v1/quickstart.cedar"), "{diff}");
    assert!(diff.contains("+++ v2/quickstart.cedar (absent)"), "{diff}");
    assert!(diff.contains("-@id(\"readers-read-low\")"), "{diff}");
    assert!(diff.contains("+++ v2/main.cedar"), "{diff}");

    // An unknown annotation is refused by the CLI before anything is sent…
    let bad = server.path().join("bad");
    policy_dir(
        &bad,
        &[(
            "a.cedar",
            "@id(\"x\") @obligaton(\"approval\") permit(principal, action, resource);",
        )],
    );
    let out = server.cli(&["policy", "push", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown annotation `@obligaton`"));
    // …and by the server when pushed directly; the running version stays.
    let admin = client(&server.ca_pem(), None);
    let mut files = std::collections::BTreeMap::new();
    files.insert(
        "schema.cedarschema",
        portcullis_policy::DEFAULT_SCHEMA.to_string(),
    );
    files.insert(
        "a.cedar",
        "@id(\"x\") @obligaton(\"approval\") permit(principal, action, resource);".into(),
    );
    let response = admin
        .post(format!("https://{}/admin/v1/policies", server.admin))
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({ "files": files, "message": "typo" }))
        .send()
        .await
        .unwrap();
    let (status, error) = support::error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_policy"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("@obligaton"),
        "{error}"
    );
    // A set that compiles but names a context field the gateway does not send
    // is refused too (validated against the schema first).
    files.insert(
        "a.cedar",
        "permit(principal, action, resource) when { context.nope };".into(),
    );
    let response = admin
        .post(format!("https://{}/admin/v1/policies", server.admin))
        .bearer_auth(server.admin_token())
        .json(&serde_json::json!({ "files": files }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (403, Some(2)));

    // Roll back to the version before: readers read again.
    let out = ok(&server.cli(&["policy", "rollback"]));
    assert!(
        out.contains("version 1 ") && out.contains("(was 2)"),
        "{out}"
    );
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (200, Some(1)));

    // Push and rollback are in the audit log with the version they installed.
    let pushes = admin_records(&server, "policy.push");
    assert!(
        pushes
            .iter()
            .any(|r| r["policy_version"] == 2 && r["outcome"] == "allow"),
        "{pushes:?}"
    );
    let rollbacks = admin_records(&server, "policy.rollback");
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0]["policy_version"], 1);
    // The first start's own install is recorded as well.
    assert!(
        pushes
            .iter()
            .any(|r| r["principal"] == "serve" && r["policy_version"] == 1),
        "{pushes:?}"
    );

    // The active version outlives a restart, though the directory still holds
    // version 1: push version 3 (= 2's content), restart, still denied.
    ok(&server.cli(&["policy", "push", next.to_str().unwrap(), "-m", "again"]));
    let dir = server.into_dir();
    let config = dir.path().join("portcullis.toml");
    let server = Server::start(dir, Some(&config));
    let (cert, key) = (
        server.path().join("creds/reader-bot.crt"),
        server.path().join("creds/reader-bot.key"),
    );
    let http = client(&server.ca_pem(), Some((&cert, &key)));
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (403, Some(3)));

    // Versions are immutable and stay listed; a missing one is a clean error.
    // (A long message wraps onto lines of its own; each version's line
    // begins with its number.)
    let list = ok(&server.cli(&["policy", "list"]));
    let versions = list
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(versions, 3, "{list}");
    let out = server.cli(&["policy", "rollback", "9"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watched_directory_is_hot_reloaded_and_bad_changes_are_refused() {
    support::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    policy_dir(
        &policies,
        &[("main.cedar", portcullis_policy::DEFAULT_POLICIES)],
    );
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [policy]\ndir = \"{}\"\nwatch = true\n\
             [[routes]]\nname = \"demo\"\npath_prefix = \"/demo\"\nupstream = \"builtin:demo\"\nclassification = \"public\"\n",
            policies.display()
        ),
    )
    .unwrap();
    let server = Server::start(dir, Some(&config));
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let http = client(&server.ca_pem(), Some((&cert, &key)));
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (200, Some(1)));

    // Waits (bounded) until GET /demo is decided by `version`.
    async fn until_version(server: &Server, http: &reqwest::Client, version: u64) -> (u16, Value) {
        for _ in 0..100 {
            let (status, record) = get_demo(server, http).await;
            if record["policy_version"] == version {
                return (status, record);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("version {version} was never installed");
    }

    policy_dir(&policies, &[("main.cedar", WRITERS_ONLY)]);
    let (status, _) = until_version(&server, &http, 2).await;
    assert_eq!(status, 403);

    // A broken edit is refused: logged, audited, and version 2 keeps deciding.
    std::fs::write(
        policies.join("broken.cedar"),
        "permit(principal, action, resource) when {",
    )
    .unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if server
            .stderr
            .lock()
            .unwrap()
            .contains("policy directory change refused")
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "{}", server.stderr.lock().unwrap());
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (403, Some(2)));
    let refusals: Vec<Value> = admin_records(&server, "policy.push")
        .into_iter()
        .filter(|r| r["outcome"] == "deny")
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["error_code"], "invalid_policy");

    // Fixing it installs the next version.
    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    policy_dir(
        &policies,
        &[("main.cedar", portcullis_policy::DEFAULT_POLICIES)],
    );
    let (status, _) = until_version(&server, &http, 3).await;
    assert_eq!(status, 200);
    let watched: Vec<Value> = admin_records(&server, "policy.push")
        .into_iter()
        .filter(|r| r["principal"] == "policy-watch" && r["outcome"] == "allow")
        .collect();
    assert_eq!(watched.len(), 3, "{watched:?}");
}

#[test]
fn example_policies_pass_their_tests_and_failures_exit_non_zero() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    // The examples use the shipped schema, kept identical.
    assert_eq!(
        std::fs::read_to_string(examples.join("schema.cedarschema")).unwrap(),
        portcullis_policy::DEFAULT_SCHEMA
    );
    let mut files = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".test.yaml") {
            continue;
        }
        files += 1;
        let out = std::process::Command::new(support::BIN)
            .args(["policy", "test"])
            .arg(&path)
            .output()
            .unwrap();
        let text = ok(&out);
        assert!(
            text.contains("test result: ok.") && !text.contains("FAILED"),
            "{text}"
        );
    }
    let policies = std::fs::read_dir(&examples)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cedar")
        })
        .count();
    assert_eq!(files, policies, "one case file per example policy");
    assert!(files >= 5, "{files}");

    // A wrong expectation fails like a test runner: the case, why, non-zero exit.
    // Both cases name their time (a Saturday): without one a case is decided
    // at the time the test runs, and business hours would allow case 2.
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("wrong.test.yaml");
    std::fs::write(
        &cases,
        format!(
            "policies: {}\nagents: [{{ name: bot, roles: [support] }}]\nroutes: [{{ name: kb, classification: public }}]\n\
             cases:\n  - name: saturday\n    principal: bot\n    action: GET\n    resource: kb\n    \
             context: {{ time: \"2026-11-28T11:00:00Z\" }}\n    expect: allow\n  \
             - name: typo in context\n    principal: bot\n    action: GET\n    resource: kb\n    \
             context: {{ sorce_ip: 10.0.0.1, time: \"2026-11-28T11:00:00Z\" }}\n    expect: deny\n",
            examples.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["policy", "test"])
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    // An unknown context key is refused when the file is read, not ignored.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sorce_ip"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        &cases,
        std::fs::read_to_string(&cases)
            .unwrap()
            .replace("sorce_ip", "source_ip"),
    )
    .unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["policy", "test"])
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("case 1 saturday ... FAILED"), "{stdout}");
    assert!(
        stdout.contains("expected allow, got deny [default-deny]"),
        "{stdout}"
    );
    assert!(stdout.contains("case 2 typo in context ... ok"), "{stdout}");
    assert!(
        stdout.contains("test result: FAILED. 1 passed; 1 failed"),
        "{stdout}"
    );
}

#[test]
fn explain_names_deciding_policies_and_failed_conditions() {
    support::install_crypto();
    let server = quickstart();
    server.create_agent("reader-bot", &["reader"]);
    let out = ok(&server.cli(&[
        "policy",
        "explain",
        "--agent",
        "reader-bot",
        "--action",
        "GET",
        "--resource",
        "payroll",
    ]));
    assert!(out.contains("decision: deny (policy version 1)"), "{out}");
    assert!(out.contains("deciding: default-deny"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("readers-read-low"))
        .unwrap();
    assert!(line.contains("not satisfied"), "{out}");
    assert!(
        out.contains("failed: when { resource.classification_level <= 1 }"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("writers-write-public") && l.contains("out of scope")),
        "{out}"
    );

    let out = ok(&server.cli(&[
        "policy",
        "explain",
        "--agent",
        "reader-bot",
        "--action",
        "DELETE",
        "--resource",
        "demo",
        "--context",
        r#"{"source_ip":"10.1.2.3"}"#,
    ]));
    assert!(out.contains("deciding: no-remote-delete"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("no-remote-delete")
            && l.trim_end().ends_with(" satisfied")
            && !l.contains("not")),
        "{out}"
    );
    // A bad context is a clean client error.
    let out = server.cli(&[
        "policy",
        "explain",
        "--agent",
        "reader-bot",
        "--action",
        "GET",
        "--resource",
        "demo",
        "--context",
        r#"{"risk":7}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad_request"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const OBLIGATIONS: &str = r#"
@id("read-demo") @rate("3/m")
permit (principal in Role::"reader", action == Action::"GET", resource == Route::"demo");

@id("transfers") @obligation("approval")
permit (principal in Role::"payer", action == Action::"POST", resource == Route::"bank");

@id("docs-redacted") @obligation("redact")
permit (principal in Role::"reader", action == Action::"GET", resource == Route::"docs");

@id("bank-reads") @obligation("mfa")
permit (principal in Role::"payer", action == Action::"GET", resource == Route::"bank");
"#;

fn obligations_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    policy_dir(&policies, &[("main.cedar", OBLIGATIONS)]);
    let route = |name: &str, class: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"builtin:demo\"\nclassification = \"{class}\"\n"
        )
    };
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n{}{}{}",
            policies.display(),
            route("demo", "public"),
            route("docs", "public"),
            route("bank", "confidential"),
        ),
    )
    .unwrap();
    Server::start(dir, Some(&config))
}

/// POSTs a transfer; returns (status, error JSON or body, request id).
async fn transfer(
    server: &Server,
    http: &reqwest::Client,
    body: &str,
    wait: Option<u64>,
) -> (u16, Value, String) {
    let mut request = http
        .post(server.url("/bank/transfer"))
        .body(body.to_string());
    if let Some(wait) = wait {
        request = request.header("prefer", format!("wait={wait}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let id = request_id(&response);
    let json: Value = response.json().await.unwrap_or(Value::Null);
    (status, json, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn obligations_rate_mfa_redact_and_approvals_bound_to_the_call() {
    support::install_crypto();
    let server = obligations_server();
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let reader = client(&server.ca_pem(), Some((&cert, &key)));
    let (cert, key) = server.create_agent("pay-bot", &["payer"]);
    let payer = client(&server.ca_pem(), Some((&cert, &key)));

    // @rate("3/m"): three, then 429 with Retry-After, naming the policy.
    for _ in 0..3 {
        let r = reader.get(server.url("/demo/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = reader.get(server.url("/demo/x")).send().await.unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (status, error) = support::error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(error["policies"][0], "read-demo");

    // @obligation("redact"): the route has no DLP of its own, the policy turns it on.
    let r = reader
        .get(server.url("/docs/page?contact=alice.smith@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("alice.smith@example.com") && text.contains("[REDACTED_EMAIL"),
        "{text}"
    );

    // @obligation("mfa"): a certificate alone acts for no user with MFA.
    let r = payer.get(server.url("/bank/balance")).send().await.unwrap();
    let (status, error) = support::error_of(r).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("user_mfa_required"))
    );

    // @obligation("approval"): a ticket bound to this exact call.
    let (status, error, id) = transfer(&server, &payer, r#"{"amount":100}"#, None).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (403, Some("approval_required"))
    );
    let t1 = error["error"]["ticket"].as_str().unwrap().to_string();
    let record = server.audit_record(&id);
    assert_eq!(
        (
            record["outcome"].as_str(),
            record["approval_ticket"].as_str()
        ),
        (Some("deny"), Some(t1.as_str()))
    );
    let list = ok(&server.cli(&["approvals", "list"]));
    let line = list
        .lines()
        .find(|l| l.starts_with(&t1))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("pending") && line.contains("pay-bot") && line.contains("/bank/transfer"),
        "{list}"
    );
    assert!(list.contains("policy `transfers` (version 1)"), "{list}");
    // No admin has enrolled yet: the admin token alone decides.
    let out = ok(&server.cli(&["approvals", "approve", &t1]));
    assert!(out.contains("once"), "{out}");

    // The approved call goes through, once.
    let (status, body, id) = transfer(&server, &payer, r#"{"amount":100}"#, None).await;
    assert_eq!(status, 200, "{body}");
    let record = server.audit_record(&id);
    assert_eq!(
        (
            record["outcome"].as_str(),
            record["approval_ticket"].as_str()
        ),
        (Some("allow"), Some(t1.as_str()))
    );
    let (status, error, _) = transfer(&server, &payer, r#"{"amount":100}"#, None).await;
    assert_eq!(status, 403);
    let t2 = error["error"]["ticket"].as_str().unwrap().to_string();
    assert_ne!(t2, t1, "an approval is single use");
    // A different amount is a different call: its own ticket, which can be denied.
    let (_, error, _) = transfer(&server, &payer, r#"{"amount":100000}"#, None).await;
    let t3 = error["error"]["ticket"].as_str().unwrap().to_string();
    assert!(t3 != t2 && t3 != t1);
    ok(&server.cli(&["approvals", "deny", &t3]));
    let (status, error, _) = transfer(&server, &payer, r#"{"amount":100000}"#, None).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (403, Some("approval_denied"))
    );

    // Prefer: wait=N holds the call until a human decides.
    let held = {
        let payer = payer.clone();
        let url = server.url("/bank/transfer");
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = payer
                .post(url)
                .header("prefer", "wait=30")
                .body(r#"{"amount":5}"#)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed())
        })
    };
    let mut t5 = None;
    for _ in 0..100 {
        let list = ok(&server.cli(&["approvals", "list"]));
        let pending: Vec<&str> = list
            .lines()
            .filter(|l| l.contains("pending"))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|id| *id != t2)
            .collect();
        if let [id] = pending[..] {
            t5 = Some(id.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t5 = t5.expect("the held call's ticket never appeared");
    ok(&server.cli(&["approvals", "approve", &t5]));
    let (status, elapsed) = held.await.unwrap();
    assert_eq!(status, 200);
    assert!(elapsed < Duration::from_secs(25), "{elapsed:?}");

    // --ttl grants the agent the action on the route for a while: any body.
    let (_, error, _) = transfer(&server, &payer, r#"{"amount":7}"#, None).await;
    let t6 = error["error"]["ticket"].as_str().unwrap().to_string();
    let out = ok(&server.cli(&["approvals", "approve", &t6, "--ttl", "10m"]));
    assert!(out.contains("grant"), "{out}");
    let (status, _, id) = transfer(&server, &payer, r#"{"amount":8}"#, None).await;
    assert_eq!(status, 200);
    let record = server.audit_record(&id);
    let policies: Vec<&str> = record["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        policies.iter().any(|p| p.starts_with("grant:")),
        "{policies:?}"
    );
    let grants = ok(&server.cli(&["grants", "list"]));
    let grant = grants
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(
        grants.contains("pay-bot") && grants.contains(&t6),
        "{grants}"
    );
    ok(&server.cli(&["grants", "revoke", &grant]));
    let (status, error, _) = transfer(&server, &payer, r#"{"amount":9}"#, None).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (403, Some("approval_required"))
    );

    // Every decision is in the audit log, with the approver (the writer
    // commits in batches: wait, bounded, for each).
    for action in [
        "grant.revoke",
        "approval.approve",
        "approval.deny",
        "grant.create",
    ] {
        let mut found = Vec::new();
        for _ in 0..100 {
            found = admin_records(&server, action);
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!found.is_empty(), "no {action} record");
        assert_eq!(found[0]["principal"], "admin", "{:?}", found[0]);
    }

    // Once an admin has enrolled, deciding needs that admin's fresh TOTP code,
    // and the record names the admin.
    let out = ok(&server.cli(&["admin", "user", "add", "alice"]));
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): "))
        .unwrap();
    let secret = portcullis_identity::TotpSecret::from_base32(secret).unwrap();
    let (_, error, _) = transfer(&server, &payer, r#"{"amount":11}"#, None).await;
    let t7 = error["error"]["ticket"].as_str().unwrap().to_string();
    let out = server.cli(&["approvals", "approve", &t7]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mfa_required"));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() % 30 > 22 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let code = secret.code_at(now());
    ok(&server.cli(&[
        "approvals",
        "approve",
        &t7,
        "--user",
        "alice",
        "--totp",
        &code,
    ]));
    let (status, _, _) = transfer(&server, &payer, r#"{"amount":11}"#, None).await;
    assert_eq!(status, 200);
    let mut by_alice = None;
    for _ in 0..100 {
        by_alice = admin_records(&server, "approval.approve")
            .into_iter()
            .find(|r| r["approval_ticket"] == t7.as_str());
        if by_alice.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(by_alice.unwrap()["principal"], "admin:alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_candidate_is_decided_alongside_and_its_disagreements_listed() {
    support::install_crypto();
    let server = quickstart();
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let http = client(&server.ca_pem(), Some((&cert, &key)));
    let next = server.path().join("next");
    policy_dir(&next, &[("main.cedar", WRITERS_ONLY)]);
    let out = ok(&server.cli(&["policy", "push", next.to_str().unwrap(), "--shadow"]));
    assert!(
        out.contains("version 2") && out.contains("shadow candidate"),
        "{out}"
    );
    let list = ok(&server.cli(&["policy", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("2 ") && l.contains(" shadow ")),
        "{list}"
    );

    // Live traffic is still decided by version 1; the candidate would deny.
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (200, Some(1)));
    let denied_id = record["request_id"].as_str().unwrap().to_string();
    // A request both deny is no disagreement.
    let r = http.post(server.url("/payroll/x")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let out = ok(&server.cli(&["policy", "shadow"]));
    assert!(
        out.contains("shadow: version 2 beside active version 1"),
        "{out}"
    );
    assert!(
        out.contains("decided: 2  disagreements: 1 (allow -> deny 1, deny -> allow 0)"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains(&denied_id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("active allow [readers-read-low] -> shadow deny [default-deny]"),
        "{out}"
    );

    // Promoting it is a rollback to its version; shadowing ends.
    ok(&server.cli(&["policy", "rollback", "2"]));
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (403, Some(2)));
    let out = ok(&server.cli(&["policy", "shadow"]));
    assert!(
        out.contains("no shadow candidate (active: version 2)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn break_glass_needs_two_admins_and_marks_every_request() {
    support::install_crypto();
    let server = quickstart();
    let (cert, key) = server.create_agent("oncall-bot", &["oncall"]);
    let http = client(&server.ca_pem(), Some((&cert, &key)));
    let r = http.get(server.url("/payroll/x")).send().await.unwrap();
    assert_eq!(r.status(), 403, "no policy lets the oncall role in");

    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    // Alice's codes are used in step order (each step once): t-1 enrols Bob,
    // t opens, t+1 closes; all inside the ±1 step window.
    let secret_of = |out: &str| {
        let secret = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): ")
            })
            .unwrap();
        portcullis_identity::TotpSecret::from_base32(secret).unwrap()
    };
    let alice = secret_of(&ok(&server.cli(&["admin", "user", "add", "alice"])));
    while now() % 30 > 18 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let earlier = alice.code_at(now() - 30);
    let bob = secret_of(&ok(&server.cli(&[
        "admin", "user", "add", "bob", "--user", "alice", "--totp", &earlier,
    ])));
    let secrets = [alice, bob];
    let (a, b) = (secrets[0].code_at(now()), secrets[1].code_at(now()));
    let open = |approvers: &[String]| {
        let mut args = vec![
            "breakglass",
            "open",
            "--agent",
            "oncall-bot",
            "--reason",
            "payroll outage INC-7",
            "--ttl",
            "30m",
        ];
        for approver in approvers {
            args.push("--approver");
            args.push(approver);
        }
        server.cli(&args)
    };
    // One approver, even twice, is not enough.
    let out = open(&[format!("alice:{a}"), format!("alice:{a}")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("two distinct approvers"));
    let out = open(&[format!("alice:{a}")]);
    assert!(!out.status.success());
    let out = ok(&open(&[format!("alice:{a}"), format!("bob:{b}")]));
    assert!(out.contains("BREAK-GLASS breakglass:"), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("close it early with `portcullis breakglass close "))
        .unwrap()
        .trim_end_matches('`')
        .to_string();
    // The alert reaches the server log (read by a thread: wait, bounded).
    let mut alerted = false;
    for _ in 0..100 {
        alerted = server.stderr.lock().unwrap().contains("BREAK-GLASS OPENED");
        if alerted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alerted);

    // Every request under it is allowed by it and marked.
    let response = http.get(server.url("/payroll/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let record = server.audit_record(&request_id(&response));
    let mark = format!("breakglass:{id}");
    assert_eq!(record["breakglass"], mark.as_str());
    assert_eq!(record["policies"][0], mark.as_str());
    let opened = admin_records(&server, "breakglass.open");
    assert_eq!(opened[0]["principal"], "admin:alice+bob");
    assert_eq!(opened[0]["breakglass"], mark.as_str());
    let grants = ok(&server.cli(&["grants", "list"]));
    assert!(
        grants.contains("breakglass") && grants.contains("payroll outage INC-7"),
        "{grants}"
    );

    // Closing it (a sensitive action: a fresh code) ends it at once.
    let next = secrets[0].code_at(now() + 30);
    ok(&server.cli(&[
        "breakglass",
        "close",
        &id,
        "--user",
        "alice",
        "--totp",
        &next,
    ]));
    let r = http.get(server.url("/payroll/x")).send().await.unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn whatif_replays_recorded_traffic_under_a_candidate() {
    support::install_crypto();
    let server = quickstart();
    let (cert, key) = server.create_agent("reader-bot", &["reader"]);
    let http = client(&server.ca_pem(), Some((&cert, &key)));
    let (_, first) = get_demo(&server, &http).await;
    let (_, second) = get_demo(&server, &http).await;
    // Denied now and under the candidate: not a change.
    let r = http.post(server.url("/demo/x")).send().await.unwrap();
    let unchanged = request_id(&r);
    assert_eq!(r.status(), 403);
    server.audit_record(&unchanged);

    let candidate = server.path().join("candidate");
    policy_dir(&candidate, &[("main.cedar", WRITERS_ONLY)]);
    let out = ok(&server.cli(&[
        "policy",
        "whatif",
        candidate.to_str().unwrap(),
        "--since",
        "1h",
    ]));
    for record in [&first, &second] {
        let id = record["request_id"].as_str().unwrap();
        let line = out
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            line.contains("reader-bot GET /demo/x: allow [readers-read-low] -> deny [default-deny] (recorded: allow)"),
            "{out}"
        );
    }
    assert!(!out.contains(&unchanged), "{out}");
    assert!(
        out.contains("replayed 3 requests against version 1"),
        "{out}"
    );
    assert!(
        out.contains("2 would change (allow -> deny 2, deny -> allow 0)"),
        "{out}"
    );
    // Nothing was installed.
    let (status, record) = get_demo(&server, &http).await;
    assert_eq!((status, record["policy_version"].as_u64()), (200, Some(1)));
}

/// The active policies of the MCP and LLM test: tool calls outside `/etc`,
/// the tool list, and every model of the route.
const MCP_LLM_ACTIVE: &str = r#"
@id("dev-tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files");
@id("no-etc") forbid(principal, action == Action::"call_tool", resource)
  when { context.args.hasTag("path") && context.args.getTag("path") like "/etc/*" };
@id("dev-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"files");
@id("dev-models") permit(principal in Role::"dev", action == Action::"complete", resource in Route::"llm");
"#;

/// The candidate: tool calls only with a path under `/tmp`, approved models only.
const MCP_LLM_CANDIDATE: &str = r#"
@id("dev-tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files")
  when { context.args.hasTag("path") && context.args.getTag("path") like "/tmp/*" };
@id("dev-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"files");
@id("approved-models") permit(principal in Role::"dev", action == Action::"complete", resource in Route::"llm")
  when { resource.status == "approved" };
"#;

#[tokio::test(flavor = "multi_thread")]
async fn explain_and_whatif_cover_mcp_messages_and_model_requests() {
    support::install_crypto();
    let (upstream, _) = support::start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    policy_dir(
        &dir.path().join("policies"),
        &[("main.cedar", MCP_LLM_ACTIVE)],
    );
    let routes = format!(
        r#"[policy]
dir = "policies"
[[routes]]
name = "files"
kind = "mcp"
path_prefix = "/mcp/files"
upstream = "http://{upstream}/mcp"
classification = "internal"
[[routes]]
name = "llm"
kind = "llm"
path_prefix = "/llm"
upstream = "http://{upstream}"
classification = "internal"
api_key_env = "POLICY_TEST_LLM_KEY"
[[routes.models]]
name = "gpt-test"
status = "approved"
[[routes.models]]
name = "preview"
status = "preview"
"#
    );
    let config = support::config(dir.path(), &routes, "");
    let server = Server::start_with_env(dir, Some(&config), &[("POLICY_TEST_LLM_KEY", "sk-x")]);
    let (cert, key) = server.create_agent("dev-bot", &["dev"]);
    let http = client(&server.ca_pem(), Some((&cert, &key)));

    // Recorded traffic: a tool call (its arguments are not recorded), a
    // tool list, a completion and a model listing.
    let mcp = |body: Value| {
        http.post(server.url("/mcp/files"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
    };
    let call = mcp(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "read_file", "arguments": {"path": "/tmp/a"}}}),
    )
    .await
    .unwrap();
    let call_id = request_id(&call);
    drop(call.bytes().await);
    let record = server.audit_record(&call_id);
    assert_eq!(record["action"], "mcp:tools/call");
    assert_eq!(record["resource"], "files/read_file");
    assert_eq!(record["policies"], serde_json::json!(["dev-tools"]));
    let list = mcp(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await
        .unwrap();
    let list_id = request_id(&list);
    drop(list.bytes().await);
    let completion = http
        .post(server.url("/llm/v1/chat/completions"))
        .json(&serde_json::json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let completion_id = request_id(&completion);
    drop(completion.bytes().await);
    assert_eq!(
        server.audit_record(&completion_id)["policies"],
        serde_json::json!(["dev-models"])
    );
    let models = http.get(server.url("/llm/v1/models")).send().await.unwrap();
    let models_id = request_id(&models);
    let listed: Value = models.json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(server.audit_record(&models_id)["action"], "list_models");

    // explain: a tool call with its arguments, in the gateway's resource forms.
    let explain = |action: &str, resource: &str, context: &str| {
        ok(&server.cli(&[
            "policy",
            "explain",
            "--agent",
            "dev-bot",
            "--action",
            action,
            "--resource",
            resource,
            "--context",
            context,
        ]))
    };
    let out = explain(
        "call_tool",
        r#"Tool::"files/read_file""#,
        r#"{"args":{"path":"/etc/passwd"}}"#,
    );
    assert!(out.contains("decision: deny (policy version 1)"), "{out}");
    assert!(out.contains("deciding: no-etc"), "{out}");
    let out = explain(
        "call_tool",
        "files/read_file",
        r#"{"args":{"path":"/tmp/a"}}"#,
    );
    assert!(out.contains("decision: allow"), "{out}");
    assert!(
        out.contains(r#"failed: when { context.args.getTag("path") like "/etc/*" }"#),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("dev-models") && l.contains("out of scope")),
        "{out}"
    );
    let out = explain("list_tools", "files", "{}");
    assert!(out.contains("deciding: dev-list"), "{out}");
    let out = explain("complete", r#"Model::"llm/preview""#, "{}");
    assert!(out.contains("deciding: dev-models"), "{out}");
    let out = explain("list_models", "llm", "{}");
    assert!(out.contains("visible models: gpt-test, preview"), "{out}");
    assert!(out.contains("model preview:"), "{out}");
    let out = explain("use_secret", "key", r#"{"route":"llm"}"#);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("deciding: default-deny"), "{out}");
    // A resource of the wrong type, or arguments where there are none, are
    // clean client errors.
    for (action, resource, context) in [
        ("call_tool", r#"Model::"llm/preview""#, "{}"),
        ("list_tools", "files", r#"{"args":{"a":1}}"#),
        ("fly", "files", "{}"),
    ] {
        let out = server.cli(&[
            "policy",
            "explain",
            "--agent",
            "dev-bot",
            "--action",
            action,
            "--resource",
            resource,
            "--context",
            context,
        ]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("bad_request"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // whatif replays the MCP and model records under the candidate.
    let candidate = server.path().join("candidate");
    policy_dir(&candidate, &[("main.cedar", MCP_LLM_CANDIDATE)]);
    let out = ok(&server.cli(&[
        "policy",
        "whatif",
        candidate.to_str().unwrap(),
        "--since",
        "1h",
    ]));
    let line = |id: &str| {
        out.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} missing: {out}"))
            .to_string()
    };
    // The call was made with a path under /tmp, but the record does not keep
    // it: replayed without arguments, and said so.
    assert!(
        line(&call_id).contains(
            "dev-bot mcp:tools/call files/read_file: allow [dev-tools] -> deny [default-deny]"
        ),
        "{out}"
    );
    assert!(
        line(&call_id).contains("[arguments not recorded: replayed without them]"),
        "{out}"
    );
    assert!(
        line(&models_id)
            .contains("dev-bot list_models llm: models [gpt-test,preview] -> [gpt-test]"),
        "{out}"
    );
    assert!(!out.contains(&list_id), "{out}");
    assert!(!out.contains(&completion_id), "{out}");
    assert!(
        out.contains("replayed 4 requests against version 1"),
        "{out}"
    );
    assert!(
        out.contains("2 would change (allow -> deny 1, deny -> allow 0; model listings 1)"),
        "{out}"
    );
    assert!(
        out.contains("1 MCP tool calls and prompt gets were replayed without their arguments"),
        "{out}"
    );
}

#[test]
fn policy_test_covers_mcp_model_listing_and_secret_actions() {
    let dir = tempfile::tempdir().unwrap();
    policy_dir(
        dir.path(),
        &[(
            "main.cedar",
            r#"
@id("dev-tools") permit(principal in Role::"dev", action == Action::"call_tool", resource in Route::"files")
  when { context.args.hasTag("path") && context.args.getTag("path") like "/tmp/*" };
@id("dev-list") permit(principal in Role::"dev", action == Action::"list_tools", resource == Route::"files");
@id("docs") permit(principal in Role::"dev", action == Action::"read_resource", resource in Route::"files")
  when { resource.name like "docs://*" };
@id("prompts") permit(principal in Role::"dev", action == Action::"get_prompt", resource == Prompt::"files/summary");
@id("approved") permit(principal in Role::"dev", action in [Action::"complete", Action::"embed"], resource in Route::"llm")
  when { resource.status == "approved" };
@id("llm-key") permit(principal in Role::"dev", action == Action::"use_secret", resource == Secret::"llm-key")
  when { context.route == "llm" };
"#,
        )],
    );
    let cases = dir.path().join("all.test.yaml");
    let case = |name: &str, action: &str, resource: &str, rest: &str| {
        format!(
            "  - name: {name}\n    principal: dev-bot\n    action: {action}\n    resource: '{resource}'\n{rest}"
        )
    };
    let text = [
        "agents: [{ name: dev-bot, roles: [dev] }]\nroutes:\n  - { name: files, classification: internal }\n  \
         - name: llm\n    classification: internal\n    models:\n      - { name: gpt, status: approved }\n      \
         - { name: exp, status: preview }\ncases:\n"
            .to_string(),
        case("tmp", "call_tool", "files/read_file", "    context: { args: { path: /tmp/a } }\n    expect: allow\n    policies: [dev-tools]\n"),
        case("etc", "call_tool", r#"Tool::"files/read_file""#, "    context: { args: { path: /etc/passwd } }\n    expect: deny\n"),
        case("list", "list_tools", "files", "    expect: allow\n"),
        case("docs", "read_resource", "files/docs://a", "    expect: allow\n"),
        case("prompt", "get_prompt", r#"Prompt::"files/summary""#, "    expect: allow\n"),
        case("complete", "complete", "llm/gpt", "    expect: allow\n"),
        case("preview", "embed", r#"Model::"llm/exp""#, "    expect: deny\n"),
        case("listing", "list_models", "llm", "    models: [gpt]\n"),
        case("secret", "use_secret", "llm-key", "    context: { route: llm }\n    expect: allow\n"),
        case("wrong listing", "list_models", "llm", "    models: [gpt, exp]\n"),
    ]
    .concat();
    std::fs::write(&cases, text).unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["policy", "test"])
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("test result: FAILED. 9 passed; 1 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "case 10 wrong listing ... FAILED\n    expected models [gpt, exp], got [gpt]"
        ),
        "{stdout}"
    );
}
