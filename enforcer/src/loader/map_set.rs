//! Where the loader's map code finds a map by name: the loaded object's own maps, or the
//! maps pinned by a running (or stopped) agent, opened for `enforcer status`.

use std::{collections::HashMap, fs, path::Path};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};

use super::{
    Counters, EventCounts, LoaderError, MapFill, cgroups, counters, fill, generation, map_error,
    settings,
};

/// A set of maps addressed by their names in the kernel object.
pub trait MapSet {
    /// The map named `name`.
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, LoaderError>;
}

impl MapSet for Ebpf {
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, LoaderError> {
        Self::map_mut(self, name).ok_or(LoaderError::MissingMap(name))
    }
}

/// The maps pinned in a directory, each under its object name.
pub struct PinnedMaps {
    maps: HashMap<String, Map>,
}

impl PinnedMaps {
    /// Opens every map pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LoaderError> {
        let entries = fs::read_dir(dir).map_err(|source| LoaderError::Pins {
            path: dir.display().to_string(),
            source,
        })?;
        let mut maps = HashMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| LoaderError::Pins {
                path: dir.display().to_string(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let data = MapData::from_pin(entry.path()).map_err(map_error("pinned map"))?;
            let map = Map::from_map_data(data).map_err(map_error("pinned map"))?;
            maps.insert(name, map);
        }
        Ok(Self { maps })
    }

    /// The number of maps found.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether no map was found.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Every counter; the rule counters are the active generation's.
    pub fn counters(&mut self) -> Result<Counters, LoaderError> {
        counters::all(self)
    }

    /// The event stream's counters alone (cheaper than [`Self::counters`]).
    pub fn event_counts(&mut self) -> Result<EventCounts, LoaderError> {
        counters::events(self)
    }

    /// Records how many events the agent took off the ring but could not store, so the
    /// count outlives the agent.
    pub fn set_unstored(&mut self, count: u64) -> Result<(), LoaderError> {
        counters::set_unstored(self, count)
    }

    /// Switches fail-closed mode: while on, the kernel denies every new flow but failsafe
    /// access (reason `audit-unavailable`).
    pub fn set_fail_closed(&mut self, on: bool) -> Result<(), LoaderError> {
        settings::set_fail_closed(self, on)
    }

    /// How full the maps are.
    pub fn map_fill(&mut self) -> Result<Vec<MapFill>, LoaderError> {
        fill::map_fill(self)
    }

    /// The active generation number (0 before the first apply).
    pub fn active_generation(&mut self) -> Result<u32, LoaderError> {
        generation::active(self)
    }

    /// The active cgroup table's value for cgroup `id` (segment id, with
    /// [`enforcer_common::maps::CGROUP_GUARD`] on guards); `None` when the table does not
    /// know it or no generation is active.
    pub fn active_cgroup(&mut self, id: u64) -> Result<Option<u32>, LoaderError> {
        match generation::active_slot(self)? {
            None => Ok(None),
            Some((_, slot)) => cgroups::lookup(self, slot, id),
        }
    }
}

impl MapSet for PinnedMaps {
    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, LoaderError> {
        self.maps.get_mut(name).ok_or(LoaderError::MissingMap(name))
    }
}
