PRAGMA foreign_keys = OFF;
BEGIN;
DELETE FROM events WHERE kind = 'message_delivered';
CREATE TABLE events_old (
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    seq BIGINT NOT NULL,
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    kind TEXT NOT NULL CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled', 'requires_action')),
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
INSERT INTO events_old (task_id, seq, turn_id, kind, data, created_at)
SELECT task_id, seq, turn_id, kind, data, created_at FROM events;
DROP TABLE events;
ALTER TABLE events_old RENAME TO events;
DELETE FROM idempotency_keys WHERE turn_id IS NULL;
CREATE TABLE idempotency_keys_old (
    agent_id BIGINT NOT NULL REFERENCES agents (id),
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, idempotency_key)
);
INSERT INTO idempotency_keys_old SELECT agent_id, idempotency_key, request_hash, turn_id,
    response, created_at, expires_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_old RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
DROP TABLE queued_messages;
ALTER TABLE tasks DROP COLUMN queued;
ALTER TABLE agents DROP COLUMN on_busy;
PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
