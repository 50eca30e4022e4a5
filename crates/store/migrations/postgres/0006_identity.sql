-- PostgreSQL twin of ../0006_identity.sql. `admin_users.last_step` is the
-- TOTP replay guard; on PostgreSQL every replica advances the same row, so a
-- code accepted by one replica is refused by all.
CREATE TABLE admin_users (
    name          TEXT PRIMARY KEY NOT NULL,
    totp_sealed   BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    last_step     BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
);

CREATE TABLE disabled_users (
    subject      TEXT PRIMARY KEY NOT NULL,
    disabled_at  BIGINT NOT NULL,
    reason       TEXT NOT NULL DEFAULT ''
);

CREATE TABLE agent_posture_pins (
    agent     TEXT PRIMARY KEY NOT NULL REFERENCES agents(name),
    digest    TEXT NOT NULL,
    networks  TEXT NOT NULL DEFAULT '[]',
    pinned_at BIGINT NOT NULL
);
