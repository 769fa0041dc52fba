//! How full the maps are against their limits: the active generation's policy maps and
//! the host's learnt listeners and recent flows. Counted by walking the keys, so it is
//! for `status` and metrics scrapes, not for a hot path.

use aya::{
    Pod,
    maps::{HashMap, LpmTrie, MapData},
};
use enforcer_common::maps::{
    BoundKey, CGROUP_TABLE_CAPACITY, CGROUPS, CIDRS_V4, CIDRS_V6, FAILSAFES_V4, FAILSAFES_V6,
    FOLDS, FOLDS_CAPACITY, FailsafeKey4, FailsafeKey6, FoldKey, FoldState, LEARNT_LISTENERS,
    LEARNT_LISTENERS_CAPACITY, LISTEN, LOCAL_ADDRESSES, LOCAL_ADDRESSES_CAPACITY, LOCAL_PREFIXES,
    LOCAL_PREFIXES_CAPACITY, LearntListener, ListenKey, MAX_CIDRS_V4, MAX_CIDRS_V6, MAX_FAILSAFES,
    MAX_LISTEN_PORTS, MAX_RULE_ENTRIES, PeerKey, PeerState, RULES, RuleKey, RuleValue,
    SOCKET_PEERS, SOCKET_PEERS_CAPACITY,
};
use serde::Serialize;

use super::{LoaderError, MapSet, generation, map_error};

/// Entries in one map against its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapFill {
    /// The map's role (`rules`, `cidrs_v4`, `learnt_listeners`, ...).
    pub map: &'static str,
    /// Entries now.
    pub entries: u32,
    /// The most it holds.
    pub limit: u32,
}

fn count(
    keys: impl Iterator<Item = Result<impl Sized, aya::maps::MapError>>,
    name: &'static str,
) -> Result<u32, LoaderError> {
    let mut entries = 0u32;
    for key in keys {
        key.map_err(map_error(name))?;
        entries += 1;
    }
    Ok(entries)
}

fn trie<K: Pod, V: Pod>(maps: &mut impl MapSet, name: &'static str) -> Result<u32, LoaderError> {
    let trie: LpmTrie<&MapData, K, V> =
        LpmTrie::try_from(&*maps.map_mut(name)?).map_err(map_error(name))?;
    count(trie.keys(), name)
}

/// Also reads LRU hash maps: aya serves both through `HashMap`.
fn hash<K: Pod, V: Pod>(maps: &mut impl MapSet, name: &'static str) -> Result<u32, LoaderError> {
    let hash: HashMap<&MapData, K, V> =
        HashMap::try_from(&*maps.map_mut(name)?).map_err(map_error(name))?;
    count(hash.keys(), name)
}

/// The fill of every bounded map (the policy maps of the active generation, empty
/// before the first apply).
pub(super) fn map_fill(maps: &mut impl MapSet) -> Result<Vec<MapFill>, LoaderError> {
    let mut fill = Vec::new();
    if let Some((_, slot)) = generation::active_slot(maps)? {
        let policy = [
            (
                "cidrs_v4",
                trie::<[u8; 4], u32>(maps, CIDRS_V4[slot])?,
                MAX_CIDRS_V4,
            ),
            (
                "cidrs_v6",
                trie::<[u8; 16], u32>(maps, CIDRS_V6[slot])?,
                MAX_CIDRS_V6,
            ),
            (
                "rules",
                trie::<RuleKey, RuleValue>(maps, RULES[slot])?,
                MAX_RULE_ENTRIES,
            ),
            (
                "cgroups",
                hash::<u64, u32>(maps, CGROUPS[slot])?,
                CGROUP_TABLE_CAPACITY,
            ),
            (
                "listeners",
                hash::<ListenKey, u32>(maps, LISTEN[slot])?,
                MAX_LISTEN_PORTS,
            ),
            (
                "failsafes_v4",
                trie::<FailsafeKey4, u32>(maps, FAILSAFES_V4[slot])?,
                MAX_FAILSAFES,
            ),
            (
                "failsafes_v6",
                trie::<FailsafeKey6, u32>(maps, FAILSAFES_V6[slot])?,
                MAX_FAILSAFES,
            ),
        ];
        fill.extend(policy.map(|(map, entries, limit)| MapFill {
            map,
            entries,
            limit,
        }));
    }
    fill.push(MapFill {
        map: "learnt_listeners",
        entries: hash::<BoundKey, LearntListener>(maps, LEARNT_LISTENERS)?,
        limit: LEARNT_LISTENERS_CAPACITY,
    });
    fill.push(MapFill {
        map: "local_addresses",
        entries: hash::<[u8; 16], u8>(maps, LOCAL_ADDRESSES)?,
        limit: LOCAL_ADDRESSES_CAPACITY,
    });
    fill.push(MapFill {
        map: "local_prefixes",
        entries: trie::<[u8; 16], u8>(maps, LOCAL_PREFIXES)?,
        limit: LOCAL_PREFIXES_CAPACITY,
    });
    fill.push(MapFill {
        map: "socket_peers",
        entries: hash::<PeerKey, PeerState>(maps, SOCKET_PEERS)?,
        limit: SOCKET_PEERS_CAPACITY,
    });
    fill.push(MapFill {
        map: "folds",
        entries: hash::<FoldKey, FoldState>(maps, FOLDS)?,
        limit: FOLDS_CAPACITY,
    });
    Ok(fill)
}
