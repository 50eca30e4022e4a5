-- PostgreSQL twin of 0029_sealed_keys.sql.
-- Key material of a cluster (the CA, the access-token, audit, MFA and
-- pseudonym keys), sealed under the vault KEK, so that a replica needs only
-- the KEK and the database URL (docs/cluster.md). Each row is one version of
-- one key: the value is sealed with a fresh data key (AES-256-GCM), the data
-- key wrapped under the KEK named by `kek_id` (its fingerprint), and both
-- seals bind `cluster-key:<name>:v<version>` so a row moved to another name
-- or version does not open.
CREATE TABLE sealed_keys (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_key BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    sealed_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
