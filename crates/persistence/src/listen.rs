//! Cross-instance wake-ups on PostgreSQL: writers `pg_notify` turn changes once they
//! commit (`crate::announce`); each instance keeps one connection on `LISTEN` and feeds
//! what arrives into its in-process hub, so a long-poll on one instance wakes when a
//! turn ends on another. Changes of agents and keys travel the same way, on a channel
//! of their own, so every instance's cache of them drops what changed.
//!
//! A change whose announcement never left (its instance died between the commit and
//! the announcement) is caught by a look, every [`RECHECK`], at the watched tasks'
//! `last_seq`: every change writes an event, so a task whose count moved changed. A
//! task announced since the last look is left for the next one (its watchers are
//! reading it anyway), so a busy task is not woken twice per change; once its
//! announcements stop, one look wakes it if its count moved since it was last woken
//! by a look.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use baton_domain::{AgentId, AgentsChanged, LocalNotifier, TaskId, TaskNotifier, TurnId};
use deadpool::managed::Object;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::Pool;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use crate::backend::PgConn;

/// The channel turn changes are announced on.
pub(crate) const CHANNEL: &str = "baton_turns";

/// The channel changes of agents and keys are announced on.
pub(crate) const AGENTS_CHANNEL: &str = "baton_agents";

/// How often the relay looks at its watched tasks for changes it was not told of.
const RECHECK: Duration = Duration::from_secs(1);

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The payload is the changed task's id, then `:` and the turn's id if the change
/// ended that turn: a notification means "go and look" (and "stop playing it").
pub(crate) fn encode(task: TaskId, ended: Option<TurnId>) -> String {
    match ended {
        Some(turn) => format!("{task}:{turn}"),
        None => task.to_string(),
    }
}

pub(crate) fn decode(payload: &str) -> Option<(TaskId, Option<TurnId>)> {
    match payload.split_once(':') {
        Some((task, turn)) => Some((TaskId(task.parse().ok()?), Some(TurnId(turn.parse().ok()?)))),
        None => Some((TaskId(payload.parse().ok()?), None)),
    }
}

/// `agent:ID` or `key:PREFIX`.
pub(crate) fn encode_agents(change: &AgentsChanged) -> String {
    match change {
        AgentsChanged::Agent(id) => format!("agent:{}", id.0),
        AgentsChanged::Key(prefix) => format!("key:{prefix}"),
        AgentsChanged::Unknown => "unknown".to_owned(),
    }
}

pub(crate) fn decode_agents(payload: &str) -> Option<AgentsChanged> {
    match payload.split_once(':') {
        Some(("agent", id)) => Some(AgentsChanged::Agent(AgentId(id.parse().ok()?))),
        Some(("key", prefix)) if !prefix.is_empty() => Some(AgentsChanged::Key(prefix.to_owned())),
        None if payload == "unknown" => Some(AgentsChanged::Unknown),
        _ => None,
    }
}

/// Relays notifications into `hub` until aborted, reconnecting with capped exponential
/// backoff. Notifications sent while disconnected are lost, so every (re)connection
/// tells all waiters to re-read.
pub(crate) fn spawn_relay(pool: Pool<PgConn>, hub: LocalNotifier) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_START;
        loop {
            match listen(&pool, &hub, &mut backoff).await {
                Ok(()) => warn!("the LISTEN connection closed; reconnecting"),
                Err(err) => {
                    warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

async fn listen(
    pool: &Pool<PgConn>,
    hub: &LocalNotifier,
    backoff: &mut Duration,
) -> Result<(), String> {
    let object = pool.get().await.map_err(|err| err.to_string())?;
    // Taken out of the pool for good: a connection that has run LISTEN buffers
    // notifications until read and must never serve another query.
    let mut conn = Object::take(object);
    for channel in [CHANNEL, AGENTS_CHANNEL] {
        diesel::sql_query(format!("LISTEN {channel}"))
            .execute(&mut conn)
            .await
            .map_err(|err| err.to_string())?;
    }
    *backoff = BACKOFF_START;
    info!(
        channel = CHANNEL,
        "listening for turn changes of other instances"
    );
    // Anything that happened while not listening is unknown: everyone re-reads.
    hub.resync();
    hub.agents_changed(&AgentsChanged::Unknown);
    let mut notifications = std::pin::pin!(conn.notifications_stream());
    // The looks run beside the relay, so a look waiting for a pooled connection under
    // load never holds up the notifications; they stop with this connection.
    let announced = Announced::default();
    let _looks = AbortOnDropHandle::new(tokio::spawn(look_periodically(
        pool.clone(),
        hub.clone(),
        announced.clone(),
    )));
    while let Some(notification) = notifications.next().await {
        let notification = notification.map_err(|err| err.to_string())?;
        if notification.channel == AGENTS_CHANNEL {
            match decode_agents(&notification.payload) {
                Some(change) => hub.agents_changed(&change),
                None => {
                    warn!(payload = %notification.payload, "ignoring a malformed agents notification");
                    hub.agents_changed(&AgentsChanged::Unknown);
                }
            }
            continue;
        }
        match decode(&notification.payload) {
            Some((task, ended)) => {
                announced.insert(task);
                match ended {
                    Some(turn) => hub.turn_ended(task, turn),
                    None => hub.task_changed(task),
                }
            }
            None => {
                warn!(payload = %notification.payload, "ignoring a malformed turn notification")
            }
        }
    }
    Ok(())
}

/// Tasks announced since the last look, shared by the relay and its looks.
#[derive(Debug, Clone, Default)]
struct Announced(Arc<Mutex<HashSet<TaskId>>>);

impl Announced {
    fn insert(&self, task: TaskId) {
        self.lock().insert(task);
    }

    fn take(&self) -> HashSet<TaskId> {
        std::mem::take(&mut *self.lock())
    }

    fn restore(&self, tasks: HashSet<TaskId>) {
        self.lock().extend(tasks);
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<TaskId>> {
        // A set of ids stays consistent even if a holder panicked.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Looks at the watched tasks every [`RECHECK`], until aborted.
async fn look_periodically(pool: Pool<PgConn>, hub: LocalNotifier, announced: Announced) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK, RECHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settled = HashMap::new();
    loop {
        ticks.tick().await;
        look_for_unannounced(&pool, &hub, &announced, &mut settled).await;
    }
}

/// Wakes the watchers of every watched task whose `last_seq` moved since a look last
/// settled it (or that no look has settled yet: it may have changed since its watchers
/// read it) and that was not announced since the last look.
///
/// `settled` holds each watched task's `last_seq` when a look last settled it.
async fn look_for_unannounced(
    pool: &Pool<PgConn>,
    hub: &LocalNotifier,
    announced: &Announced,
    settled: &mut HashMap<TaskId, i64>,
) {
    use diesel::{ExpressionMethods, QueryDsl};

    use crate::schema::tasks;

    let announced_now = announced.take();
    let watched: Vec<i64> = hub.watched_task_ids().into_iter().map(|t| t.0).collect();
    if watched.is_empty() {
        settled.clear();
        return;
    }
    let counts: Result<Vec<(i64, i64)>, String> = async {
        let mut conn = pool.get().await.map_err(|err| err.to_string())?;
        tasks::table
            .filter(tasks::id.eq_any(watched))
            .select((tasks::id, tasks::last_seq))
            .load(&mut *conn)
            .await
            .map_err(|err| err.to_string())
    }
    .await;
    let counts = match counts {
        Ok(counts) => counts,
        Err(err) => {
            warn!(error = %err, "could not look at the watched tasks for unannounced changes");
            // Looked at again next time, as if announced now.
            announced.restore(announced_now);
            return;
        }
    };
    let mut now = HashMap::with_capacity(counts.len());
    for (id, last_seq) in counts {
        let task = TaskId(id);
        let before = settled.get(&task).copied();
        if before == Some(last_seq) || announced_now.contains(&task) {
            // Unchanged, or its watchers are reading it: settle it as it was.
            now.extend(before.map(|seq| (task, seq)));
        } else {
            hub.task_changed(task);
            now.insert(task, last_seq);
        }
    }
    *settled = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        for (task, turn) in [(TaskId(12), None), (TaskId(3), Some(TurnId(40)))] {
            assert_eq!(decode(&encode(task, turn)), Some((task, turn)));
        }
        assert_eq!(decode("1:2"), Some((TaskId(1), Some(TurnId(2)))));
        for bad in ["", "x", "1:", ":2", "1:x", "1.5", "1:2:3"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
        for change in [
            AgentsChanged::Agent(AgentId(4)),
            AgentsChanged::Key("bt_abc".into()),
            AgentsChanged::Unknown,
        ] {
            assert_eq!(decode_agents(&encode_agents(&change)), Some(change));
        }
        for bad in ["", "agent:", "agent:x", "key:", "task:1", "unknown:1"] {
            assert_eq!(decode_agents(bad), None, "{bad}");
        }
    }
}
