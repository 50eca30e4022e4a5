-- Cluster mode only (issue 18): the replicas alive, by lease. Each `serve`
-- process renews its row about every second (`seen_ms`, the database's own
-- clock, so replicas' clocks do not matter); a replica whose row is older
-- than the lease (or missing) is taken for dead, and a survivor takes over
-- the audit intents it journaled (`audit_intents.owner`).
CREATE TABLE cluster_replicas (
    id       TEXT PRIMARY KEY,
    seen_ms  BIGINT NOT NULL
);
