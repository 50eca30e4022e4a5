-- Policy lifecycle (issue 4).
--
-- Every policy directory ever installed is kept as an immutable version: its
-- files (the schema included) as a JSON object `{file name: text}`, the
-- SHA-256 of their canonical encoding, who pushed it, when and why. Triggers
-- refuse UPDATE and DELETE, so a version, once written, is what was decided
-- with.
CREATE TABLE policy_versions (
    version     INTEGER PRIMARY KEY NOT NULL,
    hash        TEXT NOT NULL,
    author      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    message     TEXT NOT NULL,
    files       TEXT NOT NULL
);
CREATE TRIGGER policy_versions_no_update BEFORE UPDATE ON policy_versions
BEGIN
    SELECT RAISE(ABORT, 'policy versions are immutable');
END;
CREATE TRIGGER policy_versions_no_delete BEFORE DELETE ON policy_versions
BEGIN
    SELECT RAISE(ABORT, 'policy versions are immutable');
END;

-- Which version decides live traffic, and which (if any) is the shadow
-- candidate decided alongside it. One row.
CREATE TABLE policy_state (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    active      INTEGER REFERENCES policy_versions(version),
    shadow      INTEGER REFERENCES policy_versions(version)
);
INSERT INTO policy_state (id, active, shadow) VALUES (1, NULL, NULL);

-- Just-in-time approval tickets. A ticket is bound to one exact call: agent,
-- delegating user, action, route, path, SHA-256 of the body and the policy
-- version, plus a random nonce (the ticket id) and an expiry.
CREATE TABLE approvals (
    id              TEXT PRIMARY KEY NOT NULL,
    agent           TEXT NOT NULL,
    delegated_user  TEXT,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    path            TEXT NOT NULL,
    body_sha256     TEXT NOT NULL,
    policy_version  INTEGER NOT NULL,
    policy_id       TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    expires_ms      INTEGER NOT NULL,
    status          TEXT NOT NULL,
    decided_by      TEXT,
    decided_ms      INTEGER,
    grant_id        TEXT
);
CREATE INDEX approvals_status ON approvals(status);

-- Time-boxed permissions: each live row becomes a Cedar template-linked
-- policy until it expires or is revoked. `kind` is `grant` (one action on one
-- route, from an approval) or `breakglass` (every action on every route, opened
-- by two approvers; `action` and `resource` are `*`).
CREATE TABLE policy_grants (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    ticket      TEXT,
    revoked_ms  INTEGER
);
CREATE INDEX policy_grants_agent ON policy_grants(agent);
