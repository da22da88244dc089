//! The storage contract, written once against the ports and run unchanged against
//! every adapter: in memory, SQLite (a file per test) and PostgreSQL (a database per
//! test, cloned from a migrated template on a throwaway cluster). A new adapter is
//! done when it passes this suite.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::any::Any;
use std::sync::Arc;

use baton_domain::webhooks::{AttemptResult, NextStep};
use baton_domain::*;
use baton_persistence::{SqlStore, StoreOptions};
use baton_test_support::TestDatabase;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

/// A store under test and whatever must outlive it (a temp dir, a database).
struct Fixture<S> {
    store: Arc<S>,
    _keep: Box<dyn Any + Send>,
}

async fn memory() -> Fixture<SqlStore> {
    Fixture {
        store: Arc::new(SqlStore::in_memory().unwrap()),
        _keep: Box::new(()),
    }
}

async fn sqlite() -> Fixture<SqlStore> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let (store, applied) = SqlStore::open(&url, StoreOptions::default()).await.unwrap();
    assert!(!applied.is_empty());
    Fixture {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

async fn postgres() -> Fixture<SqlStore> {
    let db = tokio::task::spawn_blocking(TestDatabase::new)
        .await
        .unwrap();
    let (store, applied) = SqlStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    assert!(
        applied.is_empty(),
        "the template database is already migrated"
    );
    assert_eq!(store.backend(), "postgres");
    Fixture {
        store: Arc::new(store),
        _keep: Box::new(db),
    }
}

/// Expands every case into one test per adapter, named `<adapter>::<case>`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod in_memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = super::memory().await;
                super::$case(fixture.store.clone()).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = super::sqlite().await;
                super::$case(fixture.store.clone()).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = super::postgres().await;
                super::$case(fixture.store.clone()).await;
            })*
        }
    };
}

conformance!(
    created_task_is_running_with_its_message_and_exact_utc_timestamps,
    append_while_running_is_busy_naming_the_turn_and_stores_nothing,
    finished_turn_frees_the_task_and_late_output_is_discarded,
    fifty_concurrent_claims_on_one_idle_task_have_exactly_one_winner,
    claims_on_different_tasks_do_not_block_each_other,
    another_agents_task_is_not_found_everywhere,
    tasks_page_newest_first_with_exact_edges,
    tasks_filtered_by_status_go_by_their_latest_turn,
    messages_page_oldest_first_in_the_order_they_were_written,
    every_content_type_and_metadata_round_trip_unchanged,
    load_turn_input_is_the_whole_history_in_order,
    leases_are_renewed_only_by_their_holder_and_then_expire,
    an_expired_turn_is_ended_once_by_a_sweep_and_never_by_its_old_holder,
    a_taken_over_turn_starts_again_without_the_interrupted_output,
    a_superseded_attempt_never_writes_even_under_the_same_holder,
    a_batch_written_again_is_recorded_once,
    a_turns_last_output_is_stored_with_its_end,
    many_expired_turns_are_taken_over_or_ended_in_one_call,
    released_leases_expire_at_once_and_nobody_holds_them,
    cancel_ends_a_running_turn_keeping_its_partial_text,
    idempotency_keys_replay_refuse_other_requests_and_expire,
    twenty_concurrent_first_uses_of_a_key_start_one_turn,
    a_turns_end_is_queued_for_its_webhook_or_its_agents,
    claims_are_exclusive_until_they_run_out_and_attempts_are_recorded,
    concurrent_claims_take_disjoint_deliveries,
    the_running_turn_limit_per_agent_holds_under_concurrent_claims,
    agents_are_listed_updated_and_their_keys_listed_with_last_use,
    agents_round_trip_and_are_counted,
    keys_are_found_by_hash_conflict_on_reuse_and_revoke_once,
    events_number_from_one_per_task_and_tell_the_whole_turn,
    streamed_text_is_one_message_in_progress_until_closed,
    a_history_page_shows_exactly_the_events_up_to_its_last_event_id,
    output_for_an_ended_turn_is_discarded,
    failed_turn_ends_with_an_error_event,
    events_page_after_a_cursor_and_report_pruning,
    a_turns_usage_is_recorded_with_its_end,
    a_turn_waiting_for_tool_answers_takes_them_one_by_one_then_the_next_turn_starts,
    unanswered_tool_calls_are_overdue_at_their_deadline_and_end_once,
    attachments_are_kept_apart_and_shown_by_id,
    enqueued_messages_start_their_turns_in_order_as_turns_end,
    a_turn_waiting_for_tool_answers_keeps_the_queue_until_it_ends,
    interrupt_cancels_the_running_turn_and_starts_its_own_in_one_step,
    steered_messages_are_delivered_into_the_turn_or_queued_when_it_ends,
    queued_messages_can_be_cancelled_until_they_start,
    a_full_queue_refuses_and_stores_nothing,
    a_queue_left_by_a_stopping_instance_is_started_by_a_sweep,
    a_queued_append_replays_its_first_answer,
    fifty_concurrent_enqueues_are_stored_once_and_start_in_order,
    a_queued_messages_turn_keeps_its_requests_webhook,
    an_interrupt_racing_the_turns_own_end_never_deadlocks,
    push_configs_are_bounded_per_task_and_pushed_at_each_turns_end,
    tasks_by_update_come_latest_change_first_ties_newest_first,
);

#[path = "conformance/push.rs"]
mod push;
use push::*;
#[path = "conformance/queue.rs"]
mod queue;
use queue::*;

trait Store: TaskStore + AgentStore {}
impl<S: TaskStore + AgentStore> Store for S {}

fn at(secs: i64) -> DateTime<Utc> {
    // Microseconds matter: every store must keep them.
    Utc.timestamp_opt(1_700_000_000 + secs, 123_456_000)
        .single()
        .unwrap()
}

async fn agent(store: &impl Store, name: &str) -> Agent {
    store
        .create_agent(NewAgent {
            card: None,
            name: name.into(),
            runner: RunnerSpec {
                kind: "echo".into(),
                config: json!({"delay_ms": 5, "nested": {"a": [1, 2]}}),
            },
            policy: TurnPolicy {
                on_busy: OnBusy::Reject,
                on_interrupt: OnInterrupt::Retry,
                max_attempts: 4,
                turn_timeout_ms: 1500,
            },
            webhook: None,
            created_at: at(0),
        })
        .await
        .unwrap()
}

/// The instance that claims every turn in these tests.
const HOLDER: &str = "instance-a";

/// The first attempt's play under [`HOLDER`]'s lease.
fn holder() -> Holder {
    Holder {
        owner: HOLDER.into(),
        attempt: 1,
    }
}

/// The lease every claim here starts under.
fn lease() -> Lease {
    Lease {
        owner: HOLDER.into(),
        expires_at: at(60),
    }
}

/// The accepted answer of a claim that must have started a turn.
fn started(claim: Claim) -> Accepted {
    match claim {
        Claim::Started(accepted) => accepted,
        Claim::Replayed(accepted) => panic!("expected a new turn, got a replay of {accepted:?}"),
    }
}

fn user(text: &str) -> NewMessage {
    NewMessage {
        role: Role::User,
        content: Content::text(text),
        metadata: Default::default(),
    }
}

async fn new_task(store: &impl Store, agent: AgentId, text: &str) -> Accepted {
    started(create(store, agent, text, None).await.unwrap())
}

async fn create(
    store: &impl Store,
    agent: AgentId,
    text: &str,
    idempotency: Option<IdempotencyRecord>,
) -> Result<Claim, ClaimError> {
    store
        .create_task(NewTask {
            push: None,
            agent_id: agent,
            message: user(text),
            metadata: json!({"k": "v"}).as_object().cloned().unwrap(),
            now: at(1),
            lease: lease(),
            idempotency,
            webhook: None,
            max_running_per_agent: None,
        })
        .await
}

fn append(agent: AgentId, task: TaskId, text: &str) -> NewAppend {
    NewAppend {
        push: None,
        max_queued: 100,
        on_busy: OnBusy::Reject,
        agent_id: agent,
        task_id: task,
        message: user(text),
        metadata: json!({"turn": text}).as_object().cloned().unwrap(),
        now: at(2),
        lease: lease(),
        idempotency: None,
        webhook: None,
        max_running_per_agent: None,
    }
}

async fn finish(
    store: &impl Store,
    accepted: &Accepted,
    outcome: TurnOutcome,
    replies: Vec<Content>,
) -> bool {
    store
        .finish_turn(FinishTurn {
            next: None,
            task_id: accepted.task_id,
            turn_id: accepted.turn_id.unwrap(),
            outcome,
            output: replies.into_iter().map(OutputOp::Message).collect(),
            usage: None,
            guard: LeaseGuard::Holder(holder()),
            now: at(3),
        })
        .await
        .unwrap()
        .is_some()
}

async fn history(store: &impl Store, agent: AgentId, task: TaskId) -> Vec<Message> {
    store
        .list_messages(
            agent,
            task,
            PageRequest {
                limit: 100,
                after: None,
            },
        )
        .await
        .unwrap()
        .unwrap()
        .page
        .items
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.content.as_text().unwrap_or("<not text>").to_owned())
        .collect()
}

async fn created_task_is_running_with_its_message_and_exact_utc_timestamps(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let accepted = new_task(&*store, a.id, "hello").await;
    assert_eq!(accepted.accepted_at, at(1));
    assert_eq!(accepted.agent_id, a.id);
    assert_eq!(accepted.metadata["k"], "v");

    let view = store
        .get_task(a.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status(), TaskStatus::Running);
    assert_eq!(view.latest_turn.id, accepted.turn_id.unwrap());
    assert_eq!(view.latest_turn.status, TurnStatus::Running);
    assert_eq!(view.latest_turn.started_at, at(1));
    assert_eq!(view.latest_turn.ended_at, None);
    assert_eq!(view.task.created_at, at(1));
    assert_eq!(view.task.updated_at, at(1));
    assert_eq!(view.task.metadata["k"], "v");
    assert_eq!(view.latest_turn.metadata["k"], "v");
    assert_eq!(view.task.input, Content::text("hello"));
    assert!(view.latest_agent_message.is_none());

    let messages = history(&*store, a.id, accepted.task_id).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].role, Role::User);
    assert_eq!(messages[0].turn_id, accepted.turn_id.unwrap());
    assert_eq!(messages[0].created_at, at(1));
}

async fn append_while_running_is_busy_naming_the_turn_and_stores_nothing(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let first = new_task(&*store, a.id, "one").await;
    let err = store
        .append_and_claim(append(a.id, first.task_id, "two"))
        .await
        .unwrap_err();
    let ClaimError::TaskBusy(active) = err else {
        panic!("expected busy, got {err:?}");
    };
    assert_eq!(active.turn_id, first.turn_id.unwrap());
    assert_eq!(active.started_at, at(1));
    assert_eq!(texts(&history(&*store, a.id, first.task_id).await), ["one"]);
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(
        view.task.input,
        Content::text("one"),
        "the refused message changed nothing"
    );
}

/// A file sent by reference.
fn by_reference() -> content::Attachment {
    content::Attachment {
        filename: "chart.png".into(),
        media_type: "image/png".into(),
        data: None,
        url: Some("https://files.example/chart.png".into()),
        file_id: None,
        size_bytes: None,
        sha256: None,
    }
}

async fn attachments_are_kept_apart_and_shown_by_id(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let other = agent(&*store, "b").await;
    let attached = Content::Text(content::TextContent {
        format: TextFormat::Plain,
        content: "see the file".into(),
        attachments: vec![
            content::Attachment {
                filename: "notes.txt".into(),
                media_type: "text/plain".into(),
                data: Some("aGVsbG8gZmlsZQ==".into()), // "hello file"
                url: None,
                file_id: None,
                size_bytes: None,
                sha256: None,
            },
            by_reference(),
        ],
    });
    let accepted = store
        .create_task(NewTask {
            push: None,
            agent_id: a.id,
            message: NewMessage {
                role: Role::User,
                content: attached,
                metadata: Default::default(),
            },
            metadata: Metadata::new(),
            now: at(1),
            lease: lease(),
            idempotency: None,
            webhook: None,
            max_running_per_agent: None,
        })
        .await
        .map(started)
        .unwrap();
    let stored = history(&*store, a.id, accepted.task_id).await;
    let shown = &stored[0].content.attachments()[0];
    let file_id = shown.file_id.expect("a stored attachment has an id");
    assert_eq!(shown.data, None, "the bytes are not in the message");
    assert_eq!(shown.size_bytes, Some(10));
    assert_eq!(
        shown.sha256.as_deref(),
        Some("f3877e8a3d98f809d9f844060fbea2864a4b66980a22ff22297014d0c168db2e")
    );
    let view = store
        .get_task(a.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.task.input.attachments()[0].file_id, Some(file_id));
    assert_eq!(view.task.input.attachments()[0].data, None);
    // A file sent by its URL is kept as it was sent: no bytes, no file.
    assert_eq!(stored[0].content.attachments()[1], by_reference());

    let file = store
        .get_file(a.id, accepted.task_id, file_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(file.data, b"hello file");
    assert_eq!(
        (file.filename.as_str(), file.media_type.as_str()),
        ("notes.txt", "text/plain")
    );
    // The turn is played with the stored file's bytes at hand (the other is a link).
    let loaded = store
        .load_turn_input(accepted.task_id, accepted.turn_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.files, vec![file.clone()]);
    assert_eq!(
        store
            .get_file(other.id, accepted.task_id, file_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_file(a.id, accepted.task_id, file_id + 1)
            .await
            .unwrap(),
        None
    );
}

fn tool_request(id: &str) -> Content {
    Content::ToolRequest(content::ToolRequestContent {
        tool_call_id: id.into(),
        name: "weather".into(),
        arguments: json!({"city": id}).as_object().cloned().unwrap(),
    })
}

fn tool_answer(agent: AgentId, task: TaskId, id: &str) -> NewAppend {
    NewAppend {
        push: None,
        message: NewMessage {
            role: Role::Tool,
            content: Content::ToolResponse(content::ToolResponseContent {
                tool_call_id: id.into(),
                name: "weather".into(),
                content: json!({"celsius": 4}),
                is_error: None,
            }),
            metadata: Default::default(),
        },
        ..append(agent, task, "unused")
    }
}

/// Ends `accepted`'s turn asking for tools `ids`, answers due by `due`.
async fn ask_for_tools(store: &impl Store, accepted: &Accepted, ids: &[&str], due: DateTime<Utc>) {
    let ended = store
        .finish_turn(FinishTurn {
            next: None,
            task_id: accepted.task_id,
            turn_id: accepted.turn_id.unwrap(),
            outcome: TurnOutcome::RequiresAction { respond_by: due },
            output: ids
                .iter()
                .map(|id| OutputOp::Message(tool_request(id)))
                .collect(),
            usage: None,
            guard: LeaseGuard::Holder(holder()),
            now: at(3),
        })
        .await
        .unwrap()
        .is_some();
    assert!(ended);
}

fn invalid_field(err: ClaimError) -> String {
    match err {
        ClaimError::Invalid(errors) => errors[0].field.clone(),
        other => panic!("expected an invalid message, got {other:?}"),
    }
}

async fn a_turn_waiting_for_tool_answers_takes_them_one_by_one_then_the_next_turn_starts(
    store: Arc<impl Store>,
) {
    let a = agent(&*store, "a").await;
    let first = new_task(&*store, a.id, "weather in Oslo and Rome?").await;
    let task = first.task_id;
    ask_for_tools(&*store, &first, &["c1", "c2"], at(100)).await;
    let view = store.get_task(a.id, task).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::RequiresAction);
    assert_eq!(view.latest_turn.respond_by, Some(at(100)));
    let events = all_events(&*store, a.id, task).await;
    assert_eq!(events.last().unwrap().kind, EventKind::RequiresAction);

    // Anything but an answer to a waiting call is refused and changes nothing.
    let err = store
        .append_and_claim(append(a.id, task, "hello?"))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(err), "message.content.type");
    let err = store
        .append_and_claim(tool_answer(a.id, task, "c9"))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(err), "message.content.tool_call_id");

    // The first answer is kept with the waiting turn; the task still waits.
    let partial = store
        .append_and_claim(tool_answer(a.id, task, "c1"))
        .await
        .map(started)
        .unwrap();
    assert_eq!(partial.status, AcceptedStatus::RequiresAction);
    assert_eq!(partial.turn_id, first.turn_id);
    let err = store
        .append_and_claim(tool_answer(a.id, task, "c1"))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(err), "message.content.tool_call_id");
    assert!(
        store
            .overdue_tool_calls(at(50), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The last answer starts the next turn; the waiting one is done.
    let next = store
        .append_and_claim(tool_answer(a.id, task, "c2"))
        .await
        .map(started)
        .unwrap();
    assert_eq!(next.status, AcceptedStatus::Running);
    assert_ne!(next.turn_id, first.turn_id);
    let view = store.get_task(a.id, task).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Running);
    assert!(
        store
            .overdue_tool_calls(at(500), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let roles: Vec<(Role, &str, TurnId)> = history(&*store, a.id, task)
        .await
        .iter()
        .map(|m| (m.role, m.content.kind(), m.turn_id))
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        roles,
        vec![
            (Role::User, "text", first.turn_id.unwrap()),
            (Role::Assistant, "tool_request", first.turn_id.unwrap()),
            (Role::Assistant, "tool_request", first.turn_id.unwrap()),
            (Role::Tool, "tool_response", first.turn_id.unwrap()),
            (Role::Tool, "tool_response", next.turn_id.unwrap()),
        ]
    );
    // The next turn sees both answers.
    let loaded = store
        .load_turn_input(task, next.turn_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.history.len(), 5);

    // Once no call waits, a tool answer is refused.
    assert!(
        finish(
            &*store,
            &next,
            TurnOutcome::Completed,
            vec![Content::text("4 and 4")]
        )
        .await
    );
    let err = store
        .append_and_claim(tool_answer(a.id, task, "c2"))
        .await
        .unwrap_err();
    assert_eq!(invalid_field(err), "message.content");
}

async fn unanswered_tool_calls_are_overdue_at_their_deadline_and_end_once(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let first = new_task(&*store, a.id, "weather?").await;
    ask_for_tools(&*store, &first, &["c1"], at(10)).await;
    assert!(
        store
            .overdue_tool_calls(at(9), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.overdue_tool_calls(at(10), 10).await.unwrap(),
        vec![(first.task_id, first.turn_id.unwrap())]
    );
    let time_out = |due| FinishTurn {
        next: None,
        task_id: first.task_id,
        turn_id: first.turn_id.unwrap(),
        outcome: TurnOutcome::failed("tool_response_timeout", "late"),
        output: vec![],
        usage: None,
        guard: LeaseGuard::AnswersDueBy(due),
        now: at(11),
    };
    assert!(
        store.finish_turn(time_out(at(9))).await.unwrap().is_none(),
        "not due yet"
    );
    assert!(store.finish_turn(time_out(at(10))).await.unwrap().is_some());
    assert!(
        store.finish_turn(time_out(at(10))).await.unwrap().is_none(),
        "ends once"
    );
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Failed);
    assert_eq!(
        view.latest_turn.error.unwrap().code,
        "tool_response_timeout"
    );
    assert!(
        store
            .overdue_tool_calls(at(99), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A waiting turn can be cancelled by its client.
    let second = store
        .append_and_claim(append(a.id, first.task_id, "again"))
        .await
        .map(started)
        .unwrap();
    ask_for_tools(&*store, &second, &["c2"], at(10)).await;
    let cancel = FinishTurn {
        next: None,
        task_id: first.task_id,
        turn_id: second.turn_id.unwrap(),
        outcome: TurnOutcome::Cancelled,
        output: vec![],
        usage: None,
        guard: LeaseGuard::Anyone,
        now: at(12),
    };
    assert!(store.finish_turn(cancel).await.unwrap().is_some());
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Cancelled);
}

async fn a_turns_usage_is_recorded_with_its_end(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let first = new_task(&*store, a.id, "one").await;
    let used = Usage {
        input_tokens: 12,
        output_tokens: 5,
        total_tokens: 17,
    };
    let ended = store
        .finish_turn(FinishTurn {
            next: None,
            task_id: first.task_id,
            turn_id: first.turn_id.unwrap(),
            outcome: TurnOutcome::Completed,
            output: vec![OutputOp::Message(Content::text("hi"))],
            usage: Some(used),
            guard: LeaseGuard::Holder(holder()),
            now: at(3),
        })
        .await
        .unwrap()
        .is_some();
    assert!(ended);
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(view.latest_turn.usage, Some(used));
    // The turn_ended event carries the turn as ended, usage included.
    let events = all_events(&*store, a.id, first.task_id).await;
    let last = events.last().unwrap();
    assert_eq!(last.data["turn"]["usage"]["total_tokens"], 17);

    // A runner that reports nothing leaves no usage.
    let second = store
        .append_and_claim(append(a.id, first.task_id, "two"))
        .await
        .map(started)
        .unwrap();
    assert!(finish(&*store, &second, TurnOutcome::Completed, vec![]).await);
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(view.latest_turn.usage, None);
}

async fn finished_turn_frees_the_task_and_late_output_is_discarded(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let first = new_task(&*store, a.id, "one").await;
    assert!(
        finish(
            &*store,
            &first,
            TurnOutcome::Completed,
            vec![Content::text("echo: one")]
        )
        .await
    );
    assert!(
        !finish(
            &*store,
            &first,
            TurnOutcome::Completed,
            vec![Content::text("late")]
        )
        .await,
        "an ended turn cannot end again"
    );
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Completed);
    assert_eq!(view.latest_turn.ended_at, Some(at(3)));
    assert_eq!(view.task.updated_at, at(3));
    let reply = view.latest_agent_message.unwrap();
    assert_eq!(
        (reply.role, reply.content),
        (Role::Assistant, Content::text("echo: one"))
    );

    let second = store
        .append_and_claim(append(a.id, first.task_id, "two"))
        .await
        .map(started)
        .unwrap();
    assert_ne!(second.turn_id, first.turn_id);
    assert_eq!(second.metadata["turn"], "two");
    let failed = TurnOutcome::Failed(TurnError {
        code: "boom".into(),
        message: "it broke".into(),
    });
    assert!(finish(&*store, &second, failed, vec![Content::text("partial")]).await);
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Failed);
    assert_eq!(view.latest_turn.id, second.turn_id.unwrap());
    assert_eq!(view.latest_turn.metadata["turn"], "two");
    assert_eq!(view.task.input, Content::text("two"));
    let error = view.latest_turn.error.unwrap();
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("boom", "it broke")
    );
    assert_eq!(
        texts(&history(&*store, a.id, first.task_id).await),
        ["one", "echo: one", "two", "partial"]
    );
    // After a failure the task takes the next message.
    store
        .append_and_claim(append(a.id, first.task_id, "three"))
        .await
        .map(started)
        .unwrap();
}

async fn fifty_concurrent_claims_on_one_idle_task_have_exactly_one_winner(
    store: Arc<impl Store + 'static>,
) {
    let a = agent(&*store, "a").await;
    let first = new_task(&*store, a.id, "one").await;
    assert!(finish(&*store, &first, TurnOutcome::Completed, vec![]).await);
    let claims: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_and_claim(append(a.id, first.task_id, &format!("m{i}")))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut busy = 0;
    for claim in claims {
        match claim.await.unwrap() {
            Ok(claim) => winners.push(started(claim)),
            Err(ClaimError::TaskBusy(active)) => {
                busy += 1;
                assert_ne!(
                    active.turn_id,
                    first.turn_id.unwrap(),
                    "busy names the new turn, not the ended one"
                );
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((winners.len(), busy), (1, 49));
    let stored = history(&*store, a.id, first.task_id).await;
    assert_eq!(stored.len(), 2, "only the winner's message was stored");
    assert_eq!(stored[1].turn_id, winners[0].turn_id.unwrap());
    let view = store.get_task(a.id, first.task_id).await.unwrap().unwrap();
    assert_eq!(view.latest_turn.id, winners[0].turn_id.unwrap());
}

async fn claims_on_different_tasks_do_not_block_each_other(store: Arc<impl Store + 'static>) {
    let a = agent(&*store, "a").await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let t = new_task(&*store, a.id, &format!("t{i}")).await;
        assert!(finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
        tasks.push(t.task_id);
    }
    let claims: Vec<_> = tasks
        .iter()
        .map(|&task| {
            let store = store.clone();
            tokio::spawn(async move { store.append_and_claim(append(a.id, task, "next")).await })
        })
        .collect();
    for claim in claims {
        claim.await.unwrap().unwrap();
    }
}

async fn another_agents_task_is_not_found_everywhere(store: Arc<impl Store>) {
    let mine = agent(&*store, "mine").await;
    let theirs = agent(&*store, "theirs").await;
    let task = new_task(&*store, theirs.id, "secret").await;
    assert!(
        store
            .get_task(mine.id, task.task_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .list_messages(mine.id, task.task_id, PageRequest::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store
            .append_and_claim(append(mine.id, task.task_id, "x"))
            .await,
        Err(ClaimError::TaskNotFound)
    ));
    assert!(
        store
            .list_tasks(mine.id, None, PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(matches!(
        store
            .append_and_claim(append(mine.id, TaskId(987_654), "x"))
            .await,
        Err(ClaimError::TaskNotFound)
    ));
    assert!(
        store
            .get_task(mine.id, TaskId(987_654))
            .await
            .unwrap()
            .is_none()
    );
    // Their task is untouched and still theirs.
    assert_eq!(
        texts(&history(&*store, theirs.id, task.task_id).await),
        ["secret"]
    );
}

async fn tasks_filtered_by_status_go_by_their_latest_turn(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let other = agent(&*store, "other").await;
    // Completed, then running again: running, not completed.
    let again = new_task(&*store, a.id, "again").await;
    assert!(finish(&*store, &again, TurnOutcome::Completed, vec![]).await);
    let second = started(
        store
            .append_and_claim(append(a.id, again.task_id, "more"))
            .await
            .unwrap(),
    );
    assert_ne!(second.turn_id, again.turn_id);
    let done = new_task(&*store, a.id, "done").await;
    assert!(finish(&*store, &done, TurnOutcome::Completed, vec![]).await);
    let failed = new_task(&*store, a.id, "failed").await;
    assert!(
        finish(
            &*store,
            &failed,
            TurnOutcome::failed("echo_failed", "no"),
            vec![]
        )
        .await
    );
    let running = new_task(&*store, a.id, "running").await;
    new_task(&*store, other.id, "someone else's").await;

    let listed = |status: Option<TaskStatus>, page: PageRequest| {
        let store = store.clone();
        async move {
            let page = store.list_tasks(a.id, status, page).await.unwrap();
            let ids: Vec<TaskId> = page.items.iter().map(|v| v.task.id).collect();
            (ids, page.next_after)
        }
    };
    let all = PageRequest {
        limit: 10,
        after: None,
    };
    assert_eq!(
        listed(Some(TaskStatus::Running), all).await,
        (vec![running.task_id, again.task_id], None)
    );
    assert_eq!(
        listed(Some(TaskStatus::Completed), all).await,
        (vec![done.task_id], None)
    );
    assert_eq!(
        listed(Some(TaskStatus::Failed), all).await,
        (vec![failed.task_id], None)
    );
    assert_eq!(
        listed(Some(TaskStatus::Cancelled), all).await,
        (vec![], None)
    );
    assert_eq!(listed(None, all).await.0.len(), 4);
    // Pages of a filtered listing go on after the last task shown.
    let first = listed(
        Some(TaskStatus::Running),
        PageRequest {
            limit: 1,
            after: None,
        },
    )
    .await;
    assert_eq!(first, (vec![running.task_id], Some(running.task_id.0)));
    let next = listed(
        Some(TaskStatus::Running),
        PageRequest {
            limit: 1,
            after: first.1,
        },
    )
    .await;
    assert_eq!(next, (vec![again.task_id], None));
}

/// A2A's order: the latest change first, tasks changed at one instant newest first;
/// a page goes on after its last task's change and id.
async fn tasks_by_update_come_latest_change_first_ties_newest_first(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let other = agent(&*store, "other").await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        // All created at one instant.
        tasks.push(new_task(&*store, a.id, &format!("t{i}")).await);
        new_task(&*store, other.id, "noise").await;
    }
    let ids = |views: &[TaskView]| views.iter().map(|v| v.task.id).collect::<Vec<_>>();
    let id = |n: usize| tasks[n].task_id;
    let all = store
        .list_tasks_by_update(a.id, None, 10, None)
        .await
        .unwrap();
    assert_eq!(ids(&all), [id(3), id(2), id(1), id(0)]);
    // The second task's turn ends later: it comes first.
    assert!(finish(&*store, &tasks[1], TurnOutcome::Completed, vec![]).await);
    let all = store
        .list_tasks_by_update(a.id, None, 10, None)
        .await
        .unwrap();
    assert_eq!(ids(&all), [id(1), id(3), id(2), id(0)]);
    // Pages of two: the third row read says more follow; the next page starts after
    // the last shown.
    let first = store
        .list_tasks_by_update(a.id, None, 2, None)
        .await
        .unwrap();
    assert_eq!(ids(&first), [id(1), id(3), id(2)]);
    let last = &first[1].task;
    let rest = store
        .list_tasks_by_update(a.id, None, 2, Some((last.updated_at, last.id)))
        .await
        .unwrap();
    assert_eq!(ids(&rest), [id(2), id(0)]);
    let done = store
        .list_tasks_by_update(a.id, Some(TaskStatus::Completed), 10, None)
        .await
        .unwrap();
    assert_eq!(ids(&done), [id(1)]);
}

async fn tasks_page_newest_first_with_exact_edges(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let other = agent(&*store, "other").await;
    let empty = store
        .list_tasks(
            a.id,
            None,
            PageRequest {
                limit: 3,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((empty.items.len(), empty.next_after), (0, None));
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(new_task(&*store, a.id, &format!("t{i}")).await.task_id);
        new_task(&*store, other.id, "noise").await;
    }
    let page_ids = |page: &Page<TaskView>| page.items.iter().map(|v| v.task.id).collect::<Vec<_>>();
    let first = store
        .list_tasks(
            a.id,
            None,
            PageRequest {
                limit: 2,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page_ids(&first), [ids[4], ids[3]]);
    let second = store
        .list_tasks(
            a.id,
            None,
            PageRequest {
                limit: 2,
                after: first.next_after,
            },
        )
        .await
        .unwrap();
    assert_eq!(page_ids(&second), [ids[2], ids[1]]);
    let last = store
        .list_tasks(
            a.id,
            None,
            PageRequest {
                limit: 2,
                after: second.next_after,
            },
        )
        .await
        .unwrap();
    assert_eq!((page_ids(&last), last.next_after), (vec![ids[0]], None));
    let exact = store
        .list_tasks(
            a.id,
            None,
            PageRequest {
                limit: 5,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (exact.items.len(), exact.next_after),
        (5, None),
        "a full last page has no cursor"
    );
    let one = store
        .list_tasks(
            a.id,
            None,
            PageRequest {
                limit: 1,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (page_ids(&one), one.next_after),
        (vec![ids[4]], Some(ids[4].0))
    );
    let past_end = store
        .list_tasks(
            a.id,
            None,
            PageRequest {
                limit: 5,
                after: Some(ids[0].0),
            },
        )
        .await
        .unwrap();
    assert!(past_end.items.is_empty());
    // Views in a listing carry their latest turn like a single read does.
    assert!(
        first
            .items
            .iter()
            .all(|v| v.status() == TaskStatus::Running)
    );
}

async fn messages_page_oldest_first_in_the_order_they_were_written(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "q1").await;
    let replies = (1..=4).map(|i| Content::text(format!("r{i}"))).collect();
    assert!(finish(&*store, &t, TurnOutcome::Completed, replies).await);
    let second = store
        .append_and_claim(append(a.id, t.task_id, "q2"))
        .await
        .map(started)
        .unwrap();
    assert!(
        finish(
            &*store,
            &second,
            TurnOutcome::Completed,
            vec![Content::text("r5")]
        )
        .await
    );

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_messages(a.id, t.task_id, PageRequest { limit: 3, after })
            .await
            .unwrap()
            .unwrap()
            .page;
        assert!(page.items.len() <= 3);
        seen.extend(page.items);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(texts(&seen), ["q1", "r1", "r2", "r3", "r4", "q2", "r5"]);
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(seen[5].turn_id, second.turn_id.unwrap());
    let latest = store
        .get_task(a.id, t.task_id)
        .await
        .unwrap()
        .unwrap()
        .latest_agent_message
        .unwrap();
    assert_eq!(latest.content, Content::text("r5"));
}

async fn every_content_type_and_metadata_round_trip_unchanged(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let metadata =
        json!({"unicode": "héllo ✓ 日本", "nested": {"list": [1, 2.5, null, true]}, "empty": {}});
    let accepted = store
        .create_task(NewTask {
            push: None,
            agent_id: a.id,
            message: NewMessage {
                role: Role::User,
                content: serde_json::from_value(
                    json!({"type": "data", "data": {"x": [1, {"y": "z"}]}}),
                )
                .unwrap(),
                metadata: json!({"source": "mobile", "n": [1, 2.5]})
                    .as_object()
                    .cloned()
                    .unwrap(),
            },
            metadata: metadata.as_object().cloned().unwrap(),
            now: at(1),
            lease: lease(),
            idempotency: None,
            webhook: None,
            max_running_per_agent: None,
        })
        .await
        .map(started)
        .unwrap();
    let contents: Vec<Content> = [
        json!({"type": "text", "format": "markdown", "content": "**hi**"}),
        json!({"type": "reasoning", "summary": ["thought"], "content": ["long thought"]}),
        json!({"type": "tool_request", "tool_call_id": "c1", "name": "search", "arguments": {"q": "x"}}),
        json!({"type": "tool_response", "tool_call_id": "c1", "name": "search", "content": [1, 2], "is_error": false}),
        json!({"type": "data", "data": {}}),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).unwrap())
    .collect();
    assert!(finish(&*store, &accepted, TurnOutcome::Completed, contents.clone()).await);
    let stored = history(&*store, a.id, accepted.task_id).await;
    assert_eq!(
        stored
            .iter()
            .skip(1)
            .map(|m| m.content.clone())
            .collect::<Vec<_>>(),
        contents
    );
    let view = store
        .get_task(a.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::Value::Object(view.task.metadata), metadata);
    assert_eq!(view.task.input, stored[0].content);
    // The message keeps its own metadata; the agent's have none.
    assert_eq!(
        serde_json::Value::Object(stored[0].metadata.clone()),
        json!({"source": "mobile", "n": [1, 2.5]})
    );
    assert!(stored.iter().skip(1).all(|m| m.metadata.is_empty()));
    let reread = store.get_agent(a.id).await.unwrap().unwrap();
    assert_eq!(
        reread.runner.config,
        json!({"delay_ms": 5, "nested": {"a": [1, 2]}})
    );
}

async fn load_turn_input_is_the_whole_history_in_order(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "one").await;
    assert!(
        finish(
            &*store,
            &t,
            TurnOutcome::Completed,
            vec![Content::text("echo: one")]
        )
        .await
    );
    let second = store
        .append_and_claim(append(a.id, t.task_id, "two"))
        .await
        .map(started)
        .unwrap();
    let loaded = store
        .load_turn_input(t.task_id, second.turn_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.task.id, t.task_id);
    assert_eq!(loaded.task.input, Content::text("two"));
    assert_eq!(texts(&loaded.history), ["one", "echo: one", "two"]);
    assert_eq!(loaded.history[2].turn_id, second.turn_id.unwrap());
    // Each turn with the metadata of the request that started it.
    assert_eq!(
        serde_json::Value::Object(loaded.metadata),
        json!({"turn": "two"})
    );
    let first = store
        .load_turn_input(t.task_id, t.turn_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata, t.metadata);
    assert_ne!(
        first.metadata,
        json!({"turn": "two"}).as_object().cloned().unwrap()
    );
    // No such task, or a turn of another task: nothing.
    let other = new_task(&*store, a.id, "other").await;
    for (task, turn) in [(TaskId(987_654), t.turn_id), (t.task_id, other.turn_id)] {
        assert!(
            store
                .load_turn_input(task, turn.unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }
}

async fn turn_ids(turns: Vec<ExpiredTurn>) -> Vec<TurnId> {
    let mut ids: Vec<TurnId> = turns.into_iter().map(|t| t.turn_id).collect();
    ids.sort();
    ids
}

async fn leases_are_renewed_only_by_their_holder_and_then_expire(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let one = new_task(&*store, a.id, "one").await;
    let two = new_task(&*store, a.id, "two").await;
    let both = vec![one.turn_id.unwrap(), two.turn_id.unwrap()];
    let first_attempts = vec![(one.turn_id.unwrap(), 1), (two.turn_id.unwrap(), 1)];
    assert!(
        store
            .expired_turns(at(59), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        turn_ids(store.expired_turns(at(60), None, 10).await.unwrap()).await,
        both,
        "a lease is expired at its expiry time"
    );
    let mut renewed = store
        .renew_leases(HOLDER, first_attempts.clone(), at(100))
        .await
        .unwrap();
    renewed.sort();
    assert_eq!(renewed, both);
    assert!(
        store
            .renew_leases("instance-b", first_attempts.clone(), at(500))
            .await
            .unwrap()
            .is_empty(),
        "only the holder renews"
    );
    assert!(
        store
            .renew_leases(HOLDER, vec![(one.turn_id.unwrap(), 2)], at(500))
            .await
            .unwrap()
            .is_empty(),
        "only for the attempt it plays"
    );
    assert!(
        store
            .expired_turns(at(99), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let expired = store.expired_turns(at(100), None, 1).await.unwrap();
    assert_eq!(expired.len(), 1, "the limit holds");
    assert_eq!(expired[0].turn_id, one.turn_id.unwrap(), "in id order");
    let rest = store
        .expired_turns(at(100), Some(one.turn_id.unwrap()), 10)
        .await
        .unwrap();
    assert_eq!(
        turn_ids(rest).await,
        vec![two.turn_id.unwrap()],
        "the next page starts after the last id seen"
    );
    assert_eq!(expired[0].agent_id, a.id);
    assert_eq!(expired[0].attempt, 1);
    assert_eq!(expired[0].owner.as_deref(), Some(HOLDER));

    assert!(finish(&*store, &two, TurnOutcome::Completed, vec![]).await);
    assert_eq!(
        store
            .renew_leases(HOLDER, first_attempts, at(200))
            .await
            .unwrap(),
        vec![one.turn_id.unwrap()],
        "an ended turn has no lease to renew"
    );
    assert_eq!(
        turn_ids(store.expired_turns(at(10_000), None, 10).await.unwrap()).await,
        vec![one.turn_id.unwrap()],
        "ended turns are never expired"
    );
}

async fn an_expired_turn_is_ended_once_by_a_sweep_and_never_by_its_old_holder(
    store: Arc<impl Store>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    assert!(
        store
            .record_output(record(&t, vec![delta("par")]))
            .await
            .unwrap()
    );
    let sweep = |cutoff| FinishTurn {
        next: None,
        task_id: t.task_id,
        turn_id: t.turn_id.unwrap(),
        outcome: TurnOutcome::failed("turn_interrupted", "its instance died"),
        output: vec![],
        usage: None,
        guard: LeaseGuard::ExpiredBy(cutoff),
        now: at(61),
    };
    assert!(
        store.finish_turn(sweep(at(59))).await.unwrap().is_none(),
        "a live lease is never swept"
    );
    assert!(store.finish_turn(sweep(at(60))).await.unwrap().is_some());
    assert!(
        store.finish_turn(sweep(at(60))).await.unwrap().is_none(),
        "a second sweep finds nothing"
    );
    assert!(!finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    assert!(
        !store
            .record_output(record(&t, vec![delta("late")]))
            .await
            .unwrap()
    );
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Failed);
    assert_eq!(view.latest_turn.error.unwrap().code, "turn_interrupted");
    let messages = history(&*store, a.id, t.task_id).await;
    assert_eq!(
        texts(&messages),
        ["hello", "par"],
        "partial text is kept, closed"
    );
    assert_eq!(messages[1].streaming_status, Some(StreamingStatus::Done));
    let events = all_events(&*store, a.id, t.task_id).await;
    assert_eq!(events.last().unwrap().kind, EventKind::Error);
    // The task is free again.
    store
        .append_and_claim(append(a.id, t.task_id, "again"))
        .await
        .map(started)
        .unwrap();
}

async fn a_taken_over_turn_starts_again_without_the_interrupted_output(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    assert!(
        store
            .record_output(record(&t, vec![delta("half an ans")]))
            .await
            .unwrap()
    );
    let take = |expired_by| take_over(&t, "instance-b", expired_by);
    assert_eq!(store.take_over_turns(take(59)).await.unwrap(), vec![]);
    assert_eq!(
        store.take_over_turns(take(60)).await.unwrap(),
        vec![(t.turn_id.unwrap(), 2)]
    );
    assert_eq!(
        store.take_over_turns(take(60)).await.unwrap(),
        vec![],
        "the new lease is alive: nobody else takes the turn"
    );
    // The old holder can neither record nor end it.
    assert!(
        !store
            .record_output(record(&t, vec![delta("zombie")]))
            .await
            .unwrap()
    );
    assert!(!finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Running);
    assert_eq!(view.latest_turn.attempt, 2);
    assert_eq!(
        texts(&history(&*store, a.id, t.task_id).await),
        ["hello"],
        "the interrupted attempt's output is gone"
    );
    let loaded = store
        .load_turn_input(t.task_id, t.turn_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (loaded.task.id, texts(&loaded.history)),
        (t.task_id, vec!["hello".to_owned()])
    );
    let events = all_events(&*store, a.id, t.task_id).await;
    let restart = events.last().unwrap();
    assert_eq!(restart.kind, EventKind::TurnStarted);
    assert_eq!(restart.data["turn"]["attempt"], 2);
    assert_eq!(restart.data["input"]["content"]["content"], "hello");

    answer_as(&*store, &t, play("instance-b", 2), "a whole answer").await;
    assert_eq!(
        texts(&history(&*store, a.id, t.task_id).await),
        ["hello", "a whole answer"]
    );
}

/// The fencing token: a process that took over its own turn (the same lease holder)
/// plays the new attempt; the old play's writes are refused.
async fn a_superseded_attempt_never_writes_even_under_the_same_holder(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    assert_eq!(
        store
            .take_over_turns(take_over(&t, HOLDER, 60))
            .await
            .unwrap(),
        vec![(t.turn_id.unwrap(), 2)]
    );
    assert!(
        !store
            .record_output(record(&t, vec![delta("echo: ")]))
            .await
            .unwrap(),
        "attempt 1 records nothing"
    );
    assert!(
        !finish(&*store, &t, TurnOutcome::Completed, vec![]).await,
        "attempt 1 cannot end the turn"
    );
    answer_as(&*store, &t, play(HOLDER, 2), "echo: hello").await;
    assert_eq!(
        texts(&history(&*store, a.id, t.task_id).await),
        ["hello", "echo: hello"]
    );
}

/// A play writes a batch again when the answer to its commit was lost: the store
/// recognises it by its number and records it once. A new attempt counts from 1.
async fn a_batch_written_again_is_recorded_once(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    let batch = |n: u32, text: &str| RecordOutput {
        batch: n,
        ..record(&t, vec![delta(text)])
    };
    for (n, text) in [
        (1, "echo: "),
        (1, "echo: "),
        (2, "hel"),
        (2, "hel"),
        (1, "echo: "),
    ] {
        assert!(store.record_output(batch(n, text)).await.unwrap());
    }
    assert!(store.record_output(batch(3, "lo")).await.unwrap());
    assert_eq!(
        texts(&history(&*store, a.id, t.task_id).await),
        ["hello", "echo: hello"]
    );
    let deltas: Vec<EventKind> = all_events(&*store, a.id, t.task_id)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        deltas,
        [
            EventKind::TurnStarted,
            EventKind::TextDelta,
            EventKind::TextDelta,
            EventKind::TextDelta
        ]
    );
    // Taken over: the new attempt's batches count from 1 again.
    assert_eq!(
        store
            .take_over_turns(take_over(&t, HOLDER, 60))
            .await
            .unwrap(),
        vec![(t.turn_id.unwrap(), 2)]
    );
    let mut again = batch(1, "echo: hello");
    again.holder.attempt = 2;
    assert!(store.record_output(again).await.unwrap());
    assert_eq!(
        texts(&history(&*store, a.id, t.task_id).await),
        ["hello", "echo: hello"]
    );
}

/// The output a play had not recorded yet comes with the end, in the same write: text
/// joins the open streamed message, which is closed; messages follow; the ending event
/// tells all of it.
async fn a_turns_last_output_is_stored_with_its_end(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    assert!(
        store
            .record_output(record(&t, vec![delta("par")]))
            .await
            .unwrap()
    );
    let data: Content = serde_json::from_value(json!({"type": "data", "data": {"n": 1}})).unwrap();
    let end = FinishTurn {
        output: vec![delta("tial"), OutputOp::Message(data.clone())],
        ..completed_by(&t, holder())
    };
    assert!(store.finish_turn(end).await.unwrap().is_some());
    let messages = history(&*store, a.id, t.task_id).await;
    assert_eq!(messages[1].content, Content::text("partial"));
    assert_eq!(messages[1].streaming_status, Some(StreamingStatus::Done));
    assert_eq!(messages[2].content, data);
    let events = all_events(&*store, a.id, t.task_id).await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::TurnStarted,
            EventKind::TextDelta,
            EventKind::TextDelta,
            EventKind::Message,
            EventKind::Message,
            EventKind::Final
        ]
    );
    let last = events.last().unwrap();
    assert_eq!(last.data["output"][0]["content"]["content"], "partial");
    assert_eq!(last.data["output"][1]["content"]["data"]["n"], 1);
}

async fn many_expired_turns_are_taken_over_or_ended_in_one_call(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let mut started = Vec::new();
    for i in 0..6 {
        started.push(new_task(&*store, a.id, &format!("task {i}")).await);
    }
    // One of them is alive again: its holder renewed it.
    let renewed = store
        .renew_leases(HOLDER, vec![(started[5].turn_id.unwrap(), 1)], at(500))
        .await
        .unwrap();
    assert_eq!(renewed, vec![started[5].turn_id.unwrap()]);
    for t in &started[..2] {
        assert!(
            store
                .record_output(record(t, vec![delta("half")]))
                .await
                .unwrap()
        );
    }
    let refs = |ts: &[Accepted]| -> Vec<TurnId> { ts.iter().map(|t| t.turn_id.unwrap()).collect() };
    let take = TakeOver {
        turns: refs(&started[..3])
            .into_iter()
            .chain(refs(&started[5..]))
            .collect(),
        expired_by: at(60),
        lease: Lease {
            owner: "instance-b".into(),
            expires_at: at(120),
        },
        now: at(61),
    };
    let mut taken = store.take_over_turns(take).await.unwrap();
    taken.sort();
    assert_eq!(
        taken,
        started[..3]
            .iter()
            .map(|t| (t.turn_id.unwrap(), 2))
            .collect::<Vec<_>>(),
        "the live lease is left alone"
    );
    for t in &started[..3] {
        assert_eq!(
            texts(&history(&*store, a.id, t.task_id).await).len(),
            1,
            "only the input is left"
        );
        let events = all_events(&*store, a.id, t.task_id).await;
        assert_eq!(events.last().unwrap().kind, EventKind::TurnStarted);
        assert_eq!(events.last().unwrap().data["turn"]["attempt"], 2);
    }
    let sweep = |t: &Accepted| FinishTurn {
        next: None,
        task_id: t.task_id,
        turn_id: t.turn_id.unwrap(),
        outcome: TurnOutcome::failed("turn_interrupted", "its instance died"),
        output: vec![],
        usage: None,
        guard: LeaseGuard::ExpiredBy(at(60)),
        now: at(61),
    };
    // Two expired, one taken over (alive under instance-b), one renewed.
    let ended = store
        .finish_turns(vec![
            sweep(&started[3]),
            sweep(&started[0]),
            sweep(&started[4]),
            sweep(&started[5]),
        ])
        .await
        .unwrap();
    let ended: Vec<bool> = ended.iter().map(Option::is_some).collect();
    assert_eq!(ended, [true, false, true, false]);
    for (i, status) in [
        (0, TaskStatus::Running),
        (3, TaskStatus::Failed),
        (4, TaskStatus::Failed),
        (5, TaskStatus::Running),
    ] {
        let view = store
            .get_task(a.id, started[i].task_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.status(), status, "task {i}");
    }
}

async fn released_leases_expire_at_once_and_nobody_holds_them(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    let other = new_task(&*store, a.id, "other").await;
    assert_eq!(
        store
            .release_leases("instance-b", vec![t.turn_id.unwrap()], at(5))
            .await
            .unwrap(),
        0,
        "only the holder releases"
    );
    assert_eq!(
        store
            .release_leases(HOLDER, vec![t.turn_id.unwrap()], at(5))
            .await
            .unwrap(),
        1
    );
    assert!(
        !store
            .record_output(record(&t, vec![delta("x")]))
            .await
            .unwrap()
    );
    let expired = store.expired_turns(at(5), None, 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].turn_id, expired[0].owner.clone()),
        (t.turn_id.unwrap(), None)
    );
    assert!(
        store
            .record_output(record(&other, vec![delta("y")]))
            .await
            .unwrap()
    );
}

async fn cancel_ends_a_running_turn_keeping_its_partial_text(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    assert!(
        store
            .record_output(record(&t, vec![delta("so far")]))
            .await
            .unwrap()
    );
    let cancel = FinishTurn {
        next: None,
        task_id: t.task_id,
        turn_id: t.turn_id.unwrap(),
        outcome: TurnOutcome::Cancelled,
        output: vec![],
        usage: None,
        guard: LeaseGuard::Anyone,
        now: at(4),
    };
    assert!(store.finish_turn(cancel.clone()).await.unwrap().is_some());
    assert!(store.finish_turn(cancel).await.unwrap().is_none());
    assert!(!finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Cancelled);
    assert!(view.latest_turn.error.is_none());
    assert_eq!(view.latest_turn.ended_at, Some(at(4)));
    let partial = view.latest_agent_message.unwrap();
    assert_eq!(partial.content, Content::text("so far"));
    assert_eq!(partial.streaming_status, Some(StreamingStatus::Done));
    let events = all_events(&*store, a.id, t.task_id).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, EventKind::Cancelled);
    assert_eq!(last.data["status"], "cancelled");
    assert_eq!(last.data["output"][0]["content"]["content"], "so far");
    assert!(
        store
            .expired_turns(at(10_000), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

fn key(name: &str, hash: &str, expires: i64) -> Option<IdempotencyRecord> {
    Some(IdempotencyRecord {
        key: name.into(),
        request_hash: hash.into(),
        expires_at: at(expires),
    })
}

async fn idempotency_keys_replay_refuse_other_requests_and_expire(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let b = agent(&*store, "b").await;
    let first = started(
        create(&*store, a.id, "hi", key("k1", "h1", 100))
            .await
            .unwrap(),
    );
    let again = create(&*store, a.id, "hi", key("k1", "h1", 100))
        .await
        .unwrap();
    assert_eq!(
        again,
        Claim::Replayed(first.clone()),
        "the same answer, nothing new"
    );
    assert!(matches!(
        create(&*store, a.id, "other", key("k1", "h2", 100)).await,
        Err(ClaimError::IdempotencyKeyReused)
    ));
    // Keys are per agent.
    started(
        create(&*store, b.id, "hi", key("k1", "h1", 100))
            .await
            .unwrap(),
    );
    let listed = store
        .list_tasks(a.id, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        listed.items.len(),
        1,
        "replays and refusals created nothing"
    );

    // An accepted append retried while its turn runs replays instead of being busy.
    assert!(finish(&*store, &first, TurnOutcome::Completed, vec![]).await);
    let mut with_key = append(a.id, first.task_id, "more");
    with_key.idempotency = key("k2", "h3", 100);
    let appended = started(store.append_and_claim(with_key.clone()).await.unwrap());
    assert_eq!(
        store.append_and_claim(with_key.clone()).await.unwrap(),
        Claim::Replayed(appended)
    );
    with_key.idempotency = key("k2", "h4", 100);
    assert!(matches!(
        store.append_and_claim(with_key).await,
        Err(ClaimError::IdempotencyKeyReused)
    ));
    assert_eq!(history(&*store, a.id, first.task_id).await.len(), 2);

    // An expired key is forgotten: the same request starts a new turn.
    let short = started(
        create(&*store, a.id, "x", key("k3", "h5", 0))
            .await
            .unwrap(),
    );
    let later = started(
        create(&*store, a.id, "x", key("k3", "h5", 100))
            .await
            .unwrap(),
    );
    assert_ne!(short.task_id, later.task_id);
    assert_eq!(store.purge_idempotency_keys(at(99)).await.unwrap(), 0);
    assert_eq!(store.purge_idempotency_keys(at(100)).await.unwrap(), 4);
    started(
        create(&*store, a.id, "hi", key("k1", "h2", 200))
            .await
            .unwrap(),
    );
}

async fn twenty_concurrent_first_uses_of_a_key_start_one_turn(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let claims: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { create(&*store, a.id, "once", key("k", "h", 100)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for claim in claims {
        answers.push(claim.await.unwrap().unwrap());
    }
    let firsts: Vec<&Accepted> = answers
        .iter()
        .filter_map(|c| match c {
            Claim::Started(accepted) => Some(accepted),
            Claim::Replayed(_) => None,
        })
        .collect();
    assert_eq!(firsts.len(), 1, "exactly one claim started a turn");
    assert!(answers.iter().all(|c| c.accepted() == firsts[0]));
    let listed = store
        .list_tasks(a.id, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
}

async fn agents_round_trip_and_are_counted(store: Arc<impl Store>) {
    assert_eq!(store.count_agents().await.unwrap(), 0);
    let a = agent(&*store, "first").await;
    let b = agent(&*store, "second").await;
    assert_ne!(a.id, b.id);
    assert_eq!(store.get_agent(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(a.created_at, at(0));
    assert_eq!(store.get_agent(AgentId(987_654)).await.unwrap(), None);
    assert_eq!(store.count_agents().await.unwrap(), 2);
}

async fn keys_are_found_by_hash_conflict_on_reuse_and_revoke_once(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let new_key = |prefix: &str, hash: &str| NewApiKey {
        agent_id: a.id,
        prefix: prefix.into(),
        secret_hash: hash.into(),
        created_at: at(0),
    };
    let key = store
        .create_api_key(new_key("abcd1234", "h1"))
        .await
        .unwrap();
    assert_eq!((key.agent_id, key.revoked_at), (a.id, None));
    assert_eq!(store.find_api_key("h1").await.unwrap(), Some(key.clone()));
    assert_eq!(store.find_api_key("nope").await.unwrap(), None);
    for (prefix, hash) in [("abcd1234", "h2"), ("other123", "h1")] {
        let duplicate = store.create_api_key(new_key(prefix, hash)).await;
        assert!(
            matches!(duplicate, Err(StoreError::Conflict(_))),
            "{prefix} {hash}: {duplicate:?}"
        );
    }
    assert!(store.revoke_api_key("abcd1234", at(5)).await.unwrap());
    assert!(!store.revoke_api_key("abcd1234", at(6)).await.unwrap());
    assert!(!store.revoke_api_key("missing", at(6)).await.unwrap());
    assert_eq!(
        store.find_api_key("h1").await.unwrap().unwrap().revoked_at,
        Some(at(5))
    );
}

/// Taking over this one turn for `owner` (lease until 120 s), if expired by `expired_by`.
fn take_over(t: &Accepted, owner: &str, expired_by: i64) -> TakeOver {
    TakeOver {
        turns: vec![t.turn_id.unwrap()],
        expired_by: at(expired_by),
        lease: Lease {
            owner: owner.into(),
            expires_at: at(120),
        },
        now: at(61),
    }
}

/// The play of attempt `attempt` under `owner`'s lease.
fn play(owner: &str, attempt: u32) -> Holder {
    Holder {
        owner: owner.into(),
        attempt,
    }
}

/// `holder` records `text` and ends the turn; both writes must be taken.
async fn answer_as(store: &impl Store, t: &Accepted, holder: Holder, text: &str) {
    let mut output = record(t, vec![delta(text)]);
    output.holder = holder.clone();
    assert!(store.record_output(output).await.unwrap());
    assert!(
        store
            .finish_turn(completed_by(t, holder))
            .await
            .unwrap()
            .is_some()
    );
}

/// A turn's normal end, as `holder` plays it.
fn completed_by(t: &Accepted, holder: Holder) -> FinishTurn {
    FinishTurn {
        next: None,
        task_id: t.task_id,
        turn_id: t.turn_id.unwrap(),
        outcome: TurnOutcome::Completed,
        output: vec![],
        usage: None,
        guard: LeaseGuard::Holder(holder),
        now: at(62),
    }
}

/// A batch of output from the first attempt's play; each call is a new batch (their
/// numbers only grow, as a play's do).
fn record(task: &Accepted, ops: Vec<OutputOp>) -> RecordOutput {
    static BATCHES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    RecordOutput {
        task_id: task.task_id,
        turn_id: task.turn_id.unwrap(),
        holder: holder(),
        batch: BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ops,
        now: at(2),
    }
}

fn delta(text: &str) -> OutputOp {
    OutputOp::TextDelta(text.into())
}

async fn all_events(store: &impl Store, agent: AgentId, task: TaskId) -> Vec<TaskEvent> {
    store
        .list_events(agent, task, 0, 1000)
        .await
        .unwrap()
        .unwrap()
        .events
}

async fn events_number_from_one_per_task_and_tell_the_whole_turn(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "hello").await;
    let other = new_task(&*store, a.id, "other").await;
    assert!(
        store
            .record_output(record(&t, vec![delta("echo: "), delta("hel")]))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_output(record(&t, vec![delta("lo")]))
            .await
            .unwrap()
    );
    let data: Content = serde_json::from_value(json!({"type": "data", "data": {"n": 1}})).unwrap();
    assert!(
        store
            .record_output(record(&t, vec![OutputOp::Message(data.clone())]))
            .await
            .unwrap()
    );
    assert!(finish(&*store, &t, TurnOutcome::Completed, vec![]).await);

    let events = all_events(&*store, a.id, t.task_id).await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "turn_started",
            "text_delta",
            "text_delta",
            "text_delta",
            "message",
            "message",
            "final"
        ]
    );
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(
        events
            .iter()
            .all(|e| e.turn_id == t.turn_id.unwrap() && e.task_id == t.task_id)
    );
    assert_eq!(events[0].data["input"]["content"]["content"], "hello");
    assert_eq!(events[0].data["turn"]["status"], "running");

    // The deltas of a message, concatenated, are the stored message.
    let messages = history(&*store, a.id, t.task_id).await;
    let streamed = &messages[1];
    let concatenated: String = events
        .iter()
        .filter(|e| e.kind == EventKind::TextDelta && e.data["message_id"] == streamed.id.0)
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(concatenated, "echo: hello");
    assert_eq!(streamed.content, Content::text("echo: hello"));
    assert_eq!(streamed.streaming_status, Some(StreamingStatus::Done));
    assert_eq!(messages[2].content, data);
    assert_eq!(
        events[4].data["message"]["message_id"], streamed.id.0,
        "the streamed one closes first"
    );
    assert_eq!(events[5].data["message"]["content"]["type"], "data");
    let output = events[6].data["output"].as_array().unwrap();
    assert_eq!(output.len(), 2);
    assert_eq!(output[0]["content"]["content"], "echo: hello");
    assert_eq!(events[6].data["status"], "completed");
    assert!(events[6].data["turn"]["ended_at"].is_string());

    // Every task has its own numbering.
    let theirs = all_events(&*store, a.id, other.task_id).await;
    assert_eq!(theirs.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
}

async fn streamed_text_is_one_message_in_progress_until_closed(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "q").await;
    assert!(
        store
            .record_output(record(&t, vec![delta("par")]))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_output(record(&t, vec![delta("tial")]))
            .await
            .unwrap()
    );
    let messages = history(&*store, a.id, t.task_id).await;
    assert_eq!(
        messages.len(),
        2,
        "one streamed message, however many deltas"
    );
    assert_eq!(messages[1].content, Content::text("partial"));
    assert_eq!(
        messages[1].streaming_status,
        Some(StreamingStatus::InProgress)
    );
    assert!(
        finish(
            &*store,
            &t,
            TurnOutcome::Completed,
            vec![Content::text("tail")]
        )
        .await
    );
    let messages = history(&*store, a.id, t.task_id).await;
    assert_eq!(texts(&messages), ["q", "partial", "tail"]);
    assert_eq!(messages[1].streaming_status, Some(StreamingStatus::Done));
    let events = all_events(&*store, a.id, t.task_id).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, EventKind::Final);
    assert_eq!(last.data["output"].as_array().unwrap().len(), 2);
    // The next turn streams into a new message.
    let next = store
        .append_and_claim(append(a.id, t.task_id, "again"))
        .await
        .map(started)
        .unwrap();
    assert!(
        store
            .record_output(record(&next, vec![delta("new")]))
            .await
            .unwrap()
    );
    let messages = history(&*store, a.id, t.task_id).await;
    assert_eq!(texts(&messages)[4], "new");
    assert_eq!(messages[4].turn_id, next.turn_id.unwrap());
}

/// Read while the text streams in, each page's streamed text is exactly the deltas up
/// to its `last_event_id`: following the stream after it repeats and misses nothing.
async fn a_history_page_shows_exactly_the_events_up_to_its_last_event_id(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "q").await;
    const DELTAS: usize = 150;
    let writer = {
        let (store, t) = (store.clone(), t.clone());
        tokio::spawn(async move {
            for i in 0..DELTAS {
                let written = store
                    .record_output(record(&t, vec![delta(&format!("{i} "))]))
                    .await
                    .unwrap();
                assert!(written);
            }
        })
    };
    let mut reads = Vec::new();
    while !writer.is_finished() {
        let read = store
            .list_messages(a.id, t.task_id, PageRequest::default())
            .await
            .unwrap()
            .unwrap();
        reads.push(read);
    }
    writer.await.unwrap();
    let events = all_events(&*store, a.id, t.task_id).await;
    let streamed_up_to = |last: i64| -> String {
        events
            .iter()
            .filter(|e| e.seq <= last && e.kind == EventKind::TextDelta)
            .map(|e| e.data["delta"].as_str().unwrap())
            .collect()
    };
    assert!(reads.len() > 1, "the reads raced the writes");
    for read in &reads {
        let shown = match read.page.items.get(1).map(|m| &m.content) {
            Some(Content::Text(text)) => text.content.clone(),
            Some(other) => panic!("{other:?}"),
            None => String::new(),
        };
        assert_eq!(
            shown,
            streamed_up_to(read.last_event_id),
            "the page at event {}",
            read.last_event_id
        );
    }
}

async fn output_for_an_ended_turn_is_discarded(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "q").await;
    assert!(finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    let before = all_events(&*store, a.id, t.task_id).await.len();
    assert!(
        !store
            .record_output(record(
                &t,
                vec![delta("late"), OutputOp::Message(Content::text("late"))]
            ))
            .await
            .unwrap()
    );
    assert_eq!(all_events(&*store, a.id, t.task_id).await.len(), before);
    assert_eq!(texts(&history(&*store, a.id, t.task_id).await), ["q"]);
}

async fn failed_turn_ends_with_an_error_event(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "q").await;
    assert!(
        store
            .record_output(record(&t, vec![delta("half")]))
            .await
            .unwrap()
    );
    let failed = TurnOutcome::Failed(TurnError {
        code: "model_unavailable".into(),
        message: "503".into(),
    });
    assert!(finish(&*store, &t, failed, vec![]).await);
    let events = all_events(&*store, a.id, t.task_id).await;
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::TurnStarted,
            EventKind::TextDelta,
            EventKind::Message,
            EventKind::Error
        ]
    );
    let error = &events[3].data;
    assert_eq!(error["error"]["code"], "model_unavailable");
    assert_eq!(error["status"], "failed");
    assert_eq!(
        error["output"][0]["content"]["content"], "half",
        "partial output is kept"
    );
}

async fn events_page_after_a_cursor_and_report_pruning(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let intruder = agent(&*store, "intruder").await;
    let t = new_task(&*store, a.id, "q").await;
    for word in ["a", "b", "c", "d"] {
        assert!(
            store
                .record_output(record(&t, vec![delta(word)]))
                .await
                .unwrap()
        );
    }
    let page = store
        .list_events(a.id, t.task_id, 2, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(page.first_kept, 1);
    assert_eq!(
        page.last_seq, 5,
        "where the log ends, also on a partial page"
    );
    let past_the_end = store
        .list_events(a.id, t.task_id, 1_000, 100)
        .await
        .unwrap()
        .unwrap();
    assert!(past_the_end.events.is_empty());
    assert_eq!(
        past_the_end.last_seq, 5,
        "and when nothing follows the cursor"
    );
    let rest = store
        .list_events(a.id, t.task_id, 4, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    assert!(
        store
            .list_events(a.id, t.task_id, 5, 100)
            .await
            .unwrap()
            .unwrap()
            .events
            .is_empty()
    );
    assert!(
        store
            .list_events(intruder.id, t.task_id, 0, 100)
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(store.prune_events(t.task_id, 3).await.unwrap(), 2);
    let page = store
        .list_events(a.id, t.task_id, 0, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.first_kept, 3);
    assert_eq!(page.events.first().unwrap().seq, 3);
    // Appending after a prune continues the numbering.
    assert!(finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    let page = store
        .list_events(a.id, t.task_id, 5, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6, 7]
    );
}

trait WebhookStoreUnderTest: Store + WebhookStore {}
impl<S: Store + WebhookStore> WebhookStoreUnderTest for S {}

fn hook(url: &str) -> WebhookEndpoint {
    WebhookEndpoint {
        url: url.into(),
        secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
    }
}

async fn task_with_hook(
    store: &impl Store,
    agent: AgentId,
    webhook: Option<WebhookEndpoint>,
) -> Accepted {
    started(
        store
            .create_task(NewTask {
                push: None,
                agent_id: agent,
                message: user("hook me"),
                metadata: json!({"trace": "t-9"}).as_object().cloned().unwrap(),
                now: at(1),
                lease: lease(),
                idempotency: None,
                webhook,
                max_running_per_agent: None,
            })
            .await
            .unwrap(),
    )
}

async fn a_turns_end_is_queued_for_its_webhook_or_its_agents(
    store: Arc<impl WebhookStoreUnderTest>,
) {
    let a = agent(&*store, "plain").await;
    let own = task_with_hook(&*store, a.id, Some(hook("https://own.example/hook"))).await;
    let none = task_with_hook(&*store, a.id, None).await;
    assert!(
        store
            .list_deliveries(a.id, own.task_id)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert!(
        finish(
            &*store,
            &own,
            TurnOutcome::Completed,
            vec![Content::text("done")]
        )
        .await
    );
    assert!(finish(&*store, &none, TurnOutcome::Completed, vec![]).await);
    let listed = store
        .list_deliveries(a.id, own.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed.len(), 1);
    let delivery = &listed[0];
    assert_eq!(
        (
            delivery.turn_id,
            delivery.event_type.as_str(),
            delivery.url.as_str(),
            delivery.status.as_str()
        ),
        (
            own.turn_id.unwrap().0,
            "turn.completed",
            "https://own.example/hook",
            "pending"
        )
    );
    assert!(delivery.webhook_id.starts_with("msg_"));
    assert_eq!(
        delivery.next_attempt_at,
        Some(at(3)),
        "due when the turn ended"
    );
    assert!(
        store
            .list_deliveries(a.id, none.task_id)
            .await
            .unwrap()
            .unwrap()
            .is_empty(),
        "no webhook, no delivery"
    );
    let other = agent(&*store, "other").await;
    assert!(
        store
            .list_deliveries(other.id, own.task_id)
            .await
            .unwrap()
            .is_none()
    );

    let due = store.claim_deliveries(at(3), at(60), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].endpoint, hook("https://own.example/hook"));
    let payload: serde_json::Value = serde_json::from_str(&due[0].payload).unwrap();
    assert_eq!(payload["type"], "turn.completed");
    assert_eq!(payload["data"]["task_id"], own.task_id.0);
    assert_eq!(payload["data"]["turn_id"], own.turn_id.unwrap().0);
    assert_eq!(payload["data"]["agent_id"], a.id.0);
    assert_eq!(payload["data"]["status"], "completed");
    assert_eq!(payload["data"]["output"][0]["content"]["content"], "done");
    assert_eq!(payload["data"]["task_metadata"]["trace"], "t-9");
    assert_eq!(payload["data"]["metadata"]["trace"], "t-9");
    assert!(payload["timestamp"].is_string());

    // An agent's default webhook serves turns that name none; every kind of end.
    let with_default = store
        .create_agent(NewAgent {
            card: None,
            name: "hooked".into(),
            runner: RunnerSpec {
                kind: "echo".into(),
                config: json!({}),
            },
            policy: TurnPolicy::default(),
            webhook: Some(hook("https://agent.example/hook")),
            created_at: at(0),
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .get_agent(with_default.id)
            .await
            .unwrap()
            .unwrap()
            .webhook,
        Some(hook("https://agent.example/hook"))
    );
    let cases = [
        (TurnOutcome::Cancelled, "turn.cancelled"),
        (
            TurnOutcome::failed("turn_interrupted", "gone"),
            "turn.interrupted",
        ),
        (TurnOutcome::failed("echo_failed", "no"), "turn.failed"),
    ];
    for (outcome, kind) in cases {
        let t = task_with_hook(&*store, with_default.id, None).await;
        assert!(finish(&*store, &t, outcome, vec![]).await);
        let listed = store
            .list_deliveries(with_default.id, t.task_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (listed[0].event_type.as_str(), listed[0].url.as_str()),
            (kind, "https://agent.example/hook")
        );
    }
}

async fn claims_are_exclusive_until_they_run_out_and_attempts_are_recorded(
    store: Arc<impl WebhookStoreUnderTest>,
) {
    let a = agent(&*store, "a").await;
    let t = task_with_hook(&*store, a.id, Some(hook("https://h.example/"))).await;
    assert!(finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    assert!(
        store
            .claim_deliveries(at(2), at(10), 10)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    let first = store.claim_deliveries(at(3), at(10), 10).await.unwrap();
    assert_eq!((first.len(), first[0].failed_in_round), (1, 0));
    assert!(
        store
            .claim_deliveries(at(9), at(20), 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed"
    );
    let again = store.claim_deliveries(at(10), at(20), 10).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "a claim that ran out (its sender died) is due again"
    );
    assert_eq!(
        again[0].webhook_id, first[0].webhook_id,
        "the same id on every attempt"
    );

    let attempt = |next, code, error: Option<&str>| AttemptResult {
        delivery_id: first[0].id,
        started_at: at(10),
        status_code: code,
        latency_ms: 12,
        error: error.map(str::to_owned),
        next,
    };
    assert!(
        store
            .record_attempt(attempt(
                NextStep::RetryAt(at(40)),
                Some(503),
                Some("the receiver answered 503")
            ))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_deliveries(at(39), at(99), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retry = store.claim_deliveries(at(40), at(99), 10).await.unwrap();
    assert_eq!(retry[0].failed_in_round, 1);
    assert!(
        store
            .record_attempt(attempt(NextStep::GiveUp, None, Some("timed out")))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_attempt(attempt(NextStep::Delivered, Some(200), None))
            .await
            .unwrap(),
        "no longer pending"
    );
    let listed = store
        .list_deliveries(a.id, t.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed[0].status, "failed");
    assert_eq!(listed[0].next_attempt_at, None);
    let log: Vec<(u32, Option<u16>, Option<String>)> = listed[0]
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status_code, a.error.clone()))
        .collect();
    assert_eq!(
        log,
        vec![
            (1, Some(503), Some("the receiver answered 503".into())),
            (2, None, Some("timed out".into()))
        ]
    );
    assert_eq!(listed[0].attempts[0].latency_ms, 12);

    assert!(store.redeliver(first[0].id, at(100)).await.unwrap());
    assert!(!store.redeliver(987_654, at(100)).await.unwrap());
    let redelivered = store.claim_deliveries(at(100), at(130), 10).await.unwrap();
    assert_eq!(
        redelivered[0].failed_in_round, 0,
        "a redelivery starts a new round"
    );
    assert!(
        store
            .record_attempt(attempt(NextStep::Delivered, Some(204), None))
            .await
            .unwrap()
    );
    let listed = store
        .list_deliveries(a.id, t.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (listed[0].status.as_str(), listed[0].attempts.len()),
        ("delivered", 3)
    );
    assert!(
        store
            .claim_deliveries(at(1000), at(2000), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_claims_take_disjoint_deliveries(store: Arc<impl WebhookStoreUnderTest>) {
    let a = agent(&*store, "a").await;
    for _ in 0..10 {
        let t = task_with_hook(&*store, a.id, Some(hook("https://h.example/"))).await;
        assert!(finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    }
    let claims: Vec<_> = (0..5)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_deliveries(at(3), at(60), 3).await.unwrap() })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for claim in claims {
        for due in claim.await.unwrap() {
            assert!(seen.insert(due.id), "delivery {} claimed twice", due.id);
        }
    }
    for due in store.claim_deliveries(at(3), at(60), 100).await.unwrap() {
        assert!(seen.insert(due.id), "delivery {} claimed twice", due.id);
    }
    assert_eq!(seen.len(), 10);
}

async fn the_running_turn_limit_per_agent_holds_under_concurrent_claims(store: Arc<impl Store>) {
    let a = agent(&*store, "limited").await;
    let other = agent(&*store, "other").await;
    let capped = |agent: AgentId, text: String| NewTask {
        push: None,
        agent_id: agent,
        message: user(&text),
        metadata: Metadata::new(),
        now: at(1),
        lease: lease(),
        idempotency: None,
        webhook: None,
        max_running_per_agent: Some(3),
    };
    let claims: Vec<_> = (0..10)
        .map(|i| {
            let (store, new) = (store.clone(), capped(a.id, format!("t{i}")));
            tokio::spawn(async move { store.create_task(new).await })
        })
        .collect();
    let (mut started_turns, mut refused) = (Vec::new(), 0);
    for claim in claims {
        match claim.await.unwrap() {
            Ok(claim) => started_turns.push(started(claim)),
            Err(ClaimError::TooManyRunningTurns(3)) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (started_turns.len(), refused),
        (3, 7),
        "never more than the limit"
    );
    started(
        store
            .create_task(capped(other.id, "free".into()))
            .await
            .unwrap(),
    );

    // An idle task of the agent cannot start a turn either, until one ends.
    assert!(finish(&*store, &started_turns[0], TurnOutcome::Completed, vec![]).await);
    let mut next = append(a.id, started_turns[0].task_id, "again");
    next.max_running_per_agent = Some(3);
    started(store.append_and_claim(next.clone()).await.unwrap());
    let mut over = append(a.id, started_turns[0].task_id, "over");
    over.max_running_per_agent = Some(3);
    assert!(matches!(
        store.append_and_claim(over).await,
        Err(ClaimError::TaskBusy(_))
    ));
    let more = store.create_task(capped(a.id, "more".into())).await;
    assert!(
        matches!(more, Err(ClaimError::TooManyRunningTurns(3))),
        "{more:?}"
    );
}

async fn agents_are_listed_updated_and_their_keys_listed_with_last_use(store: Arc<impl Store>) {
    let first = agent(&*store, "first").await;
    let second = agent(&*store, "second").await;
    let third = agent(&*store, "third").await;
    let page = store
        .list_agents(PageRequest {
            limit: 2,
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|a| a.id).collect::<Vec<_>>(),
        [first.id, second.id]
    );
    let rest = store
        .list_agents(PageRequest {
            limit: 2,
            after: page.next_after,
        })
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|a| a.id).collect::<Vec<_>>(),
        [third.id]
    );
    assert_eq!(rest.next_after, None);

    let hook = WebhookEndpoint {
        url: "https://agent.example/".into(),
        secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
    };
    let policy = TurnPolicy {
        on_busy: OnBusy::Reject,
        on_interrupt: OnInterrupt::Fail,
        max_attempts: 1,
        turn_timeout_ms: 9000,
    };
    let updated = store
        .update_agent(
            second.id,
            AgentUpdate {
                card: None,
                name: Some("renamed".into()),
                policy: Some(policy),
                webhook: Some(Some(hook.clone())),
                runner: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            updated.name.as_str(),
            updated.policy,
            updated.webhook.clone()
        ),
        ("renamed", policy, Some(hook))
    );
    assert_eq!(updated.runner, second.runner, "untouched");
    assert_eq!(store.get_agent(second.id).await.unwrap(), Some(updated));
    let removed = store
        .update_agent(
            second.id,
            AgentUpdate {
                card: None,
                webhook: Some(None),
                ..AgentUpdate::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((removed.webhook, removed.name.as_str()), (None, "renamed"));
    assert_eq!(
        store
            .update_agent(AgentId(987_654), AgentUpdate::default())
            .await
            .unwrap(),
        None
    );

    for (prefix, hash) in [("p1", "h1"), ("p2", "h2")] {
        store
            .create_api_key(NewApiKey {
                agent_id: first.id,
                prefix: prefix.into(),
                secret_hash: hash.into(),
                created_at: at(1),
            })
            .await
            .unwrap();
    }
    let keys = store.list_api_keys(first.id).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.prefix.as_str()).collect::<Vec<_>>(),
        ["p1", "p2"]
    );
    assert!(keys.iter().all(|k| k.last_used_at.is_none()));
    store.touch_api_key(keys[1].id, at(7)).await.unwrap();
    let keys = store.list_api_keys(first.id).await.unwrap();
    assert_eq!(
        (keys[0].last_used_at, keys[1].last_used_at),
        (None, Some(at(7)))
    );
    assert!(store.list_api_keys(third.id).await.unwrap().is_empty());
}
