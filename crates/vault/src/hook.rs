//! Rotation hooks: what produces a secret's next value when it is rotated
//! without one being supplied (`secret rotate NAME` with no input, or the
//! maintenance task finding the secret overdue).
//!
//! - `{"command": ["/usr/local/bin/new-key", "--service", "x"]}` runs the
//!   program directly (no shell) with `PORTCULLIS_SECRET_NAME` set; its
//!   standard output, minus one trailing newline, is the new value.
//! - `{"webhook": "https://rotator.internal/openai"}` is POSTed
//!   `{"secret": NAME, "version": NEXT}` and answers `{"value": "..."}`.
//!
//! Either has 30 seconds. Failures name the hook, never the value.

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// How long a hook may take.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest value a hook may return.
const MAX_VALUE: usize = 64 * 1024;

/// A rotation hook, stored as JSON beside the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RotationHook {
    /// A program and its arguments.
    Command(Vec<String>),
    /// An `https://` (or loopback `http://`) URL.
    Webhook(String),
}

/// The hook did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook definition is unusable.
    #[error("invalid rotation hook: {0}")]
    Invalid(String),
    /// It ran and failed.
    #[error("rotation hook failed: {0}")]
    Failed(String),
}

impl RotationHook {
    /// Checks the definition.
    pub fn validate(&self) -> Result<(), HookError> {
        match self {
            RotationHook::Command(argv) if argv.is_empty() || argv[0].is_empty() => {
                Err(HookError::Invalid("`command` needs a program".into()))
            }
            RotationHook::Command(_) => Ok(()),
            RotationHook::Webhook(url) => {
                let ok = url.starts_with("https://")
                    || url.starts_with("http://127.0.0.1")
                    || url.starts_with("http://localhost")
                    || url.starts_with("http://[::1]");
                if ok {
                    Ok(())
                } else {
                    Err(HookError::Invalid(
                        "`webhook` must be an https:// URL (plain http only on loopback)".into(),
                    ))
                }
            }
        }
    }

    /// A short description without arguments (for listings).
    pub fn kind(&self) -> &'static str {
        match self {
            RotationHook::Command(_) => "command",
            RotationHook::Webhook(_) => "webhook",
        }
    }

    /// Runs the hook for the next version of `name`.
    pub async fn run(
        &self,
        http: &reqwest::Client,
        name: &str,
        next_version: i64,
    ) -> Result<Zeroizing<Vec<u8>>, HookError> {
        let fut = async {
            match self {
                RotationHook::Command(argv) => run_command(argv, name).await,
                RotationHook::Webhook(url) => run_webhook(http, url, name, next_version).await,
            }
        };
        let mut value = tokio::time::timeout(HOOK_TIMEOUT, fut)
            .await
            .map_err(|_| HookError::Failed(format!("{} hook timed out", self.kind())))??;
        if value.last() == Some(&b'\n') {
            value.pop();
            if value.last() == Some(&b'\r') {
                value.pop();
            }
        }
        if value.is_empty() {
            return Err(HookError::Failed(format!(
                "{} hook returned an empty value",
                self.kind()
            )));
        }
        if value.len() > MAX_VALUE {
            return Err(HookError::Failed(format!(
                "{} hook returned more than {MAX_VALUE} bytes",
                self.kind()
            )));
        }
        Ok(value)
    }
}

async fn run_command(argv: &[String], name: &str) -> Result<Zeroizing<Vec<u8>>, HookError> {
    let output = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("PORTCULLIS_SECRET_NAME", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // The hook's stderr is not captured: it might echo the value.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| HookError::Failed(format!("cannot run `{}`: {e}", argv[0])))?;
    let stdout = Zeroizing::new(output.stdout);
    if !output.status.success() {
        return Err(HookError::Failed(format!(
            "`{}` exited with {}",
            argv[0], output.status
        )));
    }
    Ok(stdout)
}

async fn run_webhook(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    next_version: i64,
) -> Result<Zeroizing<Vec<u8>>, HookError> {
    #[derive(Deserialize)]
    struct Answer {
        value: String,
    }
    let response = http
        .post(url)
        .json(&serde_json::json!({ "secret": name, "version": next_version }))
        .send()
        .await
        .map_err(|e| HookError::Failed(format!("webhook request failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(HookError::Failed(format!("webhook answered HTTP {status}")));
    }
    let body = Zeroizing::new(
        response
            .bytes()
            .await
            .map_err(|e| HookError::Failed(format!("webhook body: {e}")))?
            .to_vec(),
    );
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|_| HookError::Failed("webhook answer is not {\"value\": \"...\"}".into()))?;
    Ok(Zeroizing::new(answer.value.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, expect: &str) {
        let got = match serde_json::from_str::<RotationHook>(json) {
            Ok(h) => match h.validate() {
                Ok(()) => format!("ok {}", h.kind()),
                Err(e) => e.to_string(),
            },
            Err(e) => format!("parse: {e}"),
        };
        assert!(got.contains(expect), "expected `{expect}` in `{got}`");
    }

    #[test]
    fn definitions() {
        check(r#"{"command": ["/bin/echo", "x"]}"#, "ok command");
        check(r#"{"command": []}"#, "needs a program");
        check(r#"{"webhook": "https://r.example/x"}"#, "ok webhook");
        check(r#"{"webhook": "http://127.0.0.1:9/x"}"#, "ok webhook");
        check(r#"{"webhook": "http://r.example/x"}"#, "must be an https");
        check(r#"{"shell": "x"}"#, "parse:");
    }

    #[tokio::test]
    async fn command_output_is_the_value() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let hook = RotationHook::Command(vec![
            "/bin/sh".into(),
            "-c".into(),
            "printf 'v-%s\\n' \"$PORTCULLIS_SECRET_NAME\"".into(),
        ]);
        assert_eq!(
            hook.run(&http, "api", 2).await.unwrap().as_slice(),
            b"v-api"
        );
        let failing = RotationHook::Command(vec!["/bin/false".into()]);
        assert!(
            failing
                .run(&http, "api", 2)
                .await
                .unwrap_err()
                .to_string()
                .contains("exited")
        );
        let empty = RotationHook::Command(vec!["/bin/true".into()]);
        assert!(
            empty
                .run(&http, "api", 2)
                .await
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
