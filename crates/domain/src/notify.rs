//! The in-process hub of task changes. Every waiter in this process (long-polls, SSE
//! streams) watches the one task it cares about; the executor and the stores' relays
//! (other instances' changes, on PostgreSQL) publish into it. A change means "go and
//! look", never "this is the data".
//!
//! One slot per watched task, so a change wakes only that task's waiters: ten
//! thousand idle streams cost nothing when another task streams.
//!
//! The hub also carries "this turn ended" (a cancel here or on another instance), so
//! the executor playing the turn stops its runner at once instead of at its next
//! output or lease renewal; and "another instance changed an agent or a key", so
//! this process's cache of them forgets the entry at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::watch;

use crate::feed::Feed;
use crate::model::{AgentId, TaskId, TurnId};
use crate::ports::TaskNotifier;

#[derive(Debug)]
struct Slot {
    generation: watch::Sender<u64>,
    watchers: usize,
    /// The task's newest events, shared by its streams (see `feed`).
    feed: Arc<Feed>,
}

type Slots = Arc<Mutex<HashMap<TaskId, Slot>>>;

/// What to call when a turn ended somewhere: the executor's "stop playing it".
pub type TurnEndHook = Arc<dyn Fn(TurnId) + Send + Sync>;

/// What another instance changed among agents and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentsChanged {
    Agent(AgentId),
    /// The key with this prefix (revoked).
    Key(String),
    /// Anything may have changed: changes may have been missed.
    Unknown,
}

/// What to call when another instance changed an agent or a key.
pub type AgentsChangedHook = Arc<dyn Fn(&AgentsChanged) + Send + Sync>;

/// Fans task changes out to this process's waiters.
#[derive(Clone, Default)]
pub struct LocalNotifier {
    slots: Slots,
    turn_end: Arc<RwLock<Option<TurnEndHook>>>,
    agents_changed: Arc<RwLock<Option<AgentsChangedHook>>>,
}

impl std::fmt::Debug for LocalNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNotifier")
            .field("watched_tasks", &self.watched_tasks())
            .finish_non_exhaustive()
    }
}

fn lock(slots: &Slots) -> MutexGuard<'_, HashMap<TaskId, Slot>> {
    // The map stays consistent even if a holder panicked: every change is one insert,
    // increment or removal.
    slots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The hook in `slot`, if one is installed (cloned, so it runs without the lock held).
fn installed<H: Clone>(slot: &RwLock<Option<H>>) -> Option<H> {
    // A hook is replaced whole: the slot is consistent even if a holder panicked.
    slot.read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Installs `hook` in `slot`, replacing any.
fn install<H>(slot: &RwLock<Option<H>>, hook: H) {
    *slot
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(hook);
}

impl LocalNotifier {
    pub fn new() -> Self {
        LocalNotifier::default()
    }

    /// Starts watching `task`. Changes published after this call are seen by
    /// [`TaskWatch::changed`], even those that happen before it is awaited — so watch
    /// first, then read the store.
    pub fn watch(&self, task: TaskId) -> TaskWatch {
        let mut slots = lock(&self.slots);
        let slot = slots.entry(task).or_insert_with(|| Slot {
            generation: watch::channel(0).0,
            watchers: 0,
            feed: Arc::default(),
        });
        slot.watchers += 1;
        let mut receiver = slot.generation.subscribe();
        let seen = *receiver.borrow_and_update();
        TaskWatch {
            task,
            receiver,
            seen,
            feed: slot.feed.clone(),
            slots: self.slots.clone(),
        }
    }

    /// Tells every waiter to re-read, because changes may have been missed.
    pub fn resync(&self) {
        for slot in lock(&self.slots).values() {
            slot.generation.send_modify(|g| *g += 1);
        }
    }

    /// A turn ended (cancelled, or ended by another instance): wakes the task's
    /// waiters and tells this process's executor to stop playing the turn if it is.
    pub fn turn_ended(&self, task: TaskId, turn: TurnId) {
        self.task_changed(task);
        if let Some(hook) = installed(&self.turn_end) {
            hook(turn);
        }
    }

    /// Sets what [`LocalNotifier::turn_ended`] calls (one hook; a second replaces it).
    pub fn on_turn_ended(&self, hook: TurnEndHook) {
        install(&self.turn_end, hook);
    }

    /// Another instance changed an agent or a key (or changes may have been missed).
    pub fn agents_changed(&self, change: &AgentsChanged) {
        if let Some(hook) = installed(&self.agents_changed) {
            hook(change);
        }
    }

    /// Sets what [`LocalNotifier::agents_changed`] calls (one hook; a second replaces
    /// it).
    pub fn on_agents_changed(&self, hook: AgentsChangedHook) {
        install(&self.agents_changed, hook);
    }

    /// Tasks watched right now (for tests and metrics).
    pub fn watched_tasks(&self) -> usize {
        lock(&self.slots).len()
    }

    /// The tasks watched right now.
    pub fn watched_task_ids(&self) -> Vec<TaskId> {
        lock(&self.slots).keys().copied().collect()
    }
}

impl TaskNotifier for LocalNotifier {
    fn task_changed(&self, task: TaskId) {
        // No watcher is not an error: nobody is waiting.
        if let Some(slot) = lock(&self.slots).get(&task) {
            slot.generation.send_modify(|g| *g += 1);
        }
    }
}

/// A waiter's interest in one task; dropping it ends the interest.
#[derive(Debug)]
pub struct TaskWatch {
    task: TaskId,
    receiver: watch::Receiver<u64>,
    /// The task's change count when the watch began or `changed` last returned.
    seen: u64,
    feed: Arc<Feed>,
    slots: Slots,
}

impl TaskWatch {
    /// Returns once the task changed since the watch began or since the last call.
    pub async fn changed(&mut self) {
        // The sender lives in the hub as long as this watch does, so this cannot fail.
        let _ = self.receiver.changed().await;
        self.seen = *self.receiver.borrow_and_update();
    }

    /// Takes every change announced so far as seen without waiting, and says whether
    /// there was one this watch had not seen: a reader about to stop for good reads
    /// the store once more if so, since a wake-up it took for another reason (a close)
    /// left the announcement unconsumed.
    pub fn catch_up(&mut self) -> bool {
        let now = *self.receiver.borrow_and_update();
        let moved = now != self.seen;
        self.seen = now;
        moved
    }

    /// The task this watch follows.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// The task's change count this watch has seen: a read of the store that began
    /// at or after it sees every change announced up to then.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The task's change count now (a read about to begin covers it).
    pub fn count_now(&self) -> u64 {
        *self.receiver.borrow()
    }

    /// The task's shared feed of events.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get_mut(&self.task) {
            slot.watchers -= 1;
            if slot.watchers == 0 {
                slots.remove(&self.task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(watch: &mut TaskWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(50), watch.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_watch_sees_changes_of_its_task_only_even_before_it_waits() {
        let hub = LocalNotifier::new();
        hub.task_changed(TaskId(1)); // nobody watches yet: dropped, no error
        let mut one = hub.watch(TaskId(1));
        let mut two = hub.watch(TaskId(2));
        assert!(
            !woken(&mut one).await,
            "changes before the watch are not replayed"
        );
        hub.task_changed(TaskId(1));
        hub.task_changed(TaskId(1));
        assert!(woken(&mut one).await, "a change before waiting is not lost");
        assert!(
            !woken(&mut one).await,
            "two changes before one wait wake it once"
        );
        assert!(!woken(&mut two).await);
        hub.resync();
        assert!(
            woken(&mut one).await && woken(&mut two).await,
            "a resync wakes everyone"
        );
    }

    #[tokio::test]
    async fn slots_go_away_with_their_last_watch() {
        let hub = LocalNotifier::new();
        let a = hub.watch(TaskId(1));
        let b = hub.watch(TaskId(1));
        let c = hub.watch(TaskId(2));
        assert_eq!(hub.watched_tasks(), 2);
        drop(a);
        assert_eq!(hub.watched_tasks(), 2);
        drop(b);
        drop(c);
        assert_eq!(hub.watched_tasks(), 0);
    }
}
