//! Migrations on a database that already holds data: the SQLite rebuild of `turns` and
//! `events` (for `requires_action`) keeps every row and every foreign key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use baton_domain::*;
use baton_persistence::{SqlStore, StoreOptions};
use diesel::connection::SimpleConnection;
use diesel::{Connection, sqlite::SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_turns_and_events_keeps_them_through_the_tool_calls_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    {
        // The schema as the previous release left it, with a finished conversation.
        let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.batch_execute("PRAGMA foreign_keys = ON;").unwrap();
        for _ in 0..6 {
            conn.run_next_migration(MIGRATIONS).unwrap();
        }
        conn.batch_execute(
            r#"
            INSERT INTO agents (id, name, runner_kind, runner_config, created_at) VALUES (1, 'a', 'echo', '{}', 0);
            INSERT INTO tasks (id, agent_id, metadata, input, created_at, updated_at, last_seq)
                VALUES (1, 1, '{}', '{"type":"text","format":"plain","content":"hi"}', 0, 5, 2);
            INSERT INTO turns (id, task_id, status, metadata, started_at, ended_at, attempt, usage)
                VALUES (1, 1, 'completed', '{}', 0, 5, 1, '{"input_tokens":1,"output_tokens":2,"total_tokens":3}');
            INSERT INTO messages (id, task_id, turn_id, role, content, created_at)
                VALUES (1, 1, 1, 'user', '{"type":"text","format":"plain","content":"hi"}', 0),
                       (2, 1, 1, 'assistant', '{"type":"text","format":"plain","content":"echo: hi"}', 5);
            INSERT INTO events (task_id, seq, turn_id, kind, data, created_at)
                VALUES (1, 1, 1, 'turn_started', '{}', 0), (1, 2, 1, 'final', '{}', 5);
            "#,
        )
        .unwrap();
    }

    let url = format!("sqlite://{}", path.display());
    let (store, applied) = SqlStore::open(&url, StoreOptions::default()).await.unwrap();
    assert_eq!(
        applied.first().map(|v| v.to_string()).as_deref(),
        Some("20261122000007"),
        "{applied:?}"
    );
    let view = store
        .get_task(AgentId(1), TaskId(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status(), TaskStatus::Completed);
    assert_eq!(view.latest_turn.usage.map(|u| u.total_tokens), Some(3));
    assert_eq!(
        view.latest_agent_message.unwrap().content,
        Content::text("echo: hi")
    );
    let events = store
        .list_events(AgentId(1), TaskId(1), 0, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(events.events.len(), 2);

    // The foreign keys still point at the rebuilt tables and are enforced.
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute("PRAGMA foreign_keys = ON;").unwrap();
    let orphan = conn.batch_execute(
        "INSERT INTO messages (task_id, turn_id, role, content, created_at) VALUES (1, 99, 'user', '{}', 0);",
    );
    assert!(orphan.is_err(), "a message of no turn must be refused");
    let orphan = conn.batch_execute(
        "INSERT INTO events (task_id, seq, turn_id, kind, data, created_at) VALUES (1, 3, 99, 'final', '{}', 0);",
    );
    assert!(orphan.is_err(), "an event of no turn must be refused");
    let waiting = conn.batch_execute(
        "INSERT INTO turns (task_id, status, metadata, started_at) VALUES (1, 'requires_action', '{}', 0);",
    );
    assert!(waiting.is_ok(), "{waiting:?}");
}
