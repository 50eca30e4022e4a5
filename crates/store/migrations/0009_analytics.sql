-- Behavioral analytics (issue 8): model state, risk history, alerts, quarantine.

-- One row per agent: its baseline (JSON written by the analytics crate), so
-- the model survives restarts.
CREATE TABLE analytics_models (
    agent       TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- The population model's sample (scores agents still learning). One row.
CREATE TABLE analytics_population (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    sample      TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Risk score over time, one point per agent per change worth keeping.
CREATE TABLE risk_history (
    agent       TEXT NOT NULL,
    time_ms     INTEGER NOT NULL,
    risk        REAL NOT NULL,
    grade       TEXT NOT NULL
);
CREATE INDEX risk_history_agent ON risk_history(agent, time_ms);

-- Alerts: what rose, why (reasons and features as JSON), the requests
-- involved, and the human verdict.
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent       TEXT NOT NULL,
    time_ms     INTEGER NOT NULL,
    grade       TEXT NOT NULL,
    risk        REAL NOT NULL,
    detail      TEXT NOT NULL,
    request_ids TEXT NOT NULL,
    verdict     TEXT,
    resolved_at INTEGER,
    resolved_by TEXT
);
CREATE INDEX alerts_agent ON alerts(agent, time_ms);

-- Agents in quarantine. A row stays after release, for the record.
CREATE TABLE quarantines (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent       TEXT NOT NULL,
    since_ms    INTEGER NOT NULL,
    alert_id    INTEGER REFERENCES alerts(id),
    released_at INTEGER,
    released_by TEXT
);
CREATE INDEX quarantines_agent ON quarantines(agent);
