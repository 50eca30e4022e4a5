-- PostgreSQL twin of 0030_pending_ceremonies.sql. Ceremonies in progress
-- (issue 20): WebAuthn challenges of the console and OIDC logins waiting for
-- their issuer's callback, kept in the store so the answer may reach any
-- replica. Each row is single use (taken out by one atomic DELETE …
-- RETURNING) and expires. The key is SHA-256 of the challenge or state (the
-- store alone does not give a usable one); `kind` keeps the two apart;
-- `payload` is the ceremony's own JSON (an OIDC login's is sealed under a
-- key derived from its state).
CREATE TABLE pending_ceremonies (
    id_sha256 TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX pending_ceremonies_expiry ON pending_ceremonies (expires_ms);
