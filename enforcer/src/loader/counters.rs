//! Reading the per-CPU counters: per rule of a generation, per reason and verdict, and
//! the event stream's emitted, lost and suppressed counts. Values are summed over CPUs.

use aya::{
    Pod,
    maps::{MapData, PerCpuArray, PerCpuValues},
};
use enforcer_common::{
    event::{Reason, Verdict},
    maps::{
        EVENT_STATS, EVENTS_EMITTED, EVENTS_LOST, EVENTS_SUPPRESSED, EVENTS_UNSTORED, MAX_RULES,
        REASON_COUNTS, RULE_COUNTERS, RuleCounters, reason_counter_index,
    },
};

use super::{LoaderError, MapSet, map_error};

/// Counts of the event stream since the object was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// Events written to the ring buffer.
    pub emitted: u64,
    /// Events lost because the ring buffer was full.
    pub lost: u64,
    /// Events not written because the same flow was recorded within the window.
    pub suppressed: u64,
    /// Events the agent took off the ring but has not stored yet (its store failed).
    pub unstored: u64,
}

/// Decisions with one reason and verdict since the object was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonCount {
    /// Why.
    pub reason: Reason,
    /// What was decided.
    pub verdict: Verdict,
    /// How many decisions.
    pub count: u64,
}

/// Every counter, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// The generation the rule counters belong to.
    pub generation: u32,
    /// Per rule of that generation: element `i` counts rule id `i + 1`.
    pub rules: Vec<RuleCounters>,
    /// Per reason and verdict, every combination (zeros included).
    pub by_reason: Vec<ReasonCount>,
    /// The event stream.
    pub events: EventCounts,
}

/// Every counter in `maps`; the rule counters are the active generation's.
pub(super) fn all(maps: &mut impl MapSet) -> Result<Counters, LoaderError> {
    let (generation, rules) = match super::generation::active_slot(maps)? {
        None => (0, Vec::new()),
        Some((generation, slot)) => {
            let count = super::generation::slot_config(maps, slot)?.rule_count;
            (generation, rules(maps, slot, count)?)
        }
    };
    let (by_reason, events) = host(maps)?;
    Ok(Counters {
        generation,
        rules,
        by_reason,
        events,
    })
}

fn per_cpu_u64(ebpf: &mut impl MapSet, name: &'static str, index: u32) -> Result<u64, LoaderError> {
    let array: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(ebpf.map_mut(name)?).map_err(map_error(name))?;
    let values = array.get(&index, 0).map_err(map_error(name))?;
    Ok(values.iter().sum())
}

/// The rule ids a slot's `rule_count` can name: never past the map, whatever a slot holds.
fn in_map(count: u32) -> u32 {
    count.min(MAX_RULES - 1)
}

/// The counters of rule ids `1..=count` in generation slot `slot`.
pub(super) fn rules(
    ebpf: &mut impl MapSet,
    slot: usize,
    count: u32,
) -> Result<Vec<RuleCounters>, LoaderError> {
    let count = in_map(count);
    let name = RULE_COUNTERS[slot];
    let array: PerCpuArray<&mut MapData, RuleCounters> =
        PerCpuArray::try_from(ebpf.map_mut(name)?).map_err(map_error(name))?;
    (1..=count)
        .map(|id| {
            let values = array.get(&id, 0).map_err(map_error(name))?;
            let mut total = RuleCounters::default();
            values.iter().for_each(|v| total.add(v));
            Ok(total)
        })
        .collect()
}

/// Zeroes the counters of rule ids `1..=count` in generation slot `slot`.
pub(super) fn zero_rules(
    ebpf: &mut impl MapSet,
    slot: usize,
    count: u32,
) -> Result<(), LoaderError> {
    zero_per_cpu(
        ebpf,
        RULE_COUNTERS[slot],
        1..=in_map(count),
        RuleCounters::default(),
    )
}

/// Sets entries `indices` of the per-CPU array `name` to `zero` on every CPU.
pub(super) fn zero_per_cpu<V: Pod>(
    ebpf: &mut impl MapSet,
    name: &'static str,
    indices: impl IntoIterator<Item = u32>,
    zero: V,
) -> Result<(), LoaderError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| LoaderError::PossibleCpus(source))?;
    let mut array: PerCpuArray<&mut MapData, V> =
        PerCpuArray::try_from(ebpf.map_mut(name)?).map_err(map_error(name))?;
    for index in indices {
        let zeros = PerCpuValues::try_from(vec![zero; cpus.get() as usize])
            .map_err(LoaderError::PossibleCpus)?;
        array.set(index, zeros, 0).map_err(map_error(name))?;
    }
    Ok(())
}

/// The host-wide counters: per reason and verdict, and the event stream's.
pub(super) fn host(ebpf: &mut impl MapSet) -> Result<(Vec<ReasonCount>, EventCounts), LoaderError> {
    let mut by_reason = Vec::new();
    for reason in Reason::ALL {
        for verdict in Verdict::ALL {
            let count = per_cpu_u64(ebpf, REASON_COUNTS, reason_counter_index(reason, verdict))?;
            by_reason.push(ReasonCount {
                reason,
                verdict,
                count,
            });
        }
    }
    Ok((by_reason, events(ebpf)?))
}

/// The event stream's counters.
pub(super) fn events(ebpf: &mut impl MapSet) -> Result<EventCounts, LoaderError> {
    Ok(EventCounts {
        emitted: per_cpu_u64(ebpf, EVENT_STATS, EVENTS_EMITTED)?,
        lost: per_cpu_u64(ebpf, EVENT_STATS, EVENTS_LOST)?,
        suppressed: per_cpu_u64(ebpf, EVENT_STATS, EVENTS_SUPPRESSED)?,
        unstored: per_cpu_u64(ebpf, EVENT_STATS, EVENTS_UNSTORED)?,
    })
}

/// Records how many events the agent took off the ring but could not store.
pub(super) fn set_unstored(ebpf: &mut impl MapSet, count: u64) -> Result<(), LoaderError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| LoaderError::PossibleCpus(source))?;
    let mut values = vec![0u64; cpus.get() as usize];
    values[0] = count;
    let values = PerCpuValues::try_from(values).map_err(LoaderError::PossibleCpus)?;
    let mut array: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(ebpf.map_mut(EVENT_STATS)?).map_err(map_error(EVENT_STATS))?;
    array
        .set(EVENTS_UNSTORED, values, 0)
        .map_err(map_error(EVENT_STATS))
}
