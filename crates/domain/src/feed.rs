//! One watched task's newest events, read from the store once per change and shared
//! by every stream of this process that follows the task.
//!
//! The hub keeps a feed per watched task, beside its change counter. When a change
//! wakes the task's streams, the first to ask reads what the log gained since the
//! feed's last read (one store read, under the feed's lock); the others wait for that
//! read and take the same events. A stream whose cursor is older than what the feed
//! holds (it started on old history, or fell behind) reads its own gap from the log,
//! as before, and joins the feed once it caught up: never a gap, never a duplicate,
//! because a stream only ever asks for what follows its own cursor.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use crate::model::{AgentId, EventPage, TaskEvent, TaskView};

/// Events a feed keeps: enough for every stream woken by one change (they are all at
/// the feed's end, or close), small enough that a thousand watched tasks stay cheap.
pub const FEED_CAPACITY: usize = 64;

/// Events read from the store per read of a feed.
pub const FEED_READ: u32 = 256;

/// A task's shared feed; see the module.
#[derive(Debug, Default)]
pub struct Feed {
    state: tokio::sync::Mutex<FeedState>,
    /// The task as its long-polls last read it, and the change count the read began
    /// at: the task's long-polls woken by one change share one read.
    view: tokio::sync::Mutex<Option<(u64, TaskView)>>,
}

/// An event as streams share it: the event, and the bytes a stream sends for it, built
/// by the first stream that sends it and reused by the others.
#[derive(Debug)]
pub struct SharedEvent {
    pub event: TaskEvent,
    wire: OnceLock<Arc<[u8]>>,
}

impl SharedEvent {
    pub fn new(event: TaskEvent) -> Self {
        SharedEvent {
            event,
            wire: OnceLock::new(),
        }
    }

    /// The event's bytes on the wire, built with `build` the first time.
    pub fn wire(&self, build: impl FnOnce(&TaskEvent) -> Vec<u8>) -> Arc<[u8]> {
        self.wire.get_or_init(|| build(&self.event).into()).clone()
    }
}

/// A page of events served to one stream.
#[derive(Debug, Clone)]
pub struct SharedPage {
    pub events: Vec<Arc<SharedEvent>>,
    /// The oldest `seq` the log still keeps (see [`EventPage`]).
    pub first_kept: i64,
}

impl SharedPage {
    /// At most `limit` of its events, the oldest.
    pub fn limited(mut self, limit: u32) -> Self {
        self.events.truncate(limit as usize);
        self
    }
}

impl From<EventPage> for SharedPage {
    fn from(page: EventPage) -> Self {
        SharedPage {
            events: page
                .events
                .into_iter()
                .map(|event| Arc::new(SharedEvent::new(event)))
                .collect(),
            first_kept: page.first_kept,
        }
    }
}

/// What a feed knows, behind its lock.
#[derive(Debug, Default)]
pub struct FeedState {
    /// Consecutive events read live, oldest first, at most [`FEED_CAPACITY`].
    events: VecDeque<Arc<SharedEvent>>,
    /// The `seq` up to which the log has been read; `None` until a read reached the
    /// log's end.
    read_up_to: Option<i64>,
    first_kept: i64,
    /// The hub's change count when the last read that reached the log's end began:
    /// every change announced up to it is in the feed.
    fresh_at: Option<u64>,
}

impl Feed {
    /// The feed's state, locked: one stream reads the store for it at a time.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, FeedState> {
        self.state.lock().await
    }

    /// The task's view as of the change count `seen` or later, for `agent`: the last
    /// one read if it is that fresh and the agent's, else `read`'s (begun at count
    /// `now()`), which is kept for the task's other long-polls.
    pub async fn view<E>(
        &self,
        agent: AgentId,
        seen: u64,
        now: impl FnOnce() -> u64,
        read: impl Future<Output = Result<TaskView, E>>,
    ) -> Result<TaskView, E> {
        let mut kept = self.view.lock().await;
        if let Some((fresh, view)) = kept.as_ref()
            && *fresh >= seen
            && view.task.agent_id == agent
        {
            return Ok(view.clone());
        }
        let count = now();
        let view = read.await?;
        *kept = Some((count, view.clone()));
        Ok(view)
    }
}

impl FeedState {
    /// Whether every change up to the hub's count `seen` is in the feed.
    pub fn fresh_for(&self, seen: u64) -> bool {
        self.fresh_at.is_some_and(|fresh| fresh >= seen)
    }

    /// Where the next read of the log starts, if the feed has a place in it yet.
    pub fn read_up_to(&self) -> Option<i64> {
        self.read_up_to
    }

    /// Takes a read of the log after `after`, begun when the hub's count was `count`.
    /// A read that did not reach the log's end (a full page) leaves the feed stale,
    /// to be read on. The first read that reaches the log's end places the feed
    /// there — at the task's last `seq` as the read saw it, so a read that returned
    /// nothing (a stream opened at the log's end, or past it) places it too. Its
    /// events are not kept (they are history the reader asked for): an idle feed
    /// holds nothing.
    pub fn take(&mut self, after: i64, page: &EventPage, count: u64, full: bool) {
        self.first_kept = page.first_kept;
        // How far the log is now read: to the page's end if more follow (a full page
        // is never empty), else to the log's end.
        let last_read = page.events.last().map_or(i64::MIN, |event| event.seq);
        let reached = if full {
            last_read
        } else {
            last_read.max(page.last_seq)
        };
        match self.read_up_to {
            None => {
                if !full {
                    self.read_up_to = Some(reached);
                    self.fresh_at = Some(count);
                }
            }
            Some(up_to) => {
                for event in &page.events {
                    if event.seq > after {
                        self.events
                            .push_back(Arc::new(SharedEvent::new(event.clone())));
                    }
                }
                while self.events.len() > FEED_CAPACITY {
                    self.events.pop_front();
                }
                self.read_up_to = Some(reached.max(up_to));
                if !full {
                    self.fresh_at = Some(count);
                }
            }
        }
    }

    /// Up to `limit` events after `cursor` from the feed, or `None` if the feed does
    /// not reach back to `cursor` (the stream reads its own gap from the log).
    pub fn serve(&self, cursor: i64, limit: u32) -> Option<SharedPage> {
        let read_up_to = self.read_up_to?;
        let oldest = self
            .events
            .front()
            .map_or(read_up_to.saturating_add(1), |shared| shared.event.seq);
        // Any cursor a client sends, up to `i64::MAX`, is a cursor.
        if cursor.saturating_add(1) < oldest {
            return None;
        }
        Some(SharedPage {
            events: self
                .events
                .iter()
                .filter(|shared| shared.event.seq > cursor)
                .take(limit as usize)
                .cloned()
                .collect(),
            first_kept: self.first_kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::model::{EventKind, TaskId, TurnId};

    fn events(seqs: std::ops::RangeInclusive<i64>) -> EventPage {
        EventPage {
            events: seqs
                .clone()
                .map(|seq| TaskEvent {
                    task_id: TaskId(1),
                    seq,
                    turn_id: TurnId(1),
                    kind: EventKind::TextDelta,
                    data: json!({}),
                    created_at: Utc::now(),
                })
                .collect(),
            first_kept: 1,
            last_seq: *seqs.end(),
        }
    }

    fn seqs(page: &SharedPage) -> Vec<i64> {
        page.events.iter().map(|shared| shared.event.seq).collect()
    }

    #[test]
    fn a_feed_is_placed_at_the_end_of_a_first_read_and_keeps_none_of_it() {
        let mut state = FeedState::default();
        assert!(
            state.serve(0, 10).is_none(),
            "an unplaced feed serves nobody"
        );
        state.take(0, &events(1..=5), 3, false);
        assert!(state.fresh_for(3) && !state.fresh_for(4));
        assert_eq!(state.read_up_to(), Some(5));
        assert_eq!(seqs(&state.serve(5, 10).unwrap()), Vec::<i64>::new());
        assert!(
            state.serve(4, 10).is_none(),
            "history is read from the log, not kept"
        );
    }

    #[test]
    fn a_cursor_past_every_event_gets_nothing_not_a_panic() {
        let mut state = FeedState::default();
        state.take(0, &events(1..=2), 1, false);
        assert_eq!(
            state.serve(i64::MAX, 10).map(|p| seqs(&p)),
            Some(Vec::new())
        );
    }

    #[test]
    fn a_full_page_does_not_place_a_feed_and_an_empty_one_places_it_at_the_log_end() {
        let mut state = FeedState::default();
        state.take(0, &events(1..=5), 1, true);
        assert_eq!(state.read_up_to(), None, "more may follow a full page");
        let empty = EventPage {
            events: Vec::new(),
            first_kept: 1,
            last_seq: 5,
        };
        state.take(99, &empty, 1, false);
        assert_eq!(state.read_up_to(), Some(5), "a cursor past the log's end");
        assert!(state.fresh_for(1));
        assert_eq!(state.serve(99, 10).map(|p| seqs(&p)), Some(Vec::new()));
        assert_eq!(state.serve(5, 10).map(|p| seqs(&p)), Some(Vec::new()));
        assert!(state.serve(4, 10).is_none(), "history is read from the log");
    }

    #[test]
    fn live_events_are_served_after_each_cursor_and_old_ones_fall_out() {
        let mut state = FeedState::default();
        state.take(0, &events(1..=2), 1, false);
        state.take(2, &events(3..=4), 2, false);
        assert_eq!(seqs(&state.serve(2, 10).unwrap()), vec![3, 4]);
        assert_eq!(seqs(&state.serve(3, 10).unwrap()), vec![4]);
        assert_eq!(
            seqs(&state.serve(2, 1).unwrap()),
            vec![3],
            "the limit holds"
        );
        assert!(state.serve(1, 10).is_none(), "a gap is read from the log");
        let far = 4 + FEED_CAPACITY as i64 + 10;
        state.take(4, &events(5..=far), 3, false);
        assert_eq!(state.serve(far - 1, 10).map(|p| seqs(&p)), Some(vec![far]));
        let oldest = far - FEED_CAPACITY as i64 + 1;
        assert!(state.serve(oldest - 2, 10).is_none());
        assert_eq!(
            state.serve(oldest - 1, 1).map(|p| seqs(&p)),
            Some(vec![oldest])
        );
    }

    #[test]
    fn a_full_read_leaves_the_feed_stale_until_the_log_is_read_to_its_end() {
        let mut state = FeedState::default();
        state.take(0, &events(1..=1), 1, false);
        state.take(1, &events(2..=3), 2, true);
        assert!(!state.fresh_for(2), "more may follow the full page");
        state.take(3, &events(4..=4), 2, false);
        assert!(state.fresh_for(2));
        assert_eq!(seqs(&state.serve(1, 10).unwrap()), vec![2, 3, 4]);
    }
}
