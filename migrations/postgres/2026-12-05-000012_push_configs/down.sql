ALTER TABLE webhook_deliveries DROP COLUMN headers;
DROP TABLE push_configs;
