//! Idempotency keys: a client that retries a POST with the same `Idempotency-Key`
//! gets the first answer again and starts nothing.
//!
//! The store keeps each key with the turn it started, in the claim's transaction, and
//! decides replay or reuse there. This module adds what the store cannot see: the hash
//! that says whether a retry is the same request, and a per-process guard so that a
//! duplicate arriving while the first is still being processed waits for it (and then
//! replays) instead of racing it — or, if the first takes too long, is told so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::{FieldError, ServiceError};
use crate::model::SubmitMessage;
use crate::model::{AgentId, TaskId};

/// The longest key accepted (the IETF draft's keys are UUIDs; 255 leaves room).
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a key is remembered; a retry after that starts a new turn.
    pub ttl: Duration,
    /// How long a duplicate waits for a first request that is still being processed
    /// before it is answered `idempotency_key_in_use`.
    pub in_flight_wait: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            ttl: Duration::from_secs(24 * 3600),
            in_flight_wait: Duration::from_secs(2),
        }
    }
}

/// Keys are 1 to 255 visible ASCII characters.
pub fn check_key(key: &str, errors: &mut Vec<FieldError>) {
    let field = "Idempotency-Key";
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {MAX_KEY_LEN} characters long"),
        ));
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        errors.push(FieldError::new(
            field,
            "must be visible ASCII characters (a UUID is a good key)",
        ));
    }
}

/// The hash that tells a retry from a different request under the same key: the
/// operation, its target and the parsed body, with object keys sorted, so that
/// whitespace and key order do not matter but any value does.
pub(crate) fn request_hash(
    operation: &str,
    task: Option<TaskId>,
    submit: &SubmitMessage,
) -> String {
    let mut message = json!({"role": submit.message.role, "content": submit.message.content});
    // Only when given: the hashes of requests made before messages had metadata stay
    // what they were.
    if !submit.message.metadata.is_empty() {
        message["metadata"] = json!(submit.message.metadata);
    }
    let mut request = json!({
        "operation": operation,
        "task_id": task,
        "agent_id": submit.agent_id,
        "message": message,
        "metadata": submit.metadata,
        "webhook": submit.webhook,
    });
    if let Some(on_busy) = submit.on_busy {
        request["on_busy"] = json!(on_busy);
    }
    let digest = Sha256::digest(canonical(&request).to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut sorted = Map::new();
            for key in keys {
                sorted.insert(key.clone(), canonical(&map[key]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

type Held = Arc<Mutex<HashMap<(AgentId, String), watch::Receiver<()>>>>;

/// The keys this process is processing a request for right now.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlightKeys {
    held: Held,
}

fn lock(held: &Held) -> MutexGuard<'_, HashMap<(AgentId, String), watch::Receiver<()>>> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl InFlightKeys {
    /// Holds `key` for the caller's request. If another request holds it, waits up to
    /// `wait` for that one to finish (its answer is then in the store, to replay);
    /// still held after that is [`ServiceError::IdempotencyKeyInUse`].
    pub(crate) async fn hold(
        &self,
        agent: AgentId,
        key: &str,
        wait: Duration,
    ) -> Result<KeyHold, ServiceError> {
        let id = (agent, key.to_owned());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut busy = {
                let mut held = lock(&self.held);
                match held.get(&id) {
                    Some(busy) => busy.clone(),
                    None => {
                        let (done, watched) = watch::channel(());
                        held.insert(id.clone(), watched);
                        return Ok(KeyHold {
                            held: self.held.clone(),
                            id,
                            _done: done,
                        });
                    }
                }
            };
            // `changed` fails once the holder drops its sender: the key is free.
            if tokio::time::timeout_at(deadline, busy.changed())
                .await
                .is_err()
            {
                return Err(ServiceError::IdempotencyKeyInUse);
            }
        }
    }
}

#[cfg(test)]
impl InFlightKeys {
    pub(crate) fn is_held(&self, agent: AgentId, key: &str) -> bool {
        lock(&self.held).contains_key(&(agent, key.to_owned()))
    }
}

/// A held key; dropping it frees the key and wakes the requests waiting for it.
#[derive(Debug)]
pub(crate) struct KeyHold {
    held: Held,
    id: (AgentId, String),
    _done: watch::Sender<()>,
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Content;
    use crate::model::{NewMessage, Role};

    fn submit(text: &str, metadata: Value) -> SubmitMessage {
        SubmitMessage {
            push: None,
            agent_id: AgentId(1),
            message: NewMessage {
                role: Role::User,
                content: Content::text(text),
                metadata: Default::default(),
            },
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            webhook: None,
            on_busy: None,
        }
    }

    #[test]
    fn the_hash_ignores_key_order_but_not_values_or_targets() {
        let a = submit("hi", json!({"a": 1, "b": {"x": 1, "y": 2}}));
        let b = submit("hi", json!({"b": {"y": 2, "x": 1}, "a": 1}));
        assert_eq!(
            request_hash("create", None, &a),
            request_hash("create", None, &b)
        );
        let other_value = submit("hi", json!({"a": 2, "b": {"x": 1, "y": 2}}));
        assert_ne!(
            request_hash("create", None, &a),
            request_hash("create", None, &other_value)
        );
        assert_ne!(
            request_hash("append", Some(TaskId(1)), &a),
            request_hash("append", Some(TaskId(2)), &a)
        );
        assert_ne!(
            request_hash("create", None, &a),
            request_hash("append", None, &a)
        );
    }

    #[test]
    fn keys_are_bounded_visible_ascii() {
        for (key, ok) in [
            ("9b2f4e2c-0b0e-4f5e-a1a1-3c6f1d2e7a90", true),
            ("", false),
            ("has space", false),
            ("é", false),
            (&"k".repeat(MAX_KEY_LEN), true),
            (&"k".repeat(MAX_KEY_LEN + 1), false),
        ] {
            let mut errors = Vec::new();
            check_key(key, &mut errors);
            assert_eq!(errors.is_empty(), ok, "{key:?}: {errors:?}");
        }
    }

    #[tokio::test]
    async fn a_duplicate_waits_for_the_first_and_is_refused_if_it_takes_too_long() {
        let keys = InFlightKeys::default();
        let first = keys
            .hold(AgentId(1), "k", Duration::from_millis(10))
            .await
            .unwrap();
        // Another agent's key of the same name is another key.
        let other_agent = keys.hold(AgentId(2), "k", Duration::ZERO).await;
        assert!(other_agent.is_ok());
        let refused = keys.hold(AgentId(1), "k", Duration::from_millis(20)).await;
        assert!(matches!(refused, Err(ServiceError::IdempotencyKeyInUse)));

        let waiting = {
            let keys = keys.clone();
            tokio::spawn(async move { keys.hold(AgentId(1), "k", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(
            second.is_ok(),
            "the duplicate gets the key once it is freed"
        );
    }
}
