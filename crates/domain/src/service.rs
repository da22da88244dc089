//! The use cases: authenticate a key, accept messages (claim-and-spawn), read tasks and
//! history, and administer agents and keys.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ServiceError, StoreError};
use crate::executor::{StartedTurn, TurnExecutor};
use crate::keys;
use crate::model::*;
use crate::notify::LocalNotifier;
use crate::page::{Page, PageRequest};
use crate::ports::{AgentStore, TaskStore};
use crate::validate;

/// Who is calling: the agent the presented key is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub agent_id: AgentId,
    pub key_id: ApiKeyId,
}

/// A request to start a task, or to append to one: the target agent, the message, and
/// the metadata to pass through.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitMessage {
    pub agent_id: AgentId,
    pub message: NewMessage,
    pub metadata: Metadata,
}

/// The task API's use cases.
#[derive(Clone)]
pub struct TaskService {
    tasks: Arc<dyn TaskStore>,
    agents: Arc<dyn AgentStore>,
    executor: TurnExecutor,
    hub: LocalNotifier,
}

/// The longest a long-poll may wait; longer requests wait this long.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("executor", &self.executor)
            .finish_non_exhaustive()
    }
}

impl TaskService {
    /// `hub` is where this process learns of turn changes (the executor's notifier
    /// publishes into it; on PostgreSQL, so does the relay of other instances' changes).
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        agents: Arc<dyn AgentStore>,
        executor: TurnExecutor,
        hub: LocalNotifier,
    ) -> Self {
        TaskService {
            tasks,
            agents,
            executor,
            hub,
        }
    }

    pub fn executor(&self) -> &TurnExecutor {
        &self.executor
    }

    /// The principal a bearer token stands for. Revocation takes effect on the next
    /// request because every request looks the key up.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ServiceError> {
        let key = self
            .agents
            .find_api_key(&keys::hash(token))
            .await?
            .ok_or(ServiceError::Unauthorized)?;
        if key.revoked_at.is_some() {
            return Err(ServiceError::Unauthorized);
        }
        Ok(Principal {
            agent_id: key.agent_id,
            key_id: key.id,
        })
    }

    /// Creates a task with its first message and starts its first turn.
    pub async fn create_task(
        &self,
        who: &Principal,
        submit: SubmitMessage,
    ) -> Result<Accepted, ServiceError> {
        check_submission(who, &submit)?;
        let new = NewTask {
            agent_id: who.agent_id,
            message: submit.message,
            metadata: submit.metadata,
            now: self.executor.clock().now(),
        };
        let tasks = self.tasks.clone();
        let executor = self.executor.clone();
        self.executor
            .detached(async move {
                let accepted = tasks.create_task(new).await?;
                executor.spawn(started(&accepted));
                Ok(accepted)
            })
            .await
    }

    /// Appends a message to an idle task and starts its next turn; a task with a
    /// running turn is `TaskBusy` and nothing is stored.
    pub async fn append_message(
        &self,
        who: &Principal,
        task_id: TaskId,
        submit: SubmitMessage,
    ) -> Result<Accepted, ServiceError> {
        check_submission(who, &submit)?;
        let append = NewAppend {
            agent_id: who.agent_id,
            task_id,
            message: submit.message,
            metadata: submit.metadata,
            now: self.executor.clock().now(),
        };
        let tasks = self.tasks.clone();
        let executor = self.executor.clone();
        self.executor
            .detached(async move {
                let accepted = tasks.append_and_claim(append).await?;
                executor.spawn(started(&accepted));
                Ok(accepted)
            })
            .await
    }

    pub async fn get_task(
        &self,
        who: &Principal,
        task_id: TaskId,
    ) -> Result<TaskView, ServiceError> {
        self.tasks
            .get_task(who.agent_id, task_id)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }

    /// The task once its status is not `running`, or as it is after `wait` (capped at
    /// [`MAX_WAIT`]). Woken by turn changes, never by polling the store: the store is
    /// read once, then once per wake-up that concerns this task.
    pub async fn wait_task(
        &self,
        who: &Principal,
        task_id: TaskId,
        wait: Duration,
    ) -> Result<TaskView, ServiceError> {
        // Watch before reading, so a change between the read and the wait is seen.
        let mut watch = self.hub.watch(task_id);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let view = self.get_task(who, task_id).await?;
            if view.status() != TaskStatus::Running || wait.is_zero() {
                return Ok(view);
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Ok(view);
            }
        }
    }

    /// Up to `limit` events of the task after `after`, with the oldest `seq` kept.
    pub async fn events(
        &self,
        who: &Principal,
        task_id: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<EventPage, ServiceError> {
        self.tasks
            .list_events(who.agent_id, task_id, after, limit)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }

    /// Starts watching a task for changes (see [`LocalNotifier::watch`]).
    pub fn watch(&self, task_id: TaskId) -> crate::notify::TaskWatch {
        self.hub.watch(task_id)
    }

    pub async fn list_tasks(
        &self,
        who: &Principal,
        page: PageRequest,
    ) -> Result<Page<TaskView>, ServiceError> {
        Ok(self.tasks.list_tasks(who.agent_id, page).await?)
    }

    pub async fn list_messages(
        &self,
        who: &Principal,
        task_id: TaskId,
        page: PageRequest,
    ) -> Result<Page<Message>, ServiceError> {
        self.tasks
            .list_messages(who.agent_id, task_id, page)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }
}

fn started(accepted: &Accepted) -> StartedTurn {
    StartedTurn {
        agent_id: accepted.agent_id,
        task_id: accepted.task_id,
        turn_id: accepted.turn_id,
    }
}

/// A key acts for exactly one agent: naming another is `agent_not_found`, checked
/// before the body, so a foreign agent's existence is never hinted at.
fn check_submission(who: &Principal, submit: &SubmitMessage) -> Result<(), ServiceError> {
    if submit.agent_id != who.agent_id {
        return Err(ServiceError::AgentNotFound);
    }
    let mut errors = Vec::new();
    validate::client_message(&submit.message, &mut errors);
    validate::metadata(&submit.metadata, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Validation(errors))
    }
}

/// A key as created: the token is in this value and nowhere else, ever.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub token: String,
}

/// Administration of agents and keys, shared by the CLI and (later) the admin API.
#[derive(Clone)]
pub struct AdminService {
    agents: Arc<dyn AgentStore>,
    executor: TurnExecutor,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

impl AdminService {
    pub fn new(agents: Arc<dyn AgentStore>, executor: TurnExecutor) -> Self {
        AdminService { agents, executor }
    }

    /// Creates an agent after checking its name, that its runner kind is registered,
    /// and that the runner accepts its configuration.
    pub async fn create_agent(
        &self,
        name: &str,
        runner: RunnerSpec,
    ) -> Result<Agent, ServiceError> {
        let mut errors = Vec::new();
        validate::agent_name(name, &mut errors);
        match self.executor.runners().get(&runner.kind) {
            None => {
                let known: Vec<_> = self.executor.runners().kinds().collect();
                errors.push(crate::FieldError::new(
                    "runner.kind",
                    format!(
                        "unknown runner {:?}; this server has: {}",
                        runner.kind,
                        known.join(", ")
                    ),
                ));
            }
            Some(found) => {
                if let Err(why) = found.validate_config(&runner.config) {
                    errors.push(crate::FieldError::new("runner.config", why));
                }
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::Validation(errors));
        }
        let new = NewAgent {
            name: name.trim().to_owned(),
            runner,
            created_at: self.executor.clock().now(),
        };
        Ok(self.agents.create_agent(new).await?)
    }

    pub async fn count_agents(&self) -> Result<u64, ServiceError> {
        Ok(self.agents.count_agents().await?)
    }

    /// Creates a key for an agent and returns its token, which is not stored.
    pub async fn create_key(&self, agent_id: AgentId) -> Result<CreatedKey, ServiceError> {
        if self.agents.get_agent(agent_id).await?.is_none() {
            return Err(ServiceError::AgentNotFound);
        }
        let generated = keys::generate();
        let new = NewApiKey {
            agent_id,
            prefix: generated.prefix,
            secret_hash: generated.secret_hash,
            created_at: self.executor.clock().now(),
        };
        let key = self
            .agents
            .create_api_key(new)
            .await
            .map_err(|err| match err {
                // A prefix collision among 62^8 is possible only in theory; say so plainly.
                StoreError::Conflict(why) => {
                    ServiceError::Unavailable(format!("key collision, try again: {why}"))
                }
                other => other.into(),
            })?;
        Ok(CreatedKey {
            key,
            token: generated.token,
        })
    }

    /// Revokes a key by its prefix (or its whole token); `false` if no live key matched.
    pub async fn revoke_key(&self, prefix_or_token: &str) -> Result<bool, ServiceError> {
        let prefix = prefix_or_token
            .strip_prefix("bt_")
            .and_then(|rest| rest.split('_').next())
            .unwrap_or(prefix_or_token);
        Ok(self
            .agents
            .revoke_api_key(prefix, self.executor.clock().now())
            .await?)
    }
}

#[cfg(test)]
mod tests;
