-- The audit log becomes an RFC 9162 Merkle tree (see docs/audit-format.md).

-- The leaf hash written with each record: SHA-256(0x00 || record). Kept so a
-- changed record is found at its exact index, and so proofs need no rehashing.
ALTER TABLE audit_log ADD COLUMN leaf_hash BLOB;

-- Hashes of complete subtrees: level L, index I covers records
-- [I * 2^L, (I + 1) * 2^L). Only levels >= 6 are kept (one row per 32 records);
-- lower levels are recomputed from at most 64 leaf hashes when a proof needs them.
CREATE TABLE audit_nodes (
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Signed checkpoints (C2SP tlog-checkpoint notes), one per tree size.
CREATE TABLE audit_checkpoints (
    tree_size  INTEGER PRIMARY KEY NOT NULL,
    time_ms    INTEGER NOT NULL,
    note       TEXT NOT NULL
);

-- Export cursors: the last seq each export sink has delivered (at-least-once).
CREATE TABLE audit_export_cursors (
    sink       TEXT PRIMARY KEY NOT NULL,
    next_seq   INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
