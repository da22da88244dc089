UPDATE events SET kind = 'final' WHERE kind = 'requires_action';
ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled'));
DROP INDEX turns_awaiting_answers;
ALTER TABLE turns DROP COLUMN respond_by;
UPDATE turns SET status = 'completed' WHERE status = 'requires_action';
ALTER TABLE turns DROP CONSTRAINT turns_status_check;
ALTER TABLE turns ADD CONSTRAINT turns_status_check
    CHECK (status IN ('running', 'completed', 'failed', 'cancelled'));
