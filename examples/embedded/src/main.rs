//! baton as a library: a plain tokio program with the domain, the SQLite adapter and a
//! runner of its own — no HTTP. It starts a task, waits for the turn, appends a
//! message and waits again, with the guarantees the server gives (one turn at a time
//! per task, every accepted message kept).

#![allow(clippy::print_stdout, reason = "an example shows what it does")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_domain::service::SubmitMessage;
use baton_domain::*;
use baton_persistence::{SqlStore, StoreOptions};
use serde_json::{Value, json};

/// Counts the words of the user's message.
struct WordCount;

#[async_trait]
impl TurnRunner for WordCount {
    fn validate_config(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, input: TurnInput, sink: TurnSink) -> Result<(), RunnerError> {
        let said = input
            .last_user_message()
            .and_then(|m| m.content.as_text())
            .unwrap_or("");
        let count = said.split_whitespace().count();
        sink.message(Content::text(format!("{count} words")))
            .await
            .map_err(|_| RunnerError::new("turn_closed", "the turn ended"))
    }
}

fn says(text: &str) -> SubmitMessage {
    SubmitMessage {
        agent_id: AgentId(1),
        message: NewMessage {
            role: Role::User,
            content: Content::text(text),
            metadata: Default::default(),
        },
        metadata: json!({"source": "embedded"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        webhook: None,
        on_busy: None,
        push: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A SQLite file (`postgres://…` works the same); a temporary one for the example.
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    let (store, _migrations) = SqlStore::open(&url, StoreOptions::default()).await?;
    let store = Arc::new(store);

    // The wiring the server does: the executor plays turns with these runners.
    let hub = LocalNotifier::default();
    let runners = RunnerRegistry::new().with("count", Arc::new(WordCount));
    let executor = TurnExecutor::new(
        store.clone(),
        store.clone(),
        runners,
        Arc::new(hub.clone()),
        Arc::new(SystemClock),
        ExecutorConfig::default(),
        tokio::runtime::Handle::current(),
    );
    let tasks = TaskService::new(store.clone(), store.clone(), executor.clone(), hub);
    let admin = AdminService::new(store.clone(), executor);

    let spec = RunnerSpec {
        kind: "count".into(),
        config: json!({}),
    };
    let agent = admin
        .create_agent("counter", spec, TurnPolicy::default(), None, None)
        .await?;
    let key = admin.create_key(agent.id).await?;
    let me = tasks.authenticate(&key.token).await?;

    let Claim::Started(first) = tasks.create_task(&me, says("one two three"), None).await? else {
        anyhow::bail!("a new task always starts its turn");
    };
    let done = tasks
        .wait_task(&me, first.task_id, Duration::from_secs(10))
        .await?;
    println!("task {} turn 1: {}", first.task_id, reply(&done));

    tasks
        .append_message(&me, first.task_id, says("four five"), None)
        .await?;
    let done = tasks
        .wait_task(&me, first.task_id, Duration::from_secs(10))
        .await?;
    println!("task {} turn 2: {}", first.task_id, reply(&done));
    Ok(())
}

fn reply(view: &TaskView) -> String {
    let text = view
        .latest_agent_message
        .as_ref()
        .and_then(|m| m.content.as_text())
        .unwrap_or("(no reply)");
    format!("{} — {text}", view.status())
}
