-- PostgreSQL twin of ../0002_audit_merkle.sql.
ALTER TABLE audit_log ADD COLUMN leaf_hash BYTEA;

CREATE TABLE audit_nodes (
    level  BIGINT NOT NULL,
    idx    BIGINT NOT NULL,
    hash   BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE audit_checkpoints (
    tree_size  BIGINT PRIMARY KEY NOT NULL,
    time_ms    BIGINT NOT NULL,
    note       TEXT NOT NULL
);

CREATE TABLE audit_export_cursors (
    sink       TEXT PRIMARY KEY NOT NULL,
    next_seq   BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
