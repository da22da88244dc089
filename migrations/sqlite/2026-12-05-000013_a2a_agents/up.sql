-- What an agent's A2A Agent Card says of it (its description and skills, JSON); none:
-- the defaults.
ALTER TABLE agents ADD COLUMN card TEXT;
-- A2A lists an agent's tasks most recently updated first.
CREATE INDEX tasks_by_agent_update ON tasks (agent_id, updated_at, id);
