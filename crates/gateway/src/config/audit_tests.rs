//! Unit tests of the `[audit]` section (defined in `portcullis-control`),
//! through the whole file's parse.

use std::path::Path;

use crate::config::Config;
use crate::config::tests::check_export;

#[test]
fn export_sinks() {
    check_export(
        "[[audit.export]]\nname = \"f\"\nkind = \"jsonl\"\npath = \"audit.jsonl\"\n",
        r#"Jsonl { path: Some("/etc/p/audit.jsonl") }"#,
    );
    check_export(
        "[[audit.export]]\nname = \"o\"\nkind = \"jsonl\"\npath = \"-\"\n",
        "Jsonl { path: None }",
    );
    check_export(
        "[[audit.export]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"siem.example:6514\"\ntransport = \"tcp\"\nfacility = \"local4\"\n",
        "transport: Tcp, facility: Local4, hostname: None, app_name: \"portcullis\"",
    );
    check_export(
        "[[audit.export]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"[::1]:6514\"\ntransport = \"tls\"\n",
        "transport: Tls, facility: Auth",
    );
    check_export(
        "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://hec.example:8088/services/collector/raw\"\nformat = \"ndjson\"\nheaders = { Authorization = \"Splunk 5ecret\" }\n",
        r#"headers: ["authorization: <redacted>"]"#,
    );
    check_export(
        "[telemetry]\nservice_name = \"gw\"\n[[audit.export]]\nname = \"l\"\nkind = \"otlp\"\nendpoint = \"http://127.0.0.1:4318/\"\n",
        r#"url: http://127.0.0.1:4318/v1/logs, headers: [], service_name: "gw""#,
    );
    // Errors name the line and key, and never show a header value.
    check_export(
        "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\n",
        "line 3, key `audit.export.url`: required",
    );
    check_export(
        "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\npath = \"a\"\n",
        "key `audit.export.path`: not a key of `kind = \"webhook\"` sinks",
    );
    check_export(
        "[[audit.export]]\nname = \"a\"\nkind = \"jsonl\"\npath = \"-\"\n[[audit.export]]\nname = \"a\"\nkind = \"jsonl\"\npath = \"x\"\n",
        "line 6, key `audit.export.name`: duplicate export name `a`",
    );
    check_export(
        "[[audit.export]]\nname = \"s\"\nkind = \"syslog\"\naddress = \"siem\"\n",
        "invalid syslog address `siem`",
    );
    check_export(
        "[[audit.export]]\nname = \"s\"\nkind = \"kafka\"\n",
        "unknown variant `kafka`",
    );
    check_export(
        "[[audit.export]]\nname = \"s\"\nkind = \"jsonl\"\npath = \"-\"\nbatch = 3\n",
        "unknown field `batch`",
    );
    let bad_header = Config::parse(
        "[[audit.export]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://x\"\nheaders = { X-Key = \"top\\nsecret\" }\n",
        Path::new("p.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(bad_header.contains("header `x-key`"), "{bad_header}");
    assert!(!bad_header.contains("secret"), "{bad_header}");
}

fn check_retention(text: &str, expect: &str) {
    let got = match Config::parse(text, Path::new("/etc/p/portcullis.toml")) {
        Ok(c) => format!("ok {:?} {:?}", c.audit.retention, c.audit.archive_dir),
        Err(e) => e.to_string(),
    };
    assert!(got.contains(expect), "expected `{expect}` in:\n{got}");
}

#[test]
fn retention() {
    check_retention("", "ok None None");
    check_retention("[audit]\nretention_days = 30\n", "ok Some(2592000s) None");
    check_retention(
        "[audit]\nretention_days = 1\narchive_dir = \"arch\"\n",
        r#"ok Some(86400s) Some("/etc/p/arch")"#,
    );
    check_retention(
        "[audit]\nretention_days = 0\n",
        "`audit.retention_days`: must be at least 1",
    );
    check_retention(
        "[audit]\narchive_dir = \"a\"\n",
        "needs `audit.retention_days`",
    );
}
