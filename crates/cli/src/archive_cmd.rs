//! `portcullis audit archive` and the archive side of `audit prove`: sealed
//! segments of old records, written from the state directory's database
//! (beside a running server or not), and proofs of archived records checked
//! from the archive alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use portcullis_audit::merkle;
use portcullis_audit::note::VerifierKey;
use portcullis_store::Store;

use crate::state_dir::StateDir;

/// The cut-off of `--before`: a UTC date (`2026-11-01`, midnight) or an age
/// (`90d`, `24h`: that long before now), as ms since the epoch.
pub(crate) fn parse_before(s: &str) -> Result<i64, String> {
    if let Ok(age) = crate::commands::parse_ttl(s) {
        return Ok(now_ms() - age.as_millis() as i64);
    }
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(format!(
            "`{s}` is neither a date (YYYY-MM-DD) nor an age (90d)"
        ));
    };
    let number = |p: &str| p.parse::<i32>().map_err(|_| format!("`{s}` is not a date"));
    let month = u8::try_from(number(m)?)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(|| format!("`{s}` has no such month"))?;
    let day = u8::try_from(number(d)?).map_err(|_| format!("`{s}` has no such day"))?;
    let date = time::Date::from_calendar_date(number(y)?, month, day)
        .map_err(|e| format!("`{s}` is not a date: {e}"))?;
    Ok(date.midnight().assume_utc().unix_timestamp() * 1000)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// `audit archive --before DATE --out DIR`.
pub async fn archive(state: &StateDir, before_ms: i64, out: &Path) -> Result<()> {
    let store = match crate::serve::store_url_env()? {
        // Cluster mode: the one shared log, archived as a replica's
        // retention task archives it (the replicas catch up from the
        // stored subtree hashes as after their own pruning).
        Some(url) => Store::open_url(&url)
            .await
            .with_context(|| format!("cannot open the store ({})", crate::ENV_STORE_URL))?,
        None => {
            let db = state.database();
            if !db.exists() {
                bail!("no database at `{}` (pass --state-dir)", db.display());
            }
            Store::open_sqlite(&db).await?
        }
    };
    let result = store.archive_audit(before_ms, out).await;
    store.close().await;
    let outcome = result.context("cannot archive the audit log")?;
    match outcome.written {
        Some(segment) => println!(
            "archived records {}..{} to `{}` (sealed against the checkpoint at size {}); the database keeps records from {}",
            segment.seal.start,
            segment.seal.end,
            segment.leaves.display(),
            segment.seal.head_size,
            outcome.first_stored
        ),
        None => println!(
            "nothing to archive: the database keeps records from {} (only signed records older than the cut-off, in whole blocks of 64, are archived)",
            outcome.first_stored
        ),
    }
    Ok(())
}

/// `audit prove SEQ --archive DIR`: the record's inclusion in its segment's
/// tree, and that tree's consistency with the signed head, checked here.
pub fn prove_archived(archives: &[PathBuf], id: &str, key: &VerifierKey) -> Result<()> {
    let index: u64 = id
        .parse()
        .map_err(|_| anyhow!("with --archive, name the record by its seq"))?;
    let proof = portcullis_store::archived_inclusion(archives, index, key, key.name())?;
    let leaf_hash = merkle::leaf_hash(proof.leaf.as_bytes());
    if portcullis_audit::verify::leaf_seq(proof.leaf.as_bytes()) != Some(index) {
        bail!("the archived record is not record {index}");
    }
    merkle::verify_inclusion(&leaf_hash, index, proof.size, &proof.proof, &proof.root)
        .map_err(|e| anyhow!("the inclusion proof does not verify: {e}"))?;
    merkle::verify_consistency(
        proof.size,
        proof.head.size,
        &proof.root,
        &proof.head.root,
        &proof.consistency,
    )
    .map_err(|e| anyhow!("the segment is not consistent with the signed head: {e}"))?;
    let out = serde_json::json!({
        "verified": true,
        "seq": index,
        "tree_size": proof.size,
        "root": hex::encode(proof.root),
        "signed_tree_size": proof.head.size,
        "signed_root": hex::encode(proof.head.root),
        "leaf_hash": hex::encode(leaf_hash),
        "proof": proof.proof.iter().map(hex::encode).collect::<Vec<_>>(),
        "consistency": proof.consistency.iter().map(hex::encode).collect::<Vec<_>>(),
        "record": serde_json::from_str::<serde_json::Value>(&proof.leaf)?,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_offs() {
        assert_eq!(parse_before("1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_before("2026-11-01"), Ok(1_793_491_200_000));
        let age = parse_before("1d").unwrap();
        assert!((now_ms() - age - 86_400_000).abs() < 60_000);
        for bad in ["2026-13-01", "2026-02-30", "yesterday", "2026-1"] {
            assert!(parse_before(bad).is_err(), "{bad}");
        }
    }
}
