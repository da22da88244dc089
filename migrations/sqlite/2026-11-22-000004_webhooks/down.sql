DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
ALTER TABLE turns DROP COLUMN webhook_secrets;
ALTER TABLE turns DROP COLUMN webhook_url;
ALTER TABLE agents DROP COLUMN webhook_secrets;
ALTER TABLE agents DROP COLUMN webhook_url;
