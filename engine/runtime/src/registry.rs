//! The pathway versions an engine knows.

use std::collections::BTreeMap;
use std::sync::Arc;

use parcours_core::model::CompiledPathway;

/// Every loaded pathway version; the highest version of an id enrols new patients, the
/// others keep running the instances pinned to them.
#[derive(Clone, Debug, Default)]
pub struct PathwayRegistry {
    versions: BTreeMap<(String, u32), Arc<CompiledPathway>>,
}

impl PathwayRegistry {
    /// An empty registry.
    pub fn new() -> PathwayRegistry {
        PathwayRegistry::default()
    }

    /// Add a compiled pathway version (replacing one with the same id and version).
    pub fn add(&mut self, p: CompiledPathway) {
        self.versions.insert((p.id.clone(), p.version), Arc::new(p));
    }

    /// A pinned version.
    pub fn get(&self, id: &str, version: u32) -> Option<&Arc<CompiledPathway>> {
        self.versions.get(&(id.to_string(), version))
    }

    /// The version that enrols: the highest of each id.
    pub fn latest(&self) -> Vec<&Arc<CompiledPathway>> {
        let mut out: BTreeMap<&str, &Arc<CompiledPathway>> = BTreeMap::new();
        for ((id, _), p) in &self.versions {
            out.insert(id.as_str(), p);
        }
        out.into_values().collect()
    }

    /// Every version, by id then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<CompiledPathway>> {
        self.versions.values()
    }

    /// Whether no pathway is loaded.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
}

/// An engine's versions as its readers see them (the HTTP API, `/metrics`): a snapshot
/// the engine replaces when it adds versions other processes published
/// ([`crate::Engine::share_registry`]). Cheap to clone.
pub type SharedRegistry = crate::Shared<PathwayRegistry>;
