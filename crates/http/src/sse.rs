//! `GET /v1/chat/tasks/{task_id}/stream`: the task's event log as Server-Sent Events.
//! Everything after the client's cursor is replayed from the log, then the stream
//! follows the log live. Live events are read from the same log after the last
//! sequence number sent, so there is no gap and no duplicate at the seam, and it works
//! whichever instance writes the events. A change is read from the store once for
//! all the task's streams in this process (`TaskService::stream_events`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use baton_domain::{EventKind, Principal, SharedEvent, TaskEvent, TaskId, TaskService, TaskWatch};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::error::ApiError;

/// Events read from the store per query.
const PAGE: u32 = 256;

/// How a stream behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseOptions {
    /// A comment line this often keeps proxies from cutting the stream (some cut
    /// idle streams at about 16 s); one ticker per period serves every stream.
    pub heartbeat: Duration,
    /// The reconnection delay suggested to clients (`retry:`).
    pub retry: Duration,
}

impl Default for SseOptions {
    fn default() -> Self {
        SseOptions {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    after: Option<String>,
    until: Option<String>,
}

/// Where the client's cursor is: `Last-Event-ID` (a reconnect) wins over `?after=`.
pub fn cursor(req: &HttpRequest) -> Result<(i64, bool), ApiError> {
    let query = crate::extract::query::<StreamQuery>(req)?;
    // A parameter given empty is given wrong, not absent (found by schemathesis).
    let until_final = match query.until.as_deref() {
        None => false,
        Some("final") => true,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "until",
                "the only value is \"final\"",
            ));
        }
    };
    let parse = |raw: &str, field: &str| {
        raw.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::invalid_field(field, "must be an event id: a whole number, 0 or more")
            })
    };
    // One rule for the header and the parameter: present means it must be an event
    // id. (A browser's EventSource never sends an empty one.)
    // (A value that is not text reads as empty, which is refused like any.)
    let header = req
        .headers()
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or_default());
    let after = match (header, query.after.as_deref()) {
        (Some(id), _) => parse(id, "Last-Event-ID")?,
        (None, Some(after)) => parse(after, "after")?,
        (None, None) => 0,
    };
    Ok((after, until_final))
}

/// The `event:` name of a log entry on the stream. Two differ from the log's own
/// kinds, so that a browser's `EventSource` cannot mistake them: an event named
/// `message` is what `onmessage` receives (events without a name are `message`s), and
/// one named `error` arrives with the connection's own errors at `onerror`. On the
/// stream a complete message is `message_completed` and a failed turn `failed`.
pub fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Message => "message_completed",
        EventKind::Error => "failed",
        EventKind::TurnStarted
        | EventKind::TextDelta
        | EventKind::Final
        | EventKind::Cancelled
        | EventKind::RequiresAction
        | EventKind::MessageDelivered => kind.as_str(),
    }
}

fn frame(event: &TaskEvent) -> Vec<u8> {
    let mut data = event.data.clone();
    if let Value::Object(object) = &mut data {
        object.insert("seq".to_owned(), json!(event.seq));
        object.insert("task_id".to_owned(), json!(event.task_id));
        object.insert("created_at".to_owned(), json!(event.created_at));
    }
    format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        event.seq,
        event_name(event.kind)
    )
    .into_bytes()
}

/// The process's heartbeat ticker for `period`, one for all the streams that use it:
/// a thread that sleeps and ticks, so an idle stream keeps no timer of its own and a
/// tick wakes every stream at once. A heartbeat is a comment, sent whether or not the
/// stream just carried events.
fn heartbeats(period: Duration) -> watch::Receiver<u64> {
    static TICKERS: OnceLock<Mutex<HashMap<Duration, watch::Receiver<u64>>>> = OnceLock::new();
    let mut tickers = TICKERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let ticks = tickers.entry(period).or_insert_with(|| {
        let (sender, ticks) = watch::channel(0_u64);
        let started = std::thread::Builder::new()
            .name("baton-sse-heartbeat".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(period);
                    sender.send_modify(|tick| *tick = tick.wrapping_add(1));
                }
            });
        if let Err(err) = started {
            tracing::warn!(error = %err, "could not start the stream heartbeat ticker; streams go without heartbeats");
        }
        ticks
    });
    let mut mine = ticks.clone();
    mine.mark_unchanged();
    mine
}

/// The cursor points before what the log still keeps: say so instead of skipping.
fn reset_frame(after: i64, first_kept: i64) -> Bytes {
    let data = json!({"missed_after": after, "first_kept": first_kept});
    Bytes::from(format!(
        "id: {}\nevent: reset\ndata: {data}\n\n",
        first_kept - 1
    ))
}

/// How a stream writes the task's events: baton's own frames, or another protocol's
/// (the A2A binding's).
pub trait Framer: Send + 'static {
    /// The frames of one event (none for an event the protocol does not show), and
    /// whether the stream ends after it.
    fn frame(&mut self, event: &SharedEvent) -> (Vec<Bytes>, bool);
}

/// baton's own frames: each event as itself, framed once for all the task's streams.
struct BatonFrames {
    until_final: bool,
}

impl Framer for BatonFrames {
    fn frame(&mut self, shared: &SharedEvent) -> (Vec<Bytes>, bool) {
        let bytes = Bytes::from_owner(shared.wire(frame));
        (
            vec![bytes],
            self.until_final && shared.event.kind.ends_turn(),
        )
    }
}

struct SseStream {
    tasks: TaskService,
    who: Principal,
    cursor: i64,
    framer: Box<dyn Framer>,
    watch: TaskWatch,
    /// The process's shared ticker for this stream's heartbeat period.
    heartbeat: watch::Receiver<u64>,
    ticking: bool,
    /// The log was read to its end: wait for a change before reading again.
    waiting: bool,
    pending: VecDeque<Bytes>,
    done: bool,
    closing: tokio_util::sync::CancellationToken,
    _open: OpenStream,
}

/// Counts a stream in the open-streams gauge for as long as it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::gauge!(baton_domain::telemetry::STREAMS_OPEN).increment(1.0);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(baton_domain::telemetry::STREAMS_OPEN).decrement(1.0);
    }
}

impl SseStream {
    /// The next bytes to send, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            if self.done {
                return None;
            }
            if self.waiting {
                // Nothing new was found: only a change (or the stop) is worth a read;
                // a heartbeat is sent without one.
                tokio::select! {
                    _ = self.watch.changed() => self.waiting = false,
                    ticked = self.heartbeat.changed(), if self.ticking => match ticked {
                        Ok(()) => self.pending.push_back(Bytes::from_static(b": keep-alive\n\n")),
                        // The ticker is gone (it could not start): no heartbeats.
                        Err(_) => self.ticking = false,
                    },
                    _ = self.closing.cancelled() => self.waiting = false,
                }
                continue;
            }
            let page = match self
                .tasks
                .stream_events(&self.who, &self.watch, self.cursor, PAGE)
                .await
            {
                Ok(page) => page,
                // The task vanished or the store failed: end the stream; the client
                // reconnects with its Last-Event-ID and is told what happened.
                Err(_) => return None,
            };
            if self.cursor < page.first_kept - 1 {
                self.pending
                    .push_back(reset_frame(self.cursor, page.first_kept));
                self.cursor = page.first_kept - 1;
                continue;
            }
            if !page.events.is_empty() {
                for shared in &page.events {
                    let (frames, ends) = self.framer.frame(shared);
                    self.pending.extend(frames);
                    self.cursor = shared.event.seq;
                    if ends {
                        self.done = true;
                        break;
                    }
                }
                continue;
            }
            // The server is stopping and the log is read to its end: a last comment,
            // then the end. The client reconnects (to another instance) with its
            // Last-Event-ID. A change announced before the close that this stream has
            // not read yet (it woke to the close) is read first: a turn ended by the
            // stop reaches its streams.
            if self.closing.is_cancelled() {
                if self.watch.catch_up() {
                    continue;
                }
                self.pending.push_back(Bytes::from_static(
                    b": server shutting down; reconnect with Last-Event-ID\n\n",
                ));
                self.done = true;
                continue;
            }
            self.waiting = true;
        }
    }
}

/// Answers the stream request. Everything that can refuse it (auth, ownership, a bad
/// cursor) is decided before the first byte is sent.
pub async fn stream(
    tasks: TaskService,
    who: Principal,
    task: TaskId,
    after: i64,
    until_final: bool,
    options: SseOptions,
    closing: tokio_util::sync::CancellationToken,
) -> Result<HttpResponse, ApiError> {
    // Watch before the first read, so nothing written in between is missed.
    let watch = tasks.watch(task);
    check(&tasks, &who, task, after).await?;
    let follow = Follow {
        after,
        watch,
        first: Vec::new(),
    };
    Ok(follow_with(
        tasks,
        who,
        follow,
        Box::new(BatonFrames { until_final }),
        options,
        closing,
    ))
}

/// What a stream follows: the log after `after` of the task `watch` watches (made
/// before whatever the caller read, so nothing written since is missed), with `first`
/// sent before the log.
pub struct Follow {
    pub after: i64,
    pub watch: TaskWatch,
    pub first: Vec<Bytes>,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("task", &self.watch.task())
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// Streams the task's log as `framer` writes it (the caller checked that `who` may
/// read it).
pub fn follow_with(
    tasks: TaskService,
    who: Principal,
    follow: Follow,
    framer: Box<dyn Framer>,
    options: SseOptions,
    closing: tokio_util::sync::CancellationToken,
) -> HttpResponse {
    let heartbeat = heartbeats(options.heartbeat);
    let mut pending = VecDeque::from([Bytes::from(format!(
        "retry: {}\n\n",
        options.retry.as_millis()
    ))]);
    pending.extend(follow.first);
    let state = SseStream {
        tasks,
        who,
        cursor: follow.after,
        framer,
        watch: follow.watch,
        heartbeat,
        ticking: true,
        waiting: false,
        pending,
        done: false,
        closing,
        _open: OpenStream::new(),
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        state
            .next()
            .await
            .map(|bytes| (Ok::<_, actix_web::Error>(bytes), state))
    });
    answer().streaming(body)
}

/// Answers a `HEAD` of the stream: what a `GET` would be refused for is checked, and
/// no stream is opened.
pub async fn head(
    tasks: &TaskService,
    who: &Principal,
    task: TaskId,
    after: i64,
) -> Result<HttpResponse, ApiError> {
    check(tasks, who, task, after).await?;
    Ok(answer().finish())
}

/// What refuses a stream before its first byte: the task is not the caller's (a read
/// of nothing from the log asks the store, as the stream's own reads will).
async fn check(
    tasks: &TaskService,
    who: &Principal,
    task: TaskId,
    after: i64,
) -> Result<(), ApiError> {
    tasks.events(who, task, after, 0).await?;
    Ok(())
}

/// A stream of just these frames (the whole answer is known already).
pub fn frames_only(frames: Vec<Bytes>) -> HttpResponse {
    let body = futures_util::stream::iter(frames.into_iter().map(Ok::<_, actix_web::Error>));
    answer().streaming(body)
}

/// The stream's answer before its body, for `GET` and `HEAD` alike.
fn answer() -> actix_web::HttpResponseBuilder {
    let mut answer = HttpResponse::Ok();
    answer
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"));
    answer
}

/// The stream's events as the OpenAPI document describes them: each event's `data` is
/// JSON whose shape depends on its `event` name. These types are never built; they
/// describe what `frame` and `reset_frame` write (the fuzzing in CI checks every event
/// it reads against them).
pub mod schema {
    use baton_domain::{EventKind, Message, Turn, TurnError, TurnStatus};
    use chrono::{DateTime, Utc};
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::openapi::{Ref, RefOr};
    use utoipa::{PartialSchema, ToSchema};

    /// In every event's data but `reset`'s.
    #[derive(Debug, ToSchema)]
    pub struct EventFields {
        /// The event's place in the task's log; also its `id`.
        pub seq: i64,
        pub task_id: i64,
        pub turn_id: i64,
        pub created_at: DateTime<Utc>,
    }

    /// `turn_started`: a turn began (again, with `turn.attempt` > 1, after a retry).
    #[derive(Debug, ToSchema)]
    pub struct TurnStartedData {
        #[serde(flatten)]
        pub fields: EventFields,
        pub turn: Turn,
        /// The message that started the turn.
        pub input: Message,
        /// The queued message that started the turn, if one did (`on_busy: enqueue`).
        pub queued_message_id: Option<i64>,
    }

    /// `message_delivered`: a message steered into the running turn (`on_busy:
    /// steer`) was taken by its runner and is now part of the turn's history.
    #[derive(Debug, ToSchema)]
    pub struct MessageDeliveredData {
        #[serde(flatten)]
        pub fields: EventFields,
        pub queued_message_id: i64,
        pub message: Message,
    }

    /// `text_delta`: more text of the message being streamed.
    #[derive(Debug, ToSchema)]
    pub struct TextDeltaData {
        #[serde(flatten)]
        pub fields: EventFields,
        pub message_id: i64,
        pub delta: String,
    }

    /// `message_completed`: an agent message is complete.
    #[derive(Debug, ToSchema)]
    pub struct MessageData {
        #[serde(flatten)]
        pub fields: EventFields,
        pub message: Message,
    }

    /// `final`, `failed`, `cancelled` or `requires_action`: the turn ended (or, with
    /// `requires_action`, waits for the client's tool answers; `output` holds the
    /// `tool_request` messages).
    #[derive(Debug, ToSchema)]
    pub struct TurnEndedData {
        #[serde(flatten)]
        pub fields: EventFields,
        pub turn: Turn,
        pub status: TurnStatus,
        /// The agent's messages of this turn.
        pub output: Vec<Message>,
        /// With `failed`: why the turn failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<TurnError>,
    }

    /// `reset`: the cursor pointed before the oldest event the log keeps; the stream
    /// goes on from `first_kept` (read the task and its messages to catch up).
    #[derive(Debug, ToSchema)]
    pub struct ResetData {
        pub missed_after: i64,
        pub first_kept: i64,
    }

    /// One event of the stream: `event` names it, `data` is JSON of that event's shape.
    #[derive(Debug)]
    pub struct StreamEvent;

    impl PartialSchema for StreamEvent {
        fn schema() -> RefOr<Schema> {
            // One variant per event name, each with its data's schema.
            let data_of = |kind: EventKind| match kind {
                EventKind::TurnStarted => TurnStartedData::name(),
                EventKind::TextDelta => TextDeltaData::name(),
                EventKind::Message => MessageData::name(),
                EventKind::MessageDelivered => MessageDeliveredData::name(),
                EventKind::Final
                | EventKind::Error
                | EventKind::Cancelled
                | EventKind::RequiresAction => TurnEndedData::name(),
            };
            let events = EventKind::ALL
                .iter()
                .map(|kind| (super::event_name(*kind), data_of(*kind)))
                .chain([("reset", ResetData::name())]);
            let mut one_of = OneOfBuilder::new().description(Some(
                "An event as Server-Sent Events carry it: `id` is its `seq`, `data` is JSON.",
            ));
            for (name, data) in events {
                let event = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([name]));
                let mut payload = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json")
                    .build();
                payload.content_schema = Some(Box::new(Ref::from_schema_name(data).into()));
                let id = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]+$"));
                one_of = one_of.item(
                    ObjectBuilder::new()
                        .title(Some(name))
                        .property("event", event)
                        .property("data", payload)
                        .property("id", id)
                        .required("event")
                        .required("data")
                        .required("id"),
                );
            }
            RefOr::T(Schema::OneOf(one_of.build()))
        }
    }

    impl ToSchema for StreamEvent {
        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            fn add<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                schemas.push((T::name().into_owned(), T::schema()));
                T::schemas(schemas);
            }
            add::<EventFields>(schemas);
            add::<TurnStartedData>(schemas);
            add::<TextDeltaData>(schemas);
            add::<MessageData>(schemas);
            add::<MessageDeliveredData>(schemas);
            add::<TurnEndedData>(schemas);
            add::<ResetData>(schemas);
        }
    }
}
