-- A2A push notification configs (see migrations/sqlite).
CREATE TABLE push_configs (
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    -- The client's id for the config (the task's id when it gave none).
    config_id TEXT NOT NULL,
    url TEXT NOT NULL,
    token TEXT,
    auth_scheme TEXT,
    auth_credentials TEXT,
    -- The Standard Webhooks secrets its pushes are signed with, separated by spaces.
    secrets TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, config_id)
);
-- A delivery's own headers besides its signature (a push's token and
-- `Authorization`), as a JSON array of [name, value] pairs.
ALTER TABLE webhook_deliveries ADD COLUMN headers TEXT;
