//! The vault's CLI: `secret`, `vault`, `transit` and `capture` commands, all
//! through the admin API like `agent`.
//!
//! Secret values are never command-line arguments (they would land in shell
//! history and `ps`): they come from a file, standard input or an environment
//! variable, and only travel to the server over the admin API's TLS.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::output::{self, Kind, col};
use crate::state_dir::write_secret;

/// Where a secret value comes from.
#[derive(Debug, Clone, Args)]
pub struct ValueSource {
    /// Read the value from a file (`-` for standard input). One trailing newline is removed.
    #[arg(long, value_name = "FILE", conflicts_with = "from_env")]
    from_file: Option<PathBuf>,
    /// Read the value from an environment variable.
    #[arg(long, value_name = "VAR")]
    from_env: Option<String>,
}

impl ValueSource {
    fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let mut value = Zeroizing::new(Vec::new());
        match (&self.from_file, &self.from_env) {
            (Some(path), _) if path.as_os_str() == "-" => {
                std::io::stdin()
                    .read_to_end(&mut value)
                    .context("cannot read the value from standard input")?;
            }
            (Some(path), _) => {
                value = Zeroizing::new(
                    std::fs::read(path)
                        .with_context(|| format!("cannot read `{}`", path.display()))?,
                );
            }
            (None, Some(var)) => {
                let v = std::env::var(var)
                    .with_context(|| format!("environment variable `{var}` is not set"))?;
                value = Zeroizing::new(v.into_bytes());
            }
            (None, None) => return Ok(None),
        }
        if value.last() == Some(&b'\n') {
            value.pop();
            if value.last() == Some(&b'\r') {
                value.pop();
            }
        }
        Ok(Some(value))
    }
}

/// Rotation settings shared by `put` and `settings`.
#[derive(Debug, Clone, Args)]
pub struct RotationArgs {
    /// Rotate at least this often: 3600, 90s, 30m, 24h or 30d.
    #[arg(long, value_parser = parse_seconds)]
    rotation_period: Option<u64>,
    /// Keep a superseded version decryptable this long before destroying it (default 24h).
    #[arg(long, value_parser = parse_seconds_or_zero)]
    grace_period: Option<u64>,
    /// Rotation hook: a program whose standard output is the new value (no shell).
    #[arg(long, value_name = "PROGRAM", conflicts_with = "hook_webhook")]
    hook_command: Option<String>,
    /// An argument for `--hook-command` (repeatable).
    #[arg(long = "hook-arg", value_name = "ARG", requires = "hook_command")]
    hook_args: Vec<String>,
    /// Rotation hook: an https URL that answers `{"value": "..."}`.
    #[arg(long, value_name = "URL")]
    hook_webhook: Option<String>,
}

impl RotationArgs {
    fn to_json(&self, body: &mut serde_json::Map<String, Value>) {
        if let Some(p) = self.rotation_period {
            body.insert("rotation_period_s".into(), json!(p));
        }
        if let Some(g) = self.grace_period {
            body.insert("grace_period_s".into(), json!(g));
        }
        if let Some(program) = &self.hook_command {
            let mut argv = vec![program.clone()];
            argv.extend(self.hook_args.iter().cloned());
            body.insert("hook".into(), json!({ "command": argv }));
        }
        if let Some(url) = &self.hook_webhook {
            body.insert("hook".into(), json!({ "webhook": url }));
        }
    }
}

impl RotationArgs {
    /// The settings as the vault takes them (offline `secret put`).
    fn settings(&self) -> Result<portcullis_vault::SecretSettings> {
        let mut map = serde_json::Map::new();
        self.to_json(&mut map);
        let seconds = |key: &str| map.get(key).and_then(Value::as_i64);
        Ok(portcullis_vault::SecretSettings {
            rotation_period_s: seconds("rotation_period_s"),
            grace_period_s: seconds("grace_period_s"),
            hook: map
                .get("hook")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .context("invalid rotation hook")?,
        })
    }
}

fn parse_seconds(s: &str) -> Result<u64, String> {
    portcullis_control::config::parse_duration(s).and_then(|d| match d.as_secs() {
        0 => Err("must be positive".into()),
        n => Ok(n),
    })
}

fn parse_seconds_or_zero(s: &str) -> Result<u64, String> {
    portcullis_control::config::parse_duration(s).map(|d| d.as_secs())
}

/// `portcullis secret …`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a new secret (version 1).
    Put {
        /// The secret's name (a-z, 0-9, `.`, `_`, `-`); routes and policies use it.
        name: String,
        #[command(flatten)]
        source: ValueSource,
        #[command(flatten)]
        rotation: RotationArgs,
    },
    /// List secrets: names, versions, rotation dates and what is overdue. Never values.
    List,
    /// Show one secret (no value).
    Show {
        /// The secret's name.
        name: String,
    },
    /// Store the next version: from --from-file/--from-env, or from the secret's hook.
    Rotate {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        source: ValueSource,
        /// Rotate only if this is still the current version (concurrent rotations: one wins).
        #[arg(long)]
        expected_version: Option<i64>,
    },
    /// Change rotation period, grace period or hook.
    Settings {
        /// The secret's name.
        name: String,
        #[command(flatten)]
        rotation: RotationArgs,
    },
    /// Delete a secret and all its versions (refused while a route uses it).
    Delete {
        /// The secret's name.
        name: String,
    },
}

/// `portcullis vault …`
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// The KEK fingerprint and overdue secrets.
    Status,
    /// Replace a signing key with a new one, keeping the old to verify what
    /// it signed: sealed as the next version in a cluster's database (with
    /// a KEK), else written to the state directory. Offline only: stop the
    /// server (every replica of a cluster) first; the new key signs from
    /// the next start.
    RotateKey {
        /// Which key.
        #[arg(value_enum)]
        key: crate::cluster_keys::RotatedKey,
    },
    /// Rewrap every data key under a new key-encryption key, without downtime.
    /// Afterwards, point PORTCULLIS_KEK_FILE (or PORTCULLIS_KEK) at the new key
    /// before the next restart: the old one no longer opens the vault.
    Rekey {
        /// The new KEK (32 random bytes, raw or base64).
        #[arg(long, value_name = "FILE", conflicts_with = "generate")]
        new_kek_file: Option<PathBuf>,
        /// Generate a new KEK and write it to this file (mode 0600) first.
        #[arg(long, value_name = "FILE")]
        generate: Option<PathBuf>,
    },
}

/// `portcullis transit …`
#[derive(Debug, Subcommand)]
pub enum TransitCommand {
    /// List transit keys and their versions.
    Keys,
    /// Create a key: random, or imported from a file holding a Fernet key.
    Create {
        /// The key's name.
        name: String,
        /// Import this Fernet key (url-safe base64 of 32 bytes).
        #[arg(long, value_name = "FILE", alias = "import")]
        import_key_file: Option<PathBuf>,
        /// Let `transit export` hand the key out later (fixed for the key's
        /// life; without it the key never leaves the vault).
        #[arg(long)]
        exportable: bool,
    },
    /// Add a new version (random, or imported with --import); older
    /// versions still decrypt.
    Rotate {
        /// The key's name.
        name: String,
        /// Import this Fernet key as the new version (a file holding url-safe
        /// base64 of 32 bytes, `-` for standard input).
        #[arg(long, value_name = "FILE")]
        import: Option<PathBuf>,
    },
    /// Print every version of an exportable key, newest first, as Fernet
    /// keys (for `MultiFernet`). Sensitive: needs --user/--totp once admins
    /// have enrolled; audited as `transit.export`; refused for a key not
    /// created with --exportable.
    Export {
        /// The key's name.
        name: String,
    },
    /// Encrypt a file (`-` for standard input); prints the Fernet token.
    Encrypt {
        /// The key's name.
        key: String,
        /// What to encrypt.
        #[arg(long, value_name = "FILE", default_value = "-")]
        from_file: PathBuf,
    },
    /// Decrypt a token; writes the plaintext to standard output.
    Decrypt {
        /// The key's name.
        key: String,
        /// The Fernet token.
        token: String,
    },
    /// Re-encrypt a token under the key's newest version.
    Rewrap {
        /// The key's name.
        key: String,
        /// The Fernet token.
        token: String,
    },
}

/// `portcullis capture …`
#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Show a captured request/response by the audit record's request id.
    Show {
        /// The request id (`X-Request-Id`, the audit record's `request_id`).
        request_id: String,
    },
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn value_json(value: &[u8]) -> Value {
    match std::str::from_utf8(value) {
        Ok(text) => json!({ "value": text }),
        Err(_) => json!({ "value_base64": STANDARD.encode(value) }),
    }
}

/// Runs a secret command.
pub async fn secret(command: SecretCommand, args: AdminArgs) -> Result<()> {
    // Without a running server, a new secret goes straight into the state
    // directory: a route naming it must be able to start.
    if let SecretCommand::Put {
        name,
        source,
        rotation,
    } = &command
        && let Some(offline) = crate::offline::Offline::open(&args).await?
    {
        let value = source
            .read()?
            .context("give the value with --from-file FILE, --from-file - or --from-env VAR")?;
        let info = offline
            .put_secret(name, &value, &rotation.settings()?)
            .await;
        offline.close().await;
        print(&info?);
        return Ok(());
    }
    let client = AdminClient::from_args(&args)?;
    match command {
        SecretCommand::Put {
            name,
            source,
            rotation,
        } => {
            let value = source
                .read()?
                .context("give the value with --from-file FILE, --from-file - or --from-env VAR")?;
            let mut body = value_json(&value);
            if let Value::Object(map) = &mut body {
                map.insert("name".into(), json!(name));
                rotation.to_json(map);
            }
            let response = client.post("/secrets", &body).await;
            drop(body);
            print(&response?);
        }
        SecretCommand::List => {
            let list = client.get("/secrets").await?;
            output::emit(args.out.format(), &list, |v| {
                output::rows(
                    v,
                    "/secrets",
                    &[
                        col("NAME", "name", Kind::Text, 28),
                        col("VERSION", "version", Kind::Text, 7),
                        col("CREATED", "created_at", Kind::Time, 20),
                        col("ROTATED", "rotated_at", Kind::Time, 20),
                        col("ROTATION DUE", "rotation_due_at", Kind::Time, 20),
                        col("OVERDUE", "overdue", Kind::Text, 7),
                        col("HOOK", "hook", Kind::Text, 12),
                    ],
                )
            })?;
        }
        SecretCommand::Show { name } => {
            let secret = client.get(&format!("/secrets/{name}")).await?;
            output::emit(args.out.format(), &secret, output::fields)?;
        }
        SecretCommand::Rotate {
            name,
            source,
            expected_version,
        } => {
            let mut body = match source.read()? {
                Some(v) => value_json(&v),
                None => json!({}),
            };
            if let (Some(v), Value::Object(map)) = (expected_version, &mut body) {
                map.insert("expected_version".into(), json!(v));
            }
            print(
                &client
                    .post(&format!("/secrets/{name}/rotate"), &body)
                    .await?,
            );
        }
        SecretCommand::Settings { name, rotation } => {
            let mut map = serde_json::Map::new();
            rotation.to_json(&mut map);
            if map.is_empty() {
                bail!("nothing to change: give --rotation-period, --grace-period or a hook");
            }
            print(
                &client
                    .post(&format!("/secrets/{name}/settings"), &Value::Object(map))
                    .await?,
            );
        }
        SecretCommand::Delete { name } => print(&client.delete(&format!("/secrets/{name}")).await?),
    }
    Ok(())
}

/// Runs a vault command.
pub async fn vault(command: VaultCommand, args: AdminArgs) -> Result<()> {
    if let VaultCommand::RotateKey { key } = command {
        return rotate_key(key, &args).await;
    }
    let client = AdminClient::from_args(&args)?;
    match command {
        VaultCommand::RotateKey { .. } => {}
        VaultCommand::Status => {
            let status = client.get("/vault").await?;
            output::emit(args.out.format(), &status, output::fields)?;
        }
        VaultCommand::Rekey {
            new_kek_file,
            generate,
        } => {
            let kek = match (new_kek_file, generate) {
                (Some(path), None) => portcullis_vault::Kek::read_file(&path)?,
                (None, Some(path)) => {
                    if path.exists() {
                        bail!("`{}` exists; refusing to overwrite a key", path.display());
                    }
                    let kek = portcullis_vault::Kek::generate();
                    write_secret(&path, format!("{}\n", kek.to_base64().as_str()).as_bytes())?;
                    eprintln!(
                        "wrote a new key-encryption key to `{}` (mode 0600)",
                        path.display()
                    );
                    kek
                }
                _ => bail!("give --new-kek-file FILE or --generate FILE"),
            };
            let response = client
                .post(
                    "/vault/rekey",
                    &json!({ "new_kek": kek.to_base64().as_str() }),
                )
                .await?;
            print(&response);
            if replace_quickstart_kek(&args, &kek, &response)? {
                eprintln!(
                    "the vault is now sealed with KEK {}; the quickstart's key file was updated",
                    kek.fingerprint()
                );
            } else {
                eprintln!(
                    "the vault is now sealed with KEK {}; set {} to the new key before the next restart",
                    kek.fingerprint(),
                    crate::ENV_KEK_FILE
                );
            }
        }
    }
    Ok(())
}

/// `vault rotate-key`: on the state directory no server holds, or on a
/// cluster's database, online while its replicas run when its keys are
/// sealed (docs/cluster.md, "Rotating the signing keys").
async fn rotate_key(key: crate::cluster_keys::RotatedKey, args: &AdminArgs) -> Result<()> {
    let offline = match crate::offline::Offline::open(args).await? {
        Some(offline) => offline,
        // A replica runs on this state directory: a cluster rotates online.
        None => crate::offline::Offline::open_cluster(args).await?.with_context(|| {
            "a server is running on this state directory (or --admin-url was given): stop it first; a running server would go on signing with the old key (a cluster with sealed keys rotates online: set PORTCULLIS_STORE_URL and the KEK)"
        })?,
    };
    let result = offline.rotate_key(key).await;
    offline.close().await;
    let rotation = result?;
    print(&json!({
        "key": rotation.name,
        "version": rotation.version,
        "sealed": rotation.sealed,
        "fingerprint": rotation.fingerprint,
        "activates_at": rotation.activates_at,
    }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    if rotation.sealed && rotation.activates_at > now {
        eprintln!(
            "rotated the {} to version {} (sealed in the database, announced to the running replicas): they verify it now and sign with it from {} (in {} s); the old version still verifies what it signed",
            rotation.name,
            rotation.version,
            rotation.activates_at,
            rotation.activates_at - now
        );
        return Ok(());
    }
    eprintln!(
        "rotated the {} to version {}{}; start the server{} to sign with it (the old version still verifies what it signed)",
        rotation.name,
        rotation.version,
        if rotation.sealed {
            " (sealed in the database)"
        } else {
            ""
        },
        if rotation.sealed {
            "s"
        } else {
            " (a cluster without a KEK: copy the key file and its `.retired-*` files to every replica)"
        }
    );
    Ok(())
}

/// After a rekey: when the server ran on the quickstart's `<state-dir>/vault.kek`
/// (the file holds the KEK the vault was sealed with before), that file now
/// holds the new KEK, so the next quickstart start opens the vault. Replaced
/// by a rename, so the file is always one whole key.
fn replace_quickstart_kek(
    args: &AdminArgs,
    new: &portcullis_vault::Kek,
    response: &Value,
) -> Result<bool> {
    let state = crate::state_dir::StateDir::new(args.state.state_dir.clone());
    let path = state.kek();
    if !path.exists() {
        return Ok(false);
    }
    let old = portcullis_vault::Kek::read_file(&path)?;
    if response["previous_kek_fingerprint"].as_str() != Some(old.fingerprint()) {
        return Ok(false);
    }
    let staged = path.with_extension("kek.new");
    write_secret(
        &staged,
        format!("{}\n", new.to_base64().as_str()).as_bytes(),
    )?;
    std::fs::rename(&staged, &path)
        .with_context(|| format!("cannot replace `{}`", path.display()))?;
    eprintln!("updated `{}` to the new key", path.display());
    Ok(true)
}

/// A Fernet key to import, from a file or standard input (`-`).
fn read_key(path: &std::path::Path) -> Result<Zeroizing<String>> {
    let mut key = Zeroizing::new(String::new());
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut key)?;
    } else {
        key = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?,
        );
    }
    Ok(key)
}

/// Runs a transit command.
pub async fn transit(command: TransitCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    match command {
        TransitCommand::Keys => {
            let keys = client.get("/transit/keys").await?;
            output::emit(args.out.format(), &keys, |v| {
                output::rows(
                    v,
                    "/keys",
                    &[
                        col("NAME", "name", Kind::Text, 28),
                        col("LATEST", "latest_version", Kind::Text, 6),
                        col("VERSIONS", "versions", Kind::List, 24),
                        col("EXPORTABLE", "exportable", Kind::Text, 10),
                    ],
                )
            })?;
        }
        TransitCommand::Create {
            name,
            import_key_file,
            exportable,
        } => {
            let mut body = json!({ "name": name, "exportable": exportable });
            if let Some(path) = import_key_file {
                body["key"] = json!(read_key(&path)?.trim());
            }
            print(&client.post("/transit/keys", &body).await?);
        }
        TransitCommand::Rotate { name, import } => {
            let mut body = json!({});
            if let Some(path) = import {
                body["key"] = json!(read_key(&path)?.trim());
            }
            print(
                &client
                    .post(&format!("/transit/keys/{name}/rotate"), &body)
                    .await?,
            )
        }
        TransitCommand::Export { name } => print(
            &client
                .post(&format!("/transit/keys/{name}/export"), &json!({}))
                .await?,
        ),
        TransitCommand::Encrypt { key, from_file } => {
            let data = Zeroizing::new(if from_file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf)?;
                buf
            } else {
                std::fs::read(&from_file)
                    .with_context(|| format!("cannot read `{}`", from_file.display()))?
            });
            let response = client
                .post(
                    "/transit/encrypt",
                    &json!({ "key": key, "plaintext": STANDARD.encode(data.as_slice()) }),
                )
                .await?;
            println!("{}", response["token"].as_str().unwrap_or_default());
        }
        TransitCommand::Decrypt { key, token } => {
            let response = client
                .post("/transit/decrypt", &json!({ "key": key, "token": token }))
                .await?;
            let plain = Zeroizing::new(
                STANDARD
                    .decode(response["plaintext"].as_str().unwrap_or_default())
                    .context("the server sent no plaintext")?,
            );
            use std::io::Write;
            std::io::stdout().write_all(&plain)?;
        }
        TransitCommand::Rewrap { key, token } => {
            let response = client
                .post("/transit/rewrap", &json!({ "key": key, "token": token }))
                .await?;
            println!("{}", response["token"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// `capture show` for people: the metadata, then each body as text when it
/// is UTF-8 (control characters but newlines and tabs shown as `\u{…}`
/// escapes, so a payload cannot drive the terminal), else as base64.
fn capture_text(v: &Value) -> String {
    let mut meta = v.clone();
    if let Some(map) = meta.as_object_mut() {
        map.remove("request_base64");
        map.remove("response_base64");
    }
    let mut out = output::fields(&meta);
    for (title, key) in [
        ("request", "request_base64"),
        ("response", "response_base64"),
    ] {
        let bytes = STANDARD
            .decode(v[key].as_str().unwrap_or_default())
            .unwrap_or_default();
        out.push_str(&format!("\n----- {title} ({} bytes) -----\n", bytes.len()));
        match std::str::from_utf8(&bytes) {
            Ok(text) => {
                for c in text.chars() {
                    if c.is_control() && c != '\n' && c != '\t' {
                        out.push_str(&c.escape_unicode().to_string());
                    } else {
                        out.push(c);
                    }
                }
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            Err(_) => {
                out.push_str("(binary; base64)\n");
                out.push_str(v[key].as_str().unwrap_or_default());
                out.push('\n');
            }
        }
    }
    out
}

/// Runs a capture command.
pub async fn capture(command: CaptureCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    match command {
        CaptureCommand::Show { request_id } => {
            let captured = client.get(&format!("/captures/{request_id}")).await?;
            output::emit(args.out.format(), &captured, capture_text)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_text_bodies_are_shown_as_text_and_binary_as_base64() {
        let captured = json!({
            "request_id": "r1",
            "captured_at": 1_700_000_000,
            "request_base64": STANDARD.encode("GET /x\n{\"q\":\"hi\"}\u{1b}[2J"),
            "response_base64": STANDARD.encode([0xff_u8, 0x00, 0x01]),
        });
        let text = capture_text(&captured);
        assert!(text.contains("captured_at  2023-11-14T22:13:20Z"), "{text}");
        assert!(
            text.contains("----- request (21 bytes) -----\nGET /x\n{\"q\":\"hi\"}\\u{1b}[2J\n"),
            "{text}"
        );
        assert!(
            text.contains("----- response (3 bytes) -----\n(binary; base64)\n/wAB\n"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}') && !text.contains("request_base64"),
            "{text}"
        );
    }
}
