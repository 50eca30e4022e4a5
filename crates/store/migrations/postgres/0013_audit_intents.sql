-- PostgreSQL twin of ../0013_audit_intents.sql.
CREATE TABLE audit_intents (
    request_id TEXT PRIMARY KEY NOT NULL,
    time_ms BIGINT NOT NULL,
    record TEXT NOT NULL
);
