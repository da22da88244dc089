PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE turns_old (
    id INTEGER PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    error_code TEXT,
    error_message TEXT,
    metadata TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    attempt BIGINT NOT NULL DEFAULT 1,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    webhook_url TEXT,
    webhook_secrets TEXT,
    usage TEXT
);
INSERT INTO turns_old (id, task_id, status, error_code, error_message, metadata, started_at,
                       ended_at, attempt, lease_owner, lease_expires_at, webhook_url,
                       webhook_secrets, usage)
SELECT id, task_id, CASE status WHEN 'requires_action' THEN 'completed' ELSE status END,
       error_code, error_message, metadata, started_at, ended_at, attempt, lease_owner,
       lease_expires_at, webhook_url, webhook_secrets, usage
FROM turns;
DROP TABLE turns;
ALTER TABLE turns_old RENAME TO turns;
CREATE INDEX turns_by_task ON turns (task_id, id);
CREATE UNIQUE INDEX turns_one_running_per_task ON turns (task_id) WHERE status = 'running';
CREATE INDEX turns_running_by_lease ON turns (lease_expires_at) WHERE status = 'running';
CREATE TABLE events_old (
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    seq BIGINT NOT NULL,
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    kind TEXT NOT NULL CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled')),
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
INSERT INTO events_old (task_id, seq, turn_id, kind, data, created_at)
SELECT task_id, seq, turn_id, CASE kind WHEN 'requires_action' THEN 'final' ELSE kind END,
       data, created_at
FROM events;
DROP TABLE events;
ALTER TABLE events_old RENAME TO events;
PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
