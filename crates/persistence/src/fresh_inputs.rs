//! The inputs of turns this instance just started on new tasks, kept until their play
//! asks for them (PostgreSQL's plain claim: `queries::postgres::create_task`). The
//! claim wrote them a moment before; reading them back would be a round trip for what
//! this process already holds. A turn not kept here is read from the database: one
//! taken over from another instance, one whose input was too large to keep, one that
//! came while the store held many.

use std::collections::HashMap;
use std::sync::Mutex;

use baton_domain::{TurnHistory, TurnId};

/// At most this many inputs are kept; one more makes room by dropping them all (their
/// turns read their input from the database, as they would have).
const KEPT: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct FreshInputs {
    inputs: Mutex<HashMap<TurnId, TurnHistory>>,
}

impl FreshInputs {
    /// Keeps the input of `turn`, which was just committed.
    pub(crate) fn keep(&self, turn: TurnId, input: TurnHistory) {
        let mut inputs = self.lock();
        if inputs.len() >= KEPT {
            // Inputs of turns that never played (their instance stopped, their agent
            // went away) would otherwise fill it for good.
            inputs.clear();
        }
        inputs.insert(turn, input);
    }

    /// The input of `turn`, if it is kept, no longer kept after this.
    pub(crate) fn take(&self, turn: TurnId) -> Option<TurnHistory> {
        self.lock().remove(&turn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TurnId, TurnHistory>> {
        // A panic while holding it leaves a map that is still whole.
        self.inputs
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
    fn inputs_never_taken_do_not_fill_it_for_good() {
        let fresh = FreshInputs::default();
        for turn in 0..KEPT as i64 {
            fresh.keep(TurnId(turn), input(turn));
        }
        fresh.keep(TurnId(-1), input(-1));
        assert_eq!(fresh.take(TurnId(0)), None, "the old ones made room");
        assert!(fresh.take(TurnId(-1)).is_some(), "the new one is kept");
    }
}
