-- Shared admin windows (issue 20, cluster mode): what one replica's memory
-- used to hold, so every replica of a cluster sees the same.
--
-- `step_up_windows`: an open step-up window, one per holder: the admin
-- credential's row id (or, for a console session of an OIDC login, the
-- session's identity id), the stored hash the credential authenticated
-- with (NULL for an OIDC login's session: a window of a rotated or revoked
-- credential is dead even before its row is deleted), the human who
-- confirmed, and when it closes. Expired rows are dropped when a window
-- opens.
--
-- `admission_windows`: fixed-window admission counters (the data plane's
-- dynamic client registrations per hour): `used` admissions of `key` in
-- window number `win`, taken by one conditional upsert, so every replica
-- counts against one limit. Past windows are dropped as a new one starts.
CREATE TABLE step_up_windows (
    holder TEXT PRIMARY KEY,
    credential_sha256 TEXT,
    admin_user TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX step_up_windows_expiry ON step_up_windows (expires_ms);
CREATE TABLE admission_windows (
    key TEXT NOT NULL,
    win INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (key, win)
);
