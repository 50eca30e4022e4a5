//! SIGHUP: re-read the config file and the policy directory, and apply them
//! together, all or nothing.
//!
//! A reload reads the file, validates it as `serve` does at start
//! ([`Config::parse`]), refuses it whole when it changes a setting only a
//! restart applies (every key [`RELOADABLE`] does not name), reads and compiles
//! the policy directory, and hands both to
//! [`portcullis_gateway::Gateway::reload_config`], which builds the new routes,
//! upstreams, limits and guard off to the side, checks them with the
//! policies (vault secrets, API keys, the policies joined with the new routes
//! and the stored agents) and swaps them in as one snapshot. A refusal at
//! any step applies nothing: the running configuration and policy version
//! stay. The quickstart (no file) reloads its policy directory by the same
//! path, with its unchanging built-in config.
//!
//! Every outcome is logged and leaves a `config.reload` audit record (its
//! `request_sha256` is the SHA-256 of the config text offered, its
//! `error_code` why it was refused) and counts in
//! `portcullis_config_reloads_total{outcome}`; a policy set that does not
//! compile also raises `policy_load_failed` (`/readyz`) until one does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_audit::{AuditRecord, Outcome, RecordKind};
use portcullis_core::{ErrorCode, RequestId};
use portcullis_gateway::Gateway;
use portcullis_gateway::audit_sink::AuditSink;
use portcullis_gateway::config::Config;
use portcullis_gateway::policy_versions::{self, PolicyChangeError, PolicyPush};
use portcullis_gateway::readiness::NotReady;
use portcullis_gateway::routing::{ConfigApplied, ConfigReloadError};
use portcullis_policy::PolicySources;
use sha2::{Digest, Sha256};

/// Who reloads, in the audit log.
const AUTHOR: &str = "sighup";

/// The keys a reload applies; every other key of the file needs a restart.
/// A section named alone reloads whole. These are the settings the
/// request path reads from its snapshot ([`portcullis_gateway::Routing`]);
/// the rest is built into listeners, the store, the audit writer, the
/// token issuer and background tasks once, at start.
pub const RELOADABLE: &[(&str, &[&str])] = &[
    ("routes", &[]),
    (
        "limits",
        &[
            "max_body_bytes",
            "max_buffered_bytes",
            "upstream_timeout_ms",
        ],
    ),
    ("gateway", &["forward_client_cert", "strip_request_headers"]),
    ("policy", &["timezone"]),
];

/// What a reload re-reads, and what the process runs now.
pub struct Reloader {
    /// The config file, `None` for the quickstart.
    pub path: Option<PathBuf>,
    /// The configuration running now (for the quickstart, the one it keeps).
    pub config: Config,
    /// The text `config` was read from; empty for the quickstart.
    pub text: String,
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// The data plane whose configuration is swapped.
    pub gateway: Arc<Gateway>,
    /// Where the reload's audit records go.
    pub sink: AuditSink,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the config file is invalid: {0}")]
    Invalid(String),
    #[error(
        "changing {} needs a restart (a reload applies the routes, the request limits, the stripped headers, the forwarded client certificate and the policy time zone); nothing was reloaded",
        .0.join(", ")
    )]
    RestartOnly(Vec<String>),
    #[error("the policy directory cannot be read: {0}")]
    PolicyDir(String),
    #[error(transparent)]
    Apply(#[from] ConfigReloadError),
}

impl Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::Invalid(_) => ErrorCode::InvalidConfig,
            Refusal::RestartOnly(_) => ErrorCode::RestartRequired,
            Refusal::PolicyDir(_) => ErrorCode::InvalidPolicy,
            Refusal::Apply(e) => e.code(),
        }
    }

    /// Whether it is the policy set that failed to load (`/readyz`).
    fn policy_failed(&self) -> bool {
        matches!(
            self,
            Refusal::PolicyDir(_)
                | Refusal::Apply(ConfigReloadError::Policy(PolicyChangeError::Invalid(_)))
        )
    }
}

impl Reloader {
    /// Handles one SIGHUP: validates, applies or refuses, logs, audits and
    /// counts.
    pub async fn reload(&mut self) {
        let offered = match &self.path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| Refusal::Invalid(format!("cannot read `{}`: {e}", path.display()))),
            None => Ok(String::new()),
        };
        let digest = match &offered {
            Ok(text) => digest(text),
            Err(_) => String::new(),
        };
        tracing::info!(
            config_sha256 = %digest,
            running_sha256 = %digest_of(&self.text),
            "SIGHUP: reloading the config file and the policy directory"
        );
        let result = match offered {
            Ok(text) => self.try_reload(text).await,
            Err(refusal) => Err(refusal),
        };
        let readiness = &self.gateway.metrics().readiness;
        match result {
            Ok(applied) => {
                readiness.set(NotReady::PolicyLoadFailed, false);
                tracing::info!(
                    config_sha256 = %digest,
                    policy_version = applied.policy_version,
                    previous_policy_version = applied.previous_policy,
                    mcp_sessions_ended = applied.sessions_ended,
                    routes = self.gateway.routes().len(),
                    "reload applied"
                );
                if let Some(previous) = applied.previous_policy {
                    tracing::info!(
                        version = applied.policy_version,
                        previous,
                        "policy directory changed: new version installed"
                    );
                    self.sink.submit(policy_versions::change_record(
                        AUTHOR,
                        "policy.push",
                        applied.policy_version,
                        Outcome::Allow,
                        None,
                    ));
                }
                self.gateway.metrics().config_reload(true);
                self.sink.submit(self.record(Outcome::Allow, None, &digest));
            }
            Err(refusal) => {
                if refusal.policy_failed() {
                    readiness.set(NotReady::PolicyLoadFailed, true);
                }
                tracing::error!(
                    config_sha256 = %digest,
                    running_sha256 = %digest_of(&self.text),
                    running_policy_version = self.gateway.policy_version(),
                    code = refusal.code().as_str(),
                    "reload refused, the running configuration stays: {refusal}"
                );
                self.gateway.metrics().config_reload(false);
                self.sink
                    .submit(self.record(Outcome::Deny, Some(refusal.code()), &digest));
            }
        }
    }

    async fn try_reload(&mut self, text: String) -> Result<ConfigApplied, Refusal> {
        let config = match &self.path {
            Some(path) => {
                let config =
                    Config::parse(&text, path).map_err(|e| Refusal::Invalid(e.to_string()))?;
                let restart = restart_only_changes(&self.text, &text)
                    .map_err(|e| Refusal::Invalid(e.to_string()))?;
                if !restart.is_empty() {
                    return Err(Refusal::RestartOnly(restart));
                }
                config
            }
            None => self.config.clone(),
        };
        let dir = self.policy_dir.clone();
        let sources = tokio::task::spawn_blocking(move || PolicySources::read_dir(&dir))
            .await
            .map_err(|e| Refusal::PolicyDir(e.to_string()))?
            .map_err(|e| Refusal::PolicyDir(e.to_string()))?;
        let push = PolicyPush {
            files: sources.to_files(),
            author: AUTHOR.to_string(),
            message: format!("SIGHUP reload of {}", self.policy_dir.display()),
            shadow: false,
        };
        let applied = self.gateway.reload_config(&config, push).await?;
        self.config = config;
        self.text = text;
        Ok(applied)
    }

    /// The reload's audit record; the why is in the server log.
    fn record(&self, outcome: Outcome, error: Option<ErrorCode>, digest: &str) -> AuditRecord {
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
            request_sha256: (!digest.is_empty()).then(|| digest.to_string()),
            ..AuditRecord::default()
        }
    }
}

/// The hex SHA-256 of a config text.
fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// [`digest`], or `quickstart` for the quickstart's empty text.
fn digest_of(text: &str) -> String {
    if text.is_empty() {
        "quickstart".into()
    } else {
        digest(text)
    }
}

/// The keys outside [`RELOADABLE`] whose values differ between two config
/// texts, as `section.key` (or `[section]` for a whole section); formatting
/// and comments do not count.
fn restart_only_changes(running: &str, new: &str) -> Result<Vec<String>, toml::de::Error> {
    let running: toml::Table = toml::from_str(running)?;
    let new: toml::Table = toml::from_str(new)?;
    let mut sections: Vec<&String> = running.keys().chain(new.keys()).collect();
    sections.sort();
    sections.dedup();
    let mut changed = Vec::new();
    for section in sections {
        let hot = RELOADABLE
            .iter()
            .find(|(name, _)| name == section)
            .map(|(_, keys)| *keys);
        let (old, new) = (running.get(section), new.get(section));
        match (
            hot,
            old.and_then(toml::Value::as_table),
            new.and_then(toml::Value::as_table),
        ) {
            // The whole section reloads.
            (Some([]), _, _) => {}
            // Some keys reload: compare the others one by one.
            (Some(hot), old_table, new_table) => {
                let empty = toml::Table::new();
                let (a, b) = (old_table.unwrap_or(&empty), new_table.unwrap_or(&empty));
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                changed.extend(
                    keys.into_iter()
                        .filter(|k| !hot.contains(&k.as_str()) && a.get(*k) != b.get(*k))
                        .map(|k| format!("`{section}.{k}`")),
                );
            }
            (None, _, _) if old != new => changed.push(format!("`[{section}]`")),
            (None, _, _) => {}
        }
    }
    Ok(changed)
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

    fn check(running: &str, new: &str, expect: &[&str]) {
        assert_eq!(restart_only_changes(running, new).unwrap(), expect);
    }

    #[test]
    fn only_restart_only_keys_whose_values_differ_are_named() {
        let running = "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"a\"\n";
        // Formatting and comments.
        check(
            running,
            "# a comment\n[gateway]\nlisten   = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\n",
            &[],
        );
        // Routes, hot limits, headers and the time zone reload.
        check(
            running,
            "[gateway]\nlisten = \"127.0.0.1:0\"\nstrip_request_headers = [\"x-a\"]\n[limits]\nmax_body_bytes = 5\nupstream_timeout_ms = 9\n[policy]\ntimezone = \"UTC\"\n[[routes]]\nname = \"b\"\n",
            &[],
        );
        // Listen addresses, other limits, other sections need a restart.
        check(
            running,
            "[gateway]\nlisten = \"127.0.0.1:1\"\n[limits]\nidle_timeout_ms = 5\n[store]\nurl = \"x\"\n[policy]\nwatch = true\n[[routes]]\nname = \"b\"\n",
            &[
                "`gateway.listen`",
                "`limits.idle_timeout_ms`",
                "`policy.watch`",
                "`[store]`",
            ],
        );
    }
}
