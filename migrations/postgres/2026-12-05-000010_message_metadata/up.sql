-- A message's own metadata, as its sender gave it (a JSON object).
ALTER TABLE messages ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
