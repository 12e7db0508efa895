//! Saga definitions stored as events: one stream per name, one event per version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use event_store::{Error as StoreError, EventStore, EventStoreExt, ExpectedVersion, StreamWatch};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::definition::SagaDefinition;
use crate::error::{Error, Result};

const STREAM_PREFIX: &str = "definition-";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum DefinitionEvent {
    DefinitionRegistered { definition: SagaDefinition },
}

/// Registers and looks up saga definitions. Versions never change once written, so
/// lookups of a known `(name, version)` are served from memory.
pub struct DefinitionRegistry {
    store: Arc<dyn EventStore>,
    cache: RwLock<HashMap<(String, u32), Arc<SagaDefinition>>>,
    /// The latest version of each name looked up, good until a commit to its stream (here or,
    /// through the store's notices, in another process): starting a saga reads nothing.
    latest: Mutex<HashMap<String, (u32, StreamWatch)>>,
}

fn stream_of(name: &str) -> String {
    format!("{STREAM_PREFIX}{name}")
}

impl DefinitionRegistry {
    /// A registry on `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, cache: RwLock::default(), latest: Mutex::default() }
    }

    /// Validates and stores `definition` as the next version of its name.
    pub async fn register(&self, mut definition: SagaDefinition) -> Result<Arc<SagaDefinition>> {
        definition.validate()?;
        let stream = stream_of(&definition.name);
        for _ in 0..10 {
            let current = self.store.stream_version(&stream).await?;
            definition.version =
                u32::try_from(current.unwrap_or(0) + 1).map_err(|_| Error::Invalid("too many versions".into()))?;
            let event = encode(&DefinitionEvent::DefinitionRegistered { definition: definition.clone() })?;
            match self.store.append(&stream, ExpectedVersion::from_current(current), vec![event]).await {
                Ok(_) => {
                    let definition = Arc::new(definition);
                    self.remember(&definition);
                    return Ok(definition);
                }
                Err(StoreError::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contention { stream, attempts: 10 })
    }

    /// Registers `definition` unless its latest version already has the same steps.
    pub async fn ensure(&self, definition: SagaDefinition) -> Result<Arc<SagaDefinition>> {
        if let Some(latest) = self.latest(&definition.name).await? {
            if crate::definition_diff::DefinitionDiff::between(Some(&latest), &definition).is_empty() {
                return Ok(latest);
            }
        }
        self.register(definition).await
    }

    fn remember(&self, definition: &Arc<SagaDefinition>) {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((definition.name.clone(), definition.version), Arc::clone(definition));
    }

    /// A given version of a definition.
    pub async fn version(&self, name: &str, version: u32) -> Result<Option<Arc<SagaDefinition>>> {
        let key = (name.to_owned(), version);
        if let Some(d) = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
            return Ok(Some(Arc::clone(d)));
        }
        let stream = stream_of(name);
        let events = self.store.read_stream(&stream, u64::from(version.max(1)), 1).await?;
        let Some(event) = events.first().filter(|e| e.version == u64::from(version)) else { return Ok(None) };
        let DefinitionEvent::DefinitionRegistered { definition } = decode(event)?;
        let definition = Arc::new(definition);
        self.remember(&definition);
        Ok(Some(definition))
    }

    /// The latest version of a definition.
    pub async fn latest(&self, name: &str) -> Result<Option<Arc<SagaDefinition>>> {
        let known = {
            let latest = self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            latest.get(name).filter(|(_, watch)| !watch.has_changed()).map(|(version, _)| *version)
        };
        if let Some(version) = known {
            return self.version(name, version).await;
        }
        let stream = stream_of(name);
        let mut watch = self.store.stream_changes(&stream);
        watch.mark_seen();
        let Some(current) = self.store.stream_version(&stream).await? else { return Ok(None) };
        let version = u32::try_from(current).unwrap_or(u32::MAX);
        let found = self.version(name, version).await?;
        if found.is_some() {
            let mut latest = self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            latest.insert(name.to_owned(), (version, watch));
        }
        Ok(found)
    }

    /// A definition by name and optional version (latest when `None`), or `NotFound`.
    pub async fn get(&self, name: &str, version: Option<u32>) -> Result<Arc<SagaDefinition>> {
        let found = match version {
            Some(v) => self.version(name, v).await?,
            None => self.latest(name).await?,
        };
        found.ok_or_else(|| Error::NotFound {
            what: "saga definition",
            id: version.map_or_else(|| name.to_owned(), |v| format!("{name} v{v}")),
        })
    }

    /// The latest version of up to `limit` definitions named after `after`, by name.
    pub async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Arc<SagaDefinition>>> {
        let after = after.map(stream_of);
        let streams = self.store.list_streams(STREAM_PREFIX, after.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(streams.len());
        for stream in &streams {
            if let Some(d) = self.latest(&stream[STREAM_PREFIX.len()..]).await? {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{RetryPolicy, StepDefinition};
    use event_store::memory::MemoryEventStore;

    fn def(command: &str) -> SagaDefinition {
        SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "demo".into(),
            version: 0,
            steps: vec![StepDefinition {
                name: "one".into(),
                participant: "p".into(),
                command: command.into(),
                compensation: None,
                timeout_ms: 100,
                retry: RetryPolicy::default(),
            }],
        }
    }

    #[tokio::test]
    async fn registering_again_makes_the_next_version_and_old_versions_stay() {
        let registry = DefinitionRegistry::new(Arc::new(MemoryEventStore::new()));
        assert_eq!(registry.register(def("A")).await.unwrap().version, 1);
        assert_eq!(registry.register(def("B")).await.unwrap().version, 2);
        assert_eq!(registry.get("demo", None).await.unwrap().steps[0].command, "B");
        assert_eq!(registry.get("demo", Some(1)).await.unwrap().steps[0].command, "A");
        assert!(matches!(registry.get("demo", Some(3)).await, Err(Error::NotFound { .. })));
        assert_eq!(registry.page(None, 10).await.unwrap().len(), 1);
        // A fresh registry (no cache) reads the same from the store.
        let fresh = DefinitionRegistry::new(Arc::clone(&registry.store));
        assert_eq!(fresh.get("demo", Some(1)).await.unwrap().steps[0].command, "A");
        assert_eq!(fresh.ensure(def("B")).await.unwrap().version, 2, "unchanged: no new version");
        let patient = SagaDefinition { stuck_after_ms: Some(3_600_000), ..def("B") };
        assert_eq!(fresh.ensure(patient).await.unwrap().version, 3, "a new stuck threshold is a new version");
    }

    #[tokio::test]
    async fn the_latest_version_known_here_gives_way_to_one_registered_elsewhere() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let (here, elsewhere) = (DefinitionRegistry::new(Arc::clone(&store)), DefinitionRegistry::new(store));
        elsewhere.register(def("A")).await.unwrap();
        assert_eq!(here.latest("demo").await.unwrap().unwrap().version, 1);
        assert_eq!(here.latest("demo").await.unwrap().unwrap().version, 1, "known: no read");
        elsewhere.register(def("B")).await.unwrap();
        let latest = here.latest("demo").await.unwrap().unwrap();
        assert_eq!((latest.version, latest.steps[0].command.as_str()), (2, "B"), "the commit said it changed");
    }

    #[tokio::test]
    async fn invalid_definitions_are_not_stored() {
        let registry = DefinitionRegistry::new(Arc::new(MemoryEventStore::new()));
        let mut bad = def("");
        bad.steps[0].timeout_ms = 0;
        let Err(Error::InvalidDefinition(problems)) = registry.register(bad).await else { panic!() };
        assert_eq!(problems.len(), 2);
        assert!(registry.latest("demo").await.unwrap().is_none());
    }
}
