-- The per-task event log behind the SSE stream: strictly increasing `seq` per task,
-- handed out from tasks.last_seq inside the transaction that writes the event.

ALTER TABLE tasks ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0;

CREATE TABLE events (
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    seq BIGINT NOT NULL,
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    kind TEXT NOT NULL CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled')),
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);

-- A turn's messages: its open streamed message and its output are looked up by turn.
CREATE INDEX messages_by_turn ON messages (turn_id, id);
