-- Cluster mode only (issue 18): rate limits and LLM budgets shared by every
-- replica. Numbered 18 in the cluster set (its own history table), after
-- the issue that added it.

-- `@rate` limits: one generic cell rate algorithm cell per (policy, agent,
-- rate). `tat` is the theoretical arrival time in microseconds since the
-- epoch; replicas lease tokens from it in small blocks (advancing it) and
-- hand unused ones back (moving it back).
CREATE TABLE cluster_rate (
    key  TEXT PRIMARY KEY,
    tat  BIGINT NOT NULL
);

-- LLM budget windows (requests and tokens per minute and per day): the
-- count of every replica together in window `win` (the minute or day
-- number). Replicas add what they counted every ~100 ms and read the total
-- back; `updated_ms` lets a replica read only the rows changed lately.
CREATE TABLE cluster_counters (
    key         TEXT NOT NULL,
    win         BIGINT NOT NULL,
    count       BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (key, win)
);
CREATE INDEX cluster_counters_updated ON cluster_counters (updated_ms);
