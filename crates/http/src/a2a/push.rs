//! A2A push notification configs: create, get, list and delete a task's, and the
//! config a `SendMessage` carries. Each of the task's turns that ends is pushed to
//! every config through baton's webhook outbox (durable, retried, signed).

use baton_domain::Principal;
use baton_domain::push::{PushAuth, PushConfig, PushRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rpc_error::{Outcome, RpcError, task_id};
use crate::ApiState;

/// A push config as a client sends it (A2A's `TaskPushNotificationConfig`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InPushConfig {
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    pub url: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub authentication: Option<InAuthentication>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InAuthentication {
    pub scheme: String,
    #[serde(default)]
    pub credentials: Option<String>,
}

impl InPushConfig {
    /// The request it makes; empty strings (protobuf's JSON of an unset field) are
    /// absent.
    pub fn request(&self) -> PushRequest {
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        PushRequest {
            id: given(&self.id),
            url: self.url.clone(),
            token: given(&self.token),
            authentication: self.authentication.as_ref().map(|auth| PushAuth {
                scheme: auth.scheme.clone(),
                credentials: given(&auth.credentials),
            }),
        }
    }
}

/// A stored config as A2A shows it; credentials are not shown again.
fn config_json(config: &PushConfig) -> Value {
    let mut json = json!({
        "id": config.id,
        "taskId": config.task_id.0.to_string(),
        "url": config.url,
    });
    if let Some(token) = &config.token {
        json["token"] = json!(token);
    }
    if let Some(auth) = &config.authentication {
        json["authentication"] = json!({"scheme": auth.scheme});
    }
    json
}

pub async fn create(state: &ApiState, who: &Principal, params: InPushConfig) -> Outcome {
    let task = params
        .task_id
        .as_deref()
        .ok_or_else(|| RpcError::invalid("taskId is required"))?;
    let config = state
        .tasks
        .set_push_config(who, task_id(task)?, params.request())
        .await?;
    Ok(config_json(&config))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigParams {
    task_id: String,
    id: String,
}

pub async fn get(state: &ApiState, who: &Principal, params: ConfigParams) -> Outcome {
    let config = state
        .tasks
        .push_config(who, task_id(&params.task_id)?, &params.id)
        .await?;
    Ok(config_json(&config))
}

/// Deleting a config that is not there answers as a deletion does: the client's wish
/// holds.
pub async fn delete(state: &ApiState, who: &Principal, params: ConfigParams) -> Outcome {
    state
        .tasks
        .delete_push_config(who, task_id(&params.task_id)?, &params.id)
        .await?;
    Ok(json!({}))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    task_id: String,
}

/// All of the task's configs in one page (a task has at most
/// `baton_domain::push::MAX_PUSH_CONFIGS_PER_TASK`).
pub async fn list(state: &ApiState, who: &Principal, params: ListParams) -> Outcome {
    let configs = state
        .tasks
        .push_configs(who, task_id(&params.task_id)?)
        .await?;
    Ok(json!({
        "configs": configs.iter().map(config_json).collect::<Vec<_>>(),
        "nextPageToken": "",
    }))
}
