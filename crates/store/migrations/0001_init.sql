-- Agents registered through the admin API. Roles are a JSON array of names.
CREATE TABLE agents (
    name        TEXT PRIMARY KEY NOT NULL,
    roles       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Every client certificate issued to an agent. A request is accepted only with a
-- certificate whose serial is here, unrevoked, for an unrevoked agent.
CREATE TABLE agent_certificates (
    serial      TEXT PRIMARY KEY NOT NULL,
    agent       TEXT NOT NULL REFERENCES agents(name),
    spiffe_id   TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX agent_certificates_agent ON agent_certificates(agent);

-- The audit log. `record` is the canonical JSON encoding of the record, seq included.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY NOT NULL,
    request_id  TEXT NOT NULL,
    time_ms     INTEGER NOT NULL,
    record      TEXT NOT NULL
);
-- No index on request_id yet: nothing queries by it, and maintaining a b-tree of
-- random keys was a measurable share of the audit writer's cost.

-- Admin API credentials: only the SHA-256 of the token is stored.
CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    token_sha256 TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
