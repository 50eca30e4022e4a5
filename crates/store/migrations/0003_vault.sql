-- The vault (issue 9). Every value below is sealed with envelope encryption:
-- `ciphertext` is AES-256-GCM under a data key used for that one value, and
-- `wrapped_key` is that data key sealed under the key-encryption key (KEK).
-- The KEK itself is never stored here; `kek_id` is its fingerprint, so a wrong
-- KEK is detected before anything is decrypted or written.

-- One row: the fingerprint of the KEK that wraps every data key below.
CREATE TABLE vault_meta (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    kek_id      TEXT NOT NULL,
    kek_version INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Named secrets (upstream credentials). `hook` is JSON: {"command": [...]} or
-- {"webhook": "https://..."}.
CREATE TABLE secrets (
    name              TEXT PRIMARY KEY NOT NULL,
    created_at        INTEGER NOT NULL,
    rotation_period_s INTEGER,
    grace_period_s    INTEGER NOT NULL,
    hook              TEXT
);

-- Versions of a secret. The primary key is what makes concurrent rotations
-- safe: two writers that read the same current version both try to insert
-- version + 1, and exactly one succeeds. A destroyed version keeps its row
-- (for `secret list`) but loses its key and ciphertext.
CREATE TABLE secret_versions (
    name         TEXT NOT NULL REFERENCES secrets(name) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    retired_at   INTEGER,
    destroyed_at INTEGER,
    kek_id       TEXT NOT NULL,
    wrapped_key  BLOB,
    ciphertext   BLOB,
    PRIMARY KEY (name, version)
);

-- Transit (encryption-as-a-service) keys: each version is a Fernet key.
CREATE TABLE transit_keys (
    name       TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE transit_key_versions (
    name        TEXT NOT NULL REFERENCES transit_keys(name) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    kek_id      TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    PRIMARY KEY (name, version)
);

-- Captured request and response bodies, keyed by the audit record's request
-- id. Each row has its own data key; deleting the row at `expires_at` destroys
-- the only copy of that key (crypto-shredding). The digests stay verifiable
-- against the audit log without the bodies.
CREATE TABLE payload_captures (
    request_id      TEXT PRIMARY KEY NOT NULL,
    route           TEXT NOT NULL,
    captured_at     INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_sha256 TEXT NOT NULL,
    request_bytes   INTEGER NOT NULL,
    response_bytes  INTEGER NOT NULL,
    truncated       INTEGER NOT NULL,
    kek_id          TEXT NOT NULL,
    wrapped_key     BLOB NOT NULL,
    ciphertext      BLOB NOT NULL
);
CREATE INDEX payload_captures_expires ON payload_captures(expires_at);
