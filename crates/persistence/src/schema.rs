//! One table set for every backend, in portable types: ids and timestamps (UTC Unix
//! microseconds) are `BigInt`, JSON and enums are `Text`.

diesel::table! {
    agents (id) {
        id -> BigInt,
        name -> Text,
        runner_kind -> Text,
        runner_config -> Text,
        created_at -> BigInt,
        on_interrupt -> Text,
        max_attempts -> BigInt,
        turn_timeout_ms -> BigInt,
        webhook_url -> Nullable<Text>,
        webhook_secrets -> Nullable<Text>,
        on_busy -> Text,
        card -> Nullable<Text>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> BigInt,
        agent_id -> BigInt,
        prefix -> Text,
        secret_hash -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    tasks (id) {
        id -> BigInt,
        agent_id -> BigInt,
        metadata -> Text,
        input -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        last_seq -> BigInt,
        queued -> BigInt,
    }
}

diesel::table! {
    events (task_id, seq) {
        task_id -> BigInt,
        seq -> BigInt,
        turn_id -> BigInt,
        kind -> Text,
        data -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    turns (id) {
        id -> BigInt,
        task_id -> BigInt,
        status -> Text,
        error_code -> Nullable<Text>,
        error_message -> Nullable<Text>,
        metadata -> Text,
        started_at -> BigInt,
        ended_at -> Nullable<BigInt>,
        attempt -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        webhook_url -> Nullable<Text>,
        webhook_secrets -> Nullable<Text>,
        usage -> Nullable<Text>,
        respond_by -> Nullable<BigInt>,
        output_batches -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> BigInt,
        webhook_id -> Text,
        task_id -> BigInt,
        turn_id -> BigInt,
        event_type -> Text,
        url -> Text,
        secrets -> Text,
        payload -> Text,
        status -> Text,
        attempts -> BigInt,
        round_start -> BigInt,
        next_attempt_at -> Nullable<BigInt>,
        claimed_until -> Nullable<BigInt>,
        created_at -> BigInt,
        headers -> Nullable<Text>,
    }
}

diesel::table! {
    push_configs (task_id, config_id) {
        task_id -> BigInt,
        config_id -> Text,
        url -> Text,
        token -> Nullable<Text>,
        auth_scheme -> Nullable<Text>,
        auth_credentials -> Nullable<Text>,
        secrets -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_attempts (delivery_id, attempt) {
        delivery_id -> BigInt,
        attempt -> BigInt,
        started_at -> BigInt,
        status_code -> Nullable<BigInt>,
        latency_ms -> BigInt,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    idempotency_keys (agent_id, idempotency_key) {
        agent_id -> BigInt,
        idempotency_key -> Text,
        request_hash -> Text,
        turn_id -> Nullable<BigInt>,
        response -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        task_id -> BigInt,
        turn_id -> BigInt,
        role -> Text,
        content -> Text,
        streaming_status -> Nullable<Text>,
        created_at -> BigInt,
        metadata -> Text,
    }
}

diesel::joinable!(api_keys -> agents (agent_id));
diesel::joinable!(tasks -> agents (agent_id));
diesel::joinable!(turns -> tasks (task_id));
diesel::joinable!(messages -> tasks (task_id));
diesel::joinable!(events -> tasks (task_id));
diesel::joinable!(files -> tasks (task_id));
diesel::joinable!(queued_messages -> tasks (task_id));
diesel::table! {
    queued_messages (id) {
        id -> BigInt,
        task_id -> BigInt,
        mode -> Text,
        status -> Text,
        steer_turn_id -> Nullable<BigInt>,
        content -> Text,
        message_metadata -> Text,
        metadata -> Text,
        webhook_url -> Nullable<Text>,
        webhook_secrets -> Nullable<Text>,
        created_at -> BigInt,
        turn_id -> Nullable<BigInt>,
        message_id -> Nullable<BigInt>,
        ended_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    files (id) {
        id -> BigInt,
        task_id -> BigInt,
        filename -> Text,
        media_type -> Text,
        size_bytes -> BigInt,
        sha256 -> Text,
        data -> Binary,
        created_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    files,
    agents,
    api_keys,
    tasks,
    turns,
    messages,
    events,
    idempotency_keys,
    webhook_deliveries,
    webhook_attempts,
    queued_messages,
    push_configs
);
