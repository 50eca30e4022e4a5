-- Console sessions in the store (issue 20), so they survive a restart and
-- work on every replica. Only SHA-256 of the session id (the cookie value)
-- is kept: the table alone does not give a usable cookie. A session names
-- its credential by that credential's current token hash, so rotating or
-- revoking the credential ends the session (the lookup joins on a live
-- credential with that hash). Times are epoch milliseconds.
-- A human who logged in at an OIDC issuer holds no admin credential: the
-- row then has no `credential_sha256` and carries the issuer, the name and
-- the admin role `[[admin.oidc_roles]]` gave at login; it ends at logout or
-- with the session's timeouts.
CREATE TABLE console_sessions (
    id_sha256         TEXT PRIMARY KEY NOT NULL,
    credential_sha256 TEXT,
    login_issuer      TEXT,
    login_name        TEXT,
    login_role        TEXT,
    created_ms        INTEGER NOT NULL,
    last_seen_ms      INTEGER NOT NULL
);
CREATE INDEX console_sessions_credential ON console_sessions (credential_sha256);
-- Client-certificate admin credentials: `kind` is `token` (bearer token,
-- `token_sha256` is SHA-256 of the token) or `certificate` (`token_sha256`
-- is SHA-256 of the DER certificate the Portcullis CA issued, and
-- `not_after` its end of validity, epoch seconds).
ALTER TABLE admin_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'token';
ALTER TABLE admin_tokens ADD COLUMN not_after INTEGER;
