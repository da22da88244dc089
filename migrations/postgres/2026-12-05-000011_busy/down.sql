DELETE FROM events WHERE kind = 'message_delivered';
ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled', 'requires_action'));
DELETE FROM idempotency_keys WHERE turn_id IS NULL;
ALTER TABLE idempotency_keys ALTER COLUMN turn_id SET NOT NULL;
DROP TABLE queued_messages;
ALTER TABLE tasks DROP COLUMN queued;
ALTER TABLE agents DROP COLUMN on_busy;
