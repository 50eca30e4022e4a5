//! The state directory: where `serve` keeps its database, CA and admin credential,
//! and where CLI commands find them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The layout under `root`.
    pub fn new(root: PathBuf) -> Self {
        StateDir { root }
    }

    /// Creates the directory (mode 0700) if missing.
    pub fn create(&self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create state directory `{}`", self.root.display()))?;
        set_mode(&self.root, 0o700)
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("portcullis.db")
    }
    /// The CA certificate (public).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    /// The CA key (secret, 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// The admin token (secret, 0600).
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// The quickstart's key-encryption key (secret, 0600), only when neither
    /// `PORTCULLIS_KEK_FILE` nor `PORTCULLIS_KEK` is set.
    pub fn kek(&self) -> PathBuf {
        self.root.join("vault.kek")
    }
    /// The admin API URL of the running server.
    pub fn admin_url(&self) -> PathBuf {
        self.root.join("admin.url")
    }
    /// The data-plane URL of the running server.
    pub fn gateway_url(&self) -> PathBuf {
        self.root.join("gateway.url")
    }
    /// The audit log's checkpoint signing key (secret, 0600).
    pub fn audit_key(&self) -> PathBuf {
        self.root.join("audit.key")
    }
    /// The access-token signing key (secret, 0600): an Ed25519 seed, hex.
    pub fn token_key(&self) -> PathBuf {
        self.root.join("token.key")
    }
    /// The key of the audit log's pseudonyms (secret, 0600).
    pub fn audit_pseudonym_key(&self) -> PathBuf {
        self.root.join("audit-pseudonym.key")
    }
    /// The key sealing admins' TOTP secrets in the database (secret, 0600).
    pub fn mfa_key(&self) -> PathBuf {
        self.root.join("mfa.key")
    }
    /// The audit log's verifier key (public): what auditors pin.
    pub fn audit_verifier_key(&self) -> PathBuf {
        self.root.join("audit.pub")
    }
    /// The verifier keys of audit keys retired by rotations, one per line
    /// (public; written by the server, absent before a rotation).
    pub fn audit_retired_verifier_keys(&self) -> PathBuf {
        self.root.join("audit-retired.pub")
    }
    /// The default policy directory.
    pub fn policies(&self) -> PathBuf {
        self.root.join("policies")
    }
}

/// Writes a file readable only by its owner; the file is created with that mode
/// so the secret is never briefly world-readable.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    set_mode(path, 0o600)
}

/// Writes a non-secret file.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write `{}`", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set permissions of `{}`", path.display()))?;
    }
    let _ = (path, mode);
    Ok(())
}
