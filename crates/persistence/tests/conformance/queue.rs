//! The busy task's queue: messages sent while a turn runs, by `on_busy`.

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_domain::*;

use super::{
    Store, agent, all_events, at, finish, history, holder, lease, new_task, record, started, texts,
};

fn sent(agent: AgentId, task: TaskId, text: &str, on_busy: OnBusy) -> NewAppend {
    NewAppend {
        push: None,
        on_busy,
        ..super::append(agent, task, text)
    }
}

/// The answer to a message the store must accept.
async fn accept(store: &impl Store, append: NewAppend) -> Accepted {
    started(store.append_and_claim(append).await.unwrap())
}

/// Ends the turn as its player would, starting the next queued message under
/// [`lease`]; what the end did.
async fn end(store: &impl Store, task: TaskId, turn: TurnId, outcome: TurnOutcome) -> Ended {
    store
        .finish_turn(FinishTurn {
            task_id: task,
            turn_id: turn,
            outcome,
            output: vec![OutputOp::Message(Content::text(format!("reply {turn}")))],
            usage: None,
            guard: LeaseGuard::Holder(holder()),
            now: at(3),
            next: Some(lease()),
        })
        .await
        .unwrap()
        .expect("the turn ran")
}

async fn queued_count(store: &impl Store, agent: AgentId, task: TaskId) -> u32 {
    store.get_task(agent, task).await.unwrap().unwrap().queued
}

pub(crate) async fn enqueued_messages_start_their_turns_in_order_as_turns_end(
    store: Arc<impl Store>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let second = accept(&*store, sent(a.id, t.task_id, "second", OnBusy::Enqueue)).await;
    assert_eq!(second.status, AcceptedStatus::Queued);
    assert_eq!(second.turn_id, None, "no turn until it starts");
    let second_ref = second.queued.expect("a queued message has an id");
    assert_eq!(second_ref.position, Some(1));
    let third = accept(&*store, sent(a.id, t.task_id, "third", OnBusy::Enqueue)).await;
    let third_ref = third.queued.unwrap();
    assert_eq!(third_ref.position, Some(2));
    // `reject` still refuses, and stores nothing.
    let busy = store
        .append_and_claim(sent(a.id, t.task_id, "no", OnBusy::Reject))
        .await
        .unwrap_err();
    assert!(matches!(busy, ClaimError::TaskBusy(active) if Some(active.turn_id) == t.turn_id));
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 2);
    let queue = store.list_queue(a.id, t.task_id).await.unwrap().unwrap();
    let listed: Vec<_> = queue
        .iter()
        .map(|q| (q.id, q.status, q.position, q.message.content.clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                second_ref.id,
                QueuedStatus::Queued,
                Some(1),
                Content::text("second")
            ),
            (
                third_ref.id,
                QueuedStatus::Queued,
                Some(2),
                Content::text("third")
            ),
        ]
    );
    assert_eq!(
        texts(&history(&*store, a.id, t.task_id).await),
        ["first"],
        "a queued message is not in the history before its turn"
    );

    // The first turn's end starts the second message's turn, in the same write.
    let ended = end(
        &*store,
        t.task_id,
        t.turn_id.unwrap(),
        TurnOutcome::Completed,
    )
    .await;
    let next = ended.next.expect("the queue's head started");
    assert_eq!(next.task_id, t.task_id);
    assert_eq!(next.agent_id, a.id);
    assert_eq!(next.attempt, 1);
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.latest_turn.id, next.turn_id);
    assert_eq!(view.status(), TaskStatus::Running);
    assert_eq!(view.task.input, Content::text("second"));
    assert_eq!(view.queued, 1);
    let started_second = store
        .get_queued(a.id, t.task_id, second_ref.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(started_second.status, QueuedStatus::Started);
    assert_eq!(started_second.turn_id, Some(next.turn_id));
    assert_eq!(started_second.ended_at, Some(at(3)));
    let messages = history(&*store, a.id, t.task_id).await;
    assert_eq!(
        texts(&messages),
        ["first", &format!("reply {}", t.turn_id.unwrap()), "second"]
    );
    assert_eq!(started_second.message_id, Some(messages[2].id));
    assert_eq!(messages[2].turn_id, next.turn_id);
    // The turn is played with the metadata of the request that queued it.
    let input = store
        .load_turn_input(t.task_id, next.turn_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(input.metadata["turn"], "second");
    let events = all_events(&*store, a.id, t.task_id).await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        [EventKind::Final, EventKind::TurnStarted]
    );
    let turn_started = events.last().unwrap();
    assert_eq!(turn_started.turn_id, next.turn_id);
    assert_eq!(turn_started.data["queued_message_id"], second_ref.id.0);
    assert_eq!(turn_started.data["input"]["content"]["content"], "second");

    // A failed turn hands the queue on too.
    let ended = end(
        &*store,
        t.task_id,
        next.turn_id,
        TurnOutcome::failed("boom", "it failed"),
    )
    .await;
    let last = ended.next.expect("a failed turn does not strand the queue");
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.latest_turn.id, last.turn_id);
    assert_eq!(view.task.input, Content::text("third"));
    assert_eq!(view.queued, 0);
    let ended = end(&*store, t.task_id, last.turn_id, TurnOutcome::Completed).await;
    assert_eq!(ended.next, None, "the queue is empty");
    assert!(
        store
            .list_queue(a.id, t.task_id)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn a_turn_waiting_for_tool_answers_keeps_the_queue_until_it_ends(
    store: Arc<impl Store>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let queued = accept(&*store, sent(a.id, t.task_id, "later", OnBusy::Enqueue)).await;
    let ended = store
        .finish_turn(FinishTurn {
            task_id: t.task_id,
            turn_id: t.turn_id.unwrap(),
            outcome: TurnOutcome::RequiresAction {
                respond_by: at(100),
            },
            output: vec![OutputOp::Message(super::tool_request("call-1"))],
            usage: None,
            guard: LeaseGuard::Holder(holder()),
            now: at(3),
            next: Some(lease()),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.next, None, "the task waits for the client's answers");
    // Another message while it waits is queued behind the first.
    let also = accept(&*store, sent(a.id, t.task_id, "also", OnBusy::Enqueue)).await;
    assert_eq!(also.status, AcceptedStatus::Queued);
    assert_eq!(also.queued.unwrap().position, Some(2));
    // Cancelling the waiting turn ends it: the queue's head starts.
    let cancelled = store
        .finish_turn(FinishTurn {
            task_id: t.task_id,
            turn_id: t.turn_id.unwrap(),
            outcome: TurnOutcome::Cancelled,
            output: vec![],
            usage: None,
            guard: LeaseGuard::Anyone,
            now: at(4),
            next: Some(lease()),
        })
        .await
        .unwrap()
        .unwrap();
    let next = cancelled.next.expect("the queue's head started");
    let first = store
        .get_queued(a.id, t.task_id, queued.queued.unwrap().id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, QueuedStatus::Started);
    assert_eq!(first.turn_id, Some(next.turn_id));
}

pub(crate) async fn interrupt_cancels_the_running_turn_and_starts_its_own_in_one_step(
    store: Arc<impl Store>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    assert!(
        store
            .record_output(record(&t, vec![super::delta("half an ans")]))
            .await
            .unwrap()
    );
    let queued = accept(&*store, sent(a.id, t.task_id, "queued", OnBusy::Enqueue)).await;
    let now = accept(
        &*store,
        sent(a.id, t.task_id, "stop, do this", OnBusy::Interrupt),
    )
    .await;
    assert_eq!(now.status, AcceptedStatus::Running);
    assert_eq!(now.interrupted, t.turn_id);
    let new_turn = now.turn_id.unwrap();
    assert_ne!(Some(new_turn), t.turn_id);
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.latest_turn.id, new_turn);
    assert_eq!(view.status(), TaskStatus::Running);
    assert_eq!(
        view.queued, 1,
        "the queue waits behind the interrupting turn"
    );
    let messages = history(&*store, a.id, t.task_id).await;
    assert_eq!(texts(&messages), ["first", "half an ans", "stop, do this"]);
    assert_eq!(
        messages[1].streaming_status,
        Some(StreamingStatus::Done),
        "the interrupted turn keeps its partial text, closed"
    );
    let events = all_events(&*store, a.id, t.task_id).await;
    let tail: Vec<(EventKind, TurnId)> = events[events.len() - 2..]
        .iter()
        .map(|e| (e.kind, e.turn_id))
        .collect();
    assert_eq!(
        tail,
        [
            (EventKind::Cancelled, t.turn_id.unwrap()),
            (EventKind::TurnStarted, new_turn)
        ]
    );
    // The interrupted turn's player can no longer write or end it.
    assert!(!finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    assert_eq!(
        store
            .get_queued(a.id, t.task_id, queued.queued.unwrap().id)
            .await
            .unwrap()
            .unwrap()
            .status,
        QueuedStatus::Queued
    );

    // Concurrent interrupts: each ends the turn before it, one after another; no two
    // end the same turn, and exactly one turn runs at the end.
    let claims: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            let append = sent(
                a.id,
                t.task_id,
                &format!("interrupt {i}"),
                OnBusy::Interrupt,
            );
            tokio::spawn(async move { store.append_and_claim(append).await })
        })
        .collect();
    let mut interrupted = BTreeSet::new();
    let mut new_turns = BTreeSet::new();
    for claim in claims {
        let accepted = started(claim.await.unwrap().unwrap());
        assert!(
            interrupted.insert(accepted.interrupted.expect("each interrupts a turn")),
            "two interrupts ended the same turn"
        );
        new_turns.insert(accepted.turn_id.unwrap());
    }
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Running);
    let last = view.latest_turn.id;
    // The turns interrupted: the one running before, and every new one but the last.
    let mut expected: BTreeSet<TurnId> = new_turns.iter().copied().filter(|t| *t != last).collect();
    expected.insert(new_turn);
    assert_eq!(interrupted, expected);
}

pub(crate) async fn steered_messages_are_delivered_into_the_turn_or_queued_when_it_ends(
    store: Arc<impl Store>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let turn = t.turn_id.unwrap();
    let steer = accept(&*store, sent(a.id, t.task_id, "also this", OnBusy::Steer)).await;
    assert_eq!(steer.status, AcceptedStatus::Steering);
    assert_eq!(steer.turn_id, Some(turn), "it waits for the running turn");
    let steer_ref = steer.queued.unwrap();
    assert_eq!(steer_ref.position, None);
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 1);
    // Another agent, or another attempt, takes nothing.
    let b = agent(&*store, "b").await;
    assert_eq!(
        store
            .take_steered(b.id, t.task_id, turn, 1, at(2))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .take_steered(a.id, t.task_id, turn, 2, at(2))
            .await
            .unwrap(),
        None
    );
    assert!(store.has_steered(turn).await.unwrap());
    let delivered = store
        .take_steered(a.id, t.task_id, turn, 1, at(2))
        .await
        .unwrap()
        .expect("the turn runs");
    assert!(!store.has_steered(turn).await.unwrap());
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].content, Content::text("also this"));
    assert_eq!(delivered[0].turn_id, turn);
    assert_eq!(delivered[0].role, Role::User);
    assert_eq!(
        store
            .take_steered(a.id, t.task_id, turn, 1, at(2))
            .await
            .unwrap(),
        Some(vec![]),
        "delivered once"
    );
    let events = all_events(&*store, a.id, t.task_id).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, EventKind::MessageDelivered);
    assert_eq!(last.data["queued_message_id"], steer_ref.id.0);
    assert_eq!(last.data["message"]["message_id"], delivered[0].id.0);
    let found = store
        .get_queued(a.id, t.task_id, steer_ref.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.status, QueuedStatus::Delivered);
    assert_eq!(found.turn_id, Some(turn));
    assert_eq!(found.message_id, Some(delivered[0].id));
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 0);
    assert_eq!(
        texts(&history(&*store, a.id, t.task_id).await),
        ["first", "also this"]
    );

    // Steered but not taken before the turn ends: it starts a turn of its own.
    let late = accept(&*store, sent(a.id, t.task_id, "too late", OnBusy::Steer)).await;
    let ended = end(&*store, t.task_id, turn, TurnOutcome::Completed).await;
    let next = ended.next.expect("the untaken message starts its turn");
    let found = store
        .get_queued(a.id, t.task_id, late.queued.unwrap().id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.mode, QueueMode::Steer);
    assert_eq!(found.status, QueuedStatus::Started);
    assert_eq!(found.turn_id, Some(next.turn_id));
    assert_eq!(
        store
            .take_steered(a.id, t.task_id, turn, 1, at(4))
            .await
            .unwrap(),
        None,
        "the ended turn takes nothing"
    );
}

pub(crate) async fn queued_messages_can_be_cancelled_until_they_start(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let enqueue = |text: &str| {
        let store = store.clone();
        let append = sent(a.id, t.task_id, text, OnBusy::Enqueue);
        async move { started(store.append_and_claim(append).await.unwrap()) }
    };
    let second = enqueue("second").await.queued.unwrap().id;
    let third = enqueue("third").await.queued.unwrap().id;
    let cancelled = store
        .cancel_queued(a.id, t.task_id, second, at(2))
        .await
        .unwrap();
    let QueueCancel::Cancelled(found) = cancelled else {
        panic!("expected a cancel, got {cancelled:?}");
    };
    assert_eq!(found.status, QueuedStatus::Cancelled);
    assert_eq!(found.ended_at, Some(at(2)));
    assert!(
        matches!(
            store.cancel_queued(a.id, t.task_id, second, at(3)).await.unwrap(),
            QueueCancel::Cancelled(again) if again.ended_at == Some(at(2))
        ),
        "cancelling again answers the same"
    );
    let queue = store.list_queue(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(
        queue.iter().map(|q| (q.id, q.position)).collect::<Vec<_>>(),
        [(third, Some(1))]
    );
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 1);
    // Another agent's task, or no such message: not found.
    let b = agent(&*store, "b").await;
    assert_eq!(
        store
            .cancel_queued(b.id, t.task_id, third, at(3))
            .await
            .unwrap(),
        QueueCancel::NotFound
    );
    assert_eq!(
        store.get_queued(b.id, t.task_id, third).await.unwrap(),
        None
    );
    assert_eq!(store.list_queue(b.id, t.task_id).await.unwrap(), None);
    assert_eq!(
        store
            .cancel_queued(a.id, t.task_id, QueuedMessageId(999_999), at(3))
            .await
            .unwrap(),
        QueueCancel::NotFound
    );
    // The cancelled message never starts; the next does, and then it is too late.
    let next = end(
        &*store,
        t.task_id,
        t.turn_id.unwrap(),
        TurnOutcome::Completed,
    )
    .await
    .next
    .unwrap();
    assert_eq!(
        store
            .get_queued(a.id, t.task_id, third)
            .await
            .unwrap()
            .unwrap()
            .turn_id,
        Some(next.turn_id)
    );
    assert!(matches!(
        store.cancel_queued(a.id, t.task_id, third, at(5)).await.unwrap(),
        QueueCancel::TooLate(found) if found.status == QueuedStatus::Started
    ));
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 0);
}

pub(crate) async fn a_full_queue_refuses_and_stores_nothing(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let small = |text: &str| NewAppend {
        push: None,
        max_queued: 2,
        ..sent(a.id, t.task_id, text, OnBusy::Enqueue)
    };
    for text in ["one", "two"] {
        store.append_and_claim(small(text)).await.unwrap();
    }
    let full = store.append_and_claim(small("three")).await.unwrap_err();
    assert!(matches!(full, ClaimError::QueueFull(2)), "{full:?}");
    let steer_full = store
        .append_and_claim(NewAppend {
            push: None,
            on_busy: OnBusy::Steer,
            ..small("three")
        })
        .await
        .unwrap_err();
    assert!(matches!(steer_full, ClaimError::QueueFull(2)));
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 2);
    assert_eq!(
        store
            .list_queue(a.id, t.task_id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );
}

pub(crate) async fn a_queue_left_by_a_stopping_instance_is_started_by_a_sweep(
    store: Arc<impl Store>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let busy = new_task(&*store, a.id, "still running").await;
    store
        .append_and_claim(sent(a.id, t.task_id, "second", OnBusy::Enqueue))
        .await
        .unwrap();
    store
        .append_and_claim(sent(a.id, busy.task_id, "waits", OnBusy::Enqueue))
        .await
        .unwrap();
    // Nothing to start with: no sweep starts a queue whose task is busy.
    assert!(
        store
            .start_stalled_queues(lease(), at(5), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A stopping instance ends its turn without starting the next.
    assert!(finish(&*store, &t, TurnOutcome::Completed, vec![]).await);
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.status(), TaskStatus::Completed);
    assert_eq!(view.queued, 1);
    let swept = store
        .start_stalled_queues(lease(), at(5), 10)
        .await
        .unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].task_id, t.task_id);
    assert_eq!(swept[0].agent_id, a.id);
    let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
    assert_eq!(view.latest_turn.id, swept[0].turn_id);
    assert_eq!(view.status(), TaskStatus::Running);
    assert_eq!(view.task.input, Content::text("second"));
    assert!(
        store
            .start_stalled_queues(lease(), at(6), 10)
            .await
            .unwrap()
            .is_empty(),
        "started once"
    );
}

pub(crate) async fn a_queued_append_replays_its_first_answer(store: Arc<impl Store>) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let keyed = || NewAppend {
        push: None,
        idempotency: super::key("k-1", "h-1", 1000),
        ..sent(a.id, t.task_id, "second", OnBusy::Enqueue)
    };
    let first = started(store.append_and_claim(keyed()).await.unwrap());
    assert_eq!(first.status, AcceptedStatus::Queued);
    match store.append_and_claim(keyed()).await.unwrap() {
        Claim::Replayed(again) => assert_eq!(again, first),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 1);
    // Still replayed after the message started its turn: the first answer, as it was.
    end(
        &*store,
        t.task_id,
        t.turn_id.unwrap(),
        TurnOutcome::Completed,
    )
    .await;
    assert!(matches!(
        store.append_and_claim(keyed()).await.unwrap(),
        Claim::Replayed(again) if again == first
    ));
}

pub(crate) async fn fifty_concurrent_enqueues_are_stored_once_and_start_in_order(
    store: Arc<impl Store + 'static>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let claims: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            let append = sent(a.id, t.task_id, &format!("m{i}"), OnBusy::Enqueue);
            tokio::spawn(async move { store.append_and_claim(append).await })
        })
        .collect();
    let mut accepted = Vec::new();
    for claim in claims {
        accepted.push(started(claim.await.unwrap().unwrap()));
    }
    let ids: BTreeSet<QueuedMessageId> = accepted.iter().map(|q| q.queued.unwrap().id).collect();
    assert_eq!(ids.len(), 50, "each stored once");
    let positions: BTreeSet<u32> = accepted
        .iter()
        .map(|q| q.queued.unwrap().position.unwrap())
        .collect();
    assert_eq!(positions, (1..=50).collect(), "each had its own place");
    // Played one after another, in the order they were queued.
    let mut order: Vec<(QueuedMessageId, String)> = accepted
        .iter()
        .map(|q| {
            (
                q.queued.unwrap().id,
                q.metadata["turn"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    order.sort();
    let mut turn = t.turn_id.unwrap();
    let mut inputs = Vec::new();
    loop {
        let Some(next) = end(&*store, t.task_id, turn, TurnOutcome::Completed)
            .await
            .next
        else {
            break;
        };
        let view = store.get_task(a.id, t.task_id).await.unwrap().unwrap();
        inputs.push(view.task.input.as_text().unwrap().to_owned());
        turn = next.turn_id;
    }
    let expected: Vec<String> = order.into_iter().map(|(_, text)| text).collect();
    assert_eq!(inputs, expected);
    assert_eq!(queued_count(&*store, a.id, t.task_id).await, 0);
}

pub(crate) async fn a_queued_messages_turn_keeps_its_requests_webhook(
    store: Arc<impl super::WebhookStoreUnderTest>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "first").await;
    let queued = NewAppend {
        push: None,
        webhook: Some(super::hook("https://queued.example/hook")),
        ..sent(a.id, t.task_id, "second", OnBusy::Enqueue)
    };
    store.append_and_claim(queued).await.unwrap();
    let next = end(
        &*store,
        t.task_id,
        t.turn_id.unwrap(),
        TurnOutcome::Completed,
    )
    .await
    .next
    .unwrap();
    end(&*store, t.task_id, next.turn_id, TurnOutcome::Completed).await;
    let deliveries = store
        .list_deliveries(a.id, t.task_id)
        .await
        .unwrap()
        .unwrap();
    let to_queued: Vec<_> = deliveries
        .iter()
        .filter(|d| d.url == "https://queued.example/hook")
        .collect();
    assert_eq!(to_queued.len(), 1, "{deliveries:?}");
    assert_eq!(to_queued[0].turn_id, next.turn_id.0);
    assert_eq!(to_queued[0].event_type, "turn.completed");
}

pub(crate) async fn an_interrupt_racing_the_turns_own_end_never_deadlocks(
    store: Arc<impl Store + 'static>,
) {
    let a = agent(&*store, "a").await;
    let t = new_task(&*store, a.id, "r0").await;
    let mut turn = t.turn_id.unwrap();
    for round in 1..=20 {
        // The player ends its turn (output and all) while an interrupt arrives.
        let finish = FinishTurn {
            task_id: t.task_id,
            turn_id: turn,
            outcome: TurnOutcome::Completed,
            output: vec![
                super::delta("some text"),
                OutputOp::Message(Content::text("done")),
            ],
            usage: None,
            guard: LeaseGuard::Holder(holder()),
            now: at(3),
            next: Some(lease()),
        };
        let ending = {
            let store = store.clone();
            tokio::spawn(async move { store.finish_turn(finish).await })
        };
        let interrupting = {
            let store = store.clone();
            let append = sent(a.id, t.task_id, &format!("r{round}"), OnBusy::Interrupt);
            tokio::spawn(async move { store.append_and_claim(append).await })
        };
        let ended = ending
            .await
            .unwrap()
            .expect("the end is never a deadlock's victim");
        let accepted = started(interrupting.await.unwrap().unwrap());
        // Exactly one of them ended the turn.
        match accepted.interrupted {
            Some(interrupted) => {
                assert_eq!(interrupted, turn);
                assert_eq!(ended, None, "round {round}");
            }
            None => assert!(ended.is_some(), "round {round}"),
        }
        turn = accepted.turn_id.unwrap();
    }
}
