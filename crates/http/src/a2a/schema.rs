//! What the OpenAPI document shows of A2A's messages and stream events: the usual
//! shapes, for readers, generated clients and the fuzzer (the binding itself reads
//! any A2A message, see `parts`).

/// What the document shows of A2A's `SendMessageRequest`: its usual shape (any A2A
/// message is taken, docs/a2a.md), so that readers and fuzzers see one that works.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = A2aSendMessageRequest)]
pub struct SendMessageBody {
    pub message: MessageBody,
    pub configuration: Option<ConfigurationBody>,
}

#[derive(Debug, utoipa::ToSchema)]
#[schema(as = A2aMessage, rename_all = "camelCase")]
pub struct MessageBody {
    /// The client's id for the message: sent again, the message is not taken twice.
    #[schema(min_length = 1, max_length = 64)]
    pub message_id: String,
    /// `ROLE_USER`.
    #[schema(pattern = "^ROLE_USER$")]
    pub role: String,
    #[schema(min_items = 1, max_items = 4)]
    pub parts: Vec<TextPartBody>,
}

#[derive(Debug, utoipa::ToSchema)]
#[schema(as = A2aTextPart)]
pub struct TextPartBody {
    #[schema(max_length = 1000)]
    pub text: String,
}

#[derive(Debug, utoipa::ToSchema)]
#[schema(as = A2aSendConfiguration, rename_all = "camelCase")]
pub struct ConfigurationBody {
    /// Answer at once, with the task working.
    pub return_immediately: Option<bool>,
    #[schema(minimum = 0, maximum = 100)]
    pub history_length: Option<i64>,
}

/// What the document shows of A2A's `TaskPushNotificationConfig`.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = A2aPushConfig)]
pub struct PushConfigBody {
    /// The config's id (the task's id when absent).
    #[schema(min_length = 1, max_length = 128)]
    pub id: Option<String>,
    /// Where pushes go: `https`, not an internal address.
    #[schema(format = "uri")]
    pub url: String,
    /// Sent as `X-A2A-Notification-Token`.
    #[schema(max_length = 1024)]
    pub token: Option<String>,
}

/// The OpenAPI schema of one event of an A2A stream: `data` is JSON (a JSON-RPC
/// response on the JSON-RPC binding, a `StreamResponse` on the HTTP+JSON binding),
/// `id` baton's event id where the event has one.
#[derive(Debug)]
pub struct A2aStreamEvent;

impl utoipa::PartialSchema for A2aStreamEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .description(Some("A JSON-RPC response (JSON-RPC binding) or an A2A `StreamResponse` (HTTP+JSON binding)."));
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]+$"))
            .description(Some(
                "baton's event id: resume after it with `Last-Event-ID`.",
            ));
        let event = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["message"]));
        ObjectBuilder::new()
            .description(Some("An event as Server-Sent Events carry it."))
            .property("data", data)
            .property("id", id)
            .property("event", event)
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for A2aStreamEvent {}
