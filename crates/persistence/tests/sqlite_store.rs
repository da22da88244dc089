//! The storage ports on a real SQLite file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::sync::Arc;

use baton_domain::*;
use baton_persistence::{SqlStore, StoreOptions};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

struct Db {
    store: Arc<SqlStore>,
    dir: tempfile::TempDir,
}

async fn open() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let (store, applied) = SqlStore::open(&url, StoreOptions::default()).await.unwrap();
    assert!(!applied.is_empty(), "a new database gets every migration");
    Db {
        store: Arc::new(store),
        dir,
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 123_456_000)
        .single()
        .unwrap()
}

async fn agent(store: &SqlStore, name: &str) -> Agent {
    store
        .create_agent(NewAgent {
            name: name.into(),
            runner: RunnerSpec {
                kind: "echo".into(),
                config: json!({"delay_ms": 5}),
            },
            created_at: at(0),
        })
        .await
        .unwrap()
}

fn user(text: &str) -> NewMessage {
    NewMessage {
        role: Role::User,
        content: Content::text(text),
    }
}

async fn new_task(store: &SqlStore, agent: AgentId, text: &str) -> Accepted {
    store
        .create_task(NewTask {
            agent_id: agent,
            message: user(text),
            metadata: json!({"k": "v"}).as_object().cloned().unwrap(),
            now: at(1),
        })
        .await
        .unwrap()
}

fn append(agent: AgentId, task: TaskId, text: &str) -> NewAppend {
    NewAppend {
        agent_id: agent,
        task_id: task,
        message: user(text),
        metadata: Metadata::new(),
        now: at(2),
    }
}

async fn finish(store: &SqlStore, accepted: &Accepted, outcome: TurnOutcome, reply: &str) -> bool {
    store
        .finish_turn(FinishTurn {
            task_id: accepted.task_id,
            turn_id: accepted.turn_id,
            outcome,
            messages: vec![Content::text(reply)],
            now: at(3),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn created_task_is_running_with_its_message_and_timestamps_in_utc() {
    let db = open().await;
    let a = agent(&db.store, "a").await;
    let accepted = new_task(&db.store, a.id, "hello").await;
    assert_eq!(accepted.accepted_at, at(1));

    let view = db
        .store
        .get_task(a.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status(), TaskStatus::Running);
    assert_eq!(view.latest_turn.id, accepted.turn_id);
    assert_eq!(
        view.latest_turn.started_at,
        at(1),
        "microseconds survive the round trip"
    );
    assert_eq!(view.task.metadata["k"], "v");
    assert_eq!(view.task.input, Content::text("hello"));
    assert!(view.latest_agent_message.is_none());

    let (task, history) = db
        .store
        .load_turn_input(accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.id, accepted.task_id);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].role, Role::User);
    assert_eq!(history[0].turn_id, accepted.turn_id);
}

#[tokio::test]
async fn append_while_running_is_busy_naming_the_turn_and_stores_nothing() {
    let db = open().await;
    let a = agent(&db.store, "a").await;
    let first = new_task(&db.store, a.id, "one").await;

    let err = db
        .store
        .append_and_claim(append(a.id, first.task_id, "two"))
        .await
        .unwrap_err();
    let ClaimError::TaskBusy(active) = err else {
        panic!("expected busy, got {err:?}");
    };
    assert_eq!(active.turn_id, first.turn_id);
    assert_eq!(active.started_at, at(1));
    let page = db
        .store
        .list_messages(a.id, first.task_id, PageRequest::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.items.len(), 1, "the refused message was not stored");
}

#[tokio::test]
async fn finished_turn_frees_the_task_and_late_output_is_discarded() {
    let db = open().await;
    let a = agent(&db.store, "a").await;
    let first = new_task(&db.store, a.id, "one").await;
    assert!(finish(&db.store, &first, TurnOutcome::Completed, "echo: one").await);
    assert!(
        !finish(&db.store, &first, TurnOutcome::Completed, "late").await,
        "an ended turn cannot end again"
    );

    let view = db
        .store
        .get_task(a.id, first.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status(), TaskStatus::Completed);
    assert_eq!(view.latest_turn.ended_at, Some(at(3)));
    let reply = view.latest_agent_message.unwrap();
    assert_eq!(reply.content, Content::text("echo: one"));
    assert_eq!(reply.role, Role::Assistant);

    let second = db
        .store
        .append_and_claim(append(a.id, first.task_id, "two"))
        .await
        .unwrap();
    assert_ne!(second.turn_id, first.turn_id);
    let failed = TurnOutcome::Failed(TurnError {
        code: "boom".into(),
        message: "it broke".into(),
    });
    assert!(finish(&db.store, &second, failed.clone(), "partial").await);
    let view = db
        .store
        .get_task(a.id, first.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status(), TaskStatus::Failed);
    assert_eq!(view.task.input, Content::text("two"));
    assert_eq!(view.latest_turn.error.as_ref().unwrap().code, "boom");

    let history = db
        .store
        .list_messages(a.id, first.task_id, PageRequest::default())
        .await
        .unwrap()
        .unwrap();
    let texts: Vec<_> = history
        .items
        .iter()
        .map(|m| m.content.as_text().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["one", "echo: one", "two", "partial"]);
}

#[tokio::test]
async fn fifty_concurrent_claims_on_one_idle_task_have_exactly_one_winner() {
    let db = open().await;
    let a = agent(&db.store, "a").await;
    let first = new_task(&db.store, a.id, "one").await;
    assert!(finish(&db.store, &first, TurnOutcome::Completed, "r").await);

    let claims = (0..50).map(|i| {
        let store = db.store.clone();
        tokio::spawn(async move {
            store
                .append_and_claim(append(a.id, first.task_id, &format!("m{i}")))
                .await
        })
    });
    let mut won = 0;
    let mut busy = 0;
    for claim in claims {
        match claim.await.unwrap() {
            Ok(_) => won += 1,
            Err(ClaimError::TaskBusy(_)) => busy += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((won, busy), (1, 49));
    let history = db
        .store
        .list_messages(a.id, first.task_id, PageRequest::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        history.items.len(),
        3,
        "only the winner's message was stored"
    );
}

#[tokio::test]
async fn another_agents_task_is_not_found_everywhere() {
    let db = open().await;
    let mine = agent(&db.store, "mine").await;
    let theirs = agent(&db.store, "theirs").await;
    let task = new_task(&db.store, theirs.id, "secret").await;
    assert!(
        db.store
            .get_task(mine.id, task.task_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        db.store
            .list_messages(mine.id, task.task_id, PageRequest::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        db.store
            .append_and_claim(append(mine.id, task.task_id, "x"))
            .await,
        Err(ClaimError::TaskNotFound)
    ));
    assert!(
        db.store
            .list_tasks(mine.id, PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn tasks_page_newest_first_and_messages_oldest_first() {
    let db = open().await;
    let a = agent(&db.store, "a").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(new_task(&db.store, a.id, &format!("t{i}")).await.task_id);
    }
    let first = db
        .store
        .list_tasks(
            a.id,
            PageRequest {
                limit: 2,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|v| v.task.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let second = db
        .store
        .list_tasks(
            a.id,
            PageRequest {
                limit: 2,
                after: first.next_after,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        second.items.iter().map(|v| v.task.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    let last = db
        .store
        .list_tasks(
            a.id,
            PageRequest {
                limit: 2,
                after: second.next_after,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        last.items.iter().map(|v| v.task.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert_eq!(last.next_after, None);
    // Exactly a full last page: no cursor to an empty page.
    let exact = db
        .store
        .list_tasks(
            a.id,
            PageRequest {
                limit: 5,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((exact.items.len(), exact.next_after), (5, None));
}

#[tokio::test]
async fn keys_are_found_by_hash_and_revoked_by_prefix_once() {
    let db = open().await;
    let a = agent(&db.store, "a").await;
    let key = db
        .store
        .create_api_key(NewApiKey {
            agent_id: a.id,
            prefix: "abcd1234".into(),
            secret_hash: "h1".into(),
            created_at: at(0),
        })
        .await
        .unwrap();
    assert_eq!(
        db.store.find_api_key("h1").await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(db.store.find_api_key("nope").await.unwrap(), None);
    let duplicate = db
        .store
        .create_api_key(NewApiKey {
            agent_id: a.id,
            prefix: "abcd1234".into(),
            secret_hash: "h2".into(),
            created_at: at(0),
        })
        .await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))));
    assert!(db.store.revoke_api_key("abcd1234", at(5)).await.unwrap());
    assert!(!db.store.revoke_api_key("abcd1234", at(6)).await.unwrap());
    assert_eq!(
        db.store
            .find_api_key("h1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(at(5))
    );
    assert_eq!(db.store.count_agents().await.unwrap(), 1);
}

#[tokio::test]
async fn data_survives_reopening_and_migrations_are_not_rerun() {
    let db = open().await;
    let a = agent(&db.store, "a").await;
    let accepted = new_task(&db.store, a.id, "kept").await;
    let url = format!("sqlite://{}", db.dir.path().join("baton.db").display());
    let (reopened, applied) = SqlStore::open(&url, StoreOptions::default()).await.unwrap();
    assert!(applied.is_empty());
    let view = reopened
        .get_task(a.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.task.input, Content::text("kept"));

    let interrupted = reopened
        .interrupt_running_turns(
            TurnError {
                code: "turn_interrupted".into(),
                message: "restart".into(),
            },
            at(9),
        )
        .await
        .unwrap();
    assert_eq!(interrupted, 1);
    let view = reopened
        .get_task(a.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status(), TaskStatus::Failed);
}
