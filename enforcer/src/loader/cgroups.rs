//! cgroup identity, host state: the policy lists cgroup *paths*; the kernel sees cgroup
//! *ids* (a cgroup v2 directory's inode number), and a service restart replaces its
//! cgroup with a new one under the same path. This module resolves the paths of a
//! generation into the table the kernel reads, and keeps that table current.
//!
//! Besides each listed cgroup that exists, the table holds its existing ancestors, marked
//! with [`CGROUP_GUARD`], and every existing child of those ancestors, each with the
//! segment of its nearest listed ancestor-or-self (else `host`). The kernel classifies a
//! process by the deepest known cgroup of its ancestry; if that is a guard whose child on
//! the way down is unknown (a cgroup created since the table was last resolved), the
//! process is unclassified and gets the policy's `unclassified` verdict instead of the
//! guard's rights. The agent watches the guards ([`CgroupTable::guards`]) and resolves
//! the table again when a child appears or goes, so that window lasts until it has.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, MapData};
use enforcer_common::maps::{CGROUP_GUARD, CGROUPS, SEGMENT_HOST};

use super::{LoaderError, MapSet, map_error};
use crate::host::cgroups::id as cgroup_id;

/// A generation's cgroup table as resolved on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupTable {
    /// cgroup id to table value (segment id, with [`CGROUP_GUARD`] on ancestors of
    /// listed cgroups).
    pub entries: BTreeMap<u64, u32>,
    /// Listed paths with no cgroup on this host (yet).
    pub missing: Vec<String>,
    /// The existing guard directories, to watch for children coming and going.
    pub guards: Vec<PathBuf>,
}

/// The segment of `path` (relative): that of its nearest listed ancestor-or-self.
fn inherited(path: &Path, listed: &BTreeMap<PathBuf, u32>) -> u32 {
    path.ancestors()
        .find_map(|ancestor| listed.get(ancestor).copied())
        .unwrap_or(SEGMENT_HOST)
}

/// Resolves `listed` (paths relative to `root`, the cgroup2 mount, with their segments).
pub fn resolve(listed: &[(String, u32)], root: &Path) -> CgroupTable {
    let listed: BTreeMap<PathBuf, u32> = listed
        .iter()
        .map(|(path, segment)| (PathBuf::from(path), *segment))
        .collect();
    // Every proper ancestor of a listed path (the root is the empty path).
    let guards: BTreeSet<&Path> = listed
        .keys()
        .flat_map(|path| path.ancestors().skip(1))
        .collect();
    let mut table = CgroupTable::default();
    let add = |relative: &Path, table: &mut CgroupTable| -> bool {
        let Some(id) = cgroup_id(&root.join(relative)) else {
            return false;
        };
        let guard = if guards.contains(relative) {
            CGROUP_GUARD
        } else {
            0
        };
        table
            .entries
            .insert(id, inherited(relative, &listed) | guard);
        true
    };
    for path in listed.keys() {
        if !add(path, &mut table) {
            table.missing.push(path.to_string_lossy().into_owned());
        }
    }
    for guard in &guards {
        if !add(guard, &mut table) {
            continue;
        }
        table.guards.push(root.join(guard));
        let children = fs::read_dir(root.join(guard))
            .into_iter()
            .flatten()
            .flatten();
        for child in children {
            if child.file_type().is_ok_and(|kind| kind.is_dir()) {
                add(&guard.join(child.file_name()), &mut table);
            }
        }
    }
    table
}

/// Makes the cgroup map of `slot` hold exactly `table`'s entries: new and changed ones
/// are written, vanished ones removed. Each write is atomic for the kernel, and entries
/// that stay are never absent in between.
pub fn write(ebpf: &mut impl MapSet, slot: usize, table: &CgroupTable) -> Result<(), LoaderError> {
    let name = CGROUPS[slot];
    let mut map: HashMap<&mut MapData, u64, u32> =
        HashMap::try_from(ebpf.map_mut(name)?).map_err(map_error(name))?;
    let current: BTreeMap<u64, u32> = map
        .iter()
        .collect::<Result<_, _>>()
        .map_err(map_error(name))?;
    for (id, value) in &table.entries {
        if current.get(id) != Some(value) {
            map.insert(id, value, 0).map_err(map_error(name))?;
        }
    }
    for id in current.keys() {
        if !table.entries.contains_key(id) {
            map.remove(id).map_err(map_error(name))?;
        }
    }
    Ok(())
}

/// The value the cgroup map of `slot` holds for cgroup `id` (segment id, with
/// [`CGROUP_GUARD`] on guards), if any.
pub fn lookup(ebpf: &mut impl MapSet, slot: usize, id: u64) -> Result<Option<u32>, LoaderError> {
    let name = CGROUPS[slot];
    let map: HashMap<&mut MapData, u64, u32> =
        HashMap::try_from(ebpf.map_mut(name)?).map_err(map_error(name))?;
    match map.get(&id, 0) {
        Ok(value) => Ok(Some(value)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(err) => Err(map_error(name)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_cgroups_their_ancestors_and_the_ancestors_children_are_known() {
        let root = tempfile::tempdir().expect("tempdir");
        for dir in [
            "system.slice/orders.service/worker",
            "system.slice/sshd.service",
            "user.slice",
        ] {
            fs::create_dir_all(root.path().join(dir)).expect("mkdir");
        }
        let id = |path: &str| cgroup_id(&root.path().join(path)).expect("exists");
        let table = resolve(
            &[
                ("system.slice/orders.service".to_owned(), 7),
                ("system.slice/payments.service".to_owned(), 8),
            ],
            root.path(),
        );
        assert_eq!(table.missing, vec!["system.slice/payments.service"]);
        assert_eq!(
            table.entries,
            BTreeMap::from([
                (id(""), SEGMENT_HOST | CGROUP_GUARD),
                (id("system.slice"), SEGMENT_HOST | CGROUP_GUARD),
                (id("user.slice"), SEGMENT_HOST),
                (id("system.slice/orders.service"), 7),
                (id("system.slice/sshd.service"), SEGMENT_HOST),
            ]),
            "the worker below orders inherits without an entry of its own"
        );
        assert_eq!(
            table.guards,
            vec![root.path().to_owned(), root.path().join("system.slice")]
        );
    }

    #[test]
    fn a_listed_cgroup_above_another_is_a_guard_with_its_own_segment() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("apps/api")).expect("mkdir");
        fs::create_dir_all(root.path().join("apps/batch")).expect("mkdir");
        let id = |path: &str| cgroup_id(&root.path().join(path)).expect("exists");
        let table = resolve(
            &[("apps".to_owned(), 5), ("apps/api".to_owned(), 6)],
            root.path(),
        );
        assert_eq!(table.entries[&id("apps")], 5 | CGROUP_GUARD);
        assert_eq!(table.entries[&id("apps/api")], 6);
        assert_eq!(table.entries[&id("apps/batch")], 5, "inherits apps");
    }
}
