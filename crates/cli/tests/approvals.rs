//! End-to-end tests of approval tickets against the real binary: a ticket
//! binds the whole exchange (method, path **and query**, the headers that
//! change its meaning, the body), and the approver sees all of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Server, client, request_id};

const POLICIES: &str = r#"
@id("transfers") @obligation("approval")
permit (principal in Role::"payer", action == Action::"POST", resource == Route::"bank");
"#;

/// A `bank` route whose POSTs need a human's approval.
fn bank_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("schema.cedarschema"),
        portcullis_policy::DEFAULT_SCHEMA,
    )
    .unwrap();
    std::fs::write(policies.join("main.cedar"), POLICIES).unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[policy]\ndir = \"{}\"\n\
             [[routes]]\nname = \"bank\"\npath_prefix = \"/bank\"\nupstream = \"builtin:demo\"\nclassification = \"confidential\"\n",
            policies.display(),
        ),
    )
    .unwrap();
    Server::start(dir, Some(&config))
}

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// POSTs `{"memo":"rent"}` as JSON to `/bank/transfer?<query>`; returns
/// (status, the JSON answer, request id).
async fn transfer(http: &reqwest::Client, server: &Server, query: &str) -> (u16, Value, String) {
    let response = http
        .post(server.url(&format!("/bank/transfer?{query}")))
        .header("content-type", "application/json")
        .body(r#"{"memo":"rent"}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let id = request_id(&response);
    let json: Value = response.json().await.unwrap_or(Value::Null);
    (status, json, id)
}

/// The ticket of an `approval_required` answer.
fn ticket_of(status: u16, answer: &Value) -> String {
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("approval_required")),
        "{answer}"
    );
    answer["error"]["ticket"].as_str().unwrap().to_string()
}

/// Enrols admin `alice`; returns her TOTP secret.
fn enrol(server: &Server) -> portcullis_identity::TotpSecret {
    let out = ok(&server.cli(&["admin", "user", "add", "alice"]));
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): "))
        .unwrap();
    portcullis_identity::TotpSecret::from_base32(secret).unwrap()
}

/// Approves `ticket` as alice with a fresh code (each code is used once:
/// waits for a step with time left, at a bounded cost).
async fn approve(server: &Server, secret: &portcullis_identity::TotpSecret, ticket: &str) {
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
    let out = ok(&server.cli(&[
        "approvals",
        "approve",
        ticket,
        "--user",
        "alice",
        "--totp",
        &code,
    ]));
    assert!(out.contains("once"), "{out}");
}

/// Issue 15, item 4: `POST /bank/transfer?to=alice&amount=10` was approved,
/// then `?to=mallory&amount=1000000` went through on that approval, since
/// the ticket bound method, path and body but not the query.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_binds_the_query_and_the_approver_sees_it() {
    support::install_crypto();
    let server = bank_server();
    let (cert, key) = server.create_agent("pay-bot", &["payer"]);
    let payer = client(&server.ca_pem(), Some((&cert, &key)));
    let secret = enrol(&server);

    let (status, answer, _) = transfer(&payer, &server, "to=alice&amount=10").await;
    let approved = ticket_of(status, &answer);

    // The approver sees the query, the bound header and the body before
    // deciding: in the admin API…
    let admin = client(&server.ca_pem(), None);
    let shown: Value = admin
        .get(format!(
            "https://{}/admin/v1/approvals/{approved}",
            server.admin
        ))
        .bearer_auth(server.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["path"], "/bank/transfer", "{shown}");
    assert_eq!(shown["query"], "to=alice&amount=10", "{shown}");
    assert_eq!(
        shown["headers"],
        serde_json::json!([{ "name": "content-type", "value": "application/json" }])
    );
    assert_eq!(shown["body_bytes"], 15);
    assert_eq!(shown["preview"], r#"{"memo":"rent"}"#);
    assert!(
        shown["summary"]
            .as_str()
            .unwrap()
            .starts_with("POST /bank/transfer?to=alice&amount=10 (15 B body, sha256 "),
        "{shown}"
    );
    // …and in the CLI.
    let list = ok(&server.cli(&["approvals", "list"]));
    assert!(
        list.contains("call: POST /bank/transfer?to=alice&amount=10 (15 B body"),
        "{list}"
    );
    let show = ok(&server.cli(&["approvals", "show", &approved]));
    for line in [
        "query     ?to=alice&amount=10",
        "header    content-type: application/json",
        r#"preview   {"memo":"rent"}"#,
        "why       policy `transfers` (version 1) asks for approval",
    ] {
        assert!(show.lines().any(|l| l == line), "{line:?} in\n{show}");
    }
    approve(&server, &secret, &approved).await;

    // The attack: the approved path and body with another query. It is
    // another call: a new ticket, and the upstream sees nothing.
    let (status, answer, id) = transfer(&payer, &server, "to=mallory&amount=1000000").await;
    let other = ticket_of(status, &answer);
    assert_ne!(other, approved);
    let record = server.audit_record(&id);
    assert_eq!(
        (
            record["outcome"].as_str(),
            record["approval_ticket"].as_str()
        ),
        (Some("deny"), Some(other.as_str()))
    );
    let show = ok(&server.cli(&["approvals", "show", &other]));
    assert!(
        show.lines()
            .any(|l| l == "query     ?to=mallory&amount=1000000"),
        "{show}"
    );
    // So is the same query with a bound header changed.
    let response = payer
        .post(server.url("/bank/transfer?to=alice&amount=10"))
        .header("content-type", "text/plain")
        .body(r#"{"memo":"rent"}"#)
        .send()
        .await
        .unwrap();
    let (status, error) = support::error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("approval_required")),
        "{error}"
    );
    let text_plain = error["ticket"].as_str().unwrap().to_string();
    assert!(text_plain != approved && text_plain != other);

    // The approved call still goes through, exactly once, with its query.
    let (status, answer, id) = transfer(&payer, &server, "to=alice&amount=10").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["query"], "to=alice&amount=10");
    let record = server.audit_record(&id);
    assert_eq!(
        (
            record["outcome"].as_str(),
            record["approval_ticket"].as_str()
        ),
        (Some("allow"), Some(approved.as_str()))
    );
    let (status, answer, _) = transfer(&payer, &server, "to=alice&amount=10").await;
    let again = ticket_of(status, &answer);
    assert!(
        again != approved && again != other,
        "an approval is single use"
    );
}
