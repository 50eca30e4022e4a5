-- The compact stored form of audit records (issue 17, item 5; see
-- docs/audit-format.md). From this version on, `audit_log.record` holds a
-- record as a BLOB in the compact form (first byte 0x01), which names the
-- strings that recur (agents, credentials, addresses, routes, policies, error
-- codes) by their number here; rows written before keep their canonical JSON
-- text (first byte `{`). The leaf of the Merkle log is the canonical JSON
-- either way, so every existing leaf, leaf hash, node and checkpoint stays
-- as it is. Strings are only ever added, in the transaction that appends the
-- first record naming them, and never deleted (pruned and set-aside records
-- still name them).
CREATE TABLE audit_strings (
    id     INTEGER PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL UNIQUE
);
