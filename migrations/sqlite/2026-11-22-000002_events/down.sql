DROP TABLE events;
ALTER TABLE tasks DROP COLUMN last_seq;
