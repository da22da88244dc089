-- When each API key last authenticated a request (kept to the minute).
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
