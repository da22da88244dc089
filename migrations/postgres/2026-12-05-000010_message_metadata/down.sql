ALTER TABLE messages DROP COLUMN metadata;
