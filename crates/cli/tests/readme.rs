//! The README's walk-through runs as written. This test reads README.md,
//! takes every command of the "Walk-through" section (the `$ ` lines of its
//! `console` blocks, joined across `\` continuations, and the lines of its
//! `sh` blocks), and runs them in order with bash in a fresh directory where a
//! quickstart `serve` runs, as a newcomer would in a second terminal.
//!
//! Three things are rewritten, and only these: the quickstart's fixed ports
//! (`127.0.0.1:8443`, `127.0.0.1:9443`) become the ephemeral ones this
//! quickstart bound (`PORTCULLIS_GATEWAY_LISTEN`/`PORTCULLIS_ADMIN_LISTEN`),
//! `portcullis` is the binary under test instead of the alias to
//! `./target/release/portcullis`, and the example TOTP code becomes the code
//! of the secret `admin user add` printed.
//!
//! Each command's shown output is held against what it printed: an `error:`
//! means it must fail with the same error code; otherwise it must succeed, and
//! the error codes, `ok:` lines, table headers, JSON-lines records (action,
//! outcome, status), metric series and `"name"`/`"status"`/`"verified"`
//! fields shown must be there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::BIN;

/// One command of the walk-through and the output the README shows for it.
#[derive(Debug)]
struct Step {
    command: String,
    shown: Vec<String>,
}

/// The steps of the `### Walk-through` section.
fn walk_through(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_section = false;
    let mut fence: Option<String> = None;
    let mut pending: Option<String> = None;
    for line in readme.lines() {
        if fence.is_none() && (line.starts_with("## ") || line.starts_with("### ")) {
            in_section = line == "### Walk-through";
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(rest) = line.strip_prefix("```") {
            fence = match fence {
                None => Some(rest.trim().to_string()),
                Some(_) => None,
            };
            continue;
        }
        let Some(lang) = fence.as_deref() else {
            continue;
        };
        // A continuation of the previous command line.
        if let Some(mut command) = pending.take() {
            command.push('\n');
            command.push_str(line);
            if line.ends_with('\\') {
                pending = Some(command);
            } else {
                steps.push(Step {
                    command,
                    shown: Vec::new(),
                });
            }
            continue;
        }
        let command = match lang {
            "console" => line.strip_prefix("$ "),
            "sh" if !line.trim().is_empty() && !line.trim_start().starts_with('#') => Some(line),
            _ => None,
        };
        match command {
            Some(c) if c.ends_with('\\') => pending = Some(c.to_string()),
            Some(c) => steps.push(Step {
                command: c.to_string(),
                shown: Vec::new(),
            }),
            None if lang == "console" => {
                if let Some(step) = steps.last_mut() {
                    step.shown.push(line.to_string());
                }
            }
            None => {}
        }
    }
    steps
}

/// Every `"code":"…"` (compact JSON) or `(code, HTTP n)` in `text`.
fn error_codes(text: &str) -> Vec<String> {
    let mut codes = Vec::new();
    for part in text.split("\"code\":\"").skip(1) {
        codes.push(part.split('"').next().unwrap().to_string());
    }
    for part in text.split(", HTTP ") {
        if let Some(code) = part.rsplit('(').next()
            && !code.is_empty()
            && code.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            codes.push(code.to_string());
        }
    }
    codes
}

/// What the run must show, from what the README shows; `Err` names the gap.
fn check(step: &Step, ok: bool, stdout: &str, stderr: &str) -> Result<(), String> {
    let shown = step.shown.join("\n");
    let wants_error = shown.starts_with("error:");
    if ok == wants_error {
        return Err(format!(
            "exit {} but the README shows {}",
            if ok { "0" } else { "non-zero" },
            if wants_error { "an error" } else { "success" }
        ));
    }
    let both = format!("{stdout}\n{stderr}");
    for code in error_codes(&shown) {
        if !error_codes(&both).contains(&code) {
            return Err(format!("error code `{code}` missing"));
        }
    }
    let first_shown = step.shown.first().map(String::as_str).unwrap_or("");
    let first_out = stdout.lines().next().unwrap_or("");
    if first_shown.starts_with("ok:") && !first_out.starts_with("ok:") {
        return Err("no `ok:` line".into());
    }
    // A table: the same header.
    let is_header = |l: &str| {
        l.split_whitespace().count() > 2
            && l.chars()
                .all(|c| c.is_ascii_uppercase() || " /".contains(c))
    };
    if is_header(first_shown) {
        let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        if words(first_shown) != words(first_out) {
            return Err(format!("table header `{first_out}`"));
        }
    }
    // JSON-lines records: the same sequence of decisions.
    let records = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("{\"seq\""))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {} {} {}",
                    v["action"], v["resource"], v["outcome"], v["status"]
                )
            })
            .collect()
    };
    let shown_records = records(&shown);
    if !shown_records.is_empty() && shown_records != records(stdout) {
        return Err(format!(
            "records {:?}, shown {shown_records:?}",
            records(stdout)
        ));
    }
    for line in &step.shown {
        let line = line.trim().trim_end_matches(',');
        // Metric series (the value may differ).
        if line.starts_with("portcullis_") {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            if !stdout.lines().any(|l| l.starts_with(&format!("{series} "))) {
                return Err(format!("metric `{series}` missing"));
            }
        }
        for key in ["\"name\": ", "\"status\": ", "\"verified\": "] {
            if line.starts_with(key) && !stdout.contains(line) {
                return Err(format!("`{line}` missing"));
            }
        }
    }
    Ok(())
}

/// Commands that only read, and may need the background audit writer or the
/// once-a-second checkpoint to catch up: retried (bounded).
fn reads_only(command: &str) -> bool {
    [
        "portcullis audit tail",
        "portcullis audit prove",
        "portcullis audit verify",
        "portcullis inventory",
        "/metrics",
    ]
    .iter()
    .any(|p| command.contains(p))
}

#[test]
fn the_readme_walk_through_runs_as_written() {
    support::install_crypto();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let steps = walk_through(&readme);
    assert!(steps.len() >= 15, "{steps:#?}");
    assert!(
        steps[0].command.starts_with("alias portcullis="),
        "the walk-through starts by naming the binary: {:?}",
        steps[0]
    );

    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("PORTCULLIS_STATE_DIR")
        .env_remove("PORTCULLIS_KEK_FILE")
        .env_remove("PORTCULLIS_KEK")
        .env("PORTCULLIS_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = server.stdout.take().unwrap();
    let _server = Kill(server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    // "portcullis: gateway https://A admin https://B"
    let parts: Vec<&str> = line.split_whitespace().collect();
    let gateway = parts[2].trim_start_matches("https://").to_string();
    let admin = parts[4].trim_start_matches("https://").to_string();

    let prelude = format!("set -o pipefail\nportcullis() {{ '{BIN}' \"$@\"; }}\n");
    let mut totp: Option<portcullis_identity::TotpSecret> = None;
    for step in &steps[1..] {
        let mut command = step
            .command
            .replace("127.0.0.1:8443", &gateway)
            .replace("127.0.0.1:9443", &admin);
        if let Some(secret) = &totp {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            command = command.replace("--totp 492039", &format!("--totp {}", secret.code_at(now)));
        }
        let mut attempts = 0;
        let (stdout, stderr) = loop {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!("{prelude}{command}"))
                .current_dir(dir.path())
                .env_remove("PORTCULLIS_STATE_DIR")
                .env_remove("PORTCULLIS_ADMIN_URL")
                .env_remove("PORTCULLIS_USER")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            match check(step, out.status.success(), &stdout, &stderr) {
                Ok(()) => break (stdout, stderr),
                Err(why) if reads_only(&command) && attempts < 50 => {
                    attempts += 1;
                    let _ = why;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!(
                    "README step `{}`: {why}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- shown\n{}",
                    step.command,
                    step.shown.join("\n")
                ),
            }
        };
        eprintln!("$ {command}\n{stdout}{stderr}");
        if let Some(secret) = stdout.lines().find_map(|l| {
            l.strip_prefix("TOTP secret (shown once; add it to an authenticator app): ")
        }) {
            totp = Some(portcullis_identity::TotpSecret::from_base32(secret).unwrap());
        }
    }
    assert!(totp.is_some(), "the walk-through enrols an admin");
}
