-- Messages sent while a turn runs (`on_busy`): queued for a turn of their own, or
-- waiting to be delivered into the running turn (steer). See migrations/sqlite.
ALTER TABLE agents ADD COLUMN on_busy TEXT NOT NULL DEFAULT 'reject'
    CHECK (on_busy IN ('reject', 'enqueue', 'interrupt', 'steer'));
ALTER TABLE tasks ADD COLUMN queued BIGINT NOT NULL DEFAULT 0;

CREATE TABLE queued_messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    mode TEXT NOT NULL CHECK (mode IN ('enqueue', 'steer')),
    status TEXT NOT NULL CHECK (status IN ('queued', 'steering', 'started', 'delivered', 'cancelled')),
    steer_turn_id BIGINT REFERENCES turns (id),
    content TEXT NOT NULL,
    message_metadata TEXT NOT NULL,
    metadata TEXT NOT NULL,
    webhook_url TEXT,
    webhook_secrets TEXT,
    created_at BIGINT NOT NULL,
    turn_id BIGINT REFERENCES turns (id),
    message_id BIGINT REFERENCES messages (id),
    ended_at BIGINT
);
CREATE INDEX queued_messages_by_task ON queued_messages (task_id, id);
CREATE INDEX queued_messages_queued ON queued_messages (task_id, id) WHERE status = 'queued';
CREATE INDEX queued_messages_steering ON queued_messages (steer_turn_id, id) WHERE status = 'steering';

ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled', 'requires_action', 'message_delivered'));
ALTER TABLE idempotency_keys ALTER COLUMN turn_id DROP NOT NULL;
