//! SQLite's writer commits queued operations together: many share one transaction,
//! one failing operation rolls back alone, and nobody is answered before the commit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use baton_domain::*;
use baton_persistence::{SqlStore, StoreOptions};
use chrono::Utc;
use common::{echo_agent, lease, new_task};
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};

async fn open() -> (tempfile::TempDir, String, Arc<SqlStore>, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db").display().to_string();
    let (store, _) = SqlStore::open(&path, StoreOptions::default())
        .await
        .unwrap();
    let agent = store.create_agent(echo_agent("a")).await.unwrap();
    (dir, path, Arc::new(store), agent)
}

/// Holds SQLite's write lock from another connection, so the writer's next group
/// waits at `BEGIN IMMEDIATE` while operations queue behind it.
fn hold_write_lock(path: &str) -> SqliteConnection {
    let mut other = SqliteConnection::establish(path).unwrap();
    other.batch_execute("BEGIN IMMEDIATE").unwrap();
    other
}

/// Waits until the writer writes a group of `writing` and `waiting` operations wait.
async fn until(store: &SqlStore, writing: u64, waiting: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = store.writer_stats().unwrap();
        if stats.writing == writing && stats.waiting == waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stats:?} waiting for {writing}/{waiting}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_operations_share_one_commit_and_are_answered_only_after_it() {
    let (_dir, path, store, agent) = open().await;
    let before = store.writer_stats().unwrap();
    let mut lock = hold_write_lock(&path);

    // The first operation takes the writer, which waits for the lock; 63 queue.
    let mut creates = tokio::task::JoinSet::new();
    let create = |n: usize| {
        let store = store.clone();
        async move {
            store
                .create_task(new_task(agent.id, &format!("m{n}")))
                .await
        }
    };
    creates.spawn(create(0));
    until(&store, 1, 0).await;
    for n in 1..64 {
        creates.spawn(create(n));
    }
    until(&store, 1, 63).await;
    // None is answered while the lock is held: nothing is committed yet.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(creates.try_join_next().is_none(), "answered before commit");
    lock.batch_execute("COMMIT").unwrap();

    let mut tasks = Vec::new();
    while let Some(created) = creates.join_next().await {
        let Claim::Started(accepted) = created.unwrap().unwrap() else {
            panic!("no key, no replay")
        };
        tasks.push(accepted.task_id);
    }
    tasks.sort();
    tasks.dedup();
    assert_eq!(tasks.len(), 64);
    let after = store.writer_stats().unwrap();
    assert_eq!(after.operations - before.operations, 64);
    // The first few took the writer before the others came; the rest went together.
    assert_eq!(after.groups - before.groups, 2, "{after:?}");
    for task in tasks {
        assert!(store.get_task(agent.id, task).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_operation_rolls_back_alone_and_its_group_still_commits() {
    let (_dir, path, store, agent) = open().await;
    let agent_id = agent.id;
    let key = move |secret: &str| NewApiKey {
        agent_id,
        prefix: "bk_same".into(),
        secret_hash: secret.into(),
        created_at: Utc::now(),
    };
    store.create_api_key(key("first")).await.unwrap();
    let Claim::Started(running) = store.create_task(new_task(agent.id, "busy")).await.unwrap()
    else {
        panic!("no replay")
    };
    let before = store.writer_stats().unwrap();
    let mut lock = hold_write_lock(&path);

    // Something to hold the writer at BEGIN, then four operations in one group: two
    // that succeed around one refused by the domain (a busy task) and one refused by
    // the database (a unique index).
    let holder = tokio::spawn({
        let store = store.clone();
        async move { store.create_task(new_task(agent.id, "holder")).await }
    });
    until(&store, 1, 0).await;
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.create_task(new_task(agent.id, "before")).await }
    });
    until(&store, 1, 1).await;
    let busy = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .append_and_claim(NewAppend {
                    push: None,
                    max_queued: 100,
                    on_busy: OnBusy::Reject,
                    agent_id: agent.id,
                    task_id: running.task_id,
                    message: NewMessage {
                        role: Role::User,
                        content: Content::text("too soon"),
                        metadata: Default::default(),
                    },
                    metadata: Metadata::new(),
                    now: Utc::now(),
                    lease: lease(),
                    idempotency: None,
                    webhook: None,
                    max_running_per_agent: None,
                })
                .await
        }
    });
    until(&store, 1, 2).await;
    let duplicate = tokio::spawn({
        let store = store.clone();
        async move { store.create_api_key(key("second")).await }
    });
    until(&store, 1, 3).await;
    let last = tokio::spawn({
        let store = store.clone();
        async move { store.create_task(new_task(agent.id, "after")).await }
    });
    until(&store, 1, 4).await;
    lock.batch_execute("COMMIT").unwrap();

    holder.await.unwrap().unwrap();
    let first = first.await.unwrap().unwrap();
    let last = last.await.unwrap().unwrap();
    match busy.await.unwrap() {
        Err(ClaimError::TaskBusy(active)) => assert_eq!(active.turn_id, running.turn_id.unwrap()),
        other => panic!("expected busy, got {other:?}"),
    }
    match duplicate.await.unwrap() {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    let after = store.writer_stats().unwrap();
    assert_eq!(after.operations - before.operations, 5);
    assert_eq!(after.groups - before.groups, 2, "{after:?}");
    for claim in [first, last] {
        let task = claim.accepted().task_id;
        let view = store.get_task(agent.id, task).await.unwrap().unwrap();
        assert_eq!(view.status(), TaskStatus::Running);
    }
    // The refused ones left nothing behind.
    let messages = store
        .list_messages(agent.id, running.task_id, PageRequest::default())
        .await
        .unwrap()
        .unwrap()
        .page;
    assert_eq!(messages.items.len(), 1);
    let keys = store.list_api_keys(agent.id).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].secret_hash, "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_closes_the_writer_so_its_log_is_checkpointed_into_the_file() {
    let (dir, path, store, agent) = open().await;
    store.create_task(new_task(agent.id, "kept")).await.unwrap();
    drop(store);
    // The last connection to close folds the write-ahead log into the database file
    // and removes it: a copy of the file alone (as a backup script might take)
    // holds everything.
    let wal = dir.path().join("baton.db-wal");
    assert!(!wal.exists(), "{} is still there", wal.display());
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let (copied, _) = SqlStore::open(copy.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    let tasks = copied
        .list_tasks(agent.id, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(tasks.items.len(), 1);
}

#[test]
fn sqlite_is_built_with_a_stable_query_plan_so_statements_with_a_limit_stay_prepared() {
    // Without it, binding a `LIMIT ?` (every `.first()`, every page) marks the
    // prepared statement for a new plan, and SQLite compiles it again on each run.
    // The flag comes from `.cargo/config.toml` (LIBSQLITE3_FLAGS).
    #[derive(diesel::QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }
    use diesel::RunQueryDsl;
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let options: Vec<CompileOption> = diesel::sql_query("PRAGMA compile_options")
        .load(&mut conn)
        .unwrap();
    assert!(
        options.iter().any(|o| o.compile_options == "ENABLE_QPSG"),
        "SQLite was built without SQLITE_ENABLE_QPSG"
    );
}
