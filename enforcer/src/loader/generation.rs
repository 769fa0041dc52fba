//! Applying a [`MapImage`] as a new policy generation: fill the inactive slot's maps,
//! flip `ACTIVE` with one array write, then clear the old slot.

use std::{path::Path, time::Duration};

use aya::Pod;
use aya::maps::{
    Array, HashMap, IterableMap, MapData, MapKeys,
    lpm_trie::{Key, LpmTrie},
};
use enforcer_common::maps::{
    ACTIVE, CGROUPS, CIDRS_V4, CIDRS_V6, FAILSAFES_V4, FAILSAFES_V6, FailsafeKey4, FailsafeKey6,
    LISTEN, ListenKey, POLICY, PolicyConfig, RULES, RuleCounters, RuleKey, RuleValue, SEGMENTS,
    slot_of,
};

use super::{
    LoaderError, MapSet, batch,
    cgroups::{self, CgroupTable},
    counters, map_error, verdicts,
};
use crate::policy::image::{LpmEntry, MapImage};

/// How long to wait after the flip before clearing the old slot, so that a program that
/// read the old generation just before the flip finishes with intact maps (programs run
/// for microseconds).
const GRACE: Duration = Duration::from_millis(20);

/// What applying an image did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The generation now active.
    pub generation: u32,
    /// The generation's cgroup table as resolved on this host: listed paths that do not
    /// exist (yet), and the guard directories to watch ([`Loader::refresh_cgroups`]).
    ///
    /// [`Loader::refresh_cgroups`]: super::Loader::refresh_cgroups
    pub cgroups: CgroupTable,
    /// The generation it replaced, with its final rule counters (element `i` counts rule
    /// id `i + 1`), read after the flip and the grace period, just before its slot is
    /// cleared; `None` for the first generation.
    pub replaced: Option<(u32, Vec<RuleCounters>)>,
}

fn fill_trie<K: Pod, V: Pod>(
    ebpf: &mut impl MapSet,
    name: &'static str,
    entries: &[LpmEntry<K, V>],
) -> Result<(), LoaderError> {
    let trie: LpmTrie<&MapData, K, V> =
        LpmTrie::try_from(&*ebpf.map_mut(name)?).map_err(map_error(name))?;
    let keys: Vec<Key<K>> = entries
        .iter()
        .map(|entry| Key::new(entry.prefix_len, entry.key))
        .collect();
    let values: Vec<V> = entries.iter().map(|entry| entry.value).collect();
    batch::update(&trie, &keys, &values).map_err(map_error(name))
}

/// Deletes `keys`, every key of `map` (a trie or hash map: aya serves both as
/// `IterableMap`).
fn delete_all<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    keys: MapKeys<'_, K>,
    name: &'static str,
) -> Result<(), LoaderError> {
    let keys: Vec<K> = keys.collect::<Result<_, _>>().map_err(map_error(name))?;
    batch::delete(map, &keys).map_err(map_error(name))
}

fn clear_trie<K: Pod, V: Pod>(
    ebpf: &mut impl MapSet,
    name: &'static str,
) -> Result<(), LoaderError> {
    let trie: LpmTrie<&MapData, K, V> =
        LpmTrie::try_from(&*ebpf.map_mut(name)?).map_err(map_error(name))?;
    delete_all(&trie, trie.keys(), name)
}

fn clear_hash<K: Pod, V: Pod>(
    ebpf: &mut impl MapSet,
    name: &'static str,
) -> Result<(), LoaderError> {
    let hash: HashMap<&MapData, K, V> =
        HashMap::try_from(&*ebpf.map_mut(name)?).map_err(map_error(name))?;
    delete_all(&hash, hash.keys(), name)
}

/// The [`PolicyConfig`] stored in `slot` (all zero for an empty slot).
pub(super) fn slot_config(
    ebpf: &mut impl MapSet,
    slot: usize,
) -> Result<PolicyConfig, LoaderError> {
    let policy: Array<&mut MapData, PolicyConfig> =
        Array::try_from(ebpf.map_mut(POLICY[slot])?).map_err(map_error(POLICY[slot]))?;
    policy.get(&0, 0).map_err(map_error(POLICY[slot]))
}

/// Empties the maps of `slot` that a flow's classification and decision look up, zeroes
/// its rule counters and resets its policy settings. Its segment table is left as it is:
/// [`fill_slot`] overwrites the entry of every segment the next image has, and an entry
/// beyond those is unreachable (the kernel indexes the table only by segment ids found in
/// the slot's own maps, or by `host` and `world`, which every image has), so resetting
/// all [`MAX_SEGMENTS`](enforcer_common::maps::MAX_SEGMENTS) entries would cost thousands of map writes for nothing.
fn clear_slot(ebpf: &mut impl MapSet, slot: usize) -> Result<(), LoaderError> {
    let rule_count = slot_config(ebpf, slot)?.rule_count;
    counters::zero_rules(ebpf, slot, rule_count)?;
    clear_trie::<[u8; 4], u32>(ebpf, CIDRS_V4[slot])?;
    clear_trie::<[u8; 16], u32>(ebpf, CIDRS_V6[slot])?;
    clear_trie::<RuleKey, RuleValue>(ebpf, RULES[slot])?;
    clear_trie::<FailsafeKey4, u32>(ebpf, FAILSAFES_V4[slot])?;
    clear_trie::<FailsafeKey6, u32>(ebpf, FAILSAFES_V6[slot])?;
    clear_hash::<u64, u32>(ebpf, CGROUPS[slot])?;
    clear_hash::<ListenKey, u32>(ebpf, LISTEN[slot])?;
    let mut policy: Array<&mut MapData, PolicyConfig> =
        Array::try_from(ebpf.map_mut(POLICY[slot])?).map_err(map_error(POLICY[slot]))?;
    policy
        .set(0, &PolicyConfig::default(), 0)
        .map_err(map_error(POLICY[slot]))
}

/// Writes `image` into `slot`, resolving cgroup paths under `cgroup_root` to ids.
fn fill_slot(
    ebpf: &mut impl MapSet,
    slot: usize,
    image: &MapImage,
    cgroup_root: &Path,
) -> Result<CgroupTable, LoaderError> {
    fill_trie(ebpf, CIDRS_V4[slot], &image.cidrs_v4)?;
    fill_trie(ebpf, CIDRS_V6[slot], &image.cidrs_v6)?;
    fill_trie(ebpf, RULES[slot], &image.rules)?;
    fill_trie(ebpf, FAILSAFES_V4[slot], &image.failsafes_v4)?;
    fill_trie(ebpf, FAILSAFES_V6[slot], &image.failsafes_v6)?;
    let cgroups = cgroups::resolve(&image.cgroups, cgroup_root);
    cgroups::write(ebpf, slot, &cgroups)?;
    let listen: HashMap<&MapData, ListenKey, u32> =
        HashMap::try_from(&*ebpf.map_mut(LISTEN[slot])?).map_err(map_error(LISTEN[slot]))?;
    let (ports, segments): (Vec<ListenKey>, Vec<u32>) = image.listen_ports.iter().copied().unzip();
    batch::update(&listen, &ports, &segments).map_err(map_error(LISTEN[slot]))?;
    batch::set_array(ebpf.map_mut(SEGMENTS[slot])?, &image.segment_infos)
        .map_err(map_error(SEGMENTS[slot]))?;
    let mut policy: Array<&mut MapData, PolicyConfig> =
        Array::try_from(ebpf.map_mut(POLICY[slot])?).map_err(map_error(POLICY[slot]))?;
    policy
        .set(0, &image.config, 0)
        .map_err(map_error(POLICY[slot]))?;
    Ok(cgroups)
}

/// The active generation number (0 before the first apply).
pub fn active(ebpf: &mut impl MapSet) -> Result<u32, LoaderError> {
    let active: Array<&mut MapData, u32> =
        Array::try_from(ebpf.map_mut(ACTIVE)?).map_err(map_error(ACTIVE))?;
    active.get(&0, 0).map_err(map_error(ACTIVE))
}

/// The active generation and the slot its maps are in ([`slot_of`]); `None` before the
/// first apply. The one place the loader turns a generation it reads into a slot.
pub fn active_slot(ebpf: &mut impl MapSet) -> Result<Option<(u32, usize)>, LoaderError> {
    Ok(match active(ebpf)? {
        0 => None,
        generation => Some((generation, slot_of(generation))),
    })
}

/// Applies `image` as the next generation and returns what was done.
pub fn apply(
    ebpf: &mut impl MapSet,
    image: &MapImage,
    cgroup_root: &Path,
) -> Result<Applied, LoaderError> {
    let current = active(ebpf)?;
    let next = current
        .checked_add(1)
        .ok_or(LoaderError::GenerationsExhausted)?;
    let slot = slot_of(next);
    // The inactive slot may hold leftovers of an apply that failed half-way.
    clear_slot(ebpf, slot)?;
    let cgroups = fill_slot(ebpf, slot, image, cgroup_root)?;
    if current == 0 {
        // Numbering starts (over) at 1: an adopted verdict cache may hold entries of an
        // earlier generation 1, 2, ... (its `ACTIVE` pin removed by hand, say).
        verdicts::clear(ebpf)?;
    }
    let mut flip: Array<&mut MapData, u32> =
        Array::try_from(ebpf.map_mut(ACTIVE)?).map_err(map_error(ACTIVE))?;
    flip.set(0, &next, 0).map_err(map_error(ACTIVE))?;
    let replaced = if current == 0 {
        None
    } else {
        std::thread::sleep(GRACE);
        let old = slot_of(current);
        let rule_count = slot_config(ebpf, old)?.rule_count;
        let final_counts = counters::rules(ebpf, old, rule_count)?;
        clear_slot(ebpf, old)?;
        Some((current, final_counts))
    };
    Ok(Applied {
        generation: next,
        cgroups,
        replaced,
    })
}
