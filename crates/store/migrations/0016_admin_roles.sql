-- Named admin credentials with roles (issue 20). A credential is a bearer
-- token of which only the SHA-256 is kept; `revoked_at` set means refused.
-- Tokens made before this migration were the one all-powerful bootstrap
-- token: they become owners, the first named `admin` (the principal their
-- actions were already recorded under), the others `admin-<rowid>`.
ALTER TABLE admin_tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE admin_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'owner';
ALTER TABLE admin_tokens ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE admin_tokens ADD COLUMN rotated_at INTEGER;
ALTER TABLE admin_tokens ADD COLUMN revoked_at INTEGER;
ALTER TABLE admin_tokens ADD COLUMN bootstrap INTEGER NOT NULL DEFAULT 0;
UPDATE admin_tokens SET name = 'admin', bootstrap = 1, created_by = 'serve'
    WHERE rowid = (SELECT MIN(rowid) FROM admin_tokens);
UPDATE admin_tokens SET name = 'admin-' || rowid, created_by = 'serve' WHERE name = '';
CREATE UNIQUE INDEX admin_tokens_name ON admin_tokens (name);
CREATE UNIQUE INDEX admin_tokens_hash ON admin_tokens (token_sha256);
