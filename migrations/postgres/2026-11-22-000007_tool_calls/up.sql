-- Turns may wait for a client's answers to their tool calls: status 'requires_action',
-- due by respond_by.
ALTER TABLE turns DROP CONSTRAINT turns_status_check;
ALTER TABLE turns ADD CONSTRAINT turns_status_check
    CHECK (status IN ('running', 'requires_action', 'completed', 'failed', 'cancelled'));
ALTER TABLE turns ADD COLUMN respond_by BIGINT;
CREATE INDEX turns_awaiting_answers ON turns (respond_by) WHERE status = 'requires_action';
ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('turn_started', 'text_delta', 'message', 'final', 'error', 'cancelled', 'requires_action'));
