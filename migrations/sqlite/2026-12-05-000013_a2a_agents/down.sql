DROP INDEX tasks_by_agent_update;
ALTER TABLE agents DROP COLUMN card;
