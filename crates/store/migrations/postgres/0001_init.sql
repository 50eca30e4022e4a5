-- PostgreSQL twin of ../0001_init.sql (cluster mode, issue 18). Same tables,
-- same columns; SQLite INTEGER is BIGINT here, BLOB is BYTEA.
CREATE TABLE agents (
    name        TEXT PRIMARY KEY NOT NULL,
    roles       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE agent_certificates (
    serial      TEXT PRIMARY KEY NOT NULL,
    agent       TEXT NOT NULL REFERENCES agents(name),
    spiffe_id   TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX agent_certificates_agent ON agent_certificates(agent);

-- `record` is BYTEA: SQLite stores the canonical JSON text (old rows) or the
-- compact form (0014) in one dynamically typed column; here every row is
-- written in the compact form, and the reader accepts either first byte.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY NOT NULL,
    request_id  TEXT NOT NULL,
    time_ms     BIGINT NOT NULL,
    record      BYTEA NOT NULL
);

CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    token_sha256 TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
