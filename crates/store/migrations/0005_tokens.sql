-- Public signing keys (Ed25519 JWKs) agents authenticate with at the token
-- endpoint (private_key_jwt). Only public keys are ever stored.
CREATE TABLE agent_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    agent       TEXT NOT NULL REFERENCES agents(name),
    jwk         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX agent_keys_agent ON agent_keys(agent);
