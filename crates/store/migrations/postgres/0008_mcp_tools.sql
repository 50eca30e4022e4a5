-- PostgreSQL twin of ../0008_mcp_tools.sql.
CREATE TABLE mcp_tools (
    route            TEXT NOT NULL,
    name             TEXT NOT NULL,
    approved_digest  TEXT,
    seen_digest      TEXT NOT NULL,
    seen_definition  TEXT NOT NULL,
    findings         TEXT NOT NULL DEFAULT '[]',
    first_seen_ms    BIGINT NOT NULL,
    seen_ms          BIGINT NOT NULL,
    approved_ms      BIGINT,
    approved_by      TEXT,
    PRIMARY KEY (route, name)
);
