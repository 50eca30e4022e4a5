-- Identity in depth (issue 3).

-- Human admins and approvers with a TOTP second factor. The secret is sealed
-- (AES-256-GCM under the state directory's MFA key, bound to the name); the
-- store never holds it in clear. `last_step` is the last accepted TOTP time
-- step, so a code is accepted once (RFC 6238 section 5.2).
CREATE TABLE admin_users (
    name          TEXT PRIMARY KEY NOT NULL,
    totp_sealed   BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    last_step     INTEGER NOT NULL DEFAULT 0
);

-- Access tokens revoked one by one before they expire. Rows past `expires_at`
-- are useless (the token is refused as expired anyway) and are purged.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
);

-- Federated users (OIDC subjects) an admin disabled: delegated tokens for
-- them stop working at once and no new ones are exchanged.
CREATE TABLE disabled_users (
    subject      TEXT PRIMARY KEY NOT NULL,
    disabled_at  INTEGER NOT NULL,
    reason       TEXT NOT NULL DEFAULT ''
);

-- An agent's workload pin: the digest its posture statements must attest and
-- the networks its token requests may come from (JSON array of CIDRs, empty =
-- any).
CREATE TABLE agent_posture_pins (
    agent     TEXT PRIMARY KEY NOT NULL REFERENCES agents(name),
    digest    TEXT NOT NULL,
    networks  TEXT NOT NULL DEFAULT '[]',
    pinned_at INTEGER NOT NULL
);
