-- Fingerprints (never the secrets) of the key material every replica of a
-- cluster must share: the CA certificate, the access-token signing key, the
-- audit checkpoint key and the vault KEK's check value. The first replica to
-- start records them; every later start compares its own and refuses to run
-- with different ones (`portcullis serve` in cluster mode). On SQLite the
-- table exists for the schemas to stay twins and is not used.
CREATE TABLE key_fingerprints (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
