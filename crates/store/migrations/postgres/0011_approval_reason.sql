-- PostgreSQL twin of ../0011_approval_reason.sql.
ALTER TABLE approvals ADD COLUMN required_by TEXT NOT NULL DEFAULT 'policy';
