//! The in-process hub of turn changes: every waiter in this process (long-polls, and
//! later streams) subscribes here. On one instance the executor publishes into it; with
//! several instances a database relay feeds it the changes made elsewhere.

use tokio::sync::broadcast;

use crate::ports::{TurnChange, TurnNotifier};

/// What a waiter is woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// A turn of this task changed state.
    Turn(TurnChange),
    /// Changes may have been missed (a relay reconnected): every waiter re-reads.
    Everything,
}

impl Wakeup {
    /// Whether a waiter on `task` should go and look.
    pub fn concerns(&self, task: crate::model::TaskId) -> bool {
        match self {
            Wakeup::Turn(change) => change.task_id == task,
            Wakeup::Everything => true,
        }
    }
}

/// Fans wake-ups out to every subscriber in this process.
#[derive(Debug, Clone)]
pub struct LocalNotifier {
    sender: broadcast::Sender<Wakeup>,
}

impl LocalNotifier {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        LocalNotifier { sender }
    }

    /// Receives every wake-up published after this call. A receiver that falls more
    /// than the capacity behind gets `Lagged` and must re-read the store.
    pub fn subscribe(&self) -> broadcast::Receiver<Wakeup> {
        self.sender.subscribe()
    }

    /// Tells every waiter to re-read, because changes may have been missed.
    pub fn resync(&self) {
        let _ = self.sender.send(Wakeup::Everything);
    }
}

impl Default for LocalNotifier {
    fn default() -> Self {
        LocalNotifier::new(1024)
    }
}

impl TurnNotifier for LocalNotifier {
    fn turn_changed(&self, change: TurnChange) {
        // No subscriber is not an error: nobody is waiting.
        let _ = self.sender.send(Wakeup::Turn(change));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TaskId, TurnId, TurnStatus};

    #[tokio::test]
    async fn subscribers_receive_changes_published_after_subscribing() {
        let notifier = LocalNotifier::new(8);
        let change = TurnChange {
            task_id: TaskId(1),
            turn_id: TurnId(2),
            status: TurnStatus::Completed,
        };
        notifier.turn_changed(change); // nobody listens yet: dropped, no error
        let mut rx = notifier.subscribe();
        notifier.turn_changed(change);
        notifier.resync();
        let got = rx.recv().await.unwrap();
        assert_eq!(got, Wakeup::Turn(change));
        assert!(got.concerns(TaskId(1)) && !got.concerns(TaskId(2)));
        assert!(
            rx.recv().await.unwrap().concerns(TaskId(2)),
            "a resync concerns every task"
        );
        assert!(rx.try_recv().is_err());
    }
}
