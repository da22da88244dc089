//! What only the SQL backends have: durable files, migrations, cross-instance
//! notifications.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::{Duration, Instant};

mod common;

use baton_domain::*;
use baton_persistence::{SqlStore, StoreOptions};
use baton_test_support::TestDatabase;
use chrono::Utc;
use common::{echo_agent, new_task};

async fn seed(store: &SqlStore) -> (Agent, Accepted) {
    let agent = store.create_agent(echo_agent("a")).await.unwrap();
    let accepted = store.create_task(new_task(agent.id, "kept")).await.unwrap();
    let Claim::Started(accepted) = accepted else {
        panic!("no idempotency key, no replay");
    };
    (agent, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_data_survives_reopening_and_migrations_are_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let (store, applied) = SqlStore::open(&url, StoreOptions::default()).await.unwrap();
    assert!(!applied.is_empty());
    assert!(store.is_single_instance());
    assert!(
        store.relay_changes(LocalNotifier::default()).is_none(),
        "one instance: nothing to relay"
    );
    let (agent, accepted) = seed(&store).await;
    drop(store);
    let (reopened, applied) = SqlStore::open(&url, StoreOptions::default()).await.unwrap();
    assert!(applied.is_empty());
    let view = reopened
        .get_task(agent.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.task.input, Content::text("kept"));
    // A plain path names the same file.
    let path = dir.path().join("baton.db");
    let (by_path, _) = SqlStore::open(path.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    assert!(
        by_path
            .get_task(agent.id, accepted.task_id)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_starting_together_migrate_once() {
    let db = tokio::task::spawn_blocking(TestDatabase::new)
        .await
        .unwrap();
    // The template is migrated, so re-running finds nothing; run several at once to
    // exercise the advisory lock around the harness.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url().to_owned();
            tokio::spawn(async move { SqlStore::migrate(&url).await })
        })
        .collect();
    for run in runs {
        assert!(run.await.unwrap().unwrap().is_empty());
    }
    let (store, _) = SqlStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    assert!(!store.is_single_instance());
    seed(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fresh_database_is_migrated_at_open() {
    let db = tokio::task::spawn_blocking(TestDatabase::empty)
        .await
        .unwrap();
    let (store, applied) = SqlStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    assert!(
        !applied.is_empty(),
        "every migration runs on an empty database"
    );
    seed(&store).await;
}

/// A throwaway PostgreSQL database and two instances' stores on it.
async fn two_instances() -> (TestDatabase, SqlStore, SqlStore) {
    let db = tokio::task::spawn_blocking(TestDatabase::new)
        .await
        .unwrap();
    let (writer, _) = SqlStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    let (reader, _) = SqlStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    (db, writer, reader)
}

/// The end of the accepted turn, completed with `output`, whoever holds its lease.
fn completed(accepted: &Accepted, output: Vec<OutputOp>) -> FinishTurn {
    FinishTurn {
        next: None,
        task_id: accepted.task_id,
        turn_id: accepted.turn_id.unwrap(),
        outcome: TurnOutcome::Completed,
        output,
        usage: None,
        guard: LeaseGuard::Anyone,
        now: Utc::now(),
    }
}

/// Ends the accepted turn, completed without output.
async fn complete(store: &SqlStore, accepted: &Accepted) {
    assert!(
        store
            .finish_turn(completed(accepted, vec![]))
            .await
            .unwrap()
            .is_some(),
        "the turn ends"
    );
}

/// Whether `watch` sees a change within `within`.
async fn woken(watch: &mut TaskWatch, within: Duration) -> bool {
    tokio::time::timeout(within, watch.changed()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_task_changes_reach_the_hub_of_another_instance() {
    let (_db, writer, reader) = two_instances().await;
    let (agent, accepted) = seed(&writer).await;
    let hub = LocalNotifier::new();
    let (ended_tx, mut ended_turns) = tokio::sync::mpsc::unbounded_channel();
    hub.on_turn_ended(std::sync::Arc::new(move |turn| {
        let _ = ended_tx.send(turn);
    }));
    let mut watch = hub.watch(accepted.task_id);
    let relay = reader
        .relay_changes(hub.clone())
        .expect("PostgreSQL relays changes");
    assert!(
        woken(&mut watch, Duration::from_secs(10)).await,
        "a (re)connected relay wakes every waiter"
    );

    let sent = Instant::now();
    complete(&writer, &accepted).await;
    // Announcements leave after their operation: the claim's may arrive after the
    // relay connected, so the end is recognised by the turn it names.
    let ended = tokio::time::timeout(Duration::from_secs(10), ended_turns.recv())
        .await
        .expect("the other instance is told which turn ended");
    assert_eq!(
        ended,
        Some(accepted.turn_id.unwrap()),
        "so its executor can stop playing it"
    );
    eprintln!("finish_turn call to relayed wake-up: {:?}", sent.elapsed());
    assert!(
        woken(&mut watch, Duration::from_secs(10)).await,
        "the end of the turn reaches the other instance's waiters"
    );

    // Another task's changes do not wake this waiter.
    writer
        .create_task(new_task(agent.id, "other"))
        .await
        .unwrap();
    assert!(!woken(&mut watch, Duration::from_millis(300)).await);
    relay.abort();
}

/// A connection listening to turn changes, as another instance's relay does.
async fn listen_to_turns(url: &str) -> diesel_async::AsyncPgConnection {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut listener = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query("LISTEN baton_turns")
        .execute(&mut listener)
        .await
        .unwrap();
    listener
}

/// Reads `listener`'s notifications until one carries `expected`, failing after 10 s
/// or on a payload that is not among `earlier` (announcements that may still arrive).
async fn announced(
    listener: &mut diesel_async::AsyncPgConnection,
    expected: &str,
    earlier: &[String],
) {
    use futures_util::StreamExt;
    let mut notifications = std::pin::pin!(listener.notifications_stream());
    loop {
        let notification = tokio::time::timeout(Duration::from_secs(10), notifications.next())
            .await
            .unwrap_or_else(|_| panic!("{expected} was not announced within 10 s"))
            .unwrap()
            .unwrap();
        if notification.payload == expected {
            return;
        }
        assert!(
            earlier.contains(&notification.payload),
            "unexpected announcement {}",
            notification.payload
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_turn_change_is_announced_once_committed() {
    let (db, writer, _) = two_instances().await;
    let (agent, accepted) = seed(&writer).await;
    let mut listener = listen_to_turns(db.url()).await;
    let turn = accepted.turn_id.unwrap();
    complete(&writer, &accepted).await;
    // The claim's announcement leaves after the claim, maybe after the LISTEN.
    let claim = accepted.task_id.to_string();
    let ended = format!("{claim}:{turn}");
    announced(&mut listener, &ended, std::slice::from_ref(&claim)).await;
    let view = writer
        .get_task(accepted.agent_id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view.status(),
        TaskStatus::Completed,
        "announced once committed"
    );

    // The announcer's connection ends under it (a restart, an idle timeout): the
    // next change is still announced, on a new connection.
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut admin = AsyncPgConnection::establish(db.url()).await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Ended {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ended: i64,
    }
    let killed: Ended = diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid)) AS ended FROM pg_stat_activity \
         WHERE query LIKE '%SET LOCAL synchronous_commit%' AND pid <> pg_backend_pid() \
         AND datname = current_database()",
    )
    .get_result(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed.ended, 1, "the announcer's connection");
    let Claim::Started(next) = writer
        .create_task(new_task(agent.id, "again"))
        .await
        .unwrap()
    else {
        panic!("no idempotency key, no replay");
    };
    announced(&mut listener, &next.task_id.to_string(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_change_never_announced_still_reaches_another_instance() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    let (db, writer, reader) = two_instances().await;
    let (_, accepted) = seed(&writer).await;
    let hub = LocalNotifier::new();
    let mut watch = hub.watch(accepted.task_id);
    let relay = reader.relay_changes(hub.clone()).unwrap();
    assert!(
        woken(&mut watch, Duration::from_secs(10)).await,
        "a (re)connected relay wakes every waiter"
    );
    // The first look wakes a task no look has settled (it may have changed
    // unannounced) — or, if the claim's announcement arrived after the relay connected,
    // the look after it. Then the looks leave the unchanged task alone.
    let mut wakes = 0;
    while woken(&mut watch, Duration::from_millis(2500)).await {
        wakes += 1;
        assert!(wakes <= 3, "the looks keep waking an unchanged task");
    }
    assert!(wakes >= 1, "no look woke a task no look had settled");
    // A change committed whose announcement never left (its instance died first).
    let mut other = AsyncPgConnection::establish(db.url()).await.unwrap();
    diesel::sql_query("UPDATE tasks SET last_seq = last_seq + 1 WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(accepted.task_id.0)
        .execute(&mut other)
        .await
        .unwrap();
    let since = Instant::now();
    assert!(
        woken(&mut watch, Duration::from_secs(10)).await,
        "a look finds the change"
    );
    assert!(
        since.elapsed() < Duration::from_secs(3),
        "within a second or two: {:?}",
        since.elapsed()
    );
    relay.abort();
}

/// Deletes the newest applied migration's record, as if the build were newer than the
/// database.
async fn forget_latest_migration(url: &str) {
    let sql = "DELETE FROM __diesel_schema_migrations WHERE version = (SELECT MAX(version) FROM __diesel_schema_migrations)";
    if let Some(path) = url.strip_prefix("sqlite://") {
        use diesel::{Connection, RunQueryDsl};
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut conn = diesel::SqliteConnection::establish(&path).unwrap();
            diesel::sql_query(sql).execute(&mut conn).unwrap();
        })
        .await
        .unwrap();
    } else {
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        let mut conn = AsyncPgConnection::establish(url).await.unwrap();
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_needs_every_migration_applied_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("baton.db").display());
    let db = tokio::task::spawn_blocking(TestDatabase::new)
        .await
        .unwrap();
    for url in [sqlite.as_str(), db.url()] {
        let (store, _) = SqlStore::open(url, StoreOptions::default()).await.unwrap();
        store.check_ready().await.unwrap();
        forget_latest_migration(url).await;
        let err = store.check_ready().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(why) if why.contains("baton migrate")),
            "{err}"
        );
    }
}

/// Pooled connections are handed out without a `SELECT 1` first (a round trip per
/// request); one the server ended meanwhile (a restart, an idle timeout) is still
/// replaced instead of failing the next request: its client saw it close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pooled_connections_the_server_ended_are_replaced_before_use() {
    let db = tokio::task::spawn_blocking(TestDatabase::new)
        .await
        .unwrap();
    let (store, _) = SqlStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    let (agent, accepted) = seed(&store).await;
    assert!(
        store
            .get_task(agent.id, accepted.task_id)
            .await
            .unwrap()
            .is_some()
    );
    let ended = db
        .query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    assert_ne!(ended.trim(), "0", "the store's connections were ended");
    // The clients read the server's goodbye.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let view = store.get_task(agent.id, accepted.task_id).await;
        assert!(matches!(view, Ok(Some(_))), "{view:?}");
    }
}

/// A throwaway PostgreSQL database and a store on it with one pooled connection, so
/// every operation reuses the connection the one before left.
async fn one_connection() -> (TestDatabase, SqlStore) {
    let db = tokio::task::spawn_blocking(TestDatabase::new)
        .await
        .unwrap();
    let mut options = StoreOptions::default();
    options.postgres.pool_size = 1;
    let (store, _) = SqlStore::open(db.url(), options).await.unwrap();
    (db, store)
}

/// The task's events, with the ids that differ from task to task taken out.
async fn events_without_ids(store: &SqlStore, agent: AgentId, task: TaskId) -> Vec<String> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, field) in map.iter_mut() {
                    match key.as_str() {
                        "task_id" | "turn_id" | "message_id" => *field = serde_json::Value::Null,
                        _ => strip(field),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let page = store
        .list_events(agent, task, 0, 100)
        .await
        .unwrap()
        .unwrap();
    page.events
        .into_iter()
        .map(|mut event| {
            strip(&mut event.data);
            format!("{} {} {}", event.seq, event.kind.as_str(), event.data)
        })
        .collect()
}

/// A plain task (nothing to read before writing) is written in one round trip on
/// PostgreSQL, by other code than a task that has to read first: both are stored
/// alike, and a plain one whose write fails leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_plain_task_is_stored_as_one_that_reads_first_and_all_or_nothing() {
    // One connection: a write that failed must leave it fit for the next.
    let (db, store) = one_connection().await;
    let agent = store.create_agent(echo_agent("a")).await.unwrap();
    let plain = new_task(agent.id, "same");
    let capped = NewTask {
        // A cap on running turns is read before the write.
        max_running_per_agent: Some(100),
        ..plain.clone()
    };
    let mut accepted = Vec::new();
    for new in [plain.clone(), capped] {
        let Claim::Started(started) = store.create_task(new).await.unwrap() else {
            panic!("no idempotency key, no replay");
        };
        accepted.push(started);
    }
    let (first, second) = (&accepted[0], &accepted[1]);
    assert_ne!(first.task_id, second.task_id);
    // The plain task's turn input, kept from its claim for its play, is what a read
    // of it finds (the first load takes the kept one, the second reads).
    let turn = first.turn_id.unwrap();
    let kept = store.load_turn_input(first.task_id, turn).await.unwrap();
    let read = store.load_turn_input(first.task_id, turn).await.unwrap();
    assert!(kept.is_some());
    assert_eq!(kept, read);
    assert_eq!(
        events_without_ids(&store, agent.id, first.task_id).await,
        events_without_ids(&store, agent.id, second.task_id).await
    );
    let views = [first, second].map(|a| store.get_task(agent.id, a.task_id));
    let [one, two] = views;
    let (one, two) = (one.await.unwrap().unwrap(), two.await.unwrap().unwrap());
    assert_eq!(one.task.input, two.task.input);
    assert_eq!(one.latest_turn.status, TurnStatus::Running);
    assert_eq!(one.latest_turn.id, first.turn_id.unwrap());
    assert_eq!(
        (one.task.created_at, one.latest_turn.started_at),
        (two.task.created_at, two.latest_turn.started_at)
    );

    let rows = "SELECT (SELECT count(*) FROM tasks) || ' ' || (SELECT count(*) FROM turns) \
                || ' ' || (SELECT count(*) FROM messages) || ' ' || (SELECT count(*) FROM events)";
    let before = db.query(rows).unwrap();
    let unknown = new_task(AgentId(agent.id.0 + 1000), "nobody's");
    assert!(
        store.create_task(unknown).await.is_err(),
        "no such agent: the task's row is refused"
    );
    assert_eq!(db.query(rows).unwrap(), before, "nothing of it was kept");
    // The last of its statements refused: the rows before it are not kept either.
    db.query("ALTER TABLE events ADD CONSTRAINT refused CHECK (data NOT LIKE '%refused%')")
        .unwrap();
    assert!(
        store
            .create_task(new_task(agent.id, "refused"))
            .await
            .is_err(),
        "its event is refused"
    );
    assert_eq!(db.query(rows).unwrap(), before, "nothing of it was kept");
    let Claim::Started(after) = store.create_task(plain).await.unwrap() else {
        panic!("no replay");
    };
    assert!(
        store
            .get_task(agent.id, after.task_id)
            .await
            .unwrap()
            .is_some()
    );
}

/// Holds `rows` (a `SELECT … FOR UPDATE`) in another session for `seconds`, from
/// about 300 ms after the call; joined to learn the session ended well.
fn hold_rows(
    db: &std::sync::Arc<TestDatabase>,
    rows: String,
    seconds: f64,
) -> std::thread::JoinHandle<Result<String, String>> {
    let db = db.clone();
    let holder = std::thread::spawn(move || {
        db.query(&format!(
            "BEGIN; {rows} FOR UPDATE; SELECT pg_sleep({seconds}); COMMIT;"
        ))
    });
    std::thread::sleep(Duration::from_millis(300));
    holder
}

/// The store's batch counts of one kind of write.
fn batch_stats(store: &SqlStore, kind: &str) -> baton_persistence::BatchStats {
    store
        .batch_stats()
        .into_iter()
        .find(|(name, _)| *name == kind)
        .map(|(_, stats)| stats)
        .unwrap()
}

/// Checks that `writes` writes of `kind` were sent since `before`: the first three
/// alone (each waiting on a held row, a batch in flight each), the rest together, at
/// most 64 a batch.
fn assert_batched(
    store: &SqlStore,
    kind: &str,
    before: baton_persistence::BatchStats,
    writes: u64,
) {
    let after = batch_stats(store, kind);
    assert_eq!(after.writes - before.writes, writes);
    let batches = after.batches - before.batches;
    assert!(batches <= 6, "{kind}: {batches} batches");
}

/// New plain tasks sent while others are being written go to PostgreSQL together,
/// in fewer batches than tasks; a batch in which one task is refused (its agent does
/// not exist) keeps nothing, and each of its tasks is then written alone: the others
/// are stored whole, the refused one fails as it would alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_new_tasks_sent_together_are_written_in_batches_and_a_refused_one_fails_alone() {
    let (db, store, _) = two_instances().await;
    let store = std::sync::Arc::new(store);
    let agent = store.create_agent(echo_agent("a")).await.unwrap();
    let db = std::sync::Arc::new(db);
    let before = batch_stats(&store, "new_tasks");
    // While the agent's row is held, a new task of it waits (its foreign key check),
    // and so does every batch in flight: what is sent meanwhile queues.
    let holder = hold_rows(
        &db,
        format!("SELECT id FROM agents WHERE id = {}", agent.id.0),
        1.0,
    );
    let mut sent = Vec::new();
    for number in 0..120_i64 {
        let owner = match number % 40 {
            7 => AgentId(agent.id.0 + 1000),
            _ => agent.id,
        };
        let store = store.clone();
        let new = new_task(owner, &format!("task {number}"));
        sent.push((
            owner,
            tokio::spawn(async move { store.create_task(new).await }),
        ));
        if number < 3 {
            // The first ones alone, each taking a batch in flight.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut stored = Vec::new();
    for (owner, created) in sent {
        match created.await.unwrap() {
            Ok(Claim::Started(accepted)) => {
                assert_eq!(owner, agent.id, "only the known agent's tasks are stored");
                stored.push(accepted);
            }
            Ok(other) => panic!("a plain task is started, not {other:?}"),
            Err(err) => assert_ne!(owner, agent.id, "a known agent's task failed: {err}"),
        }
    }
    holder.join().unwrap().unwrap();
    assert_eq!(stored.len(), 117, "all but the three refused ones");
    let counts = db
        .query(
            "SELECT (SELECT count(*) FROM tasks) || ' ' || (SELECT count(*) FROM turns) \
             || ' ' || (SELECT count(*) FROM messages) || ' ' || (SELECT count(*) FROM events)",
        )
        .unwrap();
    assert_eq!(
        counts.trim(),
        "117 117 117 117",
        "each stored task whole, nothing else"
    );
    for accepted in stored.iter().step_by(13) {
        let view = store
            .get_task(agent.id, accepted.task_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.latest_turn.id, accepted.turn_id.unwrap());
        let input = store
            .load_turn_input(accepted.task_id, accepted.turn_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(input.history.len(), 1);
        assert_eq!(input.task.input, view.task.input, "its input, and only its");
    }
    assert_batched(&store, "new_tasks", before, 120);
}

/// Turns' ends sent while others are being written go to PostgreSQL together, in one
/// transaction; a batch in which one end is refused keeps nothing, and each end is
/// then written alone: the others end their turns, the refused one fails alone, and
/// an end whose turn already ended is told so, as alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_turn_ends_sent_together_are_written_in_batches_and_a_refused_one_fails_alone() {
    let (db, store, _) = two_instances().await;
    let store = std::sync::Arc::new(store);
    let agent = store.create_agent(echo_agent("a")).await.unwrap();
    let mut turns = Vec::new();
    for number in 0..100 {
        let Claim::Started(accepted) = store
            .create_task(new_task(agent.id, &format!("task {number}")))
            .await
            .unwrap()
        else {
            panic!("no replay");
        };
        turns.push(accepted);
    }
    // Ended already: its end in a batch finds nothing to end.
    complete(&store, &turns[50]).await;
    db.query("ALTER TABLE messages ADD CONSTRAINT refused CHECK (content NOT LIKE '%refused%')")
        .unwrap();
    let db = std::sync::Arc::new(db);
    let before = batch_stats(&store, "turn_ends");
    // The first three tasks' rows held: their ends wait, each in a batch in flight.
    let held: Vec<String> = turns[..3].iter().map(|a| a.task_id.0.to_string()).collect();
    let holder = hold_rows(
        &db,
        format!("SELECT id FROM tasks WHERE id IN ({})", held.join(",")),
        1.0,
    );
    let mut sent = Vec::new();
    for (number, accepted) in turns.iter().enumerate() {
        let text = match number {
            70 => "refused".to_owned(),
            _ => format!("answer {number}"),
        };
        let finish = completed(accepted, vec![OutputOp::Message(Content::text(text))]);
        let store = store.clone();
        sent.push(tokio::spawn(async move { store.finish_turn(finish).await }));
        if number < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut answers = Vec::new();
    for finish in sent {
        answers.push(finish.await.unwrap());
    }
    holder.join().unwrap().unwrap();
    for (number, (answer, accepted)) in answers.iter().zip(&turns).enumerate() {
        let view = store
            .get_task(agent.id, accepted.task_id)
            .await
            .unwrap()
            .unwrap();
        match number {
            50 => assert!(matches!(answer, Ok(None)), "already ended: {answer:?}"),
            70 => {
                assert!(answer.is_err(), "its message is refused");
                assert_eq!(view.latest_turn.status, TurnStatus::Running, "nothing kept");
            }
            _ => {
                assert!(matches!(answer, Ok(Some(_))), "{number}: {answer:?}");
                assert_eq!(view.latest_turn.status, TurnStatus::Completed);
                let history = store
                    .list_messages(
                        agent.id,
                        accepted.task_id,
                        PageRequest {
                            limit: 10,
                            after: None,
                        },
                    )
                    .await
                    .unwrap()
                    .unwrap();
                let last = history.page.items.last().unwrap();
                assert_eq!(last.content, Content::text(format!("answer {number}")));
            }
        }
    }
    assert_batched(&store, "turn_ends", before, 100);
}

/// A turn's end sent to a batch is written whether or not its caller still waits: one
/// dropped while its batch waits on a held row ends its turn once the row is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batched_turn_end_is_written_though_its_caller_stopped_waiting() {
    let (db, store, _) = two_instances().await;
    let (agent, accepted) = seed(&store).await;
    let db = std::sync::Arc::new(db);
    let task = accepted.task_id.0;
    let holder = hold_rows(&db, format!("SELECT id FROM tasks WHERE id = {task}"), 1.0);
    let finish = completed(&accepted, vec![]);
    let waited = tokio::time::timeout(Duration::from_millis(300), store.finish_turn(finish)).await;
    assert!(waited.is_err(), "the end waits for the held row");
    holder.join().unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = store
            .get_task(agent.id, accepted.task_id)
            .await
            .unwrap()
            .unwrap();
        if view.latest_turn.status == TurnStatus::Completed {
            break;
        }
        assert!(Instant::now() < deadline, "the turn never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A write whose caller is dropped while it waits inside its transaction (here on a
/// row another session holds) keeps nothing, and its connection is not handed out
/// again with the transaction open: `BEGIN` went out ahead of the first statement,
/// so the store, not diesel-async, told the pool a transaction was open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_write_dropped_midway_keeps_nothing_and_leaves_no_open_transaction() {
    let (db, store) = one_connection().await;
    let (agent, accepted) = seed(&store).await;
    let task = accepted.task_id.0;
    // Another session holds the task's row for a while: the turn's end updates its
    // turn, then waits for the task's row.
    let db = std::sync::Arc::new(db);
    let holder = hold_rows(&db, format!("SELECT id FROM tasks WHERE id = {task}"), 1.5);
    let finish = completed(&accepted, vec![]);
    // `finish_turns` runs in its caller's transaction (`finish_turn` is sent to a batch,
    // which is written whether or not its caller still waits).
    let waited =
        tokio::time::timeout(Duration::from_millis(400), store.finish_turns(vec![finish])).await;
    assert!(
        waited.is_err(),
        "the end waits for the held row, and is dropped"
    );
    holder.join().unwrap().unwrap();
    let view = store
        .get_task(agent.id, accepted.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view.latest_turn.status,
        TurnStatus::Running,
        "the dropped end kept nothing, and this read is outside its transaction"
    );
    let open = db
        .query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
        )
        .unwrap();
    assert_eq!(
        open.trim(),
        "0",
        "no connection was left inside a transaction"
    );
    complete(&store, &accepted).await;
}
