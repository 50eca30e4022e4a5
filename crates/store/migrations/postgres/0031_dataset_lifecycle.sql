-- PostgreSQL twin of ../0031_dataset_lifecycle.sql.
ALTER TABLE datasets ADD COLUMN lifecycle TEXT NOT NULL DEFAULT 'approved';
ALTER TABLE datasets ADD COLUMN changed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE datasets ADD COLUMN changed_ms BIGINT NOT NULL DEFAULT 0;
UPDATE datasets SET changed_by = registered_by, changed_ms = registered_ms;
