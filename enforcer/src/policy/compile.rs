//! The compiler: a pure, deterministic function from a valid [`Policy`] to the
//! [`MapImage`] the kernel will hold. Capacity limits are checked here: a policy that
//! would overflow any map is refused with the numbers, never truncated.

use std::collections::BTreeMap;

use enforcer_common::{
    decision::{lookup_bit, precedence},
    maps::{
        ACTION_ALLOW, ACTION_DENY, AUDIT_ALL, AUDIT_DENY, FAILSAFE_KEY_FIXED_BITS,
        FIRST_NAMED_SEGMENT, FailsafeKey, ListenKey, MAX_CGROUPS, MAX_CIDRS_V4, MAX_CIDRS_V6,
        MAX_FAILSAFES, MAX_LISTEN_PORTS, MAX_RULE_ENTRIES, MAX_RULES, MAX_SEGMENTS, PolicyConfig,
        RULE_KEY_FIXED_BITS, RuleKey, RuleValue, SEGMENT_ANY, SEGMENT_BROADCAST,
        SEGMENT_FLAG_AUDIT, SEGMENT_FLAG_ICMP_ERRORS, SEGMENT_FLAG_RAW_SOCKETS, SEGMENT_HOST,
        SEGMENT_MULTICAST, SEGMENT_WORLD, SegmentInfo,
    },
};
use ipnet::IpNet;
use rustc_hash::FxHashMap as HashMap;

use super::{
    diagnostic::Diagnostic,
    image::{LpmEntry, MapImage},
    model::{
        Action, AuditLevel, BROADCAST, HOST, IMPLICIT, MULTICAST, Mode, Policy, SegmentRef, WORLD,
    },
};

/// Splits the inclusive port range `first..=last` into aligned power-of-two blocks, each
/// given as `(base port, number of leading port bits that must match)`. At most 30 blocks.
pub fn port_blocks(first: u16, last: u16) -> Vec<(u16, u32)> {
    let mut blocks = Vec::new();
    let (mut start, end) = (u32::from(first), u32::from(last));
    while start <= end {
        let mut size_log2 = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while start + (1 << size_log2) - 1 > end {
            size_log2 -= 1;
        }
        blocks.push((start as u16, 16 - size_log2));
        start += 1 << size_log2;
    }
    blocks
}

/// One group of rule-trie entries: source, destination and protocol are fixed.
type GroupKey = (u32, u32, u8);

/// For one group, the winning rule over each maximal run of ports: sweeps the rules'
/// ranges, keeping the active rule of best [`precedence`], and merges equal neighbours.
fn best_per_port_run(ranges: &[(u16, u16, RuleValue)]) -> Vec<(u16, u16, RuleValue)> {
    // (position, is_end, rank key) with the end event at last + 1.
    let mut events: Vec<(u32, bool, (u8, u32))> = Vec::with_capacity(ranges.len() * 2);
    let mut values: HashMap<(u8, u32), RuleValue> = HashMap::default();
    for (first, last, value) in ranges {
        let rank = precedence(value);
        values.insert(rank, *value);
        events.push((u32::from(*first), false, rank));
        events.push((u32::from(*last) + 1, true, rank));
    }
    events.sort_unstable();
    let mut active: BTreeMap<(u8, u32), u32> = BTreeMap::new();
    let mut runs: Vec<(u16, u16, RuleValue)> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let position = events[i].0;
        while i < events.len() && events[i].0 == position {
            let (_, is_end, rank) = events[i];
            if is_end {
                if let Some(count) = active.get_mut(&rank) {
                    *count -= 1;
                    if *count == 0 {
                        active.remove(&rank);
                    }
                }
            } else {
                *active.entry(rank).or_default() += 1;
            }
            i += 1;
        }
        let Some((rank, _)) = active.first_key_value() else {
            continue;
        };
        let next = events.get(i).map_or(65_536, |e| e.0);
        let best = values[rank];
        let (first, last) = (position as u16, (next - 1) as u16);
        match runs.last_mut() {
            Some(run) if run.2 == best && u32::from(run.1) + 1 == position => run.1 = last,
            _ => runs.push((first, last, best)),
        }
    }
    runs
}

fn capacity(found: &mut Vec<Diagnostic>, map: &str, needed: usize, limit: u32) {
    if needed > limit as usize {
        found.push(Diagnostic::global_error(
            "capacity",
            format!("the {map} needs {needed} entries; its capacity is {limit}"),
        ));
    }
}

/// Compiles a valid policy. The only errors are capacity errors, all reported at once.
pub fn compile(policy: &Policy) -> Result<MapImage, Vec<Diagnostic>> {
    let mut segment_names = vec!["*".to_owned()];
    segment_names.extend(IMPLICIT.map(str::to_owned));
    let mut segment_infos = vec![SegmentInfo::default(); FIRST_NAMED_SEGMENT as usize];
    let mut ids: HashMap<&str, u32> = HashMap::default();
    ids.insert(HOST, SEGMENT_HOST);
    ids.insert(WORLD, SEGMENT_WORLD);
    ids.insert(BROADCAST, SEGMENT_BROADCAST);
    ids.insert(MULTICAST, SEGMENT_MULTICAST);
    for (offset, segment) in policy.segments.iter().enumerate() {
        let id = FIRST_NAMED_SEGMENT + offset as u32;
        ids.insert(&segment.name, id);
        segment_names.push(segment.name.clone());
        let mut flags = 0;
        if segment.mode == Mode::Audit {
            flags |= SEGMENT_FLAG_AUDIT;
        }
        if segment.raw_sockets {
            flags |= SEGMENT_FLAG_RAW_SOCKETS;
        }
        if segment.icmp_errors {
            flags |= SEGMENT_FLAG_ICMP_ERRORS;
        }
        segment_infos.push(SegmentInfo { flags });
    }
    let id_of = |r: &SegmentRef| match r {
        SegmentRef::Any => SEGMENT_ANY,
        SegmentRef::Named(name) => ids[name.as_str()],
    };

    let mut cidrs_v4 = Vec::new();
    let mut cidrs_v6 = Vec::new();
    let mut cgroups = Vec::new();
    let mut listen_ports = Vec::new();
    for segment in &policy.segments {
        let id = ids[segment.name.as_str()];
        for net in &segment.cidrs {
            match net {
                IpNet::V4(net) => cidrs_v4.push(LpmEntry {
                    prefix_len: u32::from(net.prefix_len()),
                    key: net.network().octets(),
                    value: id,
                }),
                IpNet::V6(net) => cidrs_v6.push(LpmEntry {
                    prefix_len: u32::from(net.prefix_len()),
                    key: net.network().octets(),
                    value: id,
                }),
            }
        }
        cgroups.extend(segment.cgroups.iter().map(|path| (path.clone(), id)));
        for range in &segment.ports {
            listen_ports.extend(
                (range.first..=range.last)
                    .map(|port| (ListenKey::new(port, range.proto.number()), id)),
            );
        }
    }

    let mut groups: HashMap<GroupKey, Vec<(u16, u16, RuleValue)>> = HashMap::default();
    for (index, rule) in policy.rules.iter().enumerate() {
        let action = match rule.action {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
        };
        let value = RuleValue::new(index as u32 + 1, action);
        for from in &rule.from {
            for to in &rule.to {
                for range in &rule.ports {
                    groups
                        .entry((id_of(from), id_of(to), range.proto.number()))
                        .or_default()
                        .push((range.first, range.last, value));
                }
            }
        }
    }
    let mut rules = Vec::new();
    for ((src, dst, proto), ranges) in &groups {
        for (first, last, value) in best_per_port_run(ranges) {
            rules.extend(
                port_blocks(first, last)
                    .into_iter()
                    .map(|(base, bits)| LpmEntry {
                        prefix_len: RULE_KEY_FIXED_BITS + bits,
                        key: RuleKey::new(*src, *dst, *proto, base),
                        value,
                    }),
            );
        }
    }

    let mut failsafes_v4 = Vec::new();
    let mut failsafes_v6 = Vec::new();
    for (index, failsafe) in policy.failsafes.iter().enumerate() {
        let number = index as u32 + 1;
        let proto = failsafe.ports.proto.number();
        for port in failsafe.ports.first..=failsafe.ports.last {
            for net in &failsafe.from {
                match net {
                    IpNet::V4(net) => failsafes_v4.push(LpmEntry {
                        prefix_len: FAILSAFE_KEY_FIXED_BITS + u32::from(net.prefix_len()),
                        key: FailsafeKey::new(proto, port, net.network().octets()),
                        value: number,
                    }),
                    IpNet::V6(net) => failsafes_v6.push(LpmEntry {
                        prefix_len: FAILSAFE_KEY_FIXED_BITS + u32::from(net.prefix_len()),
                        key: FailsafeKey::new(proto, port, net.network().octets()),
                        value: number,
                    }),
                }
            }
        }
    }

    let mut errors = Vec::new();
    capacity(
        &mut errors,
        "segment table",
        segment_names.len(),
        MAX_SEGMENTS,
    );
    capacity(&mut errors, "IPv4 CIDR trie", cidrs_v4.len(), MAX_CIDRS_V4);
    capacity(&mut errors, "IPv6 CIDR trie", cidrs_v6.len(), MAX_CIDRS_V6);
    capacity(&mut errors, "cgroup table", cgroups.len(), MAX_CGROUPS);
    capacity(
        &mut errors,
        "listener port table",
        listen_ports.len(),
        MAX_LISTEN_PORTS,
    );
    capacity(&mut errors, "rule table", rules.len(), MAX_RULE_ENTRIES);
    // Rule ids start at 1; id 0 of the counter map is unused.
    capacity(
        &mut errors,
        "rule counters",
        policy.rules.len() + 1,
        MAX_RULES,
    );
    capacity(
        &mut errors,
        "IPv4 failsafe trie",
        failsafes_v4.len(),
        MAX_FAILSAFES,
    );
    capacity(
        &mut errors,
        "IPv6 failsafe trie",
        failsafes_v6.len(),
        MAX_FAILSAFES,
    );
    if !errors.is_empty() {
        return Err(errors);
    }

    // Deterministic order for every list, whatever the hash maps above did.
    cidrs_v4.sort_unstable_by_key(|e| (e.prefix_len, e.key));
    cidrs_v6.sort_unstable_by_key(|e| (e.prefix_len, e.key));
    cgroups.sort();
    listen_ports.sort_unstable_by_key(|(key, _)| *key);
    rules.sort_unstable_by_key(|e| (e.key, e.prefix_len));
    // Two failsafes may grant the same source and port: the trie keeps one entry, the
    // first in name order (a stable sort keeps the failsafes' name order among equal keys).
    failsafes_v4.sort_by_key(|e| (e.key, e.prefix_len));
    failsafes_v4.dedup_by_key(|e| (e.key, e.prefix_len));
    failsafes_v6.sort_by_key(|e| (e.key, e.prefix_len));
    failsafes_v6.dedup_by_key(|e| (e.key, e.prefix_len));

    Ok(MapImage {
        config: PolicyConfig {
            audit_level: match policy.defaults.audit {
                AuditLevel::All => AUDIT_ALL,
                AuditLevel::Deny => AUDIT_DENY,
            },
            unclassified_action: match policy.defaults.unclassified {
                Action::Allow => ACTION_ALLOW,
                Action::Deny => ACTION_DENY,
            },
            rule_lookups: rules
                .iter()
                .fold(0, |mask, e| mask | lookup_bit(e.key.src(), e.key.dst())),
            _pad: 0,
            rule_count: u32::try_from(policy.rules.len()).unwrap_or(u32::MAX),
        },
        segment_names,
        segment_infos,
        cidrs_v4,
        cidrs_v6,
        cgroups,
        listen_ports,
        rules,
        rule_names: policy.rules.iter().map(|r| r.id.clone()).collect(),
        failsafes_v4,
        failsafes_v6,
        failsafe_names: policy.failsafes.iter().map(|f| f.name.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_exactly_the_range() {
        for (first, last) in [
            (1, 65535),
            (80, 80),
            (9000, 9100),
            (1, 1),
            (65535, 65535),
            (1024, 2047),
        ] {
            let blocks = port_blocks(first, last);
            assert!(
                blocks.len() <= 30,
                "{first}-{last}: {} blocks",
                blocks.len()
            );
            let mut covered: Vec<u32> = blocks
                .iter()
                .flat_map(|(base, bits)| {
                    let size = 1u32 << (16 - bits);
                    assert_eq!(u32::from(*base) % size, 0, "block {base}/{bits} is aligned");
                    u32::from(*base)..u32::from(*base) + size
                })
                .collect();
            covered.sort_unstable();
            let want: Vec<u32> = (u32::from(first)..=u32::from(last)).collect();
            assert_eq!(covered, want, "{first}-{last}");
        }
    }

    #[test]
    fn overlapping_ranges_resolve_to_the_best_rule() {
        let allow = RuleValue::new(1, ACTION_ALLOW);
        let deny = RuleValue::new(2, ACTION_DENY);
        let runs = best_per_port_run(&[(1, 100, allow), (50, 60, deny)]);
        assert_eq!(runs, vec![(1, 49, allow), (50, 60, deny), (61, 100, allow)]);
    }

    #[test]
    fn adjacent_ranges_of_one_rule_merge_into_one_run_and_gaps_do_not() {
        let allow = RuleValue::new(1, ACTION_ALLOW);
        let other = RuleValue::new(3, ACTION_ALLOW);
        // 8080-8081 and 8082-8085 touch: one run (fewer trie entries).
        assert_eq!(
            best_per_port_run(&[(8080, 8081, allow), (8082, 8085, allow)]),
            vec![(8080, 8085, allow)]
        );
        // A gap at 8082, or another rule next door, keeps them apart.
        assert_eq!(
            best_per_port_run(&[(8080, 8081, allow), (8083, 8085, allow)]),
            vec![(8080, 8081, allow), (8083, 8085, allow)]
        );
        assert_eq!(
            best_per_port_run(&[(8080, 8081, allow), (8082, 8085, other)]),
            vec![(8080, 8081, allow), (8082, 8085, other)]
        );
    }
}
