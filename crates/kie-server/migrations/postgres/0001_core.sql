-- Accounts, API keys, the credit ledger and service settings.
-- Money is BIGINT hundredths of a credit.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    -- posted balance = sum(ledger_entries.amount); held = sum(ledger_entries.held_delta)
    balance     BIGINT NOT NULL DEFAULT 0,
    held        BIGINT NOT NULL DEFAULT 0,
    webhook_key TEXT,
    created_at  BIGINT NOT NULL,
    CHECK (held >= 0),
    CHECK (balance >= held)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    name        TEXT,
    prefix      TEXT NOT NULL,
    digest      TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE ledger_entries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    kind            TEXT NOT NULL CHECK (kind IN ('grant','deduct','hold','post','void','adjust')),
    amount          BIGINT NOT NULL,
    held_delta      BIGINT NOT NULL,
    hold_id         TEXT,
    reason          TEXT,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries(account_id, seq);

CREATE TABLE holds (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','posted','voided')),
    charged     BIGINT,
    created_at  BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX holds_pending ON holds(account_id) WHERE state = 'pending';

CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
