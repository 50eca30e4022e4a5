//! `portcullis audit checkpoint|prove|consistency|export|verify`: the auditor's
//! side of the tamper-evident log. Every proof the server sends is checked here
//! against the log's verifier key, so a lying server is caught, not trusted.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use portcullis_audit::checkpoint::{self, Checkpoint};
use portcullis_audit::merkle::{self, Hash};
use portcullis_audit::note::VerifierKey;
use portcullis_audit::verify::LogVerifier;
use portcullis_store::{AuditVerifyFailure, Store};
use serde_json::Value;

use crate::StateDirArg;
use crate::client::AdminClient;
use crate::state_dir::StateDir;

/// `audit verify`'s verdict that the log does not verify (tampered, or not
/// vouched for by a signed checkpoint), as opposed to a log, key or export
/// that could not be read. The two exit differently (1 and 2), so a monitor
/// can tell an attack from an outage.
#[derive(Debug)]
pub struct VerifyFailed(String);

impl std::fmt::Display for VerifyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FAILED: {}", self.0)
    }
}

impl std::error::Error for VerifyFailed {}

fn failed(message: String) -> anyhow::Error {
    VerifyFailed(message).into()
}

/// The verifier key: given inline, in a file, or `<state-dir>/audit.pub`.
pub(crate) fn verifier_key(state: &StateDirArg, key: Option<String>) -> Result<VerifierKey> {
    let text = match key {
        Some(k) if Path::new(&k).is_file() => std::fs::read_to_string(&k)
            .with_context(|| format!("cannot read the verifier key file `{k}`"))?,
        // A verifier key is `<origin>+<hash>+<key>`: something else that
        // names no file is a path that does not exist.
        Some(k) if !k.contains('+') => {
            bail!(
                "the verifier key file `{k}` does not exist (the server writes `<state-dir>/audit.pub`)"
            )
        }
        Some(k) => k,
        None => {
            let path = StateDir::new(state.state_dir.clone()).audit_verifier_key();
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read the log's verifier key `{}` (pass --key)",
                    path.display()
                )
            })?
        }
    };
    text.trim()
        .parse()
        .map_err(|e| anyhow!("invalid verifier key: {e}"))
}

/// Every verifier key a verification may open checkpoints with: the lines
/// of the file `key` names (an export's `<out>.keys` holds one per version
/// of the audit key its checkpoints were signed with), or `key` itself;
/// without `key`, `<export>.keys` beside an export, else the state
/// directory's `audit.pub`. The first is the log's current key.
fn verifier_keys(
    state: &StateDirArg,
    key: Option<String>,
    export: Option<&Path>,
) -> Result<Vec<VerifierKey>> {
    let keys_file = key.clone().filter(|k| Path::new(k).is_file()).or_else(|| {
        let mut path = export?.as_os_str().to_owned();
        path.push(".keys");
        let path = PathBuf::from(path);
        (key.is_none() && path.is_file()).then(|| path.to_string_lossy().into_owned())
    });
    let Some(file) = keys_file else {
        return Ok(vec![verifier_key(state, key)?]);
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the verifier key file `{file}`"))?;
    let keys = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim()
                .parse::<VerifierKey>()
                .map_err(|e| anyhow!("`{file}`: invalid verifier key: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = keys.first() else {
        bail!("`{file}` holds no verifier key");
    };
    if keys.iter().any(|k| k.name() != first.name()) {
        bail!("`{file}` holds verifier keys of different logs (origins)");
    }
    Ok(keys)
}

/// The verifier keys of audit keys retired by rotations, as the server on
/// this state directory wrote them (`audit-retired.pub`); none before a
/// rotation.
fn retired_verifier_keys(state: &StateDirArg) -> Result<Vec<VerifierKey>> {
    let path = StateDir::new(state.state_dir.clone()).audit_retired_verifier_keys();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim()
                .parse()
                .map_err(|e| anyhow!("`{}`: invalid verifier key: {e}", path.display()))
        })
        .collect()
}

/// Opens a checkpoint note with the key; the key name is the log's origin.
fn open_checkpoint(note: &str, key: &VerifierKey) -> Result<Checkpoint> {
    portcullis_store::open_checkpoint(note, key, key.name())
        .map_err(|e| anyhow!("the checkpoint does not verify: {e}"))
}

/// Opens a checkpoint note with whichever of `keys` signed it (a log that
/// spans rotations of its audit key); the error is the first key's.
fn open_checkpoint_any(note: &str, keys: &[VerifierKey]) -> Result<Checkpoint> {
    let mut first = None;
    for key in keys {
        match open_checkpoint(note, key) {
            Ok(checkpoint) => return Ok(checkpoint),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or_else(|| anyhow!("no verifier key")))
}

fn hash_from_hex(value: &Value) -> Result<Hash> {
    let text = value.as_str().ok_or_else(|| anyhow!("missing hash"))?;
    hex::decode(text)
        .ok()
        .and_then(|b| Hash::try_from(b).ok())
        .ok_or_else(|| anyhow!("`{text}` is not a SHA-256 hash"))
}

fn proof_hashes(value: &Value) -> Result<Vec<Hash>> {
    value
        .as_array()
        .ok_or_else(|| anyhow!("missing proof"))?
        .iter()
        .map(hash_from_hex)
        .collect()
}

/// `audit checkpoint [--sign]`.
pub async fn checkpoint(client: &AdminClient, sign: bool) -> Result<()> {
    let response = if sign {
        client
            .post("/audit/checkpoint", &serde_json::json!({}))
            .await?
    } else {
        client.get("/audit/checkpoint").await?
    };
    match response["checkpoint"]["note"].as_str() {
        Some(note) => print!("{note}"),
        None => bail!("no checkpoint has been signed yet"),
    }
    eprintln!(
        "verifier key: {}",
        response["verifier_key"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `audit prove ID`: fetch an inclusion proof and verify it locally.
pub async fn prove(
    client: &AdminClient,
    state: &StateDirArg,
    id: &str,
    tree_size: Option<u64>,
    key: Option<String>,
) -> Result<()> {
    let key = verifier_key(state, key)?;
    let mut path = format!("/audit/proof/inclusion?id={id}");
    if let Some(size) = tree_size {
        path.push_str(&format!("&tree_size={size}"));
    }
    let response = client.get(&path).await?;
    let note = response["checkpoint"]["note"]
        .as_str()
        .ok_or_else(|| anyhow!("the answer holds no checkpoint"))?;
    let checkpoint = open_checkpoint(note, &key)?;
    let leaf = response["leaf"]
        .as_str()
        .ok_or_else(|| anyhow!("the answer holds no leaf"))?;
    let seq = response["seq"].as_u64().ok_or_else(|| anyhow!("no seq"))?;
    if portcullis_audit::verify::leaf_seq(leaf.as_bytes()) != Some(seq) {
        bail!("the record the server sent is not record {seq}");
    }
    let leaf_hash = merkle::leaf_hash(leaf.as_bytes());
    let proof = proof_hashes(&response["proof"])?;
    merkle::verify_inclusion(&leaf_hash, seq, checkpoint.size, &proof, &checkpoint.root)
        .map_err(|e| anyhow!("the inclusion proof does not verify: {e}"))?;
    let out = serde_json::json!({
        "verified": true,
        "seq": seq,
        "tree_size": checkpoint.size,
        "root": hex::encode(checkpoint.root),
        "leaf_hash": hex::encode(leaf_hash),
        "proof": response["proof"],
        "record": serde_json::from_str::<Value>(leaf)?,
        "checkpoint": note,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `audit consistency FROM [TO]`: fetch a consistency proof and verify it.
pub async fn consistency(
    client: &AdminClient,
    state: &StateDirArg,
    from: u64,
    to: Option<u64>,
    key: Option<String>,
) -> Result<()> {
    let key = verifier_key(state, key)?;
    let mut path = format!("/audit/proof/consistency?from={from}");
    if let Some(to) = to {
        path.push_str(&format!("&to={to}"));
    }
    let response = client.get(&path).await?;
    let new = open_checkpoint(
        response["to_checkpoint"]["note"]
            .as_str()
            .ok_or_else(|| anyhow!("no checkpoint"))?,
        &key,
    )?;
    let old_root = match response["from_checkpoint"]["note"].as_str() {
        Some(note) => open_checkpoint(note, &key)?,
        None if from == 0 => Checkpoint {
            origin: key.name().to_owned(),
            size: 0,
            root: merkle::empty_root(),
        },
        None => {
            eprintln!(
                "note: no checkpoint was signed at size {from}; compare the from_root below with a tree head you hold"
            );
            Checkpoint {
                origin: key.name().to_owned(),
                size: from,
                root: hash_from_hex(&response["from_root"])?,
            }
        }
    };
    if old_root.size != from {
        bail!("the server sent the checkpoint of another size");
    }
    let proof = proof_hashes(&response["proof"])?;
    merkle::verify_consistency(from, new.size, &old_root.root, &new.root, &proof)
        .map_err(|e| anyhow!("the consistency proof does not verify: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "verified": true,
            "from": from,
            "to": new.size,
            "from_root": hex::encode(old_root.root),
            "to_root": hex::encode(new.root),
            "proof": response["proof"],
        }))?
    );
    Ok(())
}

/// `audit export --out FILE`: the exact leaves, and every checkpoint.
pub async fn export(client: &AdminClient, out: &Path, checkpoints: Option<PathBuf>) -> Result<()> {
    let checkpoints_path = checkpoints.unwrap_or_else(|| {
        let mut p = out.as_os_str().to_owned();
        p.push(".checkpoints");
        PathBuf::from(p)
    });
    // Checkpoints first: every one of them covers records that exist, so the
    // export taken after them is never shorter than a checkpoint.
    client
        .post("/audit/checkpoint", &serde_json::json!({}))
        .await?;
    let list = client.get("/audit/checkpoints").await?;
    // The verifier key of every version of the audit key: after a rotation
    // the older checkpoints are signed by an older one.
    let latest = client.get("/audit/checkpoint").await?;
    let mut keys: Vec<String> = latest["verifier_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    if keys.is_empty()
        && let Some(key) = latest["verifier_key"].as_str()
    {
        keys.push(key.to_string());
    }
    let keys_path = {
        let mut p = out.as_os_str().to_owned();
        p.push(".keys");
        PathBuf::from(p)
    };
    let keys_text: String = keys.iter().map(|k| format!("{k}\n")).collect();
    std::fs::write(&keys_path, keys_text)
        .with_context(|| format!("cannot write `{}`", keys_path.display()))?;
    let mut notes = String::new();
    for c in list["checkpoints"].as_array().into_iter().flatten() {
        notes.push_str(c["note"].as_str().unwrap_or_default());
    }
    std::fs::write(&checkpoints_path, notes)
        .with_context(|| format!("cannot write `{}`", checkpoints_path.display()))?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("cannot write `{}`", out.display()))?,
    );
    let headers = client.download("/audit/export", &mut file).await?;
    file.flush()?;
    let size = headers
        .get("x-portcullis-tree-size")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    eprintln!(
        "exported {size} records to `{}`, their checkpoints to `{}` and the {} verifier key(s) that signed them to `{}` (compare them with keys you pinned)",
        out.display(),
        checkpoints_path.display(),
        keys.len(),
        keys_path.display()
    );
    Ok(())
}

/// Reads checkpoint files and verifies every note in them (each with the
/// one of `keys` that signed it).
fn read_checkpoint_files(paths: &[PathBuf], keys: &[VerifierKey]) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        for note in checkpoint::split_notes(&text) {
            open_checkpoint_any(&note, keys)
                .with_context(|| format!("a checkpoint in `{}`", path.display()))?;
            notes.push(note);
        }
    }
    Ok(notes)
}

/// `audit verify`: the whole log, from the database or an export.
pub async fn verify(
    state: &StateDirArg,
    key: Option<String>,
    export: Option<PathBuf>,
    checkpoint_files: &[PathBuf],
    archives: &[PathBuf],
) -> Result<()> {
    let keys = verifier_keys(state, key, export.as_deref())?;
    let key = keys[0].clone();
    let extra = read_checkpoint_files(checkpoint_files, &keys)?;
    let started = std::time::Instant::now();
    let summary = match export {
        Some(path) => {
            if !archives.is_empty() {
                bail!("--archive goes with the database, not with --export");
            }
            if extra.is_empty() {
                bail!("offline verification needs the signed checkpoints: pass --checkpoint FILE");
            }
            let checkpoints = extra
                .iter()
                .map(|n| open_checkpoint_any(n, &keys))
                .collect::<Result<Vec<_>>>()?;
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            let mut verifier = LogVerifier::new(checkpoints);
            let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                let leaf = line.strip_suffix(b"\n").unwrap_or(&line);
                verifier.push(leaf, None, |_| {}).map_err(|e| {
                    failed(format!("{e} (first bad index: {})", e.first_bad_index()))
                })?;
            }
            verifier
                .finish()
                .map_err(|e| failed(format!("{e} (first bad index: {})", e.first_bad_index())))?
        }
        None => {
            let store = match crate::serve::store_url_env()? {
                // Cluster mode: the one shared log, as every replica appends to it.
                Some(url) => Store::open_url(&url).await?,
                None => {
                    let db = StateDir::new(state.state_dir.clone()).database();
                    if !db.exists() {
                        bail!(
                            "no database at `{}` (pass --state-dir, set {}, or pass --export)",
                            db.display(),
                            crate::ENV_STORE_URL
                        );
                    }
                    Store::open_sqlite(&db).await?
                }
            };
            let mut trusted = keys[1..].to_vec();
            trusted.extend(retired_verifier_keys(state)?);
            store.trust_retired_audit_keys(trusted);
            let result = store
                .verify_audit_log_with_archive(&key, key.name(), &extra, archives)
                .await;
            store.close().await;
            match result {
                Ok(checked) => {
                    if checked.archived > 0 {
                        eprintln!(
                            "note: records 0..{} were read from the archive",
                            checked.archived
                        );
                    }
                    if checked.unchecked > 0 {
                        eprintln!(
                            "note: records 0..{} were archived and pruned and are not checked here (pass --archive DIR)",
                            checked.unchecked
                        );
                    }
                    checked.summary
                }
                Err(AuditVerifyFailure::Tampered(e)) => {
                    return Err(failed(format!(
                        "{e} (first bad index: {})",
                        e.first_bad_index()
                    )));
                }
                // The log could not be read: not a verdict on its integrity.
                Err(AuditVerifyFailure::Store(e)) => {
                    return Err(anyhow::Error::new(e).context("cannot read the audit log"));
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    };
    if summary.checkpoints == 0 && summary.size > 0 {
        return Err(failed(format!(
            "no signed checkpoint covers the log's {} records",
            summary.size
        )));
    }
    println!(
        "ok: {} records verified in {:.2} s; tree head {}; {} checkpoints match, the latest at size {}",
        summary.size,
        started.elapsed().as_secs_f64(),
        hex::encode(summary.root),
        summary.checkpoints,
        summary.signed_size
    );
    if summary.signed_size < summary.size {
        eprintln!(
            "note: records {}..{} are not yet covered by a checkpoint",
            summary.signed_size, summary.size
        );
    }
    Ok(())
}
