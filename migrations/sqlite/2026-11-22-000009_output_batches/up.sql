-- How many batches of output the turn's current play has recorded: a batch written
-- again (its commit's answer was lost) is recognised and not recorded twice.
ALTER TABLE turns ADD COLUMN output_batches BIGINT NOT NULL DEFAULT 0;
