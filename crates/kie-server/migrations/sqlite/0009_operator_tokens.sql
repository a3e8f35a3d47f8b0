-- Operator API tokens (issue 16): the credential of /api/v1/admin/…, the JSON twin of
-- the operator's console pages. Minted by `kie admin operator-token create` (the token,
-- kieop_…, is shown once; only its SHA-256 digest is stored), revoked by
-- `kie admin operator-token revoke`. A token belongs to no account.
CREATE TABLE operator_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT,
    prefix       TEXT NOT NULL,
    digest       TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

-- The operator's delivery backlog (console Health page, GET /api/v1/admin/health)
-- counts deliveries given up in the last 24 hours: by index, not by scanning every
-- delivery ever made.
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries(finished_at) WHERE state = 'failed';
