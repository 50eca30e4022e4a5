-- PostgreSQL twin of 0016_admin_roles.sql: named admin credentials with roles.
-- PostgreSQL has no rowid: the first credential by creation time (then id)
-- becomes the bootstrap owner `admin`, the others `admin-<id>`.
ALTER TABLE admin_tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE admin_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'owner';
ALTER TABLE admin_tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE admin_tokens ADD COLUMN rotated_at BIGINT;
ALTER TABLE admin_tokens ADD COLUMN revoked_at BIGINT;
ALTER TABLE admin_tokens ADD COLUMN bootstrap BIGINT NOT NULL DEFAULT 0;
UPDATE admin_tokens SET name = 'admin', bootstrap = 1, created_by = 'serve'
    WHERE id = (SELECT id FROM admin_tokens ORDER BY created_at, id LIMIT 1);
UPDATE admin_tokens SET name = 'admin-' || id, created_by = 'serve' WHERE name = '';
CREATE UNIQUE INDEX admin_tokens_name ON admin_tokens (name);
CREATE UNIQUE INDEX admin_tokens_hash ON admin_tokens (token_sha256);
