//! A2A push configs: kept per task and bounded, stored with a claim or on their own,
//! and pushed through the outbox at each of the task's turn ends.

use std::sync::Arc;

use baton_domain::push::{MAX_PUSH_CONFIGS_PER_TASK, NewPush, PushAuth, PushPut, PushRequest};
use baton_domain::*;

use super::{WebhookStoreUnderTest, agent, at, finish, lease, new_task, started, user};

fn request(id: Option<&str>, url: &str) -> PushRequest {
    PushRequest {
        id: id.map(str::to_owned),
        url: url.to_owned(),
        token: Some("tok".to_owned()),
        authentication: Some(PushAuth {
            scheme: "Bearer".to_owned(),
            credentials: Some("cred".to_owned()),
        }),
    }
}

fn pushing(request: PushRequest) -> NewPush {
    NewPush {
        request,
        secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()],
    }
}

pub(crate) async fn push_configs_are_bounded_per_task_and_pushed_at_each_turns_end(
    store: Arc<impl WebhookStoreUnderTest>,
) {
    let a = agent(&*store, "a").await;
    // Sent with the task's first message: stored with the task, named by it.
    let task = started(
        store
            .create_task(NewTask {
                push: Some(pushing(request(None, "https://first.example/push"))),
                agent_id: a.id,
                message: user("push me"),
                metadata: Metadata::new(),
                now: at(1),
                lease: lease(),
                idempotency: None,
                webhook: None,
                max_running_per_agent: None,
            })
            .await
            .unwrap(),
    );
    let configs = store
        .list_push_configs(a.id, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0].id, task.task_id.0.to_string());
    assert_eq!(configs[0].secrets.len(), 1);
    assert_eq!(configs[0].authentication.as_ref().unwrap().scheme, "Bearer");

    // Up to the bound; the same id replaces, and is not counted twice.
    for n in 1..MAX_PUSH_CONFIGS_PER_TASK {
        let config = pushing(request(Some(&format!("c{n}")), "https://more.example/push"))
            .for_task(task.task_id, at(2));
        assert_eq!(
            store.put_push_config(a.id, config).await.unwrap(),
            PushPut::Stored
        );
    }
    let over =
        pushing(request(Some("over"), "https://more.example/push")).for_task(task.task_id, at(2));
    assert_eq!(
        store.put_push_config(a.id, over).await.unwrap(),
        PushPut::Full
    );
    let replaced =
        pushing(request(Some("c1"), "https://replaced.example/push")).for_task(task.task_id, at(2));
    assert_eq!(
        store.put_push_config(a.id, replaced).await.unwrap(),
        PushPut::Stored
    );
    let configs = store
        .list_push_configs(a.id, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(configs.len(), MAX_PUSH_CONFIGS_PER_TASK);
    assert!(
        configs
            .iter()
            .any(|c| c.id == "c1" && c.url == "https://replaced.example/push")
    );

    // Deleted: gone; deleting again finds nothing; another agent's task is not found.
    for n in 2..MAX_PUSH_CONFIGS_PER_TASK {
        assert_eq!(
            store
                .delete_push_config(a.id, task.task_id, &format!("c{n}"))
                .await
                .unwrap(),
            Some(true)
        );
    }
    assert_eq!(
        store
            .delete_push_config(a.id, task.task_id, "c2")
            .await
            .unwrap(),
        Some(false)
    );
    let other = agent(&*store, "other").await;
    assert_eq!(
        store
            .list_push_configs(other.id, task.task_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .delete_push_config(other.id, task.task_id, "c1")
            .await
            .unwrap(),
        None
    );
    let theirs = pushing(request(Some("x"), "https://x.example/")).for_task(task.task_id, at(2));
    assert_eq!(
        store.put_push_config(other.id, theirs).await.unwrap(),
        PushPut::TaskNotFound
    );

    // The turn's end: one push per config, the task as A2A shows it, with the
    // config's headers.
    assert!(
        finish(
            &*store,
            &task,
            TurnOutcome::Completed,
            vec![Content::text("done")]
        )
        .await
    );
    let mut due = store.claim_deliveries(at(3), at(60), 10).await.unwrap();
    due.sort_by(|x, y| x.endpoint.url.cmp(&y.endpoint.url));
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].endpoint.url, "https://first.example/push");
    assert_eq!(due[1].endpoint.url, "https://replaced.example/push");
    assert_eq!(
        due[0].headers,
        vec![
            ("x-a2a-notification-token".to_owned(), "tok".to_owned()),
            ("authorization".to_owned(), "Bearer cred".to_owned()),
        ]
    );
    let payload: serde_json::Value = serde_json::from_str(&due[0].payload).unwrap();
    assert_eq!(payload["task"]["id"], task.task_id.0.to_string());
    assert_eq!(payload["task"]["status"]["state"], "TASK_STATE_COMPLETED");
    assert_eq!(payload["task"]["artifacts"][0]["parts"][0]["text"], "done");
    let listed = store
        .list_deliveries(a.id, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        listed.iter().all(|d| d.event_type == "a2a.turn.completed"),
        "{listed:?}"
    );

    // A config sent with a message the task refuses (busy) is not stored.
    let busy = new_task(&*store, a.id, "busy").await;
    let refused = store
        .append_and_claim(NewAppend {
            push: Some(pushing(request(Some("late"), "https://late.example/"))),
            ..super::append(a.id, busy.task_id, "while busy")
        })
        .await;
    assert!(
        matches!(refused, Err(ClaimError::TaskBusy(_))),
        "{refused:?}"
    );
    assert_eq!(
        store.list_push_configs(a.id, busy.task_id).await.unwrap(),
        Some(Vec::new())
    );
}
