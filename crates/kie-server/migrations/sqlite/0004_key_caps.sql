-- Per-key usage caps, IP allowlists and the management scope (issue 15 item 5, issue 16).
-- Caps are credits in hundredths (NULL: no cap). Usage counters: see ledger.rs
-- ("Per-key usage caps"); hour_bucket/day_bucket are fixed UTC buckets
-- (created_at / 3600000 and / 86400000) whose usage hour_used/day_used hold.
ALTER TABLE api_keys ADD COLUMN cap_hourly INTEGER CHECK (cap_hourly >= 0);
ALTER TABLE api_keys ADD COLUMN cap_daily INTEGER CHECK (cap_daily >= 0);
ALTER TABLE api_keys ADD COLUMN cap_total INTEGER CHECK (cap_total >= 0);
-- Space-separated CIDRs; NULL: any address.
ALTER TABLE api_keys ADD COLUMN allow_ips TEXT;
ALTER TABLE api_keys ADD COLUMN manage INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN used_total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN hour_bucket INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN hour_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN day_bucket INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN day_used INTEGER NOT NULL DEFAULT 0;
-- The key a hold or a charge was made through (NULL: not through a key, e.g. kie admin).
ALTER TABLE holds ADD COLUMN key_id TEXT;
ALTER TABLE ledger_entries ADD COLUMN key_id TEXT;
