//! The cache answers from memory while fresh, drops what this process changes at once,
//! and reads again once an entry is older than its freshness bound.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use mockall::Sequence;
use serde_json::json;

use super::*;
use crate::model::{RunnerSpec, TurnPolicy};
use crate::ports::MockAgentStore;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).single().unwrap()
}

fn key(revoked: bool) -> ApiKey {
    ApiKey {
        id: ApiKeyId(1),
        agent_id: AgentId(7),
        prefix: "bk_live".into(),
        secret_hash: "hash".into(),
        created_at: at(0),
        revoked_at: revoked.then(|| at(5)),
        last_used_at: None,
    }
}

fn agent(name: &str) -> Agent {
    Agent {
        card: None,
        id: AgentId(7),
        name: name.into(),
        runner: RunnerSpec {
            kind: "echo".into(),
            config: json!({}),
        },
        policy: TurnPolicy::default(),
        webhook: None,
        created_at: at(0),
    }
}

/// Whether the cache answers the key as revoked.
async fn key_revoked(cache: &CachedAgents) -> bool {
    let found = cache.find_api_key("hash").await.unwrap().unwrap();
    found.revoked_at.is_some()
}

/// The store answers the next agent read with an agent named `name`.
fn reads_agent(store: &mut MockAgentStore, order: &mut Sequence, name: &'static str) {
    store
        .expect_get_agent()
        .times(1)
        .in_sequence(order)
        .returning(move |_| Ok(Some(agent(name))));
}

/// The store answers the next key lookup with the key, revoked or not.
fn finds_key(store: &mut MockAgentStore, order: &mut Sequence, revoked: bool) {
    store
        .expect_find_api_key()
        .times(1)
        .in_sequence(order)
        .returning(move |_| Ok(Some(key(revoked))));
}

async fn name_of(cache: &CachedAgents) -> String {
    cache.get_agent(AgentId(7)).await.unwrap().unwrap().name
}

#[tokio::test]
async fn a_fresh_key_is_read_once_and_a_revoke_through_this_cache_is_seen_at_once() {
    let mut store = MockAgentStore::new();
    let mut order = Sequence::new();
    finds_key(&mut store, &mut order, false);
    store
        .expect_revoke_api_key()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _| Ok(true));
    finds_key(&mut store, &mut order, true);
    let cache = CachedAgents::new(Arc::new(store), Duration::from_secs(3600));
    for _ in 0..3 {
        let found = cache.find_api_key("hash").await.unwrap().unwrap();
        assert!(found.revoked_at.is_none());
    }
    assert!(cache.revoke_api_key("bk_live", at(5)).await.unwrap());
    for _ in 0..3 {
        let found = cache.find_api_key("hash").await.unwrap().unwrap();
        assert!(
            found.revoked_at.is_some(),
            "the next request sees the revoke"
        );
    }
}

#[tokio::test]
async fn another_process_s_change_is_seen_once_the_entry_is_older_than_its_freshness() {
    let mut store = MockAgentStore::new();
    let mut order = Sequence::new();
    reads_agent(&mut store, &mut order, "before");
    reads_agent(&mut store, &mut order, "after");
    let cache = CachedAgents::new(Arc::new(store), Duration::from_millis(100));
    assert_eq!(name_of(&cache).await, "before");
    assert_eq!(name_of(&cache).await, "before");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(name_of(&cache).await, "after");
}

#[tokio::test]
async fn an_update_through_this_cache_is_seen_at_once_and_misses_are_not_kept() {
    let mut store = MockAgentStore::new();
    let mut order = Sequence::new();
    reads_agent(&mut store, &mut order, "before");
    store
        .expect_update_agent()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_, _| Ok(Some(agent("after"))));
    reads_agent(&mut store, &mut order, "after");
    // A key that does not exist is looked up every time: a key created elsewhere
    // works at once.
    store.expect_find_api_key().times(2).returning(|_| Ok(None));
    let cache = CachedAgents::new(Arc::new(store), Duration::from_secs(3600));
    assert_eq!(name_of(&cache).await, "before");
    cache
        .update_agent(AgentId(7), AgentUpdate::default())
        .await
        .unwrap();
    assert_eq!(name_of(&cache).await, "after");
    assert_eq!(name_of(&cache).await, "after");
    assert!(cache.find_api_key("unknown").await.unwrap().is_none());
    assert!(cache.find_api_key("unknown").await.unwrap().is_none());
}

#[tokio::test]
async fn a_touch_is_remembered_so_the_next_one_waits_its_minute() {
    let mut store = MockAgentStore::new();
    store
        .expect_find_api_key()
        .times(1)
        .returning(|_| Ok(Some(key(false))));
    store
        .expect_touch_api_key()
        .times(1)
        .returning(|_, _| Ok(()));
    let cache = CachedAgents::new(Arc::new(store), Duration::from_secs(3600));
    assert!(
        cache
            .find_api_key("hash")
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_none()
    );
    cache.touch_api_key(ApiKeyId(1), at(9)).await.unwrap();
    assert_eq!(
        cache
            .find_api_key("hash")
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(at(9))
    );
}

#[tokio::test]
async fn another_instance_s_announced_change_is_forgotten_at_once() {
    let mut store = MockAgentStore::new();
    let mut order = Sequence::new();
    finds_key(&mut store, &mut order, false);
    finds_key(&mut store, &mut order, true);
    store
        .expect_get_agent()
        .times(2)
        .returning(|_| Ok(Some(agent("any"))));
    let cache = CachedAgents::new(Arc::new(store), Duration::from_secs(3600));
    assert!(!key_revoked(&cache).await);
    cache.get_agent(AgentId(7)).await.unwrap();
    // Another key's change leaves this one alone.
    cache.forget(&crate::AgentsChanged::Key("bk_other".into()));
    assert!(!key_revoked(&cache).await);
    cache.forget(&crate::AgentsChanged::Key("bk_live".into()));
    assert!(key_revoked(&cache).await);
    // Missed announcements: everything is read again.
    cache.forget(&crate::AgentsChanged::Unknown);
    cache.get_agent(AgentId(7)).await.unwrap();
}
