//! The inputs of turns this instance just started on new tasks, kept until their play
//! asks for them (PostgreSQL's plain claim: `queries::postgres::create_task`). The
//! claim wrote them a moment before; reading them back would be a round trip for what
//! this process already holds. A turn not kept here is read from the database: one
//! taken over from another instance, one whose input was too large to keep, one that
//! came while the store held many.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton_domain::{TurnHistory, TurnId};

/// At most this many inputs are kept (each at most `KEPT_INPUT_BYTES` of JSON, see
/// `queries::postgres`). A burst of new tasks larger than this keeps the first ones:
/// turns play in the order they were claimed, so those are played first, and the
/// later ones find room as the first are taken.
const KEPT: usize = 2048;

/// An input kept this long was not asked for by a play that is coming (its instance is
/// stopping, its agent went away): it is dropped when room is needed.
const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct FreshInputs {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    inputs: HashMap<TurnId, (Instant, TurnHistory)>,
    /// When stale inputs were last looked for: at most once per `STALE_AFTER`, so a
    /// full store does not scan on every new task.
    swept: Option<Instant>,
}

impl FreshInputs {
    /// Keeps the input of `turn`, which was just committed, if there is room.
    pub(crate) fn keep(&self, turn: TurnId, input: TurnHistory) {
        self.keep_at(turn, input, Instant::now());
    }

    fn keep_at(&self, turn: TurnId, input: TurnHistory, now: Instant) {
        let mut kept = self.lock();
        if kept.inputs.len() >= KEPT {
            let due = kept
                .swept
                .is_none_or(|swept| now.saturating_duration_since(swept) >= STALE_AFTER);
            if due {
                kept.swept = Some(now);
                kept.inputs
                    .retain(|_, (at, _)| now.saturating_duration_since(*at) < STALE_AFTER);
            }
            if kept.inputs.len() >= KEPT {
                // Its turn reads its input from the database, as without this store.
                return;
            }
        }
        kept.inputs.insert(turn, (now, input));
    }

    /// The input of `turn`, if it is kept, no longer kept after this.
    pub(crate) fn take(&self, turn: TurnId) -> Option<TurnHistory> {
        self.lock().inputs.remove(&turn).map(|(_, input)| input)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding it leaves a map that is still whole.
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use baton_domain::*;
    use chrono::Utc;

    use super::*;

    fn input(task: i64) -> TurnHistory {
        TurnHistory {
            task: Task {
                id: TaskId(task),
                agent_id: AgentId(1),
                metadata: Metadata::new(),
                input: Content::text("hi"),
                created_at: Utc::now(),
                updated_at: Utc::now(),
            },
            metadata: Metadata::new(),
            history: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn an_input_is_taken_once_and_only_for_its_turn() {
        let fresh = FreshInputs::default();
        let kept = input(1);
        fresh.keep(TurnId(7), kept.clone());
        assert_eq!(fresh.take(TurnId(8)), None);
        assert_eq!(fresh.take(TurnId(7)), Some(kept));
        assert_eq!(fresh.take(TurnId(7)), None);
    }

    #[test]
    fn a_burst_keeps_its_first_inputs_and_later_ones_find_room_as_those_are_taken() {
        let fresh = FreshInputs::default();
        let now = Instant::now();
        for turn in 0..=KEPT as i64 {
            fresh.keep_at(TurnId(turn), input(turn), now);
        }
        assert!(
            fresh.take(TurnId(KEPT as i64)).is_none(),
            "no room for the last"
        );
        assert!(fresh.take(TurnId(0)).is_some(), "the first is kept");
        fresh.keep_at(TurnId(-1), input(-1), now);
        assert!(fresh.take(TurnId(-1)).is_some(), "room made by a take");
        assert!(fresh.take(TurnId(1)).is_some(), "the others stay");
    }

    #[test]
    fn inputs_never_taken_do_not_fill_it_for_good() {
        let fresh = FreshInputs::default();
        let then = Instant::now();
        for turn in 0..KEPT as i64 {
            fresh.keep_at(TurnId(turn), input(turn), then);
        }
        let later = then + STALE_AFTER;
        fresh.keep_at(TurnId(-1), input(-1), later);
        assert_eq!(fresh.take(TurnId(0)), None, "the stale ones made room");
        assert!(fresh.take(TurnId(-1)).is_some(), "the new one is kept");
        // Full again, of fresh inputs: a new one waits for a take.
        for turn in 0..KEPT as i64 {
            fresh.keep_at(TurnId(turn), input(turn), later);
        }
        fresh.keep_at(TurnId(-2), input(-2), later + Duration::from_millis(1));
        assert_eq!(fresh.take(TurnId(-2)), None, "full of fresh ones: not kept");
    }
}
