-- The intent journal (issue 17, "no unaudited side effect"): the decision
-- part of a request's audit record, made durable before the upstream is
-- contacted on routes with `durability = "before_forward"`. A row lives from
-- then until the request's record is appended (deleted in the same
-- transaction); rows left by a crash become records at the next start.
-- `record` is the record's JSON as decided, before pseudonymization.
CREATE TABLE audit_intents (
    request_id TEXT PRIMARY KEY NOT NULL,
    time_ms INTEGER NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
