-- Key material of a cluster (the CA, the access-token, audit, MFA and
-- pseudonym keys), sealed under the vault KEK, so that a replica needs only
-- the KEK and the database URL (docs/cluster.md). Each row is one version of
-- one key: the value is sealed with a fresh data key (AES-256-GCM), the data
-- key wrapped under the KEK named by `kek_id` (its fingerprint), and both
-- seals bind `cluster-key:<name>:v<version>` so a row moved to another name
-- or version does not open. On SQLite the table exists for the schemas to
-- stay twins and is not used.
CREATE TABLE sealed_keys (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    sealed_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
