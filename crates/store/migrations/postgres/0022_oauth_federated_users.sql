-- Refresh tokens of users who logged in at an OIDC issuer on the
-- authorization page: their issuer and groups, so a refreshed access token
-- acts for the same user with the same groups as the first. NULL issuer: a
-- local user (the gateway's own). Groups: a JSON array of strings.
ALTER TABLE oauth_refresh_tokens ADD COLUMN user_issuer TEXT;
ALTER TABLE oauth_refresh_tokens ADD COLUMN user_groups TEXT NOT NULL DEFAULT '[]';
