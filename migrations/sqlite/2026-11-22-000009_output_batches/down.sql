ALTER TABLE turns DROP COLUMN output_batches;
