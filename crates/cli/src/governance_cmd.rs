//! `portcullis model …` and `portcullis dataset …`: the model and dataset
//! registries (`docs/governance.md`). The CLI reads the evidence files and
//! hashes `--artifact` locally (the artifact never leaves the machine); the
//! server verifies the signature bundle against its pinned keys.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::AdminArgs;
use crate::client::AdminClient;
use crate::output::{Kind, col};

/// `portcullis model …`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a model version as a draft.
    Register {
        /// The registry name (`llama-3-8b`).
        name: String,
        /// Its version.
        #[arg(long)]
        version: String,
        /// `sha256:<hex>` of the artifact.
        #[arg(long)]
        digest: String,
        /// The artifact file: hashed here and refused unless it matches --digest.
        #[arg(long)]
        artifact: Option<PathBuf>,
        /// A signature bundle (Sigstore bundle or DSSE envelope, JSON).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// An in-toto / SLSA provenance statement (JSON).
        #[arg(long)]
        provenance: Option<PathBuf>,
        /// An evaluation report (JSON), kept as evidence.
        #[arg(long)]
        eval: Option<PathBuf>,
    },
    /// List registered model versions.
    List,
    /// Show one model version with its evidence.
    Show {
        /// `NAME@VERSION`.
        model: String,
    },
    /// Approve a draft (a human admin's TOTP or step-up window).
    Approve {
        /// `NAME@VERSION`.
        model: String,
    },
    /// Deprecate an approved version.
    Deprecate {
        /// `NAME@VERSION`.
        model: String,
    },
    /// Revoke a version (final; from any state).
    Revoke {
        /// `NAME@VERSION`.
        model: String,
    },
}

/// `portcullis dataset …`
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Register a dataset as a draft.
    Register {
        /// Its name, `Dataset::"<name>"` in policy.
        name: String,
        /// The accountable owner.
        #[arg(long)]
        owner: String,
        /// public, internal, confidential or restricted.
        #[arg(long)]
        classification: String,
        /// Where the data came from.
        #[arg(long)]
        source: String,
        /// The licence it is used under.
        #[arg(long)]
        licence: String,
        /// When it was collected, YYYY-MM-DD.
        #[arg(long)]
        collected: String,
        /// consent, contract, legal_obligation, vital_interests, public_task,
        /// legitimate_interests or none.
        #[arg(long)]
        consent_basis: String,
        /// How long data from it may be kept, in days.
        #[arg(long)]
        retention_days: i64,
        /// An allowed purpose (repeat for several).
        #[arg(long = "purpose")]
        purposes: Vec<String>,
    },
    /// List registered datasets.
    List,
    /// Show one dataset.
    Show {
        /// The dataset's name.
        name: String,
    },
    /// Data kept past its dataset's retention: captured payloads and audit
    /// personal data of the routes tagged with each dataset.
    Report,
    /// Approve a draft (a human admin's TOTP or step-up window).
    Approve {
        /// The dataset's name.
        name: String,
    },
    /// Deprecate an approved dataset.
    Deprecate {
        /// The dataset's name.
        name: String,
    },
    /// Revoke a dataset (final; from any state): nobody reads it again.
    Revoke {
        /// The dataset's name.
        name: String,
    },
}

fn split_id(id: &str) -> Result<(&str, &str)> {
    match id.split_once('@') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n, v)),
        _ => bail!("name the model as NAME@VERSION, e.g. `llama-3-8b@1.0`"),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("`{}` is not JSON", path.display()))
}

fn file_digest(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn models_table(listed: &Value) -> String {
    crate::output::rows(
        listed,
        "/models",
        &[
            col("MODEL", "id", Kind::Text, 40),
            col("LIFECYCLE", "lifecycle", Kind::Text, 10),
            col("VERIFIED", "verified", Kind::Text, 8),
            col("KEY", "verified_key", Kind::Text, 16),
            col("DIGEST", "digest", Kind::Text, 71),
        ],
    )
}

fn datasets_table(listed: &Value) -> String {
    crate::output::rows(
        listed,
        "/datasets",
        &[
            col("DATASET", "name", Kind::Text, 24),
            col("OWNER", "owner", Kind::Text, 16),
            col("CLASS", "classification", Kind::Text, 12),
            col("BASIS", "consent_basis", Kind::Text, 20),
            col("RETENTION_D", "retention_days", Kind::Text, 11),
            col("LIFECYCLE", "lifecycle", Kind::Text, 10),
            col("PURPOSES", "purposes", Kind::List, 30),
        ],
    )
}

fn report_table(report: &Value) -> String {
    let rows: Vec<Value> = report["report"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| {
            let overdue = d["overdue"].as_array().cloned().unwrap_or_default();
            if overdue.is_empty() {
                vec![json!({
                    "dataset": d["dataset"], "retention_days": d["retention_days"],
                    "route": "-", "captures": 0, "personal_records": 0,
                })]
            } else {
                overdue
                    .into_iter()
                    .map(|o| {
                        json!({
                            "dataset": d["dataset"], "retention_days": d["retention_days"],
                            "route": o["route"], "captures": o["captures"],
                            "personal_records": o["personal_records"], "oldest_at": o["oldest_at"],
                        })
                    })
                    .collect()
            }
        })
        .collect();
    crate::output::table(
        &rows,
        &[
            col("DATASET", "dataset", Kind::Text, 24),
            col("RETENTION_D", "retention_days", Kind::Text, 11),
            col("ROUTE", "route", Kind::Text, 20),
            col("CAPTURES", "captures", Kind::Text, 8),
            col("PERSONAL", "personal_records", Kind::Text, 8),
            col("OLDEST", "oldest_at", Kind::Time, 20),
        ],
    )
}

/// One lifecycle step (`approve`, `deprecate`, `revoke`) of the registry
/// entry at `path` (`/models/NAME/VERSION`, `/datasets/NAME`).
async fn step(
    client: &AdminClient,
    format: crate::output::Format,
    path: &str,
    step: &str,
) -> Result<()> {
    let done = client.post(&format!("{path}/{step}"), &json!({})).await?;
    crate::output::emit(format, &done, crate::output::fields)
}

/// `/models/NAME/VERSION` of `NAME@VERSION`.
fn model_path(id: &str) -> Result<String> {
    let (name, version) = split_id(id)?;
    Ok(format!("/models/{name}/{version}"))
}

/// Runs a model command.
pub async fn model(command: ModelCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    let format = args.out.format();
    match command {
        ModelCommand::Register {
            name,
            version,
            digest,
            artifact,
            signature,
            provenance,
            eval,
        } => {
            if let Some(path) = &artifact {
                let actual = file_digest(path)?;
                if actual != digest {
                    bail!(
                        "`{}` has digest `{actual}`, not `{digest}`: refusing to register",
                        path.display()
                    );
                }
            }
            let mut body = json!({ "name": name, "version": version, "digest": digest });
            for (key, path) in [
                ("signature", &signature),
                ("provenance", &provenance),
                ("eval", &eval),
            ] {
                if let Some(path) = path {
                    body[key] = read_json(path)?;
                }
            }
            let created = client.post("/models", &body).await?;
            crate::output::emit(format, &created, crate::output::fields)?;
        }
        ModelCommand::List => {
            let listed = client.get("/models").await?;
            crate::output::emit(format, &listed, models_table)?;
        }
        ModelCommand::Show { model } => {
            let (name, version) = split_id(&model)?;
            let shown = client.get(&format!("/models/{name}/{version}")).await?;
            crate::output::emit(format, &shown, crate::output::fields)?;
        }
        ModelCommand::Approve { model } => {
            step(&client, format, &model_path(&model)?, "approve").await?
        }
        ModelCommand::Deprecate { model } => {
            step(&client, format, &model_path(&model)?, "deprecate").await?
        }
        ModelCommand::Revoke { model } => {
            step(&client, format, &model_path(&model)?, "revoke").await?
        }
    }
    Ok(())
}

/// Runs a dataset command.
pub async fn dataset(command: DatasetCommand, args: AdminArgs) -> Result<()> {
    let client = AdminClient::from_args(&args)?;
    let format = args.out.format();
    match command {
        DatasetCommand::Register {
            name,
            owner,
            classification,
            source,
            licence,
            collected,
            consent_basis,
            retention_days,
            purposes,
        } => {
            let created = client
                .post(
                    "/datasets",
                    &json!({
                        "name": name, "owner": owner, "classification": classification,
                        "source": source, "licence": licence, "collected": collected,
                        "consent_basis": consent_basis, "retention_days": retention_days,
                        "purposes": purposes,
                    }),
                )
                .await?;
            crate::output::emit(format, &created, crate::output::fields)?;
        }
        DatasetCommand::List => {
            let listed = client.get("/datasets").await?;
            crate::output::emit(format, &listed, datasets_table)?;
        }
        DatasetCommand::Show { name } => {
            let shown = client.get(&format!("/datasets/{name}")).await?;
            crate::output::emit(format, &shown, crate::output::fields)?;
        }
        DatasetCommand::Report => {
            let report = client.get("/datasets/report").await?;
            crate::output::emit(format, &report, report_table)?;
        }
        DatasetCommand::Approve { name } => {
            step(&client, format, &format!("/datasets/{name}"), "approve").await?
        }
        DatasetCommand::Deprecate { name } => {
            step(&client, format, &format!("/datasets/{name}"), "deprecate").await?
        }
        DatasetCommand::Revoke { name } => {
            step(&client, format, &format!("/datasets/{name}"), "revoke").await?
        }
    }
    Ok(())
}
