//! The metrics baton records, named in one place. They go through the `metrics` facade;
//! the server installs a Prometheus recorder and serves them at `/metrics`. Without a
//! recorder (embedders, tests) recording costs next to nothing.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::model::TurnStatus;

pub const HTTP_REQUESTS: &str = "baton_http_requests_total";
pub const HTTP_DURATION: &str = "baton_http_request_duration_seconds";
pub const TURNS_STARTED: &str = "baton_turns_started_total";
pub const TURNS_ENDED: &str = "baton_turns_ended_total";
pub const TURN_DURATION: &str = "baton_turn_duration_seconds";
pub const TURNS_IN_FLIGHT: &str = "baton_turns_in_flight";
pub const STREAMS_OPEN: &str = "baton_sse_streams_open";
pub const DB_CONNECTIONS: &str = "baton_db_pool_connections";
pub const SQLITE_WRITE_GROUPS: &str = "baton_sqlite_write_groups_total";
pub const SQLITE_WRITE_OPERATIONS: &str = "baton_sqlite_write_operations_total";
pub const POSTGRES_WRITE_BATCHES: &str = "baton_postgres_write_batches_total";
pub const POSTGRES_BATCHED_WRITES: &str = "baton_postgres_batched_writes_total";
pub const WEBHOOK_ATTEMPTS: &str = "baton_webhook_attempts_total";

/// Registers every metric's help text (once, at start-up).
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request (to the first byte of a stream), by method and route"
    );
    describe_counter!(
        TURNS_STARTED,
        "Turns handed to this instance's executor (retries included)"
    );
    describe_counter!(
        TURNS_ENDED,
        "Turns ended by this instance, by final status and how (played, cancelled, swept, stopped)"
    );
    describe_histogram!(
        TURN_DURATION,
        metrics::Unit::Seconds,
        "Time a turn played on this instance, by final status"
    );
    describe_gauge!(
        TURNS_IN_FLIGHT,
        "Turns this instance holds: playing or waiting for a slot"
    );
    describe_gauge!(STREAMS_OPEN, "SSE streams open on this instance");
    describe_gauge!(
        DB_CONNECTIONS,
        "Database pool connections, by pool and state (in_use, idle, max)"
    );
    describe_counter!(
        SQLITE_WRITE_GROUPS,
        "Transactions SQLite's writer committed (or tried to), each holding a group of operations"
    );
    describe_counter!(
        SQLITE_WRITE_OPERATIONS,
        "Write operations SQLite's writer ran; divided by the groups, the mean group size"
    );
    describe_counter!(
        POSTGRES_WRITE_BATCHES,
        "Batches of one kind of write (new tasks, turns' ends) PostgreSQL was sent, a write alone counting as one"
    );
    describe_counter!(
        POSTGRES_BATCHED_WRITES,
        "Writes in those batches; divided by the batches, the mean batch size"
    );
    describe_counter!(
        WEBHOOK_ATTEMPTS,
        "Webhook delivery attempts, by outcome (delivered, retry, failed)"
    );
}

pub(crate) fn turn_started() {
    counter!(TURNS_STARTED).increment(1);
}

/// A turn this instance ended; `played` is how long it played, when it did here.
pub(crate) fn turn_ended(status: TurnStatus, how: &'static str, played: Option<Duration>) {
    counter!(TURNS_ENDED, "status" => status.as_str(), "how" => how).increment(1);
    if let Some(played) = played {
        histogram!(TURN_DURATION, "status" => status.as_str()).record(played.as_secs_f64());
    }
}

pub(crate) fn turns_in_flight(count: usize) {
    gauge!(TURNS_IN_FLIGHT).set(count as f64);
}

pub(crate) fn webhook_attempt(outcome: &'static str) {
    counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
}
