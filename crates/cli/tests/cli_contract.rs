//! The CLI's output contract against the real binary: every listing and
//! showing command answers `-o json` with JSON, `-o yaml` with YAML and
//! `-o table` with a table, times in RFC 3339 UTC; shell completion
//! scripts; `--version` with the build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use serde_json::Value;
use support::*;

/// Every listing and showing command, with arguments naming things the
/// test creates. A new one goes here (docs/cli.md lists the same set).
const LISTINGS: &[&[&str]] = &[
    &["agent", "list"],
    &["agent", "show", "bot"],
    &["alerts", "list"],
    &["token", "revoked"],
    &["user", "disabled"],
    &["admin", "user", "list"],
    &["admin", "token", "list"],
    &["admin", "passkey", "list"],
    &["admin", "whoami"],
    &["audit", "tail"],
    &["secret", "list"],
    &["secret", "show", "api-key"],
    &["vault", "status"],
    &["transit", "keys"],
    &["policy", "list"],
    &["policy", "show", "1"],
    &["approvals", "list"],
    &["grants", "list"],
    &["tools", "list"],
    &["model", "list"],
    &["model", "show", "llama@1"],
    &["dataset", "list"],
    &["dataset", "show", "claims"],
    &["dataset", "report"],
    &["inventory"],
];

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `text` holds an RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SS…Z`).
fn has_rfc3339(text: &str) -> bool {
    text.as_bytes().windows(20).any(|w| {
        let d = |r: std::ops::Range<usize>| w[r].iter().all(u8::is_ascii_digit);
        d(0..4)
            && w[4] == b'-'
            && d(5..7)
            && w[7] == b'-'
            && d(8..10)
            && w[10] == b'T'
            && d(11..13)
            && w[13] == b':'
            && d(14..16)
            && w[16] == b':'
            && d(17..19)
            && (w[19] == b'Z' || w[19] == b'.')
    })
}

#[test]
fn every_listing_command_speaks_table_json_and_yaml() {
    install_crypto();
    // The quickstart (ports from the environment) has a vault.
    let server = Server::start(tempfile::tempdir().unwrap(), None);
    server.create_agent("bot", &["reader"]);
    let value = server.path().join("value");
    std::fs::write(&value, "s3cret-value\n").unwrap();
    ok(
        server.cli(&[
            "secret",
            "put",
            "api-key",
            "--from-file",
            value.to_str().unwrap(),
        ]),
        "secret put",
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    ok(
        server.cli(&[
            "model",
            "register",
            "llama",
            "--version",
            "1",
            "--digest",
            &digest,
        ]),
        "model register",
    );
    ok(
        server.cli(&[
            "dataset",
            "register",
            "claims",
            "--owner",
            "risk",
            "--classification",
            "internal",
            "--source",
            "export",
            "--licence",
            "internal",
            "--collected",
            "2026-01-31",
            "--consent-basis",
            "contract",
            "--retention-days",
            "30",
        ]),
        "dataset register",
    );

    for args in LISTINGS {
        let run = |format: &str| {
            let mut all = args.to_vec();
            all.extend(["-o", format]);
            ok(server.cli(&all), &format!("{args:?} -o {format}"))
        };
        let json = run("json");
        let parsed: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("{args:?} -o json is not JSON ({e}): {json}"));
        let yaml = run("yaml");
        let from_yaml: Value = serde_norway::from_str(&yaml)
            .unwrap_or_else(|e| panic!("{args:?} -o yaml is not YAML ({e}): {yaml}"));
        assert_eq!(parsed, from_yaml, "{args:?}: JSON and YAML disagree");
        let table = run("table");
        assert!(!table.trim().is_empty(), "{args:?} -o table is empty");
        assert!(
            !table.trim_start().starts_with('{'),
            "{args:?} -o table is JSON: {table}"
        );
        // Table is the default.
        let default = ok(server.cli(args), &format!("{args:?}"));
        assert_eq!(
            default.lines().next(),
            table.lines().next(),
            "{args:?}: the default is not the table"
        );
        assert!(!json.contains("s3cret-value") && !table.contains("s3cret-value"));
    }

    // Times are RFC 3339 UTC in every format, never epoch numbers.
    let agents = ok(server.cli(&["agent", "list", "-o", "json"]), "agent list");
    let agents: Value = serde_json::from_str(&agents).unwrap();
    let expires = agents["agents"][0]["expires_at"].as_str().unwrap();
    assert!(has_rfc3339(expires) && expires.ends_with('Z'), "{expires}");
    let table = ok(server.cli(&["agent", "list"]), "agent list");
    assert!(has_rfc3339(&table), "{table}");
    let tail = ok(server.cli(&["audit", "tail", "-o", "json"]), "audit tail");
    let tail: Value = serde_json::from_str(&tail).unwrap();
    assert!(has_rfc3339(tail["records"][0]["time_ms"].as_str().unwrap()));

    // `--json`, kept for old scripts, is `-o json`.
    let old = ok(server.cli(&["agent", "list", "--json"]), "--json");
    assert_eq!(serde_json::from_str::<Value>(&old).unwrap(), agents);
}

#[test]
fn tables_keep_long_values_readable() {
    install_crypto();
    let server = Server::start(tempfile::tempdir().unwrap(), None);
    // A long name and many roles wrap in their columns instead of
    // stretching the line; no line of the table is wider than its columns.
    let roles: Vec<String> = (0..12).map(|i| format!("role-number-{i}")).collect();
    let mut args = vec![
        "agent",
        "create",
        "a-rather-long-agent-name-for-tables",
        "--out",
    ];
    let out = server.path().join("creds");
    args.push(out.to_str().unwrap());
    for r in &roles {
        args.extend(["--role", r.as_str()]);
    }
    ok(server.cli(&args), "agent create");
    let table = ok(server.cli(&["agent", "list"]), "agent list");
    assert!(table.lines().all(|l| l.chars().count() <= 140), "{table}");
    assert!(table.contains('…'), "{table}");
    assert!(table.lines().count() >= 3, "{table}");
}

/// `portcullis … | head`: a reader that went away ends the command quietly
/// with success, not with a panic and a backtrace on stderr.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    // The reading end is closed before the command starts: its first write
    // fails with EPIPE whatever the timing.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(BIN)
        .args(["completion", "bash"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn completion_scripts_and_version_are_generated() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef portcullis"),
        ("fish", "complete -c portcullis"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["completion", shell])
            .output()
            .unwrap();
        let script = ok(out, shell);
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(
            script.contains("step-up") && script.contains("rotate"),
            "{shell}"
        );
    }
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    let version = ok(out, "--version");
    // `portcullis 0.1.0 (commit 0123456789ab, built 2026-12-07T05:00:00Z)`
    assert!(version.starts_with("portcullis "), "{version}");
    let commit = version
        .split("commit ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    assert!(
        version.contains(", built ") && has_rfc3339(&version),
        "{version}"
    );
}
