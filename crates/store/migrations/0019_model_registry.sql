-- Model registry: each registered model version, its artifact digest, the
-- evidence that came with it (signature bundle, provenance statement, eval
-- report) and its lifecycle. A `[[routes.models]]` entry may name a row by
-- `registry = "NAME@VERSION"`; policy then sees `resource.verified`,
-- `resource.lifecycle` and `resource.digest` (docs/governance.md).
CREATE TABLE models (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    -- `sha256:<64 hex>` of the model artifact.
    digest         TEXT NOT NULL,
    -- `draft`, `approved`, `deprecated` or `revoked`.
    lifecycle      TEXT NOT NULL,
    -- 1 when a signature bundle verified against a pinned key at registration.
    verified       INTEGER NOT NULL DEFAULT 0,
    -- The pinned key id that verified it; NULL when unverified.
    verified_key   TEXT,
    -- The evidence as submitted (JSON text), NULL when absent.
    signature      TEXT,
    provenance     TEXT,
    eval           TEXT,
    registered_by  TEXT NOT NULL,
    registered_ms  INTEGER NOT NULL,
    changed_by     TEXT NOT NULL,
    changed_ms     INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
