-- PostgreSQL twin of ../0003_vault.sql (see there for what each table holds).
CREATE TABLE vault_meta (
    id          BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    kek_id      TEXT NOT NULL,
    kek_version BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE secrets (
    name              TEXT PRIMARY KEY NOT NULL,
    created_at        BIGINT NOT NULL,
    rotation_period_s BIGINT,
    grace_period_s    BIGINT NOT NULL,
    hook              TEXT
);

CREATE TABLE secret_versions (
    name         TEXT NOT NULL REFERENCES secrets(name) ON DELETE CASCADE,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    retired_at   BIGINT,
    destroyed_at BIGINT,
    kek_id       TEXT NOT NULL,
    wrapped_key  BYTEA,
    ciphertext   BYTEA,
    PRIMARY KEY (name, version)
);

CREATE TABLE transit_keys (
    name       TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE transit_key_versions (
    name        TEXT NOT NULL REFERENCES transit_keys(name) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    kek_id      TEXT NOT NULL,
    wrapped_key BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE payload_captures (
    request_id      TEXT PRIMARY KEY NOT NULL,
    route           TEXT NOT NULL,
    captured_at     BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_sha256 TEXT NOT NULL,
    request_bytes   BIGINT NOT NULL,
    response_bytes  BIGINT NOT NULL,
    truncated       BOOLEAN NOT NULL,
    kek_id          TEXT NOT NULL,
    wrapped_key     BYTEA NOT NULL,
    ciphertext      BYTEA NOT NULL
);
CREATE INDEX payload_captures_expires ON payload_captures(expires_at);
