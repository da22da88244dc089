//! Announcing turn changes to other instances on PostgreSQL, after they commit.
//!
//! A `NOTIFY` inside a write transaction makes PostgreSQL serialize the commits of
//! every transaction that notifies: at commit it takes one database-wide lock and
//! holds it until the commit record is flushed to disk, so no two of them share an
//! fsync (measured: 35–40 % of an instance's throughput at c=64). So a write
//! operation does not notify; it records what it would announce ([`defer`]), and once
//! the operation is over ([`collecting`]) one task per store sends what piled up, many
//! payloads in one transaction that does not wait for its flush (a notification is a
//! hint to go and look, not data: losing it in a crash loses nothing stored).
//!
//! What this gives up: an announcement leaves only after its change committed, so if
//! the instance dies in between, the other instances never hear of it. The relay's
//! periodic look at its watched tasks (`listen`) catches such a change within a second.

use std::cell::RefCell;
use std::time::Duration;

use deadpool::managed::Object;
use diesel_async::SimpleAsyncConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use tokio::sync::mpsc;
use tracing::warn;

use crate::backend::PgConn;
use crate::listen::CHANNEL;

tokio::task_local! {
    /// The announcements of the operation running in this task.
    static PENDING: RefCell<Vec<String>>;
}

/// Payloads sent in one transaction, at most.
const BATCH: usize = 512;

/// How long the announcer waits before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_millis(100);

/// Records `payload` to be announced once the running operation is over. Gives the
/// payload back if no operation collects announcements here: the caller then
/// announces inside its transaction.
pub(crate) fn defer(payload: String) -> Result<(), String> {
    if PENDING.try_with(|_| ()).is_err() {
        return Err(payload);
    }
    PENDING.with(|pending| pending.borrow_mut().push(payload));
    Ok(())
}

/// Runs `operation`, then hands what it [`defer`]red to `announcer` — whether it
/// succeeded or not: a transaction of it may have committed before a later step
/// failed, and an announcement of a change that was rolled back only makes its
/// watchers look and find nothing new. Without an announcer, nothing is deferred.
pub(crate) async fn collecting<T>(
    announcer: Option<&Announcer>,
    operation: impl Future<Output = T>,
) -> T {
    let Some(announcer) = announcer else {
        return operation.await;
    };
    let (result, pending) = PENDING
        .scope(RefCell::default(), async move {
            let result = operation.await;
            (result, PENDING.with(RefCell::take))
        })
        .await;
    announcer.send(pending);
    result
}

/// Sends announcements from a task of its own, on a connection of its own.
#[derive(Debug, Clone)]
pub(crate) struct Announcer {
    sender: mpsc::UnboundedSender<Vec<String>>,
}

impl Announcer {
    /// Starts the announcer on the current runtime; it stops once every handle to it
    /// is dropped, after sending what it was given.
    pub(crate) fn spawn(pool: Pool<PgConn>) -> Announcer {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, receiver));
        Announcer { sender }
    }

    fn send(&self, payloads: Vec<String>) {
        if !payloads.is_empty() {
            // The announcer stops only when its handles are gone: nothing to do then.
            let _ = self.sender.send(payloads);
        }
    }
}

async fn run(pool: Pool<PgConn>, mut receiver: mpsc::UnboundedReceiver<Vec<String>>) {
    let mut conn: Option<PgConn> = None;
    let mut batch = Vec::new();
    while let Some(first) = receiver.recv().await {
        batch.extend(first);
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        batch.sort_unstable();
        batch.dedup();
        let sql = notify_sql(&batch);
        // One retry on a new connection; after that the batch is dropped, and the
        // relays' periodic look finds its changes.
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
            let on = match conn.as_mut() {
                Some(on) => on,
                None => match pool.get().await {
                    // Out of the pool for good: it only ever announces.
                    Ok(object) => conn.insert(Object::take(object)),
                    Err(err) => {
                        warn!(error = %err, "no connection to announce turn changes on");
                        continue;
                    }
                },
            };
            match on.batch_execute(&sql).await {
                Ok(()) => break,
                Err(err) => {
                    warn!(error = %err, "announcing turn changes failed");
                    conn = None;
                }
            }
        }
        batch.clear();
    }
}

/// One transaction that notifies every payload and does not wait for its commit to
/// be flushed. Payloads are `listen::encode`'s digits and colons; anything else is
/// left out rather than quoted.
fn notify_sql(payloads: &[String]) -> String {
    let quoted: Vec<String> = payloads
        .iter()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b':'))
        .map(|p| format!("'{p}'"))
        .collect();
    format!(
        "BEGIN; SET LOCAL synchronous_commit = off; \
         SELECT pg_notify('{CHANNEL}', p) FROM unnest(ARRAY[{}]::text[]) AS p; COMMIT",
        quoted.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_names_each_payload_and_leaves_out_anything_but_digits_and_colons() {
        let sql = notify_sql(&["12".into(), "3:40".into(), "x');DROP".into(), String::new()]);
        assert!(sql.contains("ARRAY['12','3:40']::text[]"), "{sql}");
        assert!(!sql.contains("DROP"), "{sql}");
    }

    #[tokio::test]
    async fn deferred_payloads_are_collected_only_inside_an_operation() {
        assert_eq!(
            defer("1".into()),
            Err("1".into()),
            "no operation: announce now"
        );
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let announcer = Announcer { sender };
        let answer = collecting(Some(&announcer), async {
            assert_eq!(defer("1".into()), Ok(()));
            assert_eq!(defer("2:3".into()), Ok(()));
            7
        })
        .await;
        assert_eq!(answer, 7);
        assert_eq!(receiver.recv().await, Some(vec!["1".into(), "2:3".into()]));
        collecting(Some(&announcer), async {}).await;
        assert!(
            receiver.try_recv().is_err(),
            "nothing deferred, nothing sent"
        );
    }
}
