-- Messages sent while a turn runs (`on_busy`): queued for a turn of their own, or
-- waiting to be delivered into the running turn (steer). Rebuilds `events` (a new
-- kind) and `idempotency_keys` (a queued message has no turn yet) by SQLite's
-- documented procedure, as in 000007.
PRAGMA foreign_keys = OFF;
BEGIN;
-- What an agent's messages do when their task is busy, unless a request says.
ALTER TABLE agents ADD COLUMN on_busy TEXT NOT NULL DEFAULT 'reject'
    CHECK (on_busy IN ('reject', 'enqueue', 'interrupt', 'steer'));
-- How many of the task's messages wait in its queue (queued or steering): a turn's
-- end learns from the row it updates anyway whether there is a queue to look at.
ALTER TABLE tasks ADD COLUMN queued BIGINT NOT NULL DEFAULT 0;

CREATE TABLE queued_messages (
    id INTEGER PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    -- How it was sent: `enqueue`, or `steer` (into the running turn).
    mode TEXT NOT NULL CHECK (mode IN ('enqueue', 'steer')),
    status TEXT NOT NULL CHECK (status IN ('queued', 'steering', 'started', 'delivered', 'cancelled')),
    -- While `steering`: the running turn it waits to be taken by.
    steer_turn_id BIGINT REFERENCES turns (id),
    -- The message (content with attachments stored as files) and its own metadata.
    content TEXT NOT NULL,
    message_metadata TEXT NOT NULL,
    -- The request's metadata and webhook: the turn it starts has them.
    metadata TEXT NOT NULL,
    webhook_url TEXT,
    webhook_secrets TEXT,
    created_at BIGINT NOT NULL,
    -- Once `started` or `delivered`: the turn, and the message it became.
    turn_id BIGINT REFERENCES turns (id),
    message_id BIGINT REFERENCES messages (id),
    ended_at BIGINT
);
CREATE INDEX queued_messages_by_task ON queued_messages (task_id, id);
CREATE INDEX queued_messages_queued ON queued_messages (task_id, id) WHERE status = 'queued';
CREATE INDEX queued_messages_steering ON queued_messages (steer_turn_id, id) WHERE status = 'steering';

CREATE TABLE events_new (
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    seq BIGINT NOT NULL,
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    kind TEXT NOT NULL CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled', 'requires_action', 'message_delivered')),
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
INSERT INTO events_new (task_id, seq, turn_id, kind, data, created_at)
SELECT task_id, seq, turn_id, kind, data, created_at FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;

CREATE TABLE idempotency_keys_new (
    agent_id BIGINT NOT NULL REFERENCES agents (id),
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    -- The turn the request started; none for a message it queued.
    turn_id BIGINT REFERENCES turns (id),
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, idempotency_key)
);
INSERT INTO idempotency_keys_new (agent_id, idempotency_key, request_hash, turn_id, response,
                                  created_at, expires_at)
SELECT agent_id, idempotency_key, request_hash, turn_id, response, created_at, expires_at
FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_new RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
