-- PostgreSQL twin of ../0012_approval_binding.sql.
ALTER TABLE approvals ADD COLUMN binding_key TEXT NOT NULL DEFAULT '';
ALTER TABLE approvals ADD COLUMN query TEXT;
ALTER TABLE approvals ADD COLUMN headers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE approvals ADD COLUMN body_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN protocol TEXT NOT NULL DEFAULT 'http';
ALTER TABLE approvals ADD COLUMN subject TEXT;
ALTER TABLE approvals ADD COLUMN preview TEXT;
UPDATE approvals SET status = 'expired' WHERE status IN ('pending', 'approved');
