-- Per-agent day counters of `kind = "llm"` routes, so a restart does not give
-- every agent a fresh day budget. One row per (route, agent): the counters of
-- the day in `day` (days since the epoch, UTC); an older day counts zero.
CREATE TABLE llm_budget_days (
    route     TEXT NOT NULL,
    agent     TEXT NOT NULL,
    day       INTEGER NOT NULL,
    requests  INTEGER NOT NULL,
    tokens    INTEGER NOT NULL,
    PRIMARY KEY (route, agent)
);
