-- PostgreSQL twin of ../0005_tokens.sql.
CREATE TABLE agent_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    agent       TEXT NOT NULL REFERENCES agents(name),
    jwk         TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX agent_keys_agent ON agent_keys(agent);
