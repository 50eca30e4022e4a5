-- PostgreSQL twin of 0026_admin_passkeys.sql. Passkeys (WebAuthn
-- credentials) of human admins (issue 20): a second factor equal to their
-- TOTP. One row per credential: its id (base64url), the admin it belongs to
-- (removed with them), the relying party it was made for, its COSE public
-- key as the authenticator encoded it, and the signature counter of its
-- last use (an assertion whose counter does not increase is refused, unless
-- both are zero).
CREATE TABLE admin_passkeys (
    credential_id TEXT PRIMARY KEY,
    admin TEXT NOT NULL REFERENCES admin_users (name) ON DELETE CASCADE,
    label TEXT NOT NULL,
    rp_id TEXT NOT NULL,
    algorithm BIGINT NOT NULL,
    public_key BYTEA NOT NULL,
    sign_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL
);
CREATE INDEX admin_passkeys_admin ON admin_passkeys (admin);
