-- PostgreSQL twin of ../0020_dataset_registry.sql.
CREATE TABLE datasets (
    name             TEXT NOT NULL PRIMARY KEY,
    owner            TEXT NOT NULL,
    classification   TEXT NOT NULL,
    source           TEXT NOT NULL,
    licence          TEXT NOT NULL,
    collected        TEXT NOT NULL,
    consent_basis    TEXT NOT NULL,
    retention_days   BIGINT NOT NULL,
    purposes         TEXT NOT NULL DEFAULT '[]',
    registered_by    TEXT NOT NULL,
    registered_ms    BIGINT NOT NULL
);
