-- The console: people who sign in (account holders and operators), their one-time
-- invites, their sessions and failed sign-ins; indexes that keep console pages fast.
-- Times are INTEGER epoch milliseconds. Tokens are stored only as SHA-256 digests.

ALTER TABLE accounts ADD COLUMN email TEXT;

CREATE TABLE console_users (
    id            TEXT PRIMARY KEY,
    -- lower-cased
    email         TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('account','operator')),
    -- the account an account holder sees; NULL for operators
    account_id    TEXT REFERENCES accounts(id),
    -- argon2id PHC string; NULL until the invite is used
    password_hash TEXT,
    created_at    INTEGER NOT NULL,
    CHECK ((role = 'account') = (account_id IS NOT NULL))
);

CREATE TABLE console_invites (
    token_digest TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES console_users(id),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
);

CREATE TABLE console_sessions (
    token_digest TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES console_users(id),
    -- the CSRF token every state-changing form of this session carries
    csrf         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    -- absolute expiry; idle expiry is last_seen_at + the idle timeout
    expires_at   INTEGER NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions(user_id);
CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);

-- Failed sign-ins per (lower-cased) email address: 5 within 15 minutes lock it for 15.
CREATE TABLE console_login_failures (
    email        TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    first_at     INTEGER NOT NULL,
    locked_until INTEGER
);

-- Console pages: the task log filtered by state or model, newest first; files and
-- callbacks of an account, newest first.
CREATE INDEX tasks_account_state_created ON tasks(account_id, state, created_at);
CREATE INDEX tasks_account_model_created ON tasks(account_id, model, created_at);
CREATE INDEX files_account_created ON files(account_id, created_at);
CREATE INDEX webhook_deliveries_account ON webhook_deliveries(account_id, created_at);
-- The Overview's credits spent per day: the ledger's decreases (a covering index of
-- them), and the totals of settled days (over an hour past their end: entries are
-- appended with the time of their transaction) kept once computed, so the page reads
-- today's entries and 30 rows whatever the volume.
CREATE INDEX ledger_entries_spent ON ledger_entries(account_id, created_at, amount) WHERE amount < 0;
CREATE TABLE ledger_spent_days (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    -- days since the Unix epoch (UTC)
    day        INTEGER NOT NULL,
    spent      INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)
);
