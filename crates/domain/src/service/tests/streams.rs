//! Streams of one task share its reads of the event log.

use std::sync::Mutex;

use super::*;
use crate::ports::TaskNotifier;

fn event(seq: i64) -> TaskEvent {
    TaskEvent {
        task_id: TaskId(1),
        seq,
        turn_id: TurnId(1),
        kind: EventKind::TextDelta,
        data: json!({"delta": seq.to_string()}),
        created_at: at(1),
    }
}

fn seqs(page: &crate::feed::SharedPage) -> Vec<i64> {
    page.events.iter().map(|shared| shared.event.seq).collect()
}

/// A log the mock store serves, counting its reads.
fn log_store(h: &mut Harness, log: Arc<Mutex<Vec<TaskEvent>>>, reads: Arc<AtomicUsize>) {
    h.tasks
        .expect_list_events()
        .returning(move |_, _, after, limit| {
            reads.fetch_add(1, Ordering::SeqCst);
            let log = log.lock().unwrap();
            let last_seq = log.last().map_or(0, |event| event.seq);
            let events = log
                .iter()
                .filter(|event| event.seq > after)
                .take(limit as usize)
                .cloned()
                .collect();
            Ok(Some(EventPage {
                events,
                first_kept: 1,
                last_seq,
            }))
        });
}

/// Fifty streams watching task 1, whose log holds events 1 to 3, on a service whose
/// store counts its reads of the log.
struct Streams {
    log: Arc<Mutex<Vec<TaskEvent>>>,
    reads: Arc<AtomicUsize>,
    hub: crate::LocalNotifier,
    service: TaskService,
    watches: Vec<crate::notify::TaskWatch>,
}

/// Appends `events` to the log, announces the change and waits until every watch
/// has seen it.
async fn append(
    log: &Mutex<Vec<TaskEvent>>,
    hub: &crate::LocalNotifier,
    watches: &mut [crate::notify::TaskWatch],
    events: impl IntoIterator<Item = TaskEvent>,
) {
    log.lock().unwrap().extend(events);
    hub.task_changed(TaskId(1));
    for watch in watches {
        watch.changed().await;
    }
}

/// Each stream, one after another, reads the log after `cursor` and gets `expected`.
async fn every_stream_reads(
    service: &TaskService,
    watches: &[crate::notify::TaskWatch],
    cursor: i64,
    expected: &[i64],
) {
    for watch in watches {
        let page = service
            .stream_events(&WHO, watch, cursor, 256)
            .await
            .unwrap();
        assert_eq!(seqs(&page), expected);
    }
}

fn fifty_streams() -> Streams {
    let log = Arc::new(Mutex::new((1..=3).map(event).collect::<Vec<_>>()));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut h = Harness::new();
    log_store(&mut h, log.clone(), reads.clone());
    let hub = crate::LocalNotifier::default();
    let service = h.build_with_hub(hub.clone());
    let watches = (0..50).map(|_| service.watch(TaskId(1))).collect();
    Streams {
        log,
        reads,
        hub,
        service,
        watches,
    }
}

#[tokio::test]
async fn one_change_is_read_once_for_every_stream_of_its_task_and_each_gets_it_once() {
    let Streams {
        log,
        reads,
        hub,
        service,
        mut watches,
    } = fifty_streams();
    // Each stream catches up on the history on its own (the first also places the
    // task's feed at the log's end).
    every_stream_reads(&service, &watches, 0, &[1, 2, 3]).await;

    append(&log, &hub, &mut watches, [event(4), event(5)]).await;
    let before = reads.load(Ordering::SeqCst);
    let mut streams = tokio::task::JoinSet::new();
    for watch in watches.drain(1..) {
        let service = service.clone();
        streams.spawn(async move { service.stream_events(&WHO, &watch, 3, 256).await });
    }
    let first = service.stream_events(&WHO, &watches[0], 3, 256).await;
    assert_eq!(seqs(&first.unwrap()), vec![4, 5]);
    while let Some(page) = streams.join_next().await {
        assert_eq!(seqs(&page.unwrap().unwrap()), vec![4, 5]);
    }
    assert_eq!(
        reads.load(Ordering::SeqCst) - before,
        1,
        "fifty streams, one change, one read"
    );

    // Nothing new: served from the feed, no read.
    let page = service
        .stream_events(&WHO, &watches[0], 5, 256)
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert_eq!(reads.load(Ordering::SeqCst) - before, 1);
}

/// The common case of a chat front end: every stream opens at the log's end (a client
/// resuming with `Last-Event-ID`, or `?after=` the last `seq` it saw), so no stream's
/// first read returns an event. The feed is placed by where the log ends, not by the
/// last event a read returned: the streams' opening reads and the change are each
/// read once, not once per stream.
#[tokio::test]
async fn streams_that_open_at_the_log_end_share_their_reads_before_and_after_a_change() {
    let Streams {
        log,
        reads,
        hub,
        service,
        mut watches,
    } = fifty_streams();
    every_stream_reads(&service, &watches, 3, &[]).await;
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "fifty streams open, one read"
    );
    // A cursor past the log's end is served from the feed too: nothing, no read.
    let page = service
        .stream_events(&WHO, &watches[0], 1_000_000, 256)
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert_eq!(reads.load(Ordering::SeqCst), 1);

    append(&log, &hub, &mut watches, [event(4), event(5)]).await;
    every_stream_reads(&service, &watches, 3, &[4, 5]).await;
    assert_eq!(
        reads.load(Ordering::SeqCst),
        2,
        "fifty streams, one change, one read"
    );
}

#[tokio::test]
async fn a_stream_behind_the_feed_reads_its_own_gap_without_a_hole_or_a_repeat() {
    let log = Arc::new(Mutex::new((1..=2).map(event).collect::<Vec<_>>()));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut h = Harness::new();
    log_store(&mut h, log.clone(), reads.clone());
    let hub = crate::LocalNotifier::default();
    let service = h.build_with_hub(hub.clone());
    let mut ahead = service.watch(TaskId(1));
    let mut behind = service.watch(TaskId(1));
    service.stream_events(&WHO, &ahead, 0, 256).await.unwrap();
    // More than the feed keeps arrives while `behind` is still at 1.
    let last = 2 + crate::feed::FEED_CAPACITY as i64 + 20;
    log.lock().unwrap().extend((3..=last).map(event));
    hub.task_changed(TaskId(1));
    ahead.changed().await;
    behind.changed().await;
    let page = service.stream_events(&WHO, &ahead, 2, 256).await.unwrap();
    assert_eq!(seqs(&page), (3..=last).collect::<Vec<_>>());
    // Three pages of two for `behind`, from its own cursor: its gap, read from the log.
    let mut cursor = 1;
    let mut got = Vec::new();
    while cursor < last {
        let page = service
            .stream_events(&WHO, &behind, cursor, 2)
            .await
            .unwrap();
        assert!(!page.events.is_empty(), "stuck at {cursor}");
        got.extend(seqs(&page));
        cursor = *got.last().unwrap();
    }
    assert_eq!(got, (2..=last).collect::<Vec<_>>());
}

/// The store's view of task 3, switchable by the test, counting reads.
fn view_store(h: &mut Harness, status: Arc<Mutex<TurnStatus>>, reads: Arc<AtomicUsize>) {
    h.tasks.expect_get_task().returning(move |_, _| {
        reads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(view(*status.lock().unwrap())))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_is_read_once_for_every_long_poll_of_its_task() {
    let status = Arc::new(Mutex::new(TurnStatus::Running));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut h = Harness::new();
    view_store(&mut h, status.clone(), reads.clone());
    let hub = crate::LocalNotifier::default();
    let service = h.build_with_hub(hub.clone());
    // Held open like a stream, so the task's feed outlives each long-poll's watch.
    let _stream = service.watch(TaskId(3));
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let service = service.clone();
        polls.spawn(async move {
            service
                .wait_task(&WHO, TaskId(3), Duration::from_secs(30))
                .await
        });
    }
    // Each begins with a read of its own (it must see what was committed before it,
    // on any instance).
    while reads.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    *status.lock().unwrap() = TurnStatus::Completed;
    hub.task_changed(TaskId(3));
    while let Some(view) = polls.join_next().await {
        assert_eq!(view.unwrap().unwrap().status(), TaskStatus::Completed);
    }
    assert_eq!(reads.load(Ordering::SeqCst), 21, "one change, one read");
}

/// A long-poll sent after a claim's answer sees the new turn, never the view another
/// long-poll of the task read and shares (on PostgreSQL the claim may come from
/// another instance, announced here later: a long-poll's first read is its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_after_a_claim_sees_its_turn_not_an_earlier_shared_read() {
    let status = Arc::new(Mutex::new(TurnStatus::Completed));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut h = Harness::new();
    view_store(&mut h, status.clone(), reads.clone());
    let claimed = status.clone();
    h.tasks.expect_append_and_claim().returning(move |_| {
        *claimed.lock().unwrap() = TurnStatus::Running;
        Ok(Claim::Started(accepted(3, 31)))
    });
    h.tasks
        .expect_load_turn_input()
        .returning(|id, _| loaded(id.0, vec![user_message(id.0, 1)]));
    h.tasks.expect_finish_turn().returning(|_| Ok(ENDED));
    h.notifier.expect_task_changed().return_const(());
    h.runner.expect_run().returning(|_, _| Ok(()));
    let hub = crate::LocalNotifier::default();
    let service = h.build_with_hub(hub.clone());
    let _stream = service.watch(TaskId(3));
    let before = service
        .wait_task(&WHO, TaskId(3), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(before.status(), TaskStatus::Completed);
    service
        .append_message(&WHO, TaskId(3), submit(AGENT), None)
        .await
        .unwrap();
    let after = service
        .wait_task(&WHO, TaskId(3), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(after.status(), TaskStatus::Running);
}

/// A claim is announced in this process before it is answered, so the task's streams
/// see the new turn at once (on SQLite nothing else would tell them before the
/// turn's first output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_wakes_the_tasks_watchers_before_it_is_answered() {
    let mut h = Harness::new();
    h.tasks
        .expect_append_and_claim()
        .returning(|_| Ok(Claim::Started(accepted(3, 31))));
    let _ended = h.expect_turns_played();
    h.notifier.expect_task_changed().return_const(());
    h.runner.expect_run().returning(|_, _| Ok(()));
    // The executor announces through its own (mocked) notifier: only the claim can
    // change the hub.
    let service = h.build();
    let mut stream = service.watch(TaskId(3));
    service
        .append_message(&WHO, TaskId(3), submit(AGENT), None)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_millis(1), stream.changed()).await;
    assert!(woken.is_ok(), "the watch was not told of the claim");
}
