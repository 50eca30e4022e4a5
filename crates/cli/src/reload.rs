//! SIGHUP: re-read the config file and the policy directory, and apply what
//! can change without a restart, all or nothing.
//!
//! What is hot and what needs a restart follows from how the process is
//! built. The policy set is already a swappable, versioned snapshot (a push,
//! a rollback and the directory watcher swap it), so SIGHUP re-reads the
//! policy directory and installs it as a new version through the same checks
//! (compile, schema, fit to the agents and routes). Every section of the
//! config file is read once at start into the listeners, the route table, the
//! forwarder, the vault checks and the background tasks, so a change to any
//! of them needs a restart: SIGHUP validates the file and refuses a reload
//! that changes a section, naming it, and applies nothing (the policy
//! directory included), so a half-applied reload never runs.
//!
//! Every outcome is logged and leaves a `config.reload` audit record; a
//! policy set that does not load also raises `policy_load_failed` (`/readyz`)
//! until one does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::{ErrorCode, RequestId};
use portcullis_gateway::Gateway;
use portcullis_gateway::audit_sink::AuditSink;
use portcullis_gateway::config::Config;
use portcullis_gateway::policy_versions;
use portcullis_gateway::readiness::NotReady;
use portcullis_policy::PolicySources;

/// Who reloads, in the audit log.
const AUTHOR: &str = "sighup";

/// What a reload re-reads, and what the process runs now.
pub struct Reloader {
    /// The config file and the text the process runs with; `None` for the
    /// quickstart (no file).
    pub config: Option<(PathBuf, String)>,
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// The data plane whose policy is swapped.
    pub gateway: Arc<Gateway>,
    /// Where the reload's audit record goes.
    pub sink: AuditSink,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the config file is invalid: {0}")]
    Invalid(String),
    #[error(
        "changing {} needs a restart (only the policy directory reloads on SIGHUP); nothing was reloaded",
        .0.join(", ")
    )]
    RestartOnly(Vec<String>),
    #[error("the policy directory cannot be read: {0}")]
    PolicyDir(String),
    #[error("the policy set was refused: {0}")]
    Policy(#[from] policy_versions::PolicyChangeError),
}

impl Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::Invalid(_) => ErrorCode::BadRequest,
            Refusal::RestartOnly(_) => ErrorCode::Conflict,
            Refusal::PolicyDir(_) => ErrorCode::InvalidPolicy,
            Refusal::Policy(e) => e.code(),
        }
    }
}

impl Reloader {
    /// Handles one SIGHUP: validates, applies or refuses, logs and audits.
    pub async fn reload(&self) {
        tracing::info!("SIGHUP: reloading the config file and the policy directory");
        match self.try_reload().await {
            Ok(message) => {
                tracing::info!(
                    version = self.gateway.policy_version(),
                    "reload done: {message}"
                );
                self.sink.submit(self.record(Outcome::Allow, None));
            }
            Err(refusal) => {
                tracing::error!(
                    running_policy_version = self.gateway.policy_version(),
                    "reload refused, the running configuration stays: {refusal}"
                );
                self.sink
                    .submit(self.record(Outcome::Deny, Some(refusal.code())));
            }
        }
    }

    async fn try_reload(&self) -> Result<String, Refusal> {
        if let Some((path, running)) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Refusal::Invalid(format!("cannot read `{}`: {e}", path.display())))?;
            Config::parse(&text, path).map_err(|e| Refusal::Invalid(e.to_string()))?;
            let changed =
                changed_sections(running, &text).map_err(|e| Refusal::Invalid(e.to_string()))?;
            if !changed.is_empty() {
                return Err(Refusal::RestartOnly(changed));
            }
        }
        let dir = self.policy_dir.clone();
        let sources = tokio::task::spawn_blocking(move || PolicySources::read_dir(&dir))
            .await
            .map_err(|e| Refusal::PolicyDir(e.to_string()))?
            .map_err(|e| {
                self.gateway
                    .metrics()
                    .readiness
                    .set(NotReady::PolicyLoadFailed, true);
                Refusal::PolicyDir(e.to_string())
            })?;
        let change = policy_versions::install_dir(
            self.gateway.as_ref(),
            &self.sink,
            sources,
            AUTHOR,
            format!("SIGHUP reload of {}", self.policy_dir.display()),
        )
        .await?;
        Ok(if change.unchanged {
            format!("policy version {} unchanged", change.version)
        } else {
            format!(
                "policy version {} installed (was {})",
                change.version, change.previous
            )
        })
    }

    /// The reload's audit record; the why is in the server log.
    fn record(&self, outcome: Outcome, error: Option<ErrorCode>) -> AuditRecord {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        AuditRecord {
            time_ms: now_ms,
            kind: RecordKind::Admin,
            request_id: RequestId::new().to_string(),
            principal: Some("operator".into()),
            credential: Some("SIGHUP".into()),
            action: "config.reload".into(),
            resource: Some("config".into()),
            outcome,
            error_code: error.map(|c| c.as_str().to_string()),
            status: error.map_or(200, |c| c.http_status()),
            policy_version: Some(self.gateway.policy_version()),
            ..AuditRecord::default()
        }
    }
}

/// The top-level sections (and keys) whose values differ between two config
/// texts, as `[name]`; formatting and comments do not count.
fn changed_sections(running: &str, new: &str) -> Result<Vec<String>, toml::de::Error> {
    let running: toml::Table = toml::from_str(running)?;
    let new: toml::Table = toml::from_str(new)?;
    let mut keys: Vec<&String> = running.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter(|k| running.get(*k) != new.get(*k))
        .map(|k| format!("`[{k}]`"))
        .collect())
}

/// Reads the config file once, for both `serve` and later reloads.
pub fn read_config(path: &Path) -> anyhow::Result<(Config, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
    Ok((Config::parse(&text, path)?, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_whose_values_differ_are_named() {
        let running = "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"a\"\n";
        let reformatted =
            "# a comment\n[gateway]\nlisten   = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\n";
        assert!(changed_sections(running, reformatted).unwrap().is_empty());
        let changed = "[gateway]\nlisten = \"127.0.0.1:1\"\n[[routes]]\nname = \"b\"\n[limits]\n";
        assert_eq!(
            changed_sections(running, changed).unwrap(),
            ["`[gateway]`", "`[limits]`", "`[routes]`"]
        );
    }
}
