-- Webhook HMAC key roll with an overlap (issue 16): the key replaced by a roll keeps
-- signing callbacks next to the new one until webhook_key_prev_until (epoch ms), so a
-- receiver verifying with either key accepts them (Standard Webhooks carries one
-- signature per key in webhook-signature; the KIE.AI scheme signs with the new key).
ALTER TABLE accounts ADD COLUMN webhook_key_prev TEXT;
ALTER TABLE accounts ADD COLUMN webhook_key_prev_until BIGINT;

-- When each API key was last used (epoch ms), to the minute: the first use of a key in
-- a minute is noted in memory and written in batches every few seconds, never a write
-- per request.
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
