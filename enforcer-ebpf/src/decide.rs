//! Classification and decision shared by the hooks: the segment of the calling task, the
//! segment of an address, and the rule decision (the pure part lives in
//! `enforcer_common::decision`, where the compiler's tests run it too).

use aya_ebpf::{helpers::bpf_get_current_ancestor_cgroup_id, maps::lpm_trie::Key};
use enforcer_common::{
    decision::{Decision, best_rule, decide, rule_lookups},
    maps::{MAX_CGROUP_DEPTH, RULE_KEY_FIXED_BITS, RuleKey, SEGMENT_HOST, SEGMENT_WORLD},
};

use crate::maps::Slot;

/// The segment of the calling task: the deepest of its cgroup and that cgroup's ancestors
/// listed by a segment, else `host`.
///
/// Verifier note: the walk is a constant-bounded loop (`MAX_CGROUP_DEPTH` + 1 levels);
/// levels deeper than the task's cgroup return id 0 and are skipped.
#[inline(always)]
pub fn task_segment<const B: bool>(slot: &Slot<B>) -> u32 {
    let mut level = MAX_CGROUP_DEPTH;
    while level >= 0 {
        // SAFETY: a helper without memory arguments; allowed in cgroup sock/sock_addr hooks.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id != 0
            && let Some(segment) = slot.cgroups().get_ptr(&id)
        {
            // SAFETY: the pointer comes from a successful map lookup.
            return unsafe { *segment };
        }
        level -= 1;
    }
    SEGMENT_HOST
}

/// The segment of an IPv4 address (network byte order bytes): longest prefix, else world.
#[inline(always)]
pub fn ipv4_segment<const B: bool>(slot: &Slot<B>, addr: [u8; 4]) -> u32 {
    slot.cidrs_v4()
        .get(&Key::new(32, addr))
        .copied()
        .unwrap_or(SEGMENT_WORLD)
}

/// The segment of an IPv6 address; an IPv4-mapped address is decided as IPv4.
#[inline(always)]
pub fn ipv6_segment<const B: bool>(slot: &Slot<B>, addr: [u8; 16]) -> u32 {
    if addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff {
        return ipv4_segment(slot, [addr[12], addr[13], addr[14], addr[15]]);
    }
    slot.cidrs_v6()
        .get(&Key::new(128, addr))
        .copied()
        .unwrap_or(SEGMENT_WORLD)
}

/// The decision for a flow between two segments: four rule-trie lookups, whatever the
/// number of rules.
#[inline(always)]
pub fn flow<const B: bool>(slot: &Slot<B>, src: u32, dst: u32, proto: u8, port: u16) -> Decision {
    let found = rule_lookups(src, dst).map(|(s, d)| {
        let key = Key::new(RULE_KEY_FIXED_BITS + 16, RuleKey::new(s, d, proto, port));
        slot.rules().get(&key).copied()
    });
    let flags = |id: u32| slot.segments().get(id).map_or(0, |info| info.flags);
    decide(best_rule(found), flags(src), flags(dst))
}
