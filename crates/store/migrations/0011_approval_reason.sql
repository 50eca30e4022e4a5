-- Who required a ticket's approval (issue 8): `policy` (an
-- `@obligation("approval")`) or `analytics` (the agent's risk grade holds its
-- writes). Tickets from before this migration were all asked for by policy.
ALTER TABLE approvals ADD COLUMN required_by TEXT NOT NULL DEFAULT 'policy';
