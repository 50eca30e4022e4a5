-- Dataset registry: what a dataset is, who owns it, how sensitive it is,
-- where it came from, on what basis it is kept and for how long, and what it
-- may be used for. Routes and MCP tools tagged with a dataset are decided
-- with `Action::"read_data"` on `Dataset::"<name>"` (docs/governance.md).
CREATE TABLE datasets (
    name             TEXT NOT NULL PRIMARY KEY,
    owner            TEXT NOT NULL,
    -- public, internal, confidential or restricted.
    classification   TEXT NOT NULL,
    source           TEXT NOT NULL,
    licence          TEXT NOT NULL,
    -- ISO 8601 date (YYYY-MM-DD) the data was collected.
    collected        TEXT NOT NULL,
    -- consent, contract, legal_obligation, vital_interests, public_task,
    -- legitimate_interests (GDPR art. 6) or none.
    consent_basis    TEXT NOT NULL,
    -- How long data from the dataset may be kept, in days.
    retention_days   INTEGER NOT NULL,
    -- JSON array of purpose strings.
    purposes         TEXT NOT NULL DEFAULT '[]',
    registered_by    TEXT NOT NULL,
    registered_ms    INTEGER NOT NULL
);
