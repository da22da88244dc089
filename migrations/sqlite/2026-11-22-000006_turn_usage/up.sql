-- What a model reported using for the turn (JSON: input, output and total tokens).
ALTER TABLE turns ADD COLUMN usage TEXT;
