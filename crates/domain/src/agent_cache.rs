//! Agents and API keys kept in memory: every request authenticates and every turn
//! reads its agent, and both change rarely. A change made through this process is
//! seen by its next request (the entry is dropped as the change is written). One made
//! by another PostgreSQL instance is announced (`NOTIFY`) and the entry dropped as the
//! announcement arrives ([`CachedAgents::forget`]); whatever is not announced — a
//! `baton key revoke` beside a SQLite server, an announcement lost while the listening
//! connection was down — is seen once the entry is older than the cache's freshness
//! bound ([`AGENT_CACHE_FRESHNESS`], one second).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{Agent, AgentId, AgentUpdate, ApiKey, ApiKeyId, NewAgent, NewApiKey};
use crate::page::{Page, PageRequest};
use crate::ports::AgentStore;

/// How long another process's change may go unseen.
pub const AGENT_CACHE_FRESHNESS: Duration = Duration::from_secs(1);

/// Past this many entries a map is emptied rather than grown: only stored agents and
/// keys are kept (a miss is not), so this is reached only by very many of them.
const MAX_ENTRIES: usize = 10_000;

/// An [`AgentStore`] that answers `get_agent` and `find_api_key` from memory while
/// fresh, and passes everything else through.
pub struct CachedAgents {
    store: Arc<dyn AgentStore>,
    freshness: Duration,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    agents: HashMap<AgentId, (Agent, Instant)>,
    /// By secret hash.
    keys: HashMap<String, (ApiKey, Instant)>,
    /// Bumped by every change made through this process: a read that began before a
    /// change does not put what it read back.
    generation: u64,
}

impl CachedAgents {
    pub fn new(store: Arc<dyn AgentStore>, freshness: Duration) -> Self {
        CachedAgents {
            store,
            freshness,
            entries: Mutex::new(Entries::default()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The maps hold no invariant a panic could break halfway.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh<T: Clone>(&self, entry: Option<&(T, Instant)>) -> Option<T> {
        entry
            .filter(|(_, read_at)| read_at.elapsed() < self.freshness)
            .map(|(value, _)| value.clone())
    }

    /// Drops what another instance's change made stale (see [`crate::AgentsChanged`]).
    pub fn forget(&self, change: &crate::notify::AgentsChanged) {
        use crate::notify::AgentsChanged;
        self.changed(|entries| match change {
            AgentsChanged::Agent(id) => {
                entries.agents.remove(id);
            }
            AgentsChanged::Key(prefix) => entries.keys.retain(|_, (key, _)| key.prefix != *prefix),
            AgentsChanged::Unknown => {
                entries.agents.clear();
                entries.keys.clear();
            }
        });
    }

    /// Drops what a change made stale; reads begun before it will not store theirs.
    fn changed(&self, drop: impl FnOnce(&mut Entries)) {
        let mut entries = self.entries();
        entries.generation += 1;
        drop(&mut entries);
    }
}

impl std::fmt::Debug for CachedAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAgents")
            .field("freshness", &self.freshness)
            .finish_non_exhaustive()
    }
}

fn bounded<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) -> &mut HashMap<K, V> {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map
}

#[async_trait]
impl AgentStore for CachedAgents {
    async fn create_agent(&self, new: NewAgent) -> Result<Agent, StoreError> {
        self.store.create_agent(new).await
    }

    async fn get_agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        let generation = {
            let entries = self.entries();
            if let Some(agent) = self.fresh(entries.agents.get(&id)) {
                return Ok(Some(agent));
            }
            entries.generation
        };
        let agent = self.store.get_agent(id).await?;
        if let Some(agent) = &agent {
            let mut entries = self.entries();
            if entries.generation == generation {
                bounded(&mut entries.agents).insert(id, (agent.clone(), Instant::now()));
            }
        }
        Ok(agent)
    }

    async fn count_agents(&self) -> Result<u64, StoreError> {
        self.store.count_agents().await
    }

    async fn list_agents(&self, page: PageRequest) -> Result<Page<Agent>, StoreError> {
        self.store.list_agents(page).await
    }

    async fn update_agent(
        &self,
        id: AgentId,
        update: AgentUpdate,
    ) -> Result<Option<Agent>, StoreError> {
        let updated = self.store.update_agent(id, update).await;
        self.changed(|entries| {
            entries.agents.remove(&id);
        });
        updated
    }

    async fn list_api_keys(&self, agent: AgentId) -> Result<Vec<ApiKey>, StoreError> {
        self.store.list_api_keys(agent).await
    }

    async fn touch_api_key(&self, key: ApiKeyId, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.store.touch_api_key(key, now).await?;
        // Not a change that matters to a reader: the cached key just learns it, so
        // the next touch waits its minute.
        let mut entries = self.entries();
        for (cached, _) in entries.keys.values_mut() {
            if cached.id == key {
                cached.last_used_at = Some(now);
            }
        }
        Ok(())
    }

    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey, StoreError> {
        self.store.create_api_key(new).await
    }

    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let generation = {
            let entries = self.entries();
            if let Some(key) = self.fresh(entries.keys.get(secret_hash)) {
                return Ok(Some(key));
            }
            entries.generation
        };
        let key = self.store.find_api_key(secret_hash).await?;
        if let Some(key) = &key {
            let mut entries = self.entries();
            if entries.generation == generation {
                bounded(&mut entries.keys)
                    .insert(secret_hash.to_owned(), (key.clone(), Instant::now()));
            }
        }
        Ok(key)
    }

    async fn revoke_api_key(&self, prefix: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        // Dropped whatever the store answers: a failed revoke may still have committed.
        let revoked = self.store.revoke_api_key(prefix, now).await;
        self.changed(|entries| entries.keys.retain(|_, (key, _)| key.prefix != prefix));
        revoked
    }
}

#[cfg(test)]
mod tests;
