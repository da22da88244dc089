DROP TABLE idempotency_keys;
DROP INDEX turns_running_by_lease;
ALTER TABLE agents DROP COLUMN turn_timeout_ms;
ALTER TABLE agents DROP COLUMN max_attempts;
ALTER TABLE agents DROP COLUMN on_interrupt;
ALTER TABLE turns DROP COLUMN lease_expires_at;
ALTER TABLE turns DROP COLUMN lease_owner;
ALTER TABLE turns DROP COLUMN attempt;
