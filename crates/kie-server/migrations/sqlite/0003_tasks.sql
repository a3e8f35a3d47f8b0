-- Tasks of the Jobs API, the webhook outbox and its attempt log.
-- Times are INTEGER epoch milliseconds; money INTEGER hundredths of a credit.

CREATE TABLE tasks (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    model           TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('waiting','queuing','generating','success','fail')),
    -- the original request as a JSON string (recordInfo.param)
    param           TEXT NOT NULL,
    callback_url    TEXT,
    -- the ledger hold that pays for the task; resolved in the same transaction as
    -- the task's final state
    hold_id         TEXT NOT NULL UNIQUE REFERENCES holds(id),
    price           INTEGER NOT NULL,
    result_json     TEXT NOT NULL DEFAULT '',
    fail_code       TEXT NOT NULL DEFAULT '',
    fail_msg        TEXT NOT NULL DEFAULT '',
    consume_credits INTEGER NOT NULL DEFAULT 0,
    worker          TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    claimed_at      INTEGER,
    completed_at    INTEGER,
    -- unfinished at this time: failed by the timeout reaper and the hold voided
    deadline_at     INTEGER NOT NULL
);
CREATE INDEX tasks_account_created ON tasks(account_id, created_at);
CREATE INDEX tasks_queue ON tasks(model, created_at) WHERE state IN ('waiting','queuing');
CREATE INDEX tasks_deadline ON tasks(deadline_at) WHERE state IN ('waiting','queuing','generating');

-- One row per callback to send. `id` is the Standard Webhooks `webhook-id`, stable
-- across retries; `body` is fixed when the task finishes, so every attempt sends the
-- same bytes. A node owns a row while `locked_until` is in the future.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    task_id         TEXT NOT NULL UNIQUE REFERENCES tasks(id),
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending','delivered','stopped','failed','refused')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    locked_until    INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id),
    attempt     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status      INTEGER,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
