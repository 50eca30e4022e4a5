-- PostgreSQL twin of 0017_oauth_authorization.sql. MCP authorization (issue 21): OAuth clients of the authorization-code flow
-- and their refresh tokens.

-- Clients registered through RFC 7591 dynamic registration (or by an
-- operator). Public clients only: no secret exists. `redirect_uris` is a JSON
-- array of exact URIs. A revoked client is kept (its id is never reused) but
-- cannot authorize or refresh.
CREATE TABLE oauth_clients (
    client_id      TEXT PRIMARY KEY NOT NULL,
    client_name    TEXT NOT NULL,
    redirect_uris  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    -- Who registered it: the source address of the registration request.
    registered_by  TEXT NOT NULL,
    revoked_at     BIGINT
);

-- Refresh tokens: only the SHA-256 of each is stored. A refresh rotates the
-- token (the old row is marked used); presenting a used one again revokes
-- its whole family (every token descended from one authorization) and the
-- family's last access token, whose `jti` and expiry are kept for that.
CREATE TABLE oauth_refresh_tokens (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    family       TEXT NOT NULL,
    client_id    TEXT NOT NULL REFERENCES oauth_clients(client_id),
    user_name    TEXT NOT NULL,
    resource     TEXT NOT NULL,
    scope        TEXT NOT NULL,
    -- The DPoP key thumbprint the family is bound to, if any.
    jkt          TEXT,
    mfa          BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    revoked_at   BIGINT,
    access_jti   TEXT NOT NULL,
    access_exp   BIGINT NOT NULL
);
CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens(family);
CREATE INDEX oauth_refresh_tokens_client ON oauth_refresh_tokens(client_id);
