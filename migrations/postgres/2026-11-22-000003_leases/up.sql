-- Leases on running turns (crash recovery), per-agent turn policy, idempotency keys.

-- The instance playing a running turn holds it until lease_expires_at (UTC Unix
-- microseconds) and renews it while it plays; a turn whose lease expired is ended or
-- retried by any instance's sweep. `attempt` counts plays of the turn.
ALTER TABLE turns ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;
ALTER TABLE turns ADD COLUMN lease_owner TEXT;
ALTER TABLE turns ADD COLUMN lease_expires_at BIGINT;
CREATE INDEX turns_running_by_lease ON turns (lease_expires_at) WHERE status = 'running';

-- What happens to an agent's interrupted turns, and how long one may run.
ALTER TABLE agents ADD COLUMN on_interrupt TEXT NOT NULL DEFAULT 'fail' CHECK (on_interrupt IN ('fail', 'retry'));
ALTER TABLE agents ADD COLUMN max_attempts BIGINT NOT NULL DEFAULT 3;
ALTER TABLE agents ADD COLUMN turn_timeout_ms BIGINT NOT NULL DEFAULT 600000;

-- An Idempotency-Key, per agent, stored in the transaction that started its turn,
-- with the hash of the request and the answer it got.
CREATE TABLE idempotency_keys (
    agent_id BIGINT NOT NULL REFERENCES agents (id),
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    turn_id BIGINT NOT NULL REFERENCES turns (id),
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, idempotency_key)
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
