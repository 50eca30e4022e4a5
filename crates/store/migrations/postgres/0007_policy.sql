-- PostgreSQL twin of ../0007_policy.sql. Policy versions are immutable here
-- too: a trigger refuses UPDATE and DELETE.
CREATE TABLE policy_versions (
    version     BIGINT PRIMARY KEY NOT NULL,
    hash        TEXT NOT NULL,
    author      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    message     TEXT NOT NULL,
    files       TEXT NOT NULL
);
CREATE FUNCTION policy_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'policy versions are immutable';
END;
$$;
CREATE TRIGGER policy_versions_no_update BEFORE UPDATE ON policy_versions
    FOR EACH ROW EXECUTE FUNCTION policy_versions_immutable();
CREATE TRIGGER policy_versions_no_delete BEFORE DELETE ON policy_versions
    FOR EACH ROW EXECUTE FUNCTION policy_versions_immutable();

CREATE TABLE policy_state (
    id          BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    active      BIGINT REFERENCES policy_versions(version),
    shadow      BIGINT REFERENCES policy_versions(version)
);
INSERT INTO policy_state (id, active, shadow) VALUES (1, NULL, NULL);

CREATE TABLE approvals (
    id              TEXT PRIMARY KEY NOT NULL,
    agent           TEXT NOT NULL,
    delegated_user  TEXT,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    path            TEXT NOT NULL,
    body_sha256     TEXT NOT NULL,
    policy_version  BIGINT NOT NULL,
    policy_id       TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    expires_ms      BIGINT NOT NULL,
    status          TEXT NOT NULL,
    decided_by      TEXT,
    decided_ms      BIGINT,
    grant_id        TEXT
);
CREATE INDEX approvals_status ON approvals(status);

CREATE TABLE policy_grants (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    ticket      TEXT,
    revoked_ms  BIGINT
);
CREATE INDEX policy_grants_agent ON policy_grants(agent);
