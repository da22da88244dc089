DROP INDEX messages_by_turn;
DROP TABLE events;
ALTER TABLE tasks DROP COLUMN last_seq;
