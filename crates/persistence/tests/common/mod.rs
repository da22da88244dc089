//! What the SQL-only tests make the same way: an echo agent and a task under a live
//! lease.

use baton_domain::*;
use chrono::Utc;
use serde_json::json;

pub fn echo_agent(name: &str) -> NewAgent {
    NewAgent {
        card: None,
        name: name.into(),
        runner: RunnerSpec {
            kind: "echo".into(),
            config: json!({}),
        },
        policy: TurnPolicy::default(),
        webhook: None,
        created_at: Utc::now(),
    }
}

/// A lease held by `test` for a minute.
pub fn lease() -> Lease {
    Lease {
        owner: "test".into(),
        expires_at: Utc::now() + chrono::Duration::seconds(60),
    }
}

/// A new task for `agent` whose first message is `text`.
pub fn new_task(agent: AgentId, text: &str) -> NewTask {
    NewTask {
        push: None,
        agent_id: agent,
        message: NewMessage {
            role: Role::User,
            content: Content::text(text),
            metadata: Default::default(),
        },
        metadata: Metadata::new(),
        now: Utc::now(),
        lease: lease(),
        idempotency: None,
        webhook: None,
        max_running_per_agent: None,
    }
}
