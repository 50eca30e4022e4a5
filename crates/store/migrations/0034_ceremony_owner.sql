-- Ceremonies of the data plane's authorization endpoint (issue 20, cluster
-- side of issue 18): its login pages and authorization codes join the
-- console's WebAuthn challenges and OIDC logins in `pending_ceremonies`, so
-- an authorization started on one replica may continue on another. `owner`
-- is the OAuth client a ceremony was started for (empty for the console's):
-- live ceremonies are bounded per owner as well as per kind, so one client
-- cannot fill the table for every other. `spent` marks an authorization
-- code redeemed (by one atomic UPDATE … WHERE spent IS NULL … RETURNING):
-- the row stays until it expires, so a second redemption is recognised as
-- reuse and revokes what the first issued (RFC 6749 §4.1.2).
ALTER TABLE pending_ceremonies ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE pending_ceremonies ADD COLUMN spent TEXT;
CREATE INDEX pending_ceremonies_owner ON pending_ceremonies (kind, owner);
