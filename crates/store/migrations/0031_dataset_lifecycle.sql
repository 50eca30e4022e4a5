-- Dataset lifecycle: `draft → approved → deprecated → revoked`, as for
-- models (0019). Policy sees it as `resource.lifecycle` on
-- `Dataset::"<name>"`; the built-in dataset gate refuses reading a revoked
-- one. Datasets registered before this migration were already in use, so
-- they start `approved`; new registrations start `draft`.
ALTER TABLE datasets ADD COLUMN lifecycle TEXT NOT NULL DEFAULT 'approved';
-- Who made the last lifecycle change (the registrant until one is made).
ALTER TABLE datasets ADD COLUMN changed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE datasets ADD COLUMN changed_ms INTEGER NOT NULL DEFAULT 0;
UPDATE datasets SET changed_by = registered_by, changed_ms = registered_ms;
