-- Cluster mode only (issue 18): fencing the takeover of a replica taken for
-- dead while it was alive (frozen, cut off, starved of CPU past its lease).
--
-- A survivor that takes over a replica's audit intents first marks that
-- replica `fenced`, in the same transaction; the replica's every audit
-- append reads its own row `FOR SHARE` under the append lock and refuses to
-- append when the row is fenced, missing, or carries another `epoch` than
-- the one its writer filtered its batch at. A fenced replica re-registers:
-- it reads which of its request ids were taken (`cluster_surrendered`),
-- drops their records (the survivor recorded them), and bumps `epoch`.
ALTER TABLE cluster_replicas ADD COLUMN fenced BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE cluster_replicas ADD COLUMN epoch BIGINT NOT NULL DEFAULT 1;

-- The request ids whose intents a survivor took from `replica`: the survivor
-- records them, so the replica, once it resumes, must not.
CREATE TABLE cluster_surrendered (
    replica     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    taken_ms    BIGINT NOT NULL,
    PRIMARY KEY (replica, request_id)
);
CREATE INDEX cluster_surrendered_taken ON cluster_surrendered (taken_ms);
