//! Cluster-mode test support (issue 18): replicas of one PostgreSQL store,
//! each a real `portcullis serve` with its own state directory, sharing only
//! the database and the operator-provided key material (docs/cluster.md).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Server, client, config, route};

/// The public URL every replica issues tokens under (the load balancer's, in
/// a deployment): proofs and assertions name it, not a replica's port.
pub const ISSUER: &str = "https://gw.cluster.test";

/// `[audit] fail_closed_after_ms` of the cluster tests' replicas:
/// debug-built replicas on a loaded 2-core machine can take longer than the
/// default second to commit an audit batch, and then refuse admin changes
/// and calls with `audit_unavailable` (fail closed, as they must); these
/// tests measure propagation and operations, not audit stalls (fault
/// handling has tests of its own).
pub const PATIENT_AUDIT: &str = "[audit]\nfail_closed_after_ms = 10000\n";

/// A replica's config in `dir`: one public route `/api` to `upstream`,
/// with [`PATIENT_AUDIT`].
pub fn replica_config(dir: &Path, upstream: std::net::SocketAddr) -> PathBuf {
    let routes = format!(
        "{}\n[identity]\ntoken_issuer = \"{ISSUER}\"\n{PATIENT_AUDIT}",
        route("api", "/api", &format!("http://{upstream}"), "public")
    );
    config(dir, &routes, "")
}

/// The files a replica needs besides the database (docs/cluster.md): the
/// CA, the token-signing key, the MFA sealing key, the audit checkpoint key
/// and the admin credential (and `audit-pseudonym.key` when `[audit]
/// pseudonymize` is on, not here). Copied from the first replica, as an
/// operator would provision them; with a KEK only the public ones exist
/// (the others are sealed in the database, `cluster_ops.rs`).
pub const SHARED_FILES: [&str; 7] = [
    "ca.crt",
    "ca.key",
    "token.key",
    "mfa.key",
    "audit.key",
    "audit.pub",
    "admin.token",
];

/// A directory for another replica holding `a`'s key material, as an
/// operator provisions it; the database is all they share besides.
pub fn provisioned_like(a: &Server) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    for file in SHARED_FILES {
        let from = a.state_dir().join(file);
        // With a KEK the secret keys are sealed in the database, not files.
        assert!(
            from.exists() || file != "ca.crt",
            "replica A wrote no `{file}`"
        );
        if !from.exists() {
            continue;
        }
        std::fs::copy(&from, state.join(file)).unwrap();
    }
    dir
}

/// Starts a replica in `dir` on the store at `url` with the config file at
/// `config`, and `env` besides.
pub async fn start_replica(
    dir: tempfile::TempDir,
    config: PathBuf,
    url: &str,
    env: &[(&str, &str)],
) -> Server {
    let mut vars: Vec<(String, String)> = vec![("PORTCULLIS_STORE_URL".into(), url.into())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    tokio::task::spawn_blocking(move || {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start_with_env(dir, Some(&config), &vars)
    })
    .await
    .unwrap()
}

/// Two replicas of the store at `url`: A, then B provisioned with A's key
/// material, each with the config `config` writes into its directory.
pub async fn two_replicas(
    url: &str,
    config: impl Fn(&Path) -> PathBuf,
    env: &[(&str, &str)],
) -> (Server, Server) {
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = config(dir_a.path());
    let a = start_replica(dir_a, cfg_a, url, env).await;
    let dir_b = provisioned_like(&a);
    let cfg_b = config(dir_b.path());
    let b = start_replica(dir_b, cfg_b, url, env).await;
    (a, b)
}

/// Runs the CLI with `env` only for the key material and store (the test
/// process's own KEK and store variables removed) and returns its output.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(super::server_bin());
    cmd.args(args)
        .env_remove("PORTCULLIS_KEK_FILE")
        .env_remove("PORTCULLIS_KEK")
        .env_remove("PORTCULLIS_STORE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The standard output of a command that must have succeeded (`what` names
/// it in the failure, with both outputs).
pub fn succeeded(output: std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `method path` on `server`'s admin API with `token` (and `headers`);
/// answers the status and the JSON body (`Null` when there is none).
pub async fn admin_call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = client(&server.ca_pem(), None)
        .request(method, format!("https://{}/admin/v1{path}", server.admin))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
