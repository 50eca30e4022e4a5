-- Cluster mode only (issue 18): state one node keeps in memory and replicas
-- must share. These migrations have their own numbering and history table
-- (`_portcullis_cluster_migrations`): they exist only on PostgreSQL, never
-- on SQLite, so they are no twins of the numbered migrations.

-- Single-use identifiers (`jti` of client assertions and DPoP proofs),
-- claimed by whichever replica sees one first: a second use on any replica
-- finds the row and is refused. A row is useless once `expires_at` (epoch
-- seconds) has passed: the credential is refused as expired anyway, the
-- row may be reused and is purged.
CREATE TABLE cluster_single_use (
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX cluster_single_use_expires ON cluster_single_use (expires_at);
