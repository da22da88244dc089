//! The storage ports in memory, for embedders' tests and examples. It keeps the same
//! contract as the SQL stores (the conformance suite runs against all of them), but
//! nothing survives the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use baton_domain::webhooks::{AttemptResult, AttemptView, DeliveryView, DueDelivery, NextStep};
use baton_domain::*;
use chrono::{DateTime, Utc};

#[derive(Debug, Default)]
struct State {
    agents: Vec<Agent>,
    keys: Vec<ApiKey>,
    tasks: Vec<Task>,
    turns: Vec<Turn>,
    messages: Vec<Message>,
    events: Vec<TaskEvent>,
    last_seq: HashMap<TaskId, i64>,
    /// Running turns' leases: holder (none once released) and expiry.
    leases: HashMap<TurnId, (Option<String>, DateTime<Utc>)>,
    idempotency: HashMap<(AgentId, String), StoredKey>,
    /// Turns' own webhooks (from their requests).
    turn_webhooks: HashMap<TurnId, WebhookEndpoint>,
    deliveries: Vec<MemoryDelivery>,
    files: Vec<StoredFile>,
    /// Output batches the current play of each running turn has recorded.
    output_batches: HashMap<TurnId, u32>,
}

#[derive(Debug)]
struct MemoryDelivery {
    view: DeliveryView,
    endpoint: WebhookEndpoint,
    payload: String,
    round_start: u32,
    claimed_until: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct StoredKey {
    request_hash: String,
    accepted: Accepted,
    expires_at: DateTime<Utc>,
}

/// Tasks, turns, messages, agents and keys in memory. Ids start at 1 per kind.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

fn next_id(len: usize) -> i64 {
    len as i64 + 1
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::internal("the in-memory store was poisoned by a panic"))
    }
}

impl State {
    fn owned_task(&self, agent: AgentId, task: TaskId) -> Option<&Task> {
        self.tasks
            .iter()
            .find(|t| t.id == task && t.agent_id == agent)
    }

    fn running_turn(&self, task: TaskId) -> Option<&Turn> {
        self.turns
            .iter()
            .find(|t| t.task_id == task && t.status == TurnStatus::Running)
    }

    fn start_turn(
        &mut self,
        task: TaskId,
        message: &NewMessage,
        metadata: &Metadata,
        lease: &Lease,
        webhook: Option<&WebhookEndpoint>,
        now: DateTime<Utc>,
    ) -> TurnId {
        let turn = Turn {
            id: TurnId(next_id(self.turns.len())),
            task_id: task,
            status: TurnStatus::Running,
            error: None,
            attempt: 1,
            metadata: metadata.clone(),
            started_at: now,
            ended_at: None,
            usage: None,
            respond_by: None,
        };
        self.turns.push(turn.clone());
        self.leases
            .insert(turn.id, (Some(lease.owner.clone()), lease.expires_at));
        if let Some(webhook) = webhook {
            self.turn_webhooks.insert(turn.id, webhook.clone());
        }
        let content = message.content.clone();
        let input = self.push_message(task, turn.id, message.role, content, None, now);
        // The task's input as stored: attachments by id, never their bytes.
        if let Some(stored) = self.tasks.iter_mut().find(|t| t.id == task) {
            stored.input = input.content.clone();
        }
        let data = baton_domain::events::turn_started(&turn, &input);
        self.push_event(task, turn.id, EventKind::TurnStarted, data, now);
        turn.id
    }

    fn push_message(
        &mut self,
        task: TaskId,
        turn: TurnId,
        role: Role,
        content: Content,
        streaming_status: Option<StreamingStatus>,
        now: DateTime<Utc>,
    ) -> Message {
        let content = self.store_attachments(task, content);
        let message = Message {
            id: MessageId(next_id(self.messages.len())),
            task_id: task,
            turn_id: turn,
            role,
            content,
            streaming_status,
            created_at: now,
        };
        self.messages.push(message.clone());
        message
    }

    /// Keeps the bytes of attachments sent with `content`; the content as stored.
    fn store_attachments(&mut self, task: TaskId, content: Content) -> Content {
        let Content::Text(mut text) = content else {
            return content;
        };
        for attachment in &mut text.attachments {
            let Some(bytes) = attachment.decoded() else {
                continue;
            };
            let file_id = next_id(self.files.len());
            *attachment = attachment.stored(file_id, &bytes);
            self.files.push(StoredFile {
                file_id,
                task_id: task,
                filename: attachment.filename.clone(),
                media_type: attachment.media_type.clone(),
                data: bytes,
            });
        }
        Content::Text(text)
    }

    fn push_event(
        &mut self,
        task: TaskId,
        turn: TurnId,
        kind: EventKind,
        data: serde_json::Value,
        now: DateTime<Utc>,
    ) {
        let seq = self.last_seq.entry(task).or_insert(0);
        *seq += 1;
        self.events.push(TaskEvent {
            task_id: task,
            seq: *seq,
            turn_id: turn,
            kind,
            data,
            created_at: now,
        });
    }

    fn open_text(&mut self, turn: TurnId) -> Option<&mut Message> {
        self.messages
            .iter_mut()
            .find(|m| m.turn_id == turn && m.streaming_status == Some(StreamingStatus::InProgress))
    }

    /// Closes the turn's open streamed message, with its `message` event.
    fn close_text(&mut self, task: TaskId, turn: TurnId, now: DateTime<Utc>) {
        if let Some(open) = self.open_text(turn) {
            open.streaming_status = Some(StreamingStatus::Done);
            let data = baton_domain::events::message(open);
            self.push_event(task, turn, EventKind::Message, data, now);
        }
    }

    fn whole_message(&mut self, task: TaskId, turn: TurnId, content: Content, now: DateTime<Utc>) {
        self.close_text(task, turn, now);
        let message = self.push_message(task, turn, Role::Assistant, content, None, now);
        let data = baton_domain::events::message(&message);
        self.push_event(task, turn, EventKind::Message, data, now);
    }

    fn is_running(&self, turn: TurnId) -> bool {
        self.turns
            .iter()
            .any(|t| t.id == turn && t.status == TurnStatus::Running)
    }

    fn holds(&self, turn: TurnId, owner: &str) -> bool {
        self.is_running(turn)
            && self
                .leases
                .get(&turn)
                .is_some_and(|(holder, _)| holder.as_deref() == Some(owner))
    }

    /// Whether `holder` holds the running turn's lease and plays its current attempt.
    fn plays(&self, turn: TurnId, holder: &Holder) -> bool {
        self.holds(turn, &holder.owner)
            && self
                .turns
                .iter()
                .any(|t| t.id == turn && t.attempt == holder.attempt)
    }

    /// Stores a play's output ops, as `TaskStore::record_output` says.
    fn apply_output(
        &mut self,
        task: TaskId,
        turn: TurnId,
        ops: Vec<OutputOp>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for op in ops {
            match op {
                OutputOp::TextDelta(delta) => {
                    if self.open_text(turn).is_none() {
                        let streaming = Some(StreamingStatus::InProgress);
                        let empty = Content::text("");
                        self.push_message(task, turn, Role::Assistant, empty, streaming, now);
                    }
                    let Some(open) = self.open_text(turn) else {
                        return Err(StoreError::internal("the streamed message vanished"));
                    };
                    if let Content::Text(text) = &mut open.content {
                        text.content.push_str(&delta);
                    }
                    let data = baton_domain::events::text_delta(turn, open.id, &delta);
                    self.push_event(task, turn, EventKind::TextDelta, data, now);
                }
                OutputOp::Message(content) => self.whole_message(task, turn, content, now),
            }
        }
        Ok(())
    }

    /// Ends a turn as `TaskStore::finish_turn` says.
    fn finish(&mut self, finish: FinishTurn) -> bool {
        let (task, turn_id, now) = (finish.task_id, finish.turn_id, finish.now);
        let allowed = match &finish.guard {
            LeaseGuard::Anyone => self.turns.iter().any(|t| {
                t.id == turn_id
                    && matches!(t.status, TurnStatus::Running | TurnStatus::RequiresAction)
            }),
            LeaseGuard::Holder(holder) => self.plays(turn_id, holder),
            LeaseGuard::ExpiredBy(cutoff) => {
                self.is_running(turn_id) && self.expired_by(turn_id, *cutoff)
            }
            LeaseGuard::AnswersDueBy(now) => self.turns.iter().any(|t| {
                t.id == turn_id
                    && t.status == TurnStatus::RequiresAction
                    && t.respond_by.is_some_and(|due| due <= *now)
            }),
        };
        if !allowed {
            return false;
        }
        self.leases.remove(&turn_id);
        if self
            .apply_output(task, turn_id, finish.output, now)
            .is_err()
        {
            return false;
        }
        self.close_text(task, turn_id, now);
        let Some(turn) = self.turns.iter_mut().find(|t| t.id == turn_id) else {
            return false;
        };
        turn.status = finish.outcome.status();
        if let TurnOutcome::Failed(error) = &finish.outcome {
            turn.error = Some(error.clone());
        }
        turn.ended_at = Some(now);
        turn.usage = finish.usage;
        turn.respond_by = match &finish.outcome {
            TurnOutcome::RequiresAction { respond_by } => Some(*respond_by),
            _ => None,
        };
        let turn = turn.clone();
        let output: Vec<Message> = self
            .messages
            .iter()
            .filter(|m| m.turn_id == turn_id && m.role == Role::Assistant)
            .cloned()
            .collect();
        let (kind, data) = baton_domain::events::turn_ended(&turn, &output);
        self.push_event(task, turn_id, kind, data, now);
        self.queue_delivery(&turn, &output, now);
        if let Some(task) = self.tasks.iter_mut().find(|t| t.id == task) {
            task.updated_at = now;
        }
        true
    }

    fn expired_by(&self, turn: TurnId, cutoff: DateTime<Utc>) -> bool {
        self.leases
            .get(&turn)
            .is_none_or(|(_, expires_at)| *expires_at <= cutoff)
    }

    /// Writes the delivery of a turn's end, if the turn or its agent has a webhook.
    fn queue_delivery(&mut self, turn: &Turn, output: &[Message], now: DateTime<Utc>) {
        let Some(task) = self.tasks.iter().find(|t| t.id == turn.task_id) else {
            return;
        };
        let agent_hook = self
            .agents
            .iter()
            .find(|a| a.id == task.agent_id)
            .and_then(|a| a.webhook.clone());
        let Some(endpoint) = self.turn_webhooks.get(&turn.id).cloned().or(agent_hook) else {
            return;
        };
        let payload =
            baton_domain::webhooks::payload(turn, task.agent_id.0, output, &task.metadata);
        let view = DeliveryView {
            delivery_id: self.deliveries.len() as i64 + 1,
            webhook_id: baton_domain::webhooks::new_delivery_id(),
            task_id: turn.task_id.0,
            turn_id: turn.id.0,
            event_type: baton_domain::webhooks::event_type(turn).to_owned(),
            url: endpoint.url.clone(),
            status: "pending".to_owned(),
            next_attempt_at: Some(now),
            created_at: now,
            attempts: Vec::new(),
        };
        self.deliveries.push(MemoryDelivery {
            view,
            endpoint,
            payload: payload.to_string(),
            round_start: 0,
            claimed_until: None,
        });
    }

    /// Refuses a claim when the agent already runs `limit` turns.
    fn check_capacity(&self, agent: AgentId, limit: Option<u32>) -> Result<(), ClaimError> {
        let Some(limit) = limit else { return Ok(()) };
        let running = self
            .turns
            .iter()
            .filter(|t| t.status == TurnStatus::Running)
            .filter(|t| {
                self.tasks
                    .iter()
                    .any(|task| task.id == t.task_id && task.agent_id == agent)
            })
            .count();
        if running >= limit as usize {
            return Err(ClaimError::TooManyRunningTurns(limit));
        }
        Ok(())
    }

    /// The stored answer for a live key (see `TaskStore::create_task`).
    fn replay(
        &mut self,
        agent: AgentId,
        record: Option<&IdempotencyRecord>,
        now: DateTime<Utc>,
    ) -> Result<Option<Accepted>, ClaimError> {
        let Some(record) = record else {
            return Ok(None);
        };
        let id = (agent, record.key.clone());
        if self
            .idempotency
            .get(&id)
            .is_some_and(|k| k.expires_at <= now)
        {
            self.idempotency.remove(&id);
        }
        match self.idempotency.get(&id) {
            None => Ok(None),
            Some(stored) if stored.request_hash == record.request_hash => {
                Ok(Some(stored.accepted.clone()))
            }
            Some(_) => Err(ClaimError::IdempotencyKeyReused),
        }
    }

    fn remember(&mut self, record: Option<&IdempotencyRecord>, accepted: &Accepted) {
        if let Some(record) = record {
            self.idempotency.insert(
                (accepted.agent_id, record.key.clone()),
                StoredKey {
                    request_hash: record.request_hash.clone(),
                    accepted: accepted.clone(),
                    expires_at: record.expires_at,
                },
            );
        }
    }

    fn view(&self, task: &Task) -> Result<TaskView, StoreError> {
        let latest_turn = self
            .turns
            .iter()
            .filter(|t| t.task_id == task.id)
            .max_by_key(|t| t.id)
            .cloned()
            .ok_or_else(|| StoreError::internal(format!("task {} has no turn", task.id)))?;
        let latest_agent_message = self
            .messages
            .iter()
            .filter(|m| m.task_id == task.id && m.role == Role::Assistant)
            .max_by_key(|m| m.id)
            .cloned();
        Ok(TaskView {
            task: task.clone(),
            latest_turn,
            latest_agent_message,
        })
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn create_task(&self, new: NewTask) -> Result<Claim, ClaimError> {
        let mut state = self.lock()?;
        let record = new.idempotency.as_ref();
        if let Some(first) = state.replay(new.agent_id, record, new.now)? {
            return Ok(Claim::Replayed(first));
        }
        state.check_capacity(new.agent_id, new.max_running_per_agent)?;
        let task_id = TaskId(next_id(state.tasks.len()));
        state.tasks.push(Task {
            id: task_id,
            agent_id: new.agent_id,
            metadata: new.metadata.clone(),
            input: new.message.content.clone(),
            created_at: new.now,
            updated_at: new.now,
        });
        let turn_id = state.start_turn(
            task_id,
            &new.message,
            &new.metadata,
            &new.lease,
            new.webhook.as_ref(),
            new.now,
        );
        let accepted = Accepted {
            task_id,
            agent_id: new.agent_id,
            turn_id,
            accepted_at: new.now,
            metadata: new.metadata.clone(),
            status: TaskStatus::Running,
        };
        state.remember(record, &accepted);
        Ok(Claim::Started(accepted))
    }

    async fn append_and_claim(&self, append: NewAppend) -> Result<Claim, ClaimError> {
        let mut state = self.lock()?;
        if state.owned_task(append.agent_id, append.task_id).is_none() {
            return Err(ClaimError::TaskNotFound);
        }
        let record = append.idempotency.as_ref();
        if let Some(first) = state.replay(append.agent_id, record, append.now)? {
            return Ok(Claim::Replayed(first));
        }
        if let Some(running) = state.running_turn(append.task_id) {
            return Err(ClaimError::TaskBusy(ActiveTurn {
                turn_id: running.id,
                started_at: running.started_at,
            }));
        }
        let waiting = state
            .turns
            .iter()
            .rev()
            .find(|t| t.task_id == append.task_id)
            .filter(|t| t.status == TurnStatus::RequiresAction)
            .map(|t| t.id);
        if let Some(waiting) = waiting {
            let contents: Vec<&Content> = state
                .messages
                .iter()
                .filter(|m| m.turn_id == waiting)
                .map(|m| &m.content)
                .collect();
            let requested = tools::requested_calls(contents.iter().copied());
            let answered = tools::answered_calls(contents.iter().copied());
            let answer = tools::check_answer(&requested, &answered, &append.message)
                .map_err(ClaimError::Invalid)?;
            if answer == tools::Answer::Partial {
                let message = &append.message;
                state.push_message(
                    append.task_id,
                    waiting,
                    message.role,
                    message.content.clone(),
                    None,
                    append.now,
                );
                if let Some(task) = state.tasks.iter_mut().find(|t| t.id == append.task_id) {
                    task.updated_at = append.now;
                }
                let accepted = Accepted {
                    task_id: append.task_id,
                    agent_id: append.agent_id,
                    turn_id: waiting,
                    accepted_at: append.now,
                    metadata: append.metadata.clone(),
                    status: TaskStatus::RequiresAction,
                };
                state.remember(record, &accepted);
                return Ok(Claim::Started(accepted));
            }
            if let Some(turn) = state.turns.iter_mut().find(|t| t.id == waiting) {
                turn.status = TurnStatus::Completed;
            }
        } else {
            tools::check_not_an_answer(&append.message).map_err(ClaimError::Invalid)?;
        }
        state.check_capacity(append.agent_id, append.max_running_per_agent)?;
        let turn_id = state.start_turn(
            append.task_id,
            &append.message,
            &append.metadata,
            &append.lease,
            append.webhook.as_ref(),
            append.now,
        );
        if let Some(task) = state.tasks.iter_mut().find(|t| t.id == append.task_id) {
            task.updated_at = append.now;
        }
        let accepted = Accepted {
            task_id: append.task_id,
            agent_id: append.agent_id,
            turn_id,
            accepted_at: append.now,
            metadata: append.metadata.clone(),
            status: TaskStatus::Running,
        };
        state.remember(record, &accepted);
        Ok(Claim::Started(accepted))
    }

    async fn get_task(&self, agent: AgentId, task: TaskId) -> Result<Option<TaskView>, StoreError> {
        let state = self.lock()?;
        state
            .owned_task(agent, task)
            .map(|t| state.view(t))
            .transpose()
    }

    async fn list_tasks(
        &self,
        agent: AgentId,
        page: PageRequest,
    ) -> Result<Page<TaskView>, StoreError> {
        let state = self.lock()?;
        let views = state
            .tasks
            .iter()
            .rev()
            .filter(|t| t.agent_id == agent && page.after.is_none_or(|after| t.id.0 < after))
            .take(page.limit as usize + 1)
            .map(|t| state.view(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_overfetch(views, page.limit, |v| v.task.id.0))
    }

    async fn list_messages(
        &self,
        agent: AgentId,
        task: TaskId,
        page: PageRequest,
    ) -> Result<Option<Page<Message>>, StoreError> {
        let state = self.lock()?;
        if state.owned_task(agent, task).is_none() {
            return Ok(None);
        }
        let messages: Vec<Message> = state
            .messages
            .iter()
            .filter(|m| m.task_id == task && page.after.is_none_or(|after| m.id.0 > after))
            .take(page.limit as usize + 1)
            .cloned()
            .collect();
        Ok(Some(Page::from_overfetch(messages, page.limit, |m| m.id.0)))
    }

    async fn load_turn_input(
        &self,
        task: TaskId,
    ) -> Result<Option<(Task, Vec<Message>)>, StoreError> {
        let state = self.lock()?;
        let Some(found) = state.tasks.iter().find(|t| t.id == task) else {
            return Ok(None);
        };
        let history = state
            .messages
            .iter()
            .filter(|m| m.task_id == task)
            .cloned()
            .collect();
        Ok(Some((found.clone(), history)))
    }

    async fn record_output(&self, output: RecordOutput) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let (task, turn, now) = (output.task_id, output.turn_id, output.now);
        if !state.plays(turn, &output.holder) {
            return Ok(false);
        }
        let recorded = state.output_batches.entry(turn).or_insert(0);
        if *recorded >= output.batch {
            // Written again after its commit: already recorded.
            return Ok(true);
        }
        *recorded = output.batch;
        state.apply_output(task, turn, output.ops, now)?;
        Ok(true)
    }

    async fn finish_turn(&self, finish: FinishTurn) -> Result<bool, StoreError> {
        Ok(self.lock()?.finish(finish))
    }

    async fn finish_turns(&self, finishes: Vec<FinishTurn>) -> Result<Vec<bool>, StoreError> {
        let mut state = self.lock()?;
        Ok(finishes.into_iter().map(|f| state.finish(f)).collect())
    }

    async fn list_events(
        &self,
        agent: AgentId,
        task: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<Option<EventPage>, StoreError> {
        let state = self.lock()?;
        if state.owned_task(agent, task).is_none() {
            return Ok(None);
        }
        let mut kept = state.events.iter().filter(|e| e.task_id == task).peekable();
        let last_seq = state.last_seq.get(&task).copied().unwrap_or(0);
        let first_kept = kept.peek().map_or(last_seq + 1, |e| e.seq);
        let events = kept
            .filter(|e| e.seq > after)
            .take(limit as usize)
            .cloned()
            .collect();
        Ok(Some(EventPage { events, first_kept }))
    }

    async fn prune_events(&self, task: TaskId, before: i64) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        let count = state.events.len();
        state
            .events
            .retain(|e| e.task_id != task || e.seq >= before);
        Ok((count - state.events.len()) as u64)
    }

    async fn renew_leases(
        &self,
        owner: &str,
        turns: Vec<(TurnId, u32)>,
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<TurnId>, StoreError> {
        let mut state = self.lock()?;
        let held: Vec<TurnId> = turns
            .into_iter()
            .filter(|(turn, attempt)| {
                let holder = Holder {
                    owner: owner.to_owned(),
                    attempt: *attempt,
                };
                state.plays(*turn, &holder)
            })
            .map(|(turn, _)| turn)
            .collect();
        for turn in &held {
            state
                .leases
                .insert(*turn, (Some(owner.to_owned()), expires_at));
        }
        Ok(held)
    }

    async fn release_leases(
        &self,
        owner: &str,
        turns: Vec<TurnId>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        let held: Vec<TurnId> = turns
            .into_iter()
            .filter(|turn| state.holds(*turn, owner))
            .collect();
        for turn in &held {
            state.leases.insert(*turn, (None, now));
        }
        Ok(held.len() as u64)
    }

    async fn get_file(
        &self,
        agent: AgentId,
        task: TaskId,
        file: i64,
    ) -> Result<Option<StoredFile>, StoreError> {
        let state = self.lock()?;
        if state.owned_task(agent, task).is_none() {
            return Ok(None);
        }
        Ok(state
            .files
            .iter()
            .find(|f| f.file_id == file && f.task_id == task)
            .cloned())
    }

    async fn overdue_tool_calls(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TaskId, TurnId)>, StoreError> {
        let state = self.lock()?;
        let mut overdue: Vec<&Turn> = state
            .turns
            .iter()
            .filter(|t| {
                t.status == TurnStatus::RequiresAction && t.respond_by.is_some_and(|d| d <= now)
            })
            .collect();
        overdue.sort_by_key(|t| t.respond_by);
        Ok(overdue
            .into_iter()
            .take(limit as usize)
            .map(|t| (t.task_id, t.id))
            .collect())
    }

    async fn expired_turns(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<TurnId>,
        limit: u32,
    ) -> Result<Vec<ExpiredTurn>, StoreError> {
        let state = self.lock()?;
        let mut expired: Vec<ExpiredTurn> = state
            .turns
            .iter()
            .filter(|t| {
                t.status == TurnStatus::Running
                    && state.expired_by(t.id, cutoff)
                    && after.is_none_or(|after| t.id > after)
            })
            .filter_map(|t| {
                let task = state.tasks.iter().find(|task| task.id == t.task_id)?;
                let lease = state.leases.get(&t.id);
                Some(ExpiredTurn {
                    agent_id: task.agent_id,
                    task_id: t.task_id,
                    turn_id: t.id,
                    attempt: t.attempt,
                    owner: lease.and_then(|(owner, _)| owner.clone()),
                })
            })
            .collect();
        expired.sort_by_key(|turn| turn.turn_id);
        expired.truncate(limit as usize);
        Ok(expired)
    }

    async fn take_over_turns(&self, take: TakeOver) -> Result<Vec<(TurnId, u32)>, StoreError> {
        let mut state = self.lock()?;
        let mut taken = Vec::new();
        for turn_id in take.turns {
            if !state.is_running(turn_id) || !state.expired_by(turn_id, take.expired_by) {
                continue;
            }
            state.leases.insert(
                turn_id,
                (Some(take.lease.owner.clone()), take.lease.expires_at),
            );
            state.output_batches.remove(&turn_id);
            state
                .messages
                .retain(|m| m.turn_id != turn_id || m.role != Role::Assistant);
            let Some(turn) = state.turns.iter_mut().find(|t| t.id == turn_id) else {
                continue;
            };
            turn.attempt += 1;
            let restarted = turn.clone();
            let task = restarted.task_id;
            let Some(input) = state
                .messages
                .iter()
                .find(|m| m.turn_id == turn_id)
                .cloned()
            else {
                return Err(StoreError::internal("a turn without its input message"));
            };
            let data = baton_domain::events::turn_started(&restarted, &input);
            state.push_event(task, turn_id, EventKind::TurnStarted, data, take.now);
            taken.push((turn_id, restarted.attempt));
        }
        Ok(taken)
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }

    async fn purge_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.lock()?;
        let before = state.idempotency.len();
        state.idempotency.retain(|_, key| key.expires_at > now);
        Ok((before - state.idempotency.len()) as u64)
    }
}

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let mut state = self.lock()?;
        let mut due = Vec::new();
        for delivery in state.deliveries.iter_mut().filter(|d| {
            d.view.status == "pending"
                && d.view.next_attempt_at.is_some_and(|at| at <= now)
                && d.claimed_until.is_none_or(|until| until <= now)
        }) {
            if due.len() == limit as usize {
                break;
            }
            delivery.claimed_until = Some(until);
            due.push(DueDelivery {
                id: delivery.view.delivery_id,
                webhook_id: delivery.view.webhook_id.clone(),
                endpoint: delivery.endpoint.clone(),
                payload: delivery.payload.clone(),
                failed_in_round: delivery.view.attempts.len() as u32 - delivery.round_start,
            });
        }
        Ok(due)
    }

    async fn record_attempt(&self, attempt: AttemptResult) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let Some(delivery) = state
            .deliveries
            .iter_mut()
            .find(|d| d.view.delivery_id == attempt.delivery_id && d.view.status == "pending")
        else {
            return Ok(false);
        };
        let (status, next) = match attempt.next {
            NextStep::Delivered => ("delivered", None),
            NextStep::RetryAt(at) => ("pending", Some(at)),
            NextStep::GiveUp => ("failed", None),
        };
        delivery.view.status = status.to_owned();
        delivery.view.next_attempt_at = next;
        delivery.claimed_until = None;
        let number = delivery.view.attempts.len() as u32 + 1;
        delivery.view.attempts.push(AttemptView {
            attempt: number,
            started_at: attempt.started_at,
            status_code: attempt.status_code,
            latency_ms: attempt.latency_ms,
            error: attempt.error,
        });
        Ok(true)
    }

    async fn list_deliveries(
        &self,
        agent: AgentId,
        task: TaskId,
    ) -> Result<Option<Vec<DeliveryView>>, StoreError> {
        let state = self.lock()?;
        if state.owned_task(agent, task).is_none() {
            return Ok(None);
        }
        Ok(Some(
            state
                .deliveries
                .iter()
                .filter(|d| d.view.task_id == task.0)
                .map(|d| d.view.clone())
                .collect(),
        ))
    }

    async fn redeliver(&self, delivery: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let Some(found) = state
            .deliveries
            .iter_mut()
            .find(|d| d.view.delivery_id == delivery)
        else {
            return Ok(false);
        };
        found.view.status = "pending".to_owned();
        found.view.next_attempt_at = Some(now);
        found.claimed_until = None;
        found.round_start = found.view.attempts.len() as u32;
        Ok(true)
    }
}

#[async_trait]
impl AgentStore for MemoryStore {
    async fn create_agent(&self, new: NewAgent) -> Result<Agent, StoreError> {
        let mut state = self.lock()?;
        let agent = Agent {
            id: AgentId(next_id(state.agents.len())),
            name: new.name,
            runner: new.runner,
            policy: new.policy,
            webhook: new.webhook,
            created_at: new.created_at,
        };
        state.agents.push(agent.clone());
        Ok(agent)
    }

    async fn get_agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        Ok(self.lock()?.agents.iter().find(|a| a.id == id).cloned())
    }

    async fn count_agents(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.agents.len() as u64)
    }

    async fn list_agents(&self, page: PageRequest) -> Result<Page<Agent>, StoreError> {
        let state = self.lock()?;
        let agents: Vec<Agent> = state
            .agents
            .iter()
            .filter(|a| page.after.is_none_or(|after| a.id.0 > after))
            .take(page.limit as usize + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(agents, page.limit, |a| a.id.0))
    }

    async fn update_agent(
        &self,
        id: AgentId,
        update: AgentUpdate,
    ) -> Result<Option<Agent>, StoreError> {
        let mut state = self.lock()?;
        let Some(agent) = state.agents.iter_mut().find(|a| a.id == id) else {
            return Ok(None);
        };
        if let Some(name) = update.name {
            agent.name = name;
        }
        if let Some(runner) = update.runner {
            agent.runner = runner;
        }
        if let Some(policy) = update.policy {
            agent.policy = policy;
        }
        if let Some(webhook) = update.webhook {
            agent.webhook = webhook;
        }
        Ok(Some(agent.clone()))
    }

    async fn list_api_keys(&self, agent: AgentId) -> Result<Vec<ApiKey>, StoreError> {
        Ok(self
            .lock()?
            .keys
            .iter()
            .filter(|k| k.agent_id == agent)
            .cloned()
            .collect())
    }

    async fn touch_api_key(&self, key: ApiKeyId, now: DateTime<Utc>) -> Result<(), StoreError> {
        if let Some(found) = self.lock()?.keys.iter_mut().find(|k| k.id == key) {
            found.last_used_at = Some(now);
        }
        Ok(())
    }

    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey, StoreError> {
        let mut state = self.lock()?;
        if state
            .keys
            .iter()
            .any(|k| k.prefix == new.prefix || k.secret_hash == new.secret_hash)
        {
            return Err(StoreError::Conflict(
                "an API key with this prefix or hash exists".to_owned(),
            ));
        }
        let key = ApiKey {
            id: ApiKeyId(next_id(state.keys.len())),
            agent_id: new.agent_id,
            prefix: new.prefix,
            secret_hash: new.secret_hash,
            created_at: new.created_at,
            revoked_at: None,
            last_used_at: None,
        };
        state.keys.push(key.clone());
        Ok(key)
    }

    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(self
            .lock()?
            .keys
            .iter()
            .find(|k| k.secret_hash == secret_hash)
            .cloned())
    }

    async fn revoke_api_key(&self, prefix: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        match state
            .keys
            .iter_mut()
            .find(|k| k.prefix == prefix && k.revoked_at.is_none())
        {
            Some(key) => {
                key.revoked_at = Some(now);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
