-- Approvals bind the whole exchange (issue 15): the query string, the
-- headers that change what an upstream does, the body's size, and per
-- protocol the MCP tool (with its canonical arguments) or the LLM model.
-- `binding_key` is the digest the gateway matches a call against: computed
-- from the exact call, while the row keeps what the approver is shown
-- (secrets masked), so a restart restores the exact binding.
ALTER TABLE approvals ADD COLUMN binding_key TEXT NOT NULL DEFAULT '';
ALTER TABLE approvals ADD COLUMN query TEXT;
ALTER TABLE approvals ADD COLUMN headers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE approvals ADD COLUMN body_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN protocol TEXT NOT NULL DEFAULT 'http';
ALTER TABLE approvals ADD COLUMN subject TEXT;
ALTER TABLE approvals ADD COLUMN preview TEXT;
-- A live ticket from before this migration was bound without its query and
-- headers, and its approver never saw them: it lapses, and the agent's next
-- call opens a ticket that binds (and shows) the whole exchange.
UPDATE approvals SET status = 'expired' WHERE status IN ('pending', 'approved');
