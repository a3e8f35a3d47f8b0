-- Low-balance alerts (issue 16): per-account thresholds (hundredths), an alert URL and
-- the alert state compared-and-set by a trigger in the same transaction as every
-- balance change (see the invariants at the top of ledger.rs). Balance events go
-- through the webhook outbox as deliveries without a task (task_id NULL; the event id
-- is the delivery id).
ALTER TABLE accounts ADD COLUMN alert_warn BIGINT CHECK (alert_warn >= 0);
ALTER TABLE accounts ADD COLUMN alert_critical BIGINT CHECK (alert_critical >= 0);
ALTER TABLE accounts ADD COLUMN alert_url TEXT;
-- 0: at or above the thresholds; 1: below warning; 2: below critical
ALTER TABLE accounts ADD COLUMN alert_state SMALLINT NOT NULL DEFAULT 0;

ALTER TABLE webhook_deliveries ALTER COLUMN task_id DROP NOT NULL;

-- Runs on every change of balance or held, whatever wrote it (a statement, the hold
-- CTE, any node), with the account row locked by that UPDATE: when the level of the
-- available balance differs from alert_state, sets alert_state and, on a move down
-- (to warning or critical) or back to 0, enqueues one event for the alert URL.
CREATE FUNCTION accounts_balance_alert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lvl SMALLINT;
    typ TEXT;
    thr BIGINT;
    eid TEXT;
    at_ms BIGINT;
BEGIN
    lvl := CASE WHEN NEW.alert_critical IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_critical THEN 2
                WHEN NEW.alert_warn IS NOT NULL AND NEW.balance - NEW.held < NEW.alert_warn THEN 1
                ELSE 0 END;
    IF lvl = NEW.alert_state THEN
        RETURN NEW;
    END IF;
    IF lvl > NEW.alert_state THEN
        typ := CASE WHEN lvl = 2 THEN 'balance.critical' ELSE 'balance.warning' END;
        thr := CASE WHEN lvl = 2 THEN NEW.alert_critical ELSE NEW.alert_warn END;
    ELSIF lvl = 0 THEN
        typ := 'balance.recovered';
        thr := COALESCE(NEW.alert_warn, NEW.alert_critical);
    END IF;
    NEW.alert_state := lvl;
    IF typ IS NOT NULL AND NEW.alert_url IS NOT NULL THEN
        eid := 'evt_' || substr(md5(random()::text || clock_timestamp()::text || NEW.id), 1, 24);
        at_ms := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
        INSERT INTO webhook_deliveries (id, task_id, account_id, url, body, state, next_attempt_at, created_at)
        VALUES (eid, NULL, NEW.id, NEW.alert_url,
                json_build_object('type', typ, 'id', eid, 'createdAt', at_ms,
                                  'data', json_build_object('account', NEW.id,
                                      'available', round((NEW.balance - NEW.held)::numeric / 100, 2),
                                      'threshold', round(thr::numeric / 100, 2)))::text,
                'pending', at_ms, at_ms);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER accounts_balance_alert BEFORE UPDATE OF balance, held ON accounts
FOR EACH ROW EXECUTE FUNCTION accounts_balance_alert();
