//! The query, path and header parameters of the routes, as their handlers read them
//! and as the OpenAPI document describes them.

use utoipa::{IntoParams, ToSchema};

/// `{task_id}` in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TaskIdParam {
    /// The task's id, as `POST /v1/chat/tasks` answered it.
    #[param(minimum = 1, example = 1)]
    pub task_id: i64,
}

/// A queued message's id in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QueuedIdParam {
    /// The `queued_message_id` the `202` named.
    #[param(minimum = 1, example = 1)]
    pub queued_message_id: i64,
}

/// The `Idempotency-Key` header.
#[derive(Debug, IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
pub struct IdempotencyKey(
    /// 1 to 255 visible ASCII characters (a UUID is a good key). A retry with the same
    /// key and the same request gets the first answer again (`Idempotent-Replayed:
    /// true`); with a different request, `422 idempotency_key_reused`. Kept 24 hours.
    #[param(
        min_length = 1,
        max_length = 255,
        example = "7b1f6c2e-8d4a-4c53-9a57-1f0e2d3c4b5a"
    )]
    pub Option<String>,
);

/// `?wait=` on a task read.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParam {
    /// Seconds to wait for the task to leave `running` (more than 60 waits 60), or
    /// `true` to wait the most (60), `false` not at all. Absent: answer at once.
    #[param(schema_with = wait_schema, example = 30)]
    pub wait: Option<String>,
}

/// `wait`'s values: whole seconds, or a yes or no.
fn wait_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::ObjectBuilder;
    use utoipa::openapi::schema::{OneOfBuilder, Schema, Type};
    let seconds = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(0));
    let flag = ObjectBuilder::new().schema_type(Type::Boolean);
    Schema::OneOf(OneOfBuilder::new().item(seconds).item(flag).build())
}

/// `?limit=&cursor=` on a listing.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page (default 20).
    #[param(minimum = 1, maximum = 100, example = 20)]
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`, as given.
    pub cursor: Option<String>,
}

/// `?status=` on the task listing.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskStatusParam {
    /// Only the tasks whose latest turn has this status (absent: every task).
    pub status: Option<baton_domain::TaskStatus>,
}

/// Where an event stream starts and when it ends.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Start after this event id (0: from the start). `Last-Event-ID` wins when both are sent.
    #[param(minimum = 0, example = 0)]
    pub after: Option<i64>,
    /// `final`: close the stream after the turn's last event (`final`, `failed`, `cancelled` or `requires_action`).
    #[param(inline)]
    pub until: Option<StreamUntil>,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum StreamUntil {
    Final,
}

/// The `Last-Event-ID` header of a reconnecting event stream.
#[derive(Debug, IntoParams)]
#[into_params(names("Last-Event-ID"), parameter_in = Header)]
pub struct LastEventId(
    /// The id of the last event received: the stream resumes right after it.
    #[param(pattern = "^[0-9]+$", example = "12")]
    pub Option<String>,
);
