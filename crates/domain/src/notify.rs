//! The in-process notifier: a broadcast of turn changes to waiters in this process.

use tokio::sync::broadcast;

use crate::ports::{TurnChange, TurnNotifier};

/// Fans turn changes out to every subscriber in this process. Enough for a single
/// instance; several instances add a database-backed relay that feeds it.
#[derive(Debug, Clone)]
pub struct LocalNotifier {
    sender: broadcast::Sender<TurnChange>,
}

impl LocalNotifier {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        LocalNotifier { sender }
    }

    /// Receives every change published after this call. A receiver that falls more than
    /// the capacity behind gets `Lagged` and must re-read the store.
    pub fn subscribe(&self) -> broadcast::Receiver<TurnChange> {
        self.sender.subscribe()
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
        let _ = self.sender.send(change);
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
        assert_eq!(rx.recv().await.unwrap(), change);
        assert!(rx.try_recv().is_err());
    }
}
