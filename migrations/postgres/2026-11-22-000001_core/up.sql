-- The core loop: agents, their keys, tasks, turns and messages.
-- Timestamps are UTC Unix microseconds; JSON is stored as text. Kept column for
-- column in step with migrations/sqlite (a test compares the two sets).

CREATE TABLE agents (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    runner_kind TEXT NOT NULL,
    runner_config TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id BIGINT NOT NULL REFERENCES agents (id),
    prefix TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE tasks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id BIGINT NOT NULL REFERENCES agents (id),
    metadata TEXT NOT NULL,
    input TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tasks_by_agent ON tasks (agent_id, id);

CREATE TABLE turns (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    error_code TEXT,
    error_message TEXT,
    metadata TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX turns_by_task ON turns (task_id, id);
-- The one-active-turn rule, enforced by the database. Under READ COMMITTED a second
-- concurrent insert waits for the first to commit, then fails on this index.
CREATE UNIQUE INDEX turns_one_running_per_task ON turns (task_id) WHERE status = 'running';

CREATE TABLE messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content TEXT NOT NULL,
    streaming_status TEXT CHECK (streaming_status IN ('in_progress', 'done')),
    created_at BIGINT NOT NULL
);
CREATE INDEX messages_by_task ON messages (task_id, id);
CREATE INDEX messages_by_task_role ON messages (task_id, role, id);
