-- Webhooks: where turn ends are delivered, and the outbox of deliveries with their
-- attempts. A delivery row is written in the transaction that ends its turn.

-- An agent's default webhook, and a turn's own (from its request). Secrets are
-- `whsec_…`, several separated by spaces while one is rotated.
ALTER TABLE agents ADD COLUMN webhook_url TEXT;
ALTER TABLE agents ADD COLUMN webhook_secrets TEXT;
ALTER TABLE turns ADD COLUMN webhook_url TEXT;
ALTER TABLE turns ADD COLUMN webhook_secrets TEXT;

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY,
    -- The `webhook-id` header, the same on every attempt.
    webhook_id TEXT NOT NULL UNIQUE,
    task_id BIGINT NOT NULL REFERENCES tasks (id),
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    secrets TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    -- `attempts` when the current round of the retry schedule began (a redelivery
    -- starts a new round).
    round_start BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    -- A sender holds the delivery until then; a dead sender's claim runs out.
    claimed_until BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_task ON webhook_deliveries (task_id, id);

CREATE TABLE webhook_attempts (
    delivery_id BIGINT NOT NULL REFERENCES webhook_deliveries (id),
    attempt BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    status_code BIGINT,
    latency_ms BIGINT NOT NULL,
    error TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
