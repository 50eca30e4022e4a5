-- Red-team runs (`portcullis redteam`, issue 22): one row per run, with the
-- whole scorecard (families, probes, evidence) as JSON. The counts and the
-- failed families are columns so `redteam history` needs no JSON parsing.
CREATE TABLE redteam_runs (
    run_id TEXT PRIMARY KEY,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    recorded_by TEXT NOT NULL,
    agent TEXT NOT NULL,
    gateway TEXT NOT NULL,
    held INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    failed_families TEXT NOT NULL,
    audit_request_id TEXT NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX redteam_runs_started ON redteam_runs (started_ms);
