-- PostgreSQL twin of ../0004_audit_personal.sql.
CREATE TABLE audit_personal (
    seq        BIGINT NOT NULL,
    field      TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (seq, field)
);
CREATE INDEX audit_personal_expiry ON audit_personal (expires_ms);
