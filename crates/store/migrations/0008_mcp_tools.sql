-- MCP tool pinning: the definition (name, description, input schema) each tool
-- of each MCP route was first seen with, and the one an admin approved. A tool
-- may be called only while the definition its server lists (`seen_digest`)
-- is the approved one (`approved_digest`).
CREATE TABLE mcp_tools (
    route            TEXT NOT NULL,
    name             TEXT NOT NULL,
    -- SHA-256 (hex) of the approved definition; NULL for a new tool that
    -- failed the poisoning scan and was never approved.
    approved_digest  TEXT,
    -- The definition the server listed most recently, and its digest.
    seen_digest      TEXT NOT NULL,
    seen_definition  TEXT NOT NULL,
    -- Tool-poisoning findings of the seen definition (JSON array of kinds).
    findings         TEXT NOT NULL DEFAULT '[]',
    first_seen_ms    INTEGER NOT NULL,
    seen_ms          INTEGER NOT NULL,
    approved_ms      INTEGER,
    -- Who approved: `first-seen` for a clean new tool, else the admin caller.
    approved_by      TEXT,
    PRIMARY KEY (route, name)
);
