//! Listeners that existed before the hooks did: the kernel learns a binding at `bind()`,
//! so a socket bound before the cgroup hooks were attached (a service started before the
//! agent) is learnt here instead, from the sockets the host has, with the ancestry of the
//! cgroup each was created in. Bindings the kernel learnt itself are left as they are.

use std::{collections::HashMap as StdHashMap, path::Path};

use aya::maps::{HashMap, MapData};
use enforcer_common::maps::{
    BOUND_SOCKETS, BoundKey, CGROUP_LEVELS, LEARNT_LISTENERS, LearntListener, PROTO_UDP,
    local_address_key,
};

use super::{LoaderError, MapSet, map_error, settings};
use crate::host::{cgroups, sockets::Listener};

/// The cgroup ids from the root (level 0) down to the cgroup at `path` (`/a/b`), as
/// `bpf_get_current_ancestor_cgroup_id` numbers them; `None` when a level is gone.
fn ancestry(root: &Path, path: &str) -> Option<[u64; CGROUP_LEVELS]> {
    let mut ancestors = [0; CGROUP_LEVELS];
    ancestors[0] = cgroups::id(root)?;
    let mut dir = root.to_path_buf();
    for (level, part) in path.split('/').filter(|p| !p.is_empty()).enumerate() {
        dir.push(part);
        *ancestors.get_mut(level + 1)? = cgroups::id(&dir)?;
    }
    Some(ancestors)
}

/// The map key of a listener's binding.
fn key(listener: &Listener) -> BoundKey {
    let mut bytes = [0u8; 16];
    let v4 = match listener.addr {
        std::net::IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            true
        }
        std::net::IpAddr::V6(v6) => {
            bytes = v6.octets();
            false
        }
    };
    BoundKey::new(local_address_key(&bytes, v4), listener.port, listener.proto)
}

/// Learns every listener of `listeners` the kernel has not learnt itself, with the
/// ancestry of its cgroup under the cgroup2 mount `root`. UDP sockets on a port of the
/// ephemeral range are skipped (a client's `bind(0)` lands there too, and nothing says
/// whether this one asked for its port). Returns how many were learnt.
pub(super) fn seed(
    maps: &mut impl MapSet,
    listeners: &[Listener],
    root: &Path,
) -> Result<usize, LoaderError> {
    let host = settings::read(maps)?;
    let paths = cgroups::paths_by_id(root);
    let mut learnt: Vec<(BoundKey, LearntListener)> = Vec::new();
    let mut ancestries: StdHashMap<u64, Option<[u64; CGROUP_LEVELS]>> = StdHashMap::new();
    for listener in listeners {
        if listener.proto == PROTO_UDP
            && (host.ephemeral_low..=host.ephemeral_high).contains(&listener.port)
        {
            continue;
        }
        let ancestors = *ancestries.entry(listener.cgroup_id).or_insert_with(|| {
            paths
                .get(&listener.cgroup_id)
                .and_then(|path| ancestry(root, path))
        });
        if let Some(ancestors) = ancestors {
            learnt.push((
                key(listener),
                LearntListener {
                    ancestors,
                    cookie: listener.cookie,
                },
            ));
        }
    }
    let mut table: HashMap<&mut MapData, BoundKey, LearntListener> =
        HashMap::try_from(maps.map_mut(LEARNT_LISTENERS)?).map_err(map_error(LEARNT_LISTENERS))?;
    let mut added = Vec::new();
    for (key, value) in learnt {
        if table.get(&key, 0).is_err() {
            table
                .insert(&key, &value, 0)
                .map_err(map_error(LEARNT_LISTENERS))?;
            added.push((value.cookie, key));
        }
    }
    let mut bound: HashMap<&mut MapData, u64, BoundKey> =
        HashMap::try_from(maps.map_mut(BOUND_SOCKETS)?).map_err(map_error(BOUND_SOCKETS))?;
    for (cookie, key) in &added {
        bound
            .insert(cookie, key, 0)
            .map_err(map_error(BOUND_SOCKETS))?;
    }
    Ok(added.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_numbers_levels_from_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a.slice/b.service")).unwrap();
        let levels = ancestry(root.path(), "/a.slice/b.service").unwrap();
        assert_eq!(levels[0], cgroups::id(root.path()).unwrap());
        assert_eq!(
            levels[1],
            cgroups::id(&root.path().join("a.slice")).unwrap()
        );
        assert_eq!(
            levels[2],
            cgroups::id(&root.path().join("a.slice/b.service")).unwrap()
        );
        assert_eq!(levels[3], 0);
        assert_eq!(ancestry(root.path(), "/gone"), None);
    }
}
