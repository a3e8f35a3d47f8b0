-- Low-balance alerts (issue 16): per-account thresholds (hundredths), an alert URL and
-- the alert state compared-and-set by a trigger in the same transaction as every
-- balance change (see the invariants at the top of ledger.rs). Balance events go
-- through the webhook outbox as deliveries without a task (task_id NULL; the event id
-- is the delivery id), so webhook_deliveries is rebuilt with a nullable task_id.
-- sqlx runs this in one transaction, where foreign_keys cannot be switched off: the
-- rebuild defers the checks instead (the webhook_attempts rows that the DROP orphans
-- are matched again by the re-inserted deliveries before the commit).
PRAGMA defer_foreign_keys = ON;
ALTER TABLE accounts ADD COLUMN alert_warn INTEGER CHECK (alert_warn >= 0);
ALTER TABLE accounts ADD COLUMN alert_critical INTEGER CHECK (alert_critical >= 0);
ALTER TABLE accounts ADD COLUMN alert_url TEXT;
-- 0: at or above the thresholds; 1: below warning; 2: below critical
ALTER TABLE accounts ADD COLUMN alert_state INTEGER NOT NULL DEFAULT 0;

CREATE TABLE webhook_deliveries_copy AS SELECT * FROM webhook_deliveries;
DROP TABLE webhook_deliveries;
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    task_id         TEXT UNIQUE REFERENCES tasks(id),
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
INSERT INTO webhook_deliveries
    (id, task_id, account_id, url, body, state, attempts, next_attempt_at, locked_until,
     last_status, last_error, created_at, finished_at)
SELECT id, task_id, account_id, url, body, state, attempts, next_attempt_at, locked_until,
     last_status, last_error, created_at, finished_at FROM webhook_deliveries_copy;
DROP TABLE webhook_deliveries_copy;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_account ON webhook_deliveries(account_id, created_at);

-- Fires on every change of balance or held, whatever wrote it (sqlx, the group commit,
-- any node): when the level of the available balance differs from alert_state, sets
-- alert_state and, on a move down (to warning or critical) or back to 0, enqueues one
-- event for the alert URL.
CREATE TRIGGER accounts_balance_alert AFTER UPDATE OF balance, held ON accounts
FOR EACH ROW
WHEN (CASE WHEN NEW.alert_critical IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_critical THEN 2
           WHEN NEW.alert_warn IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_warn THEN 1
           ELSE 0 END) <> NEW.alert_state
BEGIN
    INSERT INTO webhook_deliveries (id, task_id, account_id, url, body, state, next_attempt_at, created_at)
    SELECT e.id, NULL, NEW.id, NEW.alert_url,
           json_object('type', e.type, 'id', NULL, 'createdAt', e.now,
                       'data', json_object('account', NEW.id,
                                           'available', (NEW.balance - NEW.held) / 100.0,
                                           'threshold', e.threshold / 100.0)),
           'pending', e.now, e.now
    FROM (SELECT 'evt_' || lower(hex(randomblob(12))) AS id,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS now,
                 CASE WHEN l.lvl > NEW.alert_state
                        THEN (CASE l.lvl WHEN 2 THEN 'balance.critical' ELSE 'balance.warning' END)
                      WHEN l.lvl = 0 THEN 'balance.recovered' END AS type,
                 CASE WHEN l.lvl = 2 THEN NEW.alert_critical
                      ELSE COALESCE(NEW.alert_warn, NEW.alert_critical) END AS threshold
          FROM (SELECT CASE WHEN NEW.alert_critical IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_critical THEN 2
                            WHEN NEW.alert_warn IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_warn THEN 1
                            ELSE 0 END AS lvl) l) e
    WHERE NEW.alert_url IS NOT NULL AND e.type IS NOT NULL;
    -- randomblob() is evaluated once per use: the body takes the row's id afterwards.
    UPDATE webhook_deliveries SET body = json_set(body, '$.id', id)
    WHERE account_id = NEW.id AND task_id IS NULL AND json_extract(body, '$.id') IS NULL;
    UPDATE accounts SET alert_state =
        CASE WHEN NEW.alert_critical IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_critical THEN 2
             WHEN NEW.alert_warn IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_warn THEN 1
             ELSE 0 END
    WHERE id = NEW.id;
END;
