-- PostgreSQL twin of ../0019_model_registry.sql.
CREATE TABLE models (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    digest         TEXT NOT NULL,
    lifecycle      TEXT NOT NULL,
    verified       BIGINT NOT NULL DEFAULT 0,
    verified_key   TEXT,
    signature      TEXT,
    provenance     TEXT,
    eval           TEXT,
    registered_by  TEXT NOT NULL,
    registered_ms  BIGINT NOT NULL,
    changed_by     TEXT NOT NULL,
    changed_ms     BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
