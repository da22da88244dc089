//! Unit tests of a turn's life after the claim, with mocked ports: timeouts, stops
//! (cancel, lost lease), sweeps by policy, shutdown, cancel, and idempotency keys.

use std::sync::atomic::AtomicBool;

use tokio::sync::Notify;

use super::*;
use crate::executor::{ShutdownReport, SweepReport};
use crate::runner::{TurnInput, TurnSink};

/// A runner that streams "partial", then waits for ever. `dropped` flips when its
/// future is dropped, which is how a stopped turn's runner ends.
struct Stalling {
    dropped: Arc<AtomicBool>,
    streaming: Arc<Notify>,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl TurnRunner for Stalling {
    fn validate_config(&self, _: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    async fn run(
        &self,
        _: crate::runner::TurnInput,
        sink: crate::runner::TurnSink,
    ) -> Result<(), RunnerError> {
        let _flag = DropFlag(self.dropped.clone());
        sink.text_delta("partial")
            .await
            .map_err(|e| RunnerError::new("closed", e.to_string()))?;
        self.streaming.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn stalling() -> (Arc<Stalling>, Arc<AtomicBool>, Arc<Notify>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let streaming = Arc::new(Notify::new());
    let runner = Arc::new(Stalling {
        dropped: dropped.clone(),
        streaming: streaming.clone(),
    });
    (runner, dropped, streaming)
}

fn agent_with(id: i64, policy: TurnPolicy) -> Agent {
    Agent {
        card: None,
        id: AgentId(id),
        policy,
        ..agent()
    }
}

fn retry(max_attempts: u32) -> TurnPolicy {
    TurnPolicy {
        on_interrupt: OnInterrupt::Retry,
        max_attempts,
        ..TurnPolicy::default()
    }
}

/// A service over these mocks with this runner and executor configuration; the
/// notifier accepts any change.
fn service_with(
    tasks: MockTaskStore,
    agents: MockAgentStore,
    runner: Arc<dyn TurnRunner>,
    config: ExecutorConfig,
    hub: crate::LocalNotifier,
) -> TaskService {
    let mut clock = MockClock::new();
    clock.expect_now().returning(|| at(1));
    let mut notifier = MockTaskNotifier::new();
    notifier.expect_task_changed().return_const(());
    let tasks: Arc<dyn TaskStore> = Arc::new(tasks);
    let agents: Arc<dyn AgentStore> = Arc::new(agents);
    let executor = TurnExecutor::new(
        tasks.clone(),
        agents.clone(),
        RunnerRegistry::new().with("mock", runner),
        Arc::new(notifier),
        Arc::new(clock),
        config,
        tokio::runtime::Handle::current(),
    );
    TaskService::new(tasks, agents, executor, hub)
}

/// Store mocks for a turn that is created and played: the history loads, output is
/// recorded into `recorded`, and ends are sent to the returned receiver.
fn playing_store(
    recorded: Arc<std::sync::Mutex<Vec<OutputOp>>>,
) -> (MockTaskStore, mpsc::UnboundedReceiver<FinishTurn>) {
    let mut tasks = MockTaskStore::new();
    tasks
        .expect_create_task()
        .returning(|_| Ok(Claim::Started(accepted(3, 30))));
    tasks
        .expect_load_turn_input()
        .returning(|id, _| loaded(id.0, vec![user_message(id.0, 30)]));
    tasks.expect_record_output().returning(move |output| {
        recorded.lock().unwrap().extend(output.ops);
        Ok(true)
    });
    let (ended, ended_rx) = mpsc::unbounded_channel();
    tasks.expect_finish_turn().returning(move |finish| {
        let _ = ended.send(finish);
        Ok(ENDED)
    });
    (tasks, ended_rx)
}

/// Store mocks for a turn that is created and plays, but must never be ended here.
fn never_ending_store() -> MockTaskStore {
    let mut tasks = MockTaskStore::new();
    tasks
        .expect_create_task()
        .returning(|_| Ok(Claim::Started(accepted(3, 30))));
    tasks
        .expect_load_turn_input()
        .returning(|id, _| loaded(id.0, vec![user_message(id.0, 30)]));
    tasks.expect_record_output().returning(|_| Ok(true));
    tasks.expect_finish_turn().times(0);
    tasks
}

fn agents_returning(agent: Agent) -> MockAgentStore {
    let mut agents = MockAgentStore::new();
    agents
        .expect_get_agent()
        .returning(move |_| Ok(Some(agent.clone())));
    agents
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within 5 s: {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_past_its_agents_timeout_fails_with_turn_timeout_keeping_its_text() {
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tasks, mut ended) = playing_store(recorded.clone());
    let policy = TurnPolicy {
        turn_timeout_ms: 150,
        ..TurnPolicy::default()
    };
    let (runner, dropped, _) = stalling();
    let service = service_with(
        tasks,
        agents_returning(agent_with(7, policy)),
        runner,
        ExecutorConfig::default(),
        crate::LocalNotifier::default(),
    );
    let started = std::time::Instant::now();
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    let end = next_end(&mut ended).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    let TurnOutcome::Failed(error) = end.outcome else {
        panic!("expected a failed turn, got {:?}", end.outcome);
    };
    assert_eq!(error.code, "turn_timeout");
    assert!(error.message.contains("150 ms"), "{}", error.message);
    assert_eq!(
        *recorded.lock().unwrap(),
        vec![OutputOp::TextDelta("partial".into())],
        "what was streamed before the timeout is kept"
    );
    eventually("the runner is dropped", || dropped.load(Ordering::SeqCst)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_ended_elsewhere_stops_its_runner_and_records_nothing_more() {
    let tasks = never_ending_store();
    let hub = crate::LocalNotifier::default();
    let (runner, dropped, streaming) = stalling();
    let service = service_with(
        tasks,
        agents_returning(agent()),
        runner,
        ExecutorConfig::default(),
        hub.clone(),
    );
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), streaming.notified())
        .await
        .unwrap();
    assert!(!dropped.load(Ordering::SeqCst));
    // What a cancel here or a relayed end from another instance publishes.
    hub.turn_ended(TaskId(3), TurnId(30));
    eventually("the runner is dropped", || dropped.load(Ordering::SeqCst)).await;
    assert_eq!(
        service.executor().wait_idle(Duration::from_secs(5)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_runner_at_the_next_renewal() {
    let mut tasks = never_ending_store();
    let renewals = Arc::new(AtomicUsize::new(0));
    let counter = renewals.clone();
    tasks
        .expect_renew_leases()
        .withf(|owner, turns, _| owner == "me" && turns == &[(TurnId(30), 1)])
        .returning(move |_, _, _| {
            // The first renewal holds; then the turn was taken by a sweep elsewhere.
            Ok(if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                vec![TurnId(30)]
            } else {
                vec![]
            })
        });
    let (runner, dropped, _) = stalling();
    let config = ExecutorConfig {
        instance_id: "me".into(),
        lease_ttl: Duration::from_millis(300),
        ..ExecutorConfig::default()
    };
    let service = service_with(
        tasks,
        agents_returning(agent()),
        runner,
        config,
        crate::LocalNotifier::default(),
    );
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    eventually("the runner is dropped", || dropped.load(Ordering::SeqCst)).await;
    assert_eq!(renewals.load(Ordering::SeqCst), 2);
    assert_eq!(
        service.executor().wait_idle(Duration::from_secs(5)).await,
        0
    );
}

fn expired(agent: i64, turn: i64, attempt: u32) -> ExpiredTurn {
    ExpiredTurn {
        agent_id: AgentId(agent),
        task_id: TaskId(turn),
        turn_id: TurnId(turn),
        attempt,
        owner: Some("dead".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_fails_or_retries_expired_turns_by_their_agents_policy() {
    let mut agents = MockAgentStore::new();
    agents.expect_get_agent().returning(|id| {
        Ok(Some(match id.0 {
            1 => agent_with(1, TurnPolicy::default()),
            _ => agent_with(2, retry(3)),
        }))
    });
    let mut tasks = MockTaskStore::new();
    tasks
        .expect_expired_turns()
        .withf(|cutoff, after, _| *cutoff == at(50) && after.is_none())
        .times(1)
        .returning(|_, _, _| {
            Ok(vec![
                expired(1, 101, 1), // fail policy
                expired(2, 102, 1), // retry, attempts left
                expired(2, 103, 3), // retry, none left
            ])
        });
    tasks
        .expect_take_over_turns()
        .withf(|take| {
            take.turns == [TurnId(102)] && take.expired_by == at(50) && take.lease.owner == "me"
        })
        .times(1)
        .returning(|_| Ok(vec![(TurnId(102), 2)]));
    tasks
        .expect_load_turn_input()
        .returning(|id, _| loaded(id.0, vec![user_message(id.0, id.0)]));
    // And a turn whose tool calls were due (the clock says at(1)).
    tasks
        .expect_overdue_tool_calls()
        .withf(|now, _| *now == at(1))
        .times(1)
        .returning(|_, _| Ok(vec![(TaskId(9), TurnId(109))]));
    tasks
        .expect_start_stalled_queues()
        .returning(|_, _, _| Ok(Vec::new()));
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    let ended_many = ended.clone();
    tasks.expect_finish_turn().returning(move |finish| {
        let _ = ended.send(finish);
        Ok(ENDED)
    });
    // The expired turns are ended together.
    tasks
        .expect_finish_turns()
        .withf(|finishes| finishes.len() == 2)
        .times(1)
        .returning(move |finishes| {
            let n = finishes.len();
            for finish in finishes {
                let _ = ended_many.send(finish);
            }
            Ok(vec![ENDED; n])
        });
    let mut runner = mock_runner();
    runner
        .expect_run()
        .withf(|input, _| input.turn_id == TurnId(102))
        .times(1)
        .returning(|_, _| Ok(()));
    let config = ExecutorConfig {
        instance_id: "me".into(),
        ..ExecutorConfig::default()
    };
    let service = service_with(
        tasks,
        agents,
        Arc::new(runner),
        config,
        crate::LocalNotifier::default(),
    );

    let report = service.executor().sweep(at(50)).await.unwrap();
    assert_eq!(
        report,
        SweepReport {
            failed: 2,
            retried: 1,
            unanswered: 1,
            queues: 0,
        }
    );
    let mut ends = Vec::new();
    for _ in 0..4 {
        ends.push(next_end(&mut ended_rx).await);
    }
    ends.sort_by_key(|f| f.turn_id);
    let unanswered = ends.pop().unwrap();
    assert_eq!(unanswered.turn_id, TurnId(109));
    assert_eq!(unanswered.guard, LeaseGuard::AnswersDueBy(at(1)));
    assert!(
        matches!(&unanswered.outcome, TurnOutcome::Failed(e) if e.code == "tool_response_timeout"),
        "{:?}",
        unanswered.outcome
    );
    for swept in [&ends[0], &ends[2]] {
        assert_eq!(swept.guard, LeaseGuard::ExpiredBy(at(50)));
        let TurnOutcome::Failed(error) = &swept.outcome else {
            panic!("expected failed, got {:?}", swept.outcome);
        };
        assert_eq!(error.code, "turn_interrupted");
    }
    assert!(matches!(&ends[2].outcome, TurnOutcome::Failed(e) if e.message.contains("attempt 3")));
    assert_eq!(ends[1].turn_id, TurnId(102));
    assert_eq!(ends[1].outcome, TurnOutcome::Completed, "the retry played");
    assert_eq!(
        ends[1].guard,
        LeaseGuard::Holder(Holder {
            owner: "me".into(),
            attempt: 2
        }),
        "the retry writes as its own attempt"
    );
}

/// A service whose executor (instance `me`) is playing turn 30 of a `retry` agent
/// with a runner that streams, then stalls; and whether that runner was dropped.
async fn playing_a_retry_agents_turn_as_me(tasks: MockTaskStore) -> (TaskService, Arc<AtomicBool>) {
    let (runner, dropped, streaming) = stalling();
    let config = ExecutorConfig {
        instance_id: "me".into(),
        ..ExecutorConfig::default()
    };
    let service = service_with(
        tasks,
        agents_returning(agent_with(7, retry(2))),
        runner,
        config,
        crate::LocalNotifier::default(),
    );
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), streaming.notified())
        .await
        .unwrap();
    (service, dropped)
}

/// A process paused past its leases (SIGSTOP, a long GC-like stall) finds its own
/// live turns expired when it resumes: its sweep must leave them to its renewal, never
/// take them over and play them a second time, nor fail them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_never_takes_over_or_ends_a_turn_this_process_plays() {
    let mut tasks = never_ending_store();
    tasks.expect_expired_turns().returning(|_, after, _| {
        Ok(match after {
            None => vec![ExpiredTurn {
                owner: Some("me".into()),
                ..expired(1, 30, 1)
            }],
            Some(_) => vec![],
        })
    });
    tasks.expect_take_over_turns().times(0);
    tasks.expect_finish_turns().times(0);
    tasks
        .expect_overdue_tool_calls()
        .returning(|_, _| Ok(vec![]));
    tasks
        .expect_start_stalled_queues()
        .returning(|_, _, _| Ok(Vec::new()));
    let (service, dropped) = playing_a_retry_agents_turn_as_me(tasks).await;
    let report = service.executor().sweep(at(10_000)).await.unwrap();
    assert_eq!(report, SweepReport::default());
    assert_eq!(service.executor().in_flight(), 1, "still played once");
    assert!(!dropped.load(Ordering::SeqCst));
}

/// A sweep reads the expired turns page by page, each after the last id it saw, so
/// turns it takes over (with fresh leases) are never met again in the same sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_pages_through_the_expired_turns_once() {
    let mut tasks = MockTaskStore::new();
    let pages = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = pages.clone();
    tasks
        .expect_expired_turns()
        .returning(move |_, after, limit| {
            seen.lock().unwrap().push(after);
            let first = after.map_or(1, |t| t.0 + 1);
            // 150 expired turns in all.
            Ok((first..=150)
                .take(limit as usize)
                .map(|id| expired(1, id, 1))
                .collect())
        });
    tasks
        .expect_finish_turns()
        .returning(|finishes| Ok(vec![ENDED; finishes.len()]));
    tasks
        .expect_overdue_tool_calls()
        .returning(|_, _| Ok(vec![]));
    tasks
        .expect_start_stalled_queues()
        .returning(|_, _, _| Ok(Vec::new()));
    let service = service_with(
        tasks,
        agents_returning(agent_with(1, TurnPolicy::default())),
        Arc::new(mock_runner()),
        ExecutorConfig::default(),
        crate::LocalNotifier::default(),
    );
    let report = service.executor().sweep(at(50)).await.unwrap();
    assert_eq!(report.failed, 150);
    assert_eq!(
        *pages.lock().unwrap(),
        vec![None, Some(TurnId(100))],
        "a full page is followed by the next; a short one ends the sweep"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_releases_retry_agents_leases_and_stops_their_runners() {
    let mut tasks = never_ending_store();
    tasks
        .expect_release_leases()
        .withf(|owner, turns, _| owner == "me" && turns == &[TurnId(30)])
        .times(1)
        .returning(|_, _, _| Ok(1));
    let (service, dropped) = playing_a_retry_agents_turn_as_me(tasks).await;
    let report = service.executor().end_unfinished().await;
    assert_eq!(
        report,
        ShutdownReport {
            failed: 0,
            released: 1
        }
    );
    eventually("the runner is dropped", || dropped.load(Ordering::SeqCst)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_running_turn_and_a_repeat_gets_the_same_answer() {
    let mut h = Harness::new();
    h.tasks
        .expect_get_task()
        .returning(running_then(TurnStatus::Cancelled, Default::default()));
    h.tasks
        .expect_finish_turn()
        .withf(|finish| {
            finish.turn_id == TurnId(30)
                && finish.outcome == TurnOutcome::Cancelled
                && finish.guard == LeaseGuard::Anyone
        })
        .times(1)
        .returning(|_| Ok(ENDED));
    let hub = crate::LocalNotifier::default();
    let mut watch = hub.watch(TaskId(3));
    let service = h.build_with_hub(hub);

    let first = service.cancel(&WHO, TaskId(3)).await.unwrap();
    assert_eq!(first.status(), TaskStatus::Cancelled);
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("waiters on the task are woken");
    let again = service.cancel(&WHO, TaskId(3)).await.unwrap();
    assert_eq!(again, first, "a repeated cancel answers as the first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_task_that_is_not_running_is_refused_and_changes_nothing() {
    for status in [TurnStatus::Completed, TurnStatus::Failed] {
        let mut h = Harness::new();
        h.tasks
            .expect_get_task()
            .returning(move |_, _| Ok(Some(view(status))));
        // No finish expectation: touching it fails the test.
        let service = h.build();
        let err = service.cancel(&WHO, TaskId(3)).await.unwrap_err();
        assert!(
            matches!(err, ServiceError::TaskNotRunning(got) if got == status),
            "{err:?}"
        );
    }
    let mut h = Harness::new();
    h.tasks.expect_get_task().returning(|_, _| Ok(None));
    let err = h.build().cancel(&WHO, TaskId(3)).await.unwrap_err();
    assert!(matches!(err, ServiceError::TaskNotFound), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_loses_to_the_turns_end_is_not_running() {
    let mut h = Harness::new();
    h.tasks
        .expect_get_task()
        .returning(running_then(TurnStatus::Completed, Default::default()));
    h.tasks.expect_finish_turn().returning(|_| Ok(None));
    let err = h.build().cancel(&WHO, TaskId(3)).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::TaskNotRunning(TurnStatus::Completed)),
        "{err:?}"
    );
}

/// A store whose claim takes a while and answers like the SQL stores do for one key:
/// the first call starts a turn, later ones replay it.
fn slow_keyed_store(calls: Arc<AtomicUsize>, peak: Arc<AtomicUsize>) -> MockTaskStore {
    let mut tasks = MockTaskStore::new();
    let now = Arc::new(AtomicUsize::new(0));
    tasks.expect_create_task().returning(move |new| {
        assert!(new.idempotency.is_some());
        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(running, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        now.fetch_sub(1, Ordering::SeqCst);
        Ok(if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Claim::Started(accepted(3, 30))
        } else {
            Claim::Replayed(accepted(3, 30))
        })
    });
    tasks
        .expect_load_turn_input()
        .returning(|id, _| loaded(id.0, vec![user_message(id.0, 30)]));
    tasks.expect_finish_turn().returning(|_| Ok(ENDED));
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_waits_for_the_first_request_then_gets_its_answer() {
    let (calls, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut runner = mock_runner();
    runner.expect_run().times(1).returning(|_, _| Ok(()));
    let service = service_with(
        slow_keyed_store(calls.clone(), peak.clone()),
        agents_returning(agent()),
        Arc::new(runner),
        ExecutorConfig::default(),
        crate::LocalNotifier::default(),
    );
    let both: Vec<_> = (0..2)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .create_task(&WHO, submit(AGENT), Some("key-1".into()))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for one in both {
        answers.push(one.await.unwrap().unwrap());
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        1,
        "never two claims with one key at once"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(answers.contains(&Claim::Started(accepted(3, 30))));
    assert!(answers.contains(&Claim::Replayed(accepted(3, 30))));
    assert_eq!(
        service.executor().wait_idle(Duration::from_secs(5)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_a_request_still_in_progress_after_the_wait_is_key_in_use() {
    let (calls, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut runner = mock_runner();
    runner.expect_run().returning(|_, _| Ok(()));
    let service = service_with(
        slow_keyed_store(calls.clone(), peak),
        agents_returning(agent()),
        Arc::new(runner),
        ExecutorConfig::default(),
        crate::LocalNotifier::default(),
    )
    .with_idempotency(crate::IdempotencyConfig {
        in_flight_wait: Duration::from_millis(20),
        ..crate::IdempotencyConfig::default()
    });
    let first = {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .create_task(&WHO, submit(AGENT), Some("key-1".into()))
                .await
        })
    };
    eventually("the first claim holds its key", || {
        service.keys.is_held(AGENT, "key-1")
    })
    .await;
    let err = service
        .create_task(&WHO, submit(AGENT), Some("key-1".into()))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::IdempotencyKeyInUse), "{err:?}");
    assert!(matches!(first.await.unwrap(), Ok(Claim::Started(_))));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the refused duplicate touched nothing"
    );
    // Another key is not held up.
    let other = service
        .create_task(&WHO, submit(AGENT), Some("key-2".into()))
        .await;
    assert!(other.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_is_a_validation_error_and_touches_nothing() {
    let service = Harness::new().build();
    for bad in ["", "has space", "ü"] {
        let err = service
            .create_task(&WHO, submit(AGENT), Some(bad.into()))
            .await
            .unwrap_err();
        let ServiceError::Validation(fields) = err else {
            panic!("expected a validation error, got {err:?}");
        };
        assert_eq!(fields[0].field, "Idempotency-Key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_webhook_is_signed_with_its_secret_else_the_agents_else_the_servers() {
    use crate::webhooks::{WebhookEndpoint, WebhookTarget, new_secret};
    let (own, agents_secret, servers) = (new_secret(), new_secret(), new_secret());
    let cases = [
        (Some(own.clone()), None, vec![], Some(own.clone())),
        (
            None,
            Some(agents_secret.clone()),
            vec![servers.clone()],
            Some(agents_secret),
        ),
        (None, None, vec![servers.clone()], Some(servers)),
        (None, None, vec![], None),
    ];
    for (request_secret, agent_secret, server_secrets, signed_with) in cases {
        let mut tasks = MockTaskStore::new();
        let (sent, mut stored) = mpsc::unbounded_channel();
        tasks.expect_create_task().returning(move |new| {
            sent.send(new.webhook).unwrap();
            Ok(Claim::Replayed(accepted(3, 30)))
        });
        let hooked = Agent {
            card: None,
            webhook: agent_secret.map(|secret| WebhookEndpoint {
                url: "https://agent.example/".into(),
                secrets: vec![secret],
            }),
            ..agent()
        };
        let service = service_with(
            tasks,
            agents_returning(hooked),
            Arc::new(mock_runner()),
            ExecutorConfig::default(),
            crate::LocalNotifier::default(),
        )
        .with_webhooks(
            crate::WebhookSettings {
                destinations: Default::default(),
                signing_secrets: server_secrets,
            },
            Arc::new(crate::ports::MockWebhookStore::new()),
        );
        let mut request = submit(AGENT);
        request.webhook = Some(WebhookTarget {
            url: "https://hooks.example.com/x".into(),
            secret: request_secret,
        });
        let result = service.create_task(&WHO, request, None).await;
        match signed_with {
            Some(secret) => {
                result.unwrap();
                let endpoint = stored.recv().await.unwrap().unwrap();
                assert_eq!(endpoint.url, "https://hooks.example.com/x");
                assert_eq!(endpoint.secrets, vec![secret]);
            }
            None => {
                let Err(ServiceError::Validation(fields)) = result else {
                    panic!("expected a validation error, got {result:?}");
                };
                assert_eq!(fields[0].field, "webhook.secret");
            }
        }
    }
}

/// Reports what it used twice, as a streaming model does, around its text.
struct Reporting;

#[async_trait::async_trait]
impl TurnRunner for Reporting {
    fn validate_config(&self, _: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, _: TurnInput, sink: TurnSink) -> Result<(), RunnerError> {
        let early = Usage {
            input_tokens: 9,
            output_tokens: 0,
            total_tokens: 9,
        };
        sink.usage(early)
            .await
            .map_err(|_| RunnerError::new("closed", ""))?;
        sink.text_delta("hi")
            .await
            .map_err(|_| RunnerError::new("closed", ""))?;
        let last = Usage {
            input_tokens: 9,
            output_tokens: 2,
            total_tokens: 11,
        };
        sink.usage(last)
            .await
            .map_err(|_| RunnerError::new("closed", ""))?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_usage_a_runner_reports_is_recorded_with_the_turns_end() {
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tasks, mut ended) = playing_store(recorded.clone());
    let service = service_with(
        tasks,
        agents_returning(agent_with(7, TurnPolicy::default())),
        Arc::new(Reporting),
        ExecutorConfig::default(),
        crate::LocalNotifier::default(),
    );
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    let end = next_end(&mut ended).await;
    assert_eq!(end.outcome, TurnOutcome::Completed);
    assert_eq!(
        end.usage,
        Some(Usage {
            input_tokens: 9,
            output_tokens: 2,
            total_tokens: 11,
        })
    );
    // Recorded while playing or with the end (a quick runner's text comes with it).
    let mut output = recorded.lock().unwrap().clone();
    output.extend(end.output);
    assert_eq!(
        output,
        vec![OutputOp::TextDelta("hi".into())],
        "usage is not output"
    );
}

/// Asks the client to run a tool.
struct AsksForTool;

#[async_trait::async_trait]
impl TurnRunner for AsksForTool {
    fn validate_config(&self, _: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, _: TurnInput, sink: TurnSink) -> Result<(), RunnerError> {
        let call = Content::ToolRequest(crate::content::ToolRequestContent {
            tool_call_id: "call_1".into(),
            name: "weather".into(),
            arguments: Default::default(),
        });
        sink.message(call)
            .await
            .map_err(|_| RunnerError::new("closed", ""))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_asks_for_tools_ends_waiting_for_answers_until_its_deadline() {
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tasks, mut ended) = playing_store(recorded);
    let config = ExecutorConfig {
        tool_response_timeout: Duration::from_secs(90),
        ..ExecutorConfig::default()
    };
    let service = service_with(
        tasks,
        agents_returning(agent_with(7, TurnPolicy::default())),
        Arc::new(AsksForTool),
        config,
        crate::LocalNotifier::default(),
    );
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    let end = next_end(&mut ended).await;
    assert_eq!(
        end.outcome,
        TurnOutcome::RequiresAction {
            respond_by: at(1) + chrono::Duration::seconds(90)
        }
    );
}

/// A runner that answers once `gate` opens.
struct Gated {
    gate: Arc<Notify>,
}

#[async_trait::async_trait]
impl TurnRunner for Gated {
    fn validate_config(&self, _: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    async fn run(&self, _: TurnInput, _: TurnSink) -> Result<(), RunnerError> {
        self.gate.notified().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_ending_while_the_process_stops_starts_no_queued_turn_here() {
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tasks, mut ended) = playing_store(recorded);
    let gate = Arc::new(Notify::new());
    let service = service_with(
        tasks,
        agents_returning(agent_with(7, TurnPolicy::default())),
        Arc::new(Gated { gate: gate.clone() }),
        ExecutorConfig::default(),
        crate::LocalNotifier::default(),
    );
    // Running as usual: a turn's end would start the task's next queued turn here.
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    gate.notify_one();
    let end = next_end(&mut ended).await;
    assert!(end.next.is_some(), "a lease for the next queued turn");
    // The store's mock answers every claim with the same turn id: the next claim
    // would be refused as a turn already playing here until this one has left.
    let executor = service.executor().clone();
    eventually("the first turn has left", || executor.in_flight() == 0).await;

    // Stopping: the turn still ends, and leaves the queue to a sweep.
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    let executor = service.executor().clone();
    let stopping = tokio::spawn(async move { executor.wait_idle(Duration::from_secs(5)).await });
    eventually("the stop has begun", || !stopping.is_finished()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    let end = next_end(&mut ended).await;
    assert_eq!(
        end.next, None,
        "no lease: nothing starts here while stopping"
    );
    assert_eq!(stopping.await.unwrap(), 0);
}
