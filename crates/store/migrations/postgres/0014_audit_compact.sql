-- PostgreSQL twin of ../0014_audit_compact.sql. `audit_log.record` is BYTEA
-- from 0001 here, so only the string table is added.
CREATE TABLE audit_strings (
    id     BIGINT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL UNIQUE
);
