//! Unit tests of claim-and-spawn with mocked ports.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::content::Content;
use crate::error::ClaimError;
use crate::executor::ExecutorConfig;
use crate::ports::{MockAgentStore, MockClock, MockTaskNotifier, MockTaskStore};
use crate::runner::{MockTurnRunner, RunnerError, RunnerRegistry, TurnRunner};

const AGENT: AgentId = AgentId(7);
const WHO: Principal = Principal {
    agent_id: AGENT,
    key_id: ApiKeyId(1),
};

fn at(secs: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
}

fn agent() -> Agent {
    Agent {
        card: None,
        id: AGENT,
        name: "a".into(),
        runner: RunnerSpec {
            kind: "mock".into(),
            config: json!({}),
        },
        policy: TurnPolicy::default(),
        webhook: None,
        created_at: at(0),
    }
}

fn task(id: i64) -> Task {
    Task {
        id: TaskId(id),
        agent_id: AGENT,
        metadata: Metadata::new(),
        input: Content::text("hello"),
        created_at: at(0),
        updated_at: at(0),
    }
}

/// What the store gives a turn of task `id` to play: the task, no request metadata,
/// `history`.
fn loaded(id: i64, history: Vec<Message>) -> Result<Option<TurnHistory>, StoreError> {
    Ok(Some(TurnHistory {
        task: task(id),
        metadata: Metadata::new(),
        history,
        files: Vec::new(),
    }))
}

fn user_message(task_id: i64, turn_id: i64) -> Message {
    Message {
        id: MessageId(1),
        task_id: TaskId(task_id),
        turn_id: TurnId(turn_id),
        role: Role::User,
        content: Content::text("hello"),
        streaming_status: None,
        created_at: at(0),
        metadata: Default::default(),
    }
}

fn submit(agent_id: AgentId) -> SubmitMessage {
    SubmitMessage {
        push: None,
        agent_id,
        message: NewMessage {
            role: Role::User,
            content: Content::text("hello"),
            metadata: Default::default(),
        },
        metadata: json!({"trace": "t-1"}).as_object().cloned().unwrap(),
        webhook: None,
        on_busy: None,
    }
}

/// A turn's end that started no queued turn.
const ENDED: Option<Ended> = Some(Ended { next: None });

fn accepted(task_id: i64, turn_id: i64) -> Accepted {
    Accepted {
        task_id: TaskId(task_id),
        agent_id: AGENT,
        turn_id: Some(TurnId(turn_id)),
        accepted_at: at(1),
        metadata: Metadata::new(),
        status: AcceptedStatus::Running,
        stream_after: Some(0),
        queued: None,
        interrupted: None,
    }
}

/// The mocks a turn touches once it is handed to the executor, with every ended turn
/// sent to the returned receiver.
struct Harness {
    tasks: MockTaskStore,
    agents: MockAgentStore,
    notifier: MockTaskNotifier,
    runner: MockTurnRunner,
    limit: usize,
}

impl Harness {
    fn new() -> Self {
        let mut clock_agents = MockAgentStore::new();
        clock_agents
            .expect_get_agent()
            .returning(|_| Ok(Some(agent())));
        Harness {
            tasks: MockTaskStore::new(),
            agents: clock_agents,
            notifier: MockTaskNotifier::new(),
            runner: mock_runner(),
            limit: 8,
        }
    }

    /// Expects turns to be played: history is loaded and each end is recorded.
    fn expect_turns_played(&mut self) -> mpsc::UnboundedReceiver<FinishTurn> {
        self.expect_turns_played_recording(Arc::new(std::sync::Mutex::new(Vec::new())))
    }

    /// As above, with every recorded output op appended to `recorded`.
    fn expect_turns_played_recording(
        &mut self,
        recorded: Arc<std::sync::Mutex<Vec<OutputOp>>>,
    ) -> mpsc::UnboundedReceiver<FinishTurn> {
        let (ended, ended_rx) = mpsc::unbounded_channel();
        self.tasks
            .expect_load_turn_input()
            .returning(|id, _| loaded(id.0, vec![user_message(id.0, 1)]));
        self.tasks.expect_record_output().returning(move |output| {
            recorded.lock().unwrap().extend(output.ops);
            Ok(true)
        });
        self.tasks.expect_finish_turn().returning(move |finish| {
            ended.send(finish).unwrap();
            Ok(ENDED)
        });
        ended_rx
    }

    fn build(self) -> TaskService {
        self.build_with_hub(crate::LocalNotifier::default())
    }

    fn build_with_hub(mut self, hub: crate::LocalNotifier) -> TaskService {
        let runner = std::mem::replace(&mut self.runner, mock_runner());
        self.build_with_runner(Arc::new(runner), hub)
    }

    /// With a runner of the test's own instead of the mock.
    fn build_with_runner(
        self,
        runner: Arc<dyn TurnRunner>,
        hub: crate::LocalNotifier,
    ) -> TaskService {
        let mut clock = MockClock::new();
        clock.expect_now().returning(|| at(1));
        let tasks: Arc<dyn TaskStore> = Arc::new(self.tasks);
        let agents: Arc<dyn AgentStore> = Arc::new(self.agents);
        let executor = TurnExecutor::new(
            tasks.clone(),
            agents.clone(),
            RunnerRegistry::new().with("mock", runner),
            Arc::new(self.notifier),
            Arc::new(clock),
            ExecutorConfig {
                max_concurrent_turns: self.limit,
                ..ExecutorConfig::default()
            },
            tokio::runtime::Handle::current(),
        );
        TaskService::new(tasks, agents, executor, hub)
    }
}

/// A runner that streams these pieces of text, pausing after each. (A runner that
/// streams is awkward to express with a synchronous mock closure, so this one is a
/// real implementation of the port.)
struct Streams(&'static [&'static str], Duration);

#[async_trait::async_trait]
impl TurnRunner for Streams {
    fn validate_config(&self, _: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    async fn run(
        &self,
        _: crate::runner::TurnInput,
        sink: crate::runner::TurnSink,
    ) -> Result<(), RunnerError> {
        for piece in self.0 {
            sink.text_delta(*piece)
                .await
                .map_err(|e| RunnerError::new("closed", e.to_string()))?;
            tokio::time::sleep(self.1).await;
        }
        Ok(())
    }
}

async fn next_end(rx: &mut mpsc::UnboundedReceiver<FinishTurn>) -> FinishTurn {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the turn was not ended within 5 s")
        .expect("the store mock was dropped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_commits_then_plays_the_turn_and_completes_it() {
    let mut h = Harness::new();
    h.tasks
        .expect_create_task()
        .withf(|new| new.agent_id == AGENT && new.metadata["trace"] == "t-1" && new.now == at(1))
        .times(1)
        .returning(|_| Ok(Claim::Started(accepted(3, 30))));
    let mut ended = h.expect_turns_played();
    h.runner
        .expect_run()
        .withf(|input, _| input.turn_id == TurnId(30) && input.history.len() == 1)
        .times(1)
        .returning(|_, _| Ok(()));
    h.notifier
        .expect_task_changed()
        .withf(|task| *task == TaskId(3))
        .times(1)
        .return_const(());
    let service = h.build();

    let got = service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    assert_eq!(got, Claim::Started(accepted(3, 30)));

    let end = next_end(&mut ended).await;
    assert_eq!(end.turn_id, TurnId(30));
    assert_eq!(end.outcome, TurnOutcome::Completed);
    assert!(end.output.is_empty());
    tokio::time::timeout(Duration::from_secs(5), async {
        while service.executor().in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_becomes_the_turns_message() {
    let mut h = Harness::new();
    h.tasks
        .expect_append_and_claim()
        .returning(|_| Ok(Claim::Started(accepted(3, 31))));
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut ended = h.expect_turns_played_recording(recorded.clone());
    h.notifier.expect_task_changed().return_const(());
    let service = h.build_with_runner(
        Arc::new(Streams(&["echo: ", "hello ", "world"], Duration::ZERO)),
        crate::LocalNotifier::default(),
    );

    service
        .append_message(&WHO, TaskId(3), submit(AGENT), None)
        .await
        .unwrap();
    let end = next_end(&mut ended).await;
    assert_eq!(end.outcome, TurnOutcome::Completed);
    // What was recorded while the turn played, then what came with its end (all of
    // it, for a runner this quick: one write for the whole turn).
    let mut ops = recorded.lock().unwrap().clone();
    ops.extend(end.output);
    let text: String = ops
        .iter()
        .map(|op| match op {
            OutputOp::TextDelta(text) => text.clone(),
            OutputOp::Message(other) => panic!("unexpected message {other:?}"),
        })
        .collect();
    assert_eq!(
        text, "echo: hello world",
        "coalescing never reorders or loses text"
    );
}

/// A database that is away for a moment (a restart) fails a turn's writes: they are
/// tried again while the lease lasts, so the finished output and the end are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_fail_for_a_moment_are_tried_again_and_nothing_is_lost() {
    let mut h = Harness::new();
    h.tasks
        .expect_create_task()
        .returning(|_| Ok(Claim::Started(accepted(3, 31))));
    h.tasks
        .expect_load_turn_input()
        .returning(|id, _| loaded(id.0, vec![user_message(id.0, 1)]));
    let outage = |calls: &std::sync::atomic::AtomicUsize| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2
    };
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (record_calls, kept) = (
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        recorded.clone(),
    );
    let counted = record_calls.clone();
    h.tasks.expect_record_output().returning(move |output| {
        if outage(&counted) {
            return Err(StoreError::Unavailable("the database is restarting".into()));
        }
        kept.lock().unwrap().extend(output.ops);
        Ok(true)
    });
    let finish_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = finish_calls.clone();
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    h.tasks.expect_finish_turn().returning(move |finish| {
        if outage(&counted) {
            return Err(StoreError::Unavailable("the database is restarting".into()));
        }
        ended.send(finish).unwrap();
        Ok(ENDED)
    });
    h.notifier.expect_task_changed().return_const(());
    let service = h.build_with_runner(
        // Longer than the flush interval, so the text is recorded before the end.
        Arc::new(Streams(&["echo: hello"], Duration::from_millis(100))),
        crate::LocalNotifier::default(),
    );
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    let end = next_end(&mut ended_rx).await;
    assert_eq!(end.outcome, TurnOutcome::Completed);
    assert_eq!(
        *recorded.lock().unwrap(),
        vec![OutputOp::TextDelta("echo: hello".into())]
    );
    assert_eq!(record_calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(finish_calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_while_running_is_task_busy_and_starts_nothing() {
    let mut h = Harness::new();
    let active = ActiveTurn {
        turn_id: TurnId(9),
        started_at: at(-5),
    };
    h.tasks
        .expect_append_and_claim()
        .times(1)
        .returning(move |_| Err(ClaimError::TaskBusy(active)));
    // No runner, history or finish expectations: touching them fails the test.
    let service = h.build();

    let err = service
        .append_message(&WHO, TaskId(3), submit(AGENT), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServiceError::TaskBusy(got) if got == active),
        "{err:?}"
    );
    assert_eq!(service.executor().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_to_unknown_task_is_task_not_found() {
    let mut h = Harness::new();
    h.tasks
        .expect_append_and_claim()
        .times(1)
        .returning(|_| Err(ClaimError::TaskNotFound));
    let service = h.build();

    let err = service
        .append_message(&WHO, TaskId(404), submit(AGENT), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::TaskNotFound), "{err:?}");
    assert_eq!(service.executor().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_task_is_looked_up_as_ours_and_not_found() {
    let mut h = Harness::new();
    // The store is asked for the task *as this key's agent*, which is how ownership is
    // enforced: another agent's task is simply not found.
    h.tasks
        .expect_append_and_claim()
        .withf(|append| append.agent_id == AGENT && append.task_id == TaskId(5))
        .times(1)
        .returning(|_| Err(ClaimError::TaskNotFound));
    h.tasks
        .expect_get_task()
        .withf(|agent, task| *agent == AGENT && *task == TaskId(5))
        .times(1)
        .returning(|_, _| Ok(None));
    let service = h.build();

    let err = service
        .append_message(&WHO, TaskId(5), submit(AGENT), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::TaskNotFound), "{err:?}");
    let err = service.get_task(&WHO, TaskId(5)).await.unwrap_err();
    assert!(matches!(err, ServiceError::TaskNotFound), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_agent_id_other_than_the_keys_is_agent_not_found_and_touches_nothing() {
    let h = Harness::new(); // no store expectations at all
    let service = h.build();

    let err = service
        .create_task(&WHO, submit(AgentId(8)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::AgentNotFound), "{err:?}");
    let err = service
        .append_message(&WHO, TaskId(1), submit(AgentId(8)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::AgentNotFound), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_message_is_a_validation_error_and_touches_nothing() {
    let service = Harness::new().build();
    let mut bad = submit(AGENT);
    bad.message.content = Content::text("   ");
    let err = service.create_task(&WHO, bad, None).await.unwrap_err();
    let ServiceError::Validation(fields) = err else {
        panic!("expected a validation error, got {err:?}");
    };
    assert_eq!(fields[0].field, "message.content");
}

async fn turn_that_ends_badly(runner: MockTurnRunner) -> FinishTurn {
    let mut h = Harness::new();
    h.runner = runner;
    h.tasks
        .expect_create_task()
        .returning(|_| Ok(Claim::Started(accepted(3, 32))));
    let mut ended = h.expect_turns_played();
    h.notifier
        .expect_task_changed()
        .withf(|task| *task == TaskId(3))
        .times(1)
        .return_const(());
    let service = h.build();
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    next_end(&mut ended).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_error_fails_the_turn_with_its_code_so_the_task_leaves_running() {
    let mut runner = mock_runner();
    runner
        .expect_run()
        .returning(|_, _| Err(RunnerError::new("model_unavailable", "upstream said 503")));
    let end = turn_that_ends_badly(runner).await;
    assert_eq!(
        end.outcome,
        TurnOutcome::Failed(TurnError {
            code: "model_unavailable".into(),
            message: "upstream said 503".into(),
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_panic_fails_the_turn_so_the_task_leaves_running() {
    let mut runner = mock_runner();
    runner.expect_run().returning(|_, _| panic!("runner bug"));
    let end = turn_that_ends_badly(runner).await;
    let TurnOutcome::Failed(error) = end.outcome else {
        panic!("expected a failed turn");
    };
    assert_eq!(error.code, "runner_panicked");
    assert!(
        !error.message.contains("runner bug"),
        "internals must not leak into the turn error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_never_plays_more_turns_at_once_than_its_limit() {
    struct Counting {
        now: AtomicUsize,
        peak: AtomicUsize,
    }
    #[async_trait::async_trait]
    impl TurnRunner for Counting {
        fn validate_config(&self, _: &serde_json::Value) -> Result<(), String> {
            Ok(())
        }
        async fn run(
            &self,
            _: crate::runner::TurnInput,
            _: crate::runner::TurnSink,
        ) -> Result<(), RunnerError> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(40)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let runner = Arc::new(Counting {
        now: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    });
    let mut h = Harness::new();
    let next_turn = Arc::new(AtomicUsize::new(100));
    h.tasks.expect_create_task().returning(move |_| {
        let turn = next_turn.fetch_add(1, Ordering::SeqCst) as i64;
        Ok(Claim::Started(accepted(turn, turn)))
    });
    let mut ended = h.expect_turns_played();
    h.notifier.expect_task_changed().return_const(());
    let mut clock = MockClock::new();
    clock.expect_now().returning(|| at(1));
    let tasks: Arc<dyn TaskStore> = Arc::new(h.tasks);
    let agents: Arc<dyn AgentStore> = Arc::new(h.agents);
    let executor = TurnExecutor::new(
        tasks.clone(),
        agents.clone(),
        RunnerRegistry::new().with("mock", runner.clone()),
        Arc::new(h.notifier),
        Arc::new(clock),
        ExecutorConfig {
            max_concurrent_turns: 2,
            ..ExecutorConfig::default()
        },
        tokio::runtime::Handle::current(),
    );
    let service = TaskService::new(tasks, agents, executor, crate::LocalNotifier::default());

    for _ in 0..7 {
        service
            .create_task(&WHO, submit(AGENT), None)
            .await
            .unwrap();
    }
    for _ in 0..7 {
        assert_eq!(next_end(&mut ended).await.outcome, TurnOutcome::Completed);
    }
    assert_eq!(runner.peak.load(Ordering::SeqCst), 2);
    assert_eq!(
        service.executor().wait_idle(Duration::from_secs(5)).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_unknown_keys_are_unauthorized() {
    let mut h = Harness::new();
    let token = crate::keys::generate();
    let live_hash = token.secret_hash.clone();
    h.agents.expect_find_api_key().returning(move |hash| {
        Ok((hash == live_hash).then(|| ApiKey {
            id: ApiKeyId(1),
            agent_id: AGENT,
            prefix: "p".into(),
            secret_hash: hash.to_owned(),
            created_at: at(0),
            revoked_at: Some(at(1)),
            last_used_at: None,
        }))
    });
    let service = h.build();
    assert!(matches!(
        service.authenticate(&token.token).await,
        Err(ServiceError::Unauthorized)
    ));
    assert!(matches!(
        service.authenticate("bt_nope").await,
        Err(ServiceError::Unauthorized)
    ));
}

/// A `get_task` that finds the task running, then with its turn ended as `status`,
/// counting its reads in `reads`.
fn running_then(
    status: TurnStatus,
    reads: Arc<AtomicUsize>,
) -> impl FnMut(AgentId, TaskId) -> Result<Option<TaskView>, StoreError> {
    move |_, _| {
        let before = reads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(view(if before == 0 {
            TurnStatus::Running
        } else {
            status
        })))
    }
}

fn view(status: TurnStatus) -> TaskView {
    TaskView {
        queued: 0,
        task: task(3),
        latest_turn: Turn {
            id: TurnId(30),
            task_id: TaskId(3),
            status,
            error: None,
            attempt: 1,
            metadata: Metadata::new(),
            started_at: at(0),
            ended_at: None,
            usage: None,
            respond_by: None,
        },
        latest_agent_message: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_at_once_when_the_task_is_not_running() {
    let mut h = Harness::new();
    h.tasks
        .expect_get_task()
        .times(1)
        .returning(|_, _| Ok(Some(view(TurnStatus::Completed))));
    let service = h.build();
    let started = std::time::Instant::now();
    let got = service
        .wait_task(&WHO, TaskId(3), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.status(), TaskStatus::Completed);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_on_its_tasks_change_and_reads_the_store_only_then() {
    use crate::ports::TaskNotifier;
    let hub = crate::LocalNotifier::default();
    let reads = Arc::new(AtomicUsize::new(0));
    let mut h = Harness::new();
    // Running on the first read, completed on the second: the store is read once up
    // front and once per wake-up for this task, never on a timer.
    h.tasks
        .expect_get_task()
        .returning(running_then(TurnStatus::Completed, reads.clone()));
    let service = h.build_with_hub(hub.clone());
    let waiter = tokio::spawn(async move {
        service
            .wait_task(&WHO, TaskId(3), Duration::from_secs(30))
            .await
    });
    while reads.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for other in 0..20 {
        hub.task_changed(TaskId(100 + other));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "other tasks' changes cost no read"
    );
    assert!(!waiter.is_finished());
    hub.task_changed(TaskId(3));
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.status(), TaskStatus::Completed);
    assert_eq!(reads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_rereads_after_a_resync() {
    let hub = crate::LocalNotifier::default();
    let reads = Arc::new(AtomicUsize::new(0));
    let mut h = Harness::new();
    h.tasks
        .expect_get_task()
        .returning(running_then(TurnStatus::Failed, reads.clone()));
    let service = h.build_with_hub(hub.clone());
    let waiter = tokio::spawn(async move {
        service
            .wait_task(&WHO, TaskId(3), Duration::from_secs(30))
            .await
    });
    while reads.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    hub.resync();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.status(), TaskStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn wait_gives_up_after_its_time_with_the_running_task() {
    let mut h = Harness::new();
    h.tasks
        .expect_get_task()
        .times(1)
        .returning(|_, _| Ok(Some(view(TurnStatus::Running))));
    let service = h.build();
    let started = tokio::time::Instant::now();
    let got = service
        .wait_task(&WHO, TaskId(3), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.status(), TaskStatus::Running);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    // And no wait is longer than the cap.
    let mut h = Harness::new();
    h.tasks
        .expect_get_task()
        .returning(|_, _| Ok(Some(view(TurnStatus::Running))));
    let service = h.build();
    let started = tokio::time::Instant::now();
    service
        .wait_task(&WHO, TaskId(3), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), crate::service::MAX_WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_unfinished_turns_fails_this_executors_turns_as_their_holder() {
    let mut h = Harness::new();
    h.tasks
        .expect_create_task()
        .returning(|_| Ok(Claim::Started(accepted(3, 40))));
    h.tasks
        .expect_load_turn_input()
        .returning(|id, _| loaded(id.0, vec![user_message(id.0, 1)]));
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    h.tasks.expect_finish_turn().returning(move |finish| {
        ended.send(finish).unwrap();
        Ok(ENDED)
    });
    h.runner.expect_run().returning(|_, _| {
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    });
    h.notifier.expect_task_changed().return_const(());
    let service = h.build();
    service
        .create_task(&WHO, submit(AGENT), None)
        .await
        .unwrap();
    assert_eq!(
        service
            .executor()
            .wait_idle(Duration::from_millis(20))
            .await,
        1
    );
    let report = service.executor().end_unfinished().await;
    assert_eq!(
        report,
        crate::executor::ShutdownReport {
            failed: 1,
            released: 0
        }
    );
    let end = next_end(&mut ended_rx).await;
    assert_eq!(end.turn_id, TurnId(40));
    assert_eq!(
        end.guard,
        LeaseGuard::Holder(Holder {
            owner: service.executor().config().instance_id.clone(),
            attempt: 1
        })
    );
    let TurnOutcome::Failed(error) = end.outcome else {
        panic!("expected a failed turn, got {:?}", end.outcome);
    };
    assert_eq!(error.code, "turn_interrupted");
}

mod lifecycle;
mod streams;

/// A runner mock that, like most runners, takes no messages mid-turn.
fn mock_runner() -> MockTurnRunner {
    let mut runner = MockTurnRunner::new();
    runner.expect_takes_messages().return_const(false);
    runner
}
