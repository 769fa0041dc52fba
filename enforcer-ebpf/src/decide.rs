//! Classification and decision shared by the hooks: the segment of the calling task, the
//! segment of an address, and the rule decision (the pure part lives in
//! `enforcer_common::decision`, where the compiler's tests run it too).

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_sk_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id,
    },
    maps::lpm_trie::Key,
};
use enforcer_common::{
    decision::{Decision, NO_RULE, best_rule, decide, lookup_bit, rule_lookups},
    event::{FLOW_FLAG_ON_THIS_HOST, Reason, Verdict, family},
    maps::{
        ACTION_ALLOW, ADDRESS_BROADCAST, ADDRESS_LOCAL, BoundKey, CGROUP_LEVELS,
        FAILSAFE_KEY_FIXED_BITS, FailsafeKey, LearntListener, ListenKey, MAX_CGROUP_DEPTH,
        RULE_KEY_FIXED_BITS, RuleKey, SEGMENT_ANY, SEGMENT_BROADCAST, SEGMENT_FLAG_AUDIT,
        SEGMENT_HOST, SEGMENT_MULTICAST, SEGMENT_UNCLASSIFIED, SEGMENT_WORLD, cgroup_segment,
        local_address_key,
    },
};

use crate::{
    maps::{self, LEARNT_LISTENERS, LOCAL_ADDRESSES, LOCAL_PREFIXES, Slot},
    record::Flow,
};

/// The segment of the calling task: that of the deepest of its cgroup and that cgroup's
/// ancestors the generation's cgroup table knows, else `host`; unclassified when that is a
/// guard whose child on the way down is not known yet ([`cgroup_segment`]).
#[inline(always)]
pub fn task_segment<const B: bool>(slot: &Slot<B>) -> u32 {
    // SAFETY: a helper without memory arguments; allowed in the cgroup hooks that call
    // this, which run in the calling task's context.
    ancestry_segment(slot, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
}

/// Whether the calling task is a kernel worker: it is in the root cgroup (level 0, no
/// ancestor at level 1), where the kernel's threads live and where systemd puts no
/// process. The MPTCP path manager binds and connects its subflows from such a worker;
/// the sockets are the connection's, in the connection's cgroup, not the worker's.
#[inline(always)]
pub fn by_a_kernel_worker() -> bool {
    // SAFETY: a helper without memory arguments, allowed in the cgroup hooks that call
    // this, which run in the calling task's context.
    let level_one = unsafe { bpf_get_current_ancestor_cgroup_id(1) };
    level_one == 0
}

/// The segment of the socket that sent `skb`, classified like [`task_segment`] from the
/// cgroup the socket was created in. The egress hook runs this rather than asking the
/// current task, which in softirq context (a retransmission, a queued send) is whatever
/// task the CPU happened to interrupt.
#[inline(always)]
pub fn socket_segment<const B: bool>(slot: &Slot<B>, skb: *mut __sk_buff) -> u32 {
    // SAFETY: `skb` is the program's context; the helper returns 0 for a packet without a
    // full socket or a level deeper than the socket's cgroup.
    ancestry_segment(slot, |level| unsafe {
        bpf_skb_ancestor_cgroup_id(skb, level)
    })
}

/// The segment of the local socket `sk` (one a socket lookup returned), classified like
/// [`task_segment`] from the cgroup the socket was created in.
#[inline(always)]
pub fn sock_segment<const B: bool>(slot: &Slot<B>, sk: *mut bpf_sock) -> u32 {
    // SAFETY: `sk` is a socket the caller holds a reference to; the helper returns 0 for a
    // level deeper than the socket's cgroup.
    ancestry_segment(slot, |level| unsafe {
        bpf_sk_ancestor_cgroup_id(sk.cast(), level)
    })
}

/// The segment of a cgroup ancestry whose id at each level `ancestor` returns (0 for a
/// level deeper than the cgroup): that of the deepest level the generation's cgroup table
/// knows, else `host`; unclassified when that is a guard whose child on the way down is
/// not known yet ([`cgroup_segment`]).
///
/// Verifier note: the walk is a constant-bounded loop (`MAX_CGROUP_DEPTH` + 1 levels);
/// levels deeper than the cgroup return id 0 and are skipped.
#[inline(always)]
fn ancestry_segment<const B: bool>(slot: &Slot<B>, ancestor: impl Fn(i32) -> u64) -> u32 {
    let mut level = MAX_CGROUP_DEPTH;
    let mut unknown_below = false;
    while level >= 0 {
        let id = ancestor(level);
        if id != 0 {
            if let Some(value) = slot.cgroups().get_ptr(&id) {
                // SAFETY: the pointer comes from a successful map lookup.
                return cgroup_segment(unsafe { *value }, unknown_below);
            }
            unknown_below = true;
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

/// The segment of an outbound flow's destination (its address, port and protocol): a
/// destination on this host ([`is_local`]) is the segment serving the port
/// ([`listener_segment`]), else `host`, and the flow is flagged
/// [`FLOW_FLAG_ON_THIS_HOST`] for its record; a broadcast or multicast destination
/// is its class ([`group_destination`]), which only a rule naming it allows; any other is
/// its address's segment (an IPv4-mapped address decided as IPv4).
#[inline(always)]
pub fn destination_segment<const B: bool>(slot: &Slot<B>, flow: &mut Flow) -> u32 {
    let (addr, v4) = (&flow.dst_addr, flow.family == family::INET);
    if is_local(addr, v4) {
        let segment = match listener_segment(slot, addr, v4, flow.dst_port, flow.protocol) {
            NO_LISTENER => SEGMENT_HOST,
            segment => segment,
        };
        flow.flags |= FLOW_FLAG_ON_THIS_HOST;
        segment
    } else if let Some(class) = group_destination(addr, v4) {
        class
    } else {
        address_segment(slot, addr, v4)
    }
}

/// The segment of a remote address (IPv4 in the first four bytes when `v4`).
#[inline(always)]
pub fn address_segment<const B: bool>(slot: &Slot<B>, addr: &[u8; 16], v4: bool) -> u32 {
    if v4 {
        ipv4_segment(slot, [addr[0], addr[1], addr[2], addr[3]])
    } else {
        ipv6_segment(slot, *addr)
    }
}

/// The decision on a new inbound flow from a remote source of segment `src` to the local
/// segment `dst`, the one both ingress layers (XDP and the per-socket layer) make: a
/// source a failsafe covers on that port and protocol is allowed for reason `failsafe`
/// (fail closed does not close it), else the rules decide ([`flow`]). An IPv4-mapped
/// source is looked up among the IPv4 failsafes, as [`ipv6_segment`] classifies it.
///
/// Failsafe numbers start at 1, so 0 means "no failsafe matched" (a sentinel rather than
/// an `Option`, for the reason given at [`listener_segment`]).
#[inline(always)]
pub fn inbound<const B: bool>(slot: &Slot<B>, new_flow: &Flow, src: u32, dst: u32) -> Decision {
    let addr = &new_flow.src_addr;
    let mapped = new_flow.family != family::INET
        && addr[..10] == [0; 10]
        && addr[10] == 0xff
        && addr[11] == 0xff;
    let failsafe = if new_flow.family == family::INET || mapped {
        let at = if mapped { 12 } else { 0 };
        let ip4 = [addr[at], addr[at + 1], addr[at + 2], addr[at + 3]];
        let key = Key::new(
            FAILSAFE_KEY_FIXED_BITS + 32,
            FailsafeKey::new(new_flow.protocol, new_flow.dst_port, ip4),
        );
        slot.failsafes_v4().get(&key).copied().unwrap_or(0)
    } else {
        let key = Key::new(
            FAILSAFE_KEY_FIXED_BITS + 128,
            FailsafeKey::new(new_flow.protocol, new_flow.dst_port, *addr),
        );
        slot.failsafes_v6().get(&key).copied().unwrap_or(0)
    };
    if failsafe != 0 {
        return Decision {
            verdict: Verdict::Allow,
            reason: Reason::Failsafe,
            rule_id: failsafe,
        };
    }
    flow(slot, src, dst, new_flow.protocol, new_flow.dst_port)
}

/// The decision for a flow between two segments: at most four rule-trie lookups, whatever
/// the number of rules; those the generation has no rules for are skipped.
///
/// Verifier note: the lookups are an explicit loop, not `array::map` with a closure. A
/// closure LLVM chose not to inline returned its `Option<RuleValue>` in two registers,
/// and the caller then read R5, which a BPF call clobbers; the verifier refuses that.
#[inline(always)]
pub fn flow<const B: bool>(slot: &Slot<B>, src: u32, dst: u32, proto: u8, port: u16) -> Decision {
    if src == SEGMENT_UNCLASSIFIED || dst == SEGMENT_UNCLASSIFIED {
        return unclassified(slot);
    }
    let lookups = rule_lookups(src, dst);
    let wanted = slot.policy().get(0).map_or(0, |config| config.rule_lookups);
    let mut found = [NO_RULE; 4];
    let mut i = 0;
    while i < lookups.len() {
        let (s, d) = lookups[i];
        if wanted & lookup_bit(s, d) != 0 {
            let key = Key::new(RULE_KEY_FIXED_BITS + 16, RuleKey::new(s, d, proto, port));
            found[i] = slot.rules().get(&key).copied().unwrap_or(NO_RULE);
        }
        i += 1;
    }
    let flags = |id: u32| slot.segments().get(id).map_or(0, |info| info.flags);
    unless_fail_closed(decide(best_rule(found), flags(src), flags(dst)))
}

/// The policy's verdict for a flow with an unclassified end, reason `unclassified`.
#[inline(always)]
pub fn unclassified<const B: bool>(slot: &Slot<B>) -> Decision {
    let allow = slot
        .policy()
        .get(0)
        .is_some_and(|config| config.unclassified_action == ACTION_ALLOW);
    unless_fail_closed(Decision {
        verdict: if allow { Verdict::Allow } else { Verdict::Deny },
        reason: Reason::Unclassified,
        rule_id: 0,
    })
}

/// The decision on something a process of segment `src` may do only with a grant, or
/// never: allowed when the segment has the `grant` flag (`SEGMENT_FLAG_*`; 0 for what no
/// grant allows), `audit` when it is in audit mode, else denied for `reason`. An
/// unclassified process gets the policy's unclassified verdict. Processes in no segment
/// (`host`) are not governed: callers let them through without asking.
#[inline(always)]
pub fn containment<const B: bool>(
    slot: &Slot<B>,
    src: u32,
    reason: Reason,
    grant: u32,
) -> Decision {
    if src == SEGMENT_UNCLASSIFIED {
        return unclassified(slot);
    }
    let flags = slot.segments().get(src).map_or(0, |info| info.flags);
    let verdict = if flags & grant != 0 {
        Verdict::Allow
    } else if flags & SEGMENT_FLAG_AUDIT != 0 {
        Verdict::Audit
    } else {
        Verdict::Deny
    };
    unless_fail_closed(Decision {
        verdict,
        reason,
        rule_id: 0,
    })
}

/// `decision`, or a denial for reason `audit-unavailable` while the agent has switched
/// the host to fail closed (it cannot write audit records). Failsafe access is decided
/// before this and stays open.
#[inline(always)]
pub fn unless_fail_closed(decision: Decision) -> Decision {
    if decision.verdict != Verdict::Deny && maps::host_settings().fail_closed != 0 {
        Decision {
            verdict: Verdict::Deny,
            reason: Reason::AuditUnavailable,
            rule_id: 0,
        }
    } else {
        decision
    }
}

/// What [`listener_segment`] returns for a port no segment serves: the id of `*`, which
/// never classifies a listener.
pub const NO_LISTENER: u32 = SEGMENT_ANY;

/// The segment serving local port `port`/`proto` at `addr` (IPv4 in the first four bytes
/// when `v4`): the segment of the task whose socket the kernel delivers to (learnt at
/// `bind()`: bound to exactly `addr`, else to the unspecified address), classified under
/// this generation's cgroup table, when that is a segment; else the policy's declared
/// listener for the port; else `host` when a process of no segment holds the port;
/// [`NO_LISTENER`] when nothing names a segment. The socket decides before the
/// declaration: a process of another segment that binds a declared port (while its
/// service is down, or on a more specific address) is that other segment, with its own
/// rights, never the declaring segment's. A socket of a process the cgroup table cannot
/// classify yet (a service restarting into a new cgroup) leaves the port to its
/// declaration.
///
/// Verifier notes: the ancestry walk is a constant-bounded loop over the stored levels,
/// deepest first, like [`task_segment`]. The result is a plain `u32` with a sentinel, not
/// an `Option`: LLVM filled the undefined payload of `None` from a register a helper call
/// had clobbered, and the verifier refuses reading it.
#[inline(always)]
pub fn listener_segment<const B: bool>(
    slot: &Slot<B>,
    addr: &[u8; 16],
    v4: bool,
    port: u16,
    proto: u8,
) -> u32 {
    let learnt = learnt_listener(slot, addr, v4, port, proto);
    if learnt != NO_LISTENER && learnt != SEGMENT_HOST && learnt != SEGMENT_UNCLASSIFIED {
        return learnt;
    }
    match declared_listener(slot, port, proto) {
        NO_LISTENER => learnt,
        declared => declared,
    }
}

/// The segment XDP decides a new inbound flow to local port `port`/`proto` at `addr`
/// against: the declared listener when the policy declares the port (one lookup, no
/// binding lookups on the hot path), else [`listener_segment`]. XDP only filters ahead:
/// what it lets through is decided again by the per-socket layer against the socket that
/// really receives it, so a process of another segment on a declared port is held to
/// its own segment's rules there. Sets `declared` when the policy declares the port.
#[inline(always)]
pub fn xdp_listener_segment<const B: bool>(
    slot: &Slot<B>,
    addr: &[u8; 16],
    v4: bool,
    port: u16,
    proto: u8,
    declared: &mut bool,
) -> u32 {
    match declared_listener(slot, port, proto) {
        NO_LISTENER => listener_segment(slot, addr, v4, port, proto),
        segment => {
            *declared = true;
            segment
        }
    }
}

/// The segment of the socket the kernel delivers a flow to `addr`:`port`/`proto` to, as
/// learnt at `bind()` ([`listener_segment`] says which); [`NO_LISTENER`] when no binding
/// was learnt.
#[inline(always)]
fn learnt_listener<const B: bool>(
    slot: &Slot<B>,
    addr: &[u8; 16],
    v4: bool,
    port: u16,
    proto: u8,
) -> u32 {
    // The socket the kernel delivers to: one bound to exactly this address, else one on
    // its family's unspecified address, else (IPv4) a dual-stack one on `::`. A flow to
    // `0.0.0.0`/`::` lands on loopback.
    //
    // Verifier note: the keys are built byte by byte, not compared with or copied from
    // 16-byte constants: LLVM put such constants in a `.rodata.cst16` section, which the
    // loader would have to create as a map of its own.
    let mut exact = local_address_key(addr, v4);
    let ipv4 = exact[..10] == [0; 10] && exact[10] == 0xff && exact[11] == 0xff;
    if exact[12..] == [0; 4] && (ipv4 || exact[..12] == [0; 12]) {
        // `0.0.0.0` is reached as `127.0.0.1`, `::` as `::1`.
        if ipv4 {
            exact[12] = 127;
        }
        exact[15] = 1;
    }
    let mut any = [0u8; 16];
    if ipv4 {
        any[10] = 0xff;
        any[11] = 0xff;
    }
    let learnt = match LEARNT_LISTENERS.get_ptr(&BoundKey::new(exact, port, proto)) {
        Some(learnt) => learnt,
        None => match LEARNT_LISTENERS.get_ptr(&BoundKey::new(any, port, proto)) {
            Some(learnt) => learnt,
            None if ipv4 => match LEARNT_LISTENERS.get_ptr(&BoundKey::new([0; 16], port, proto)) {
                Some(learnt) => learnt,
                None => return NO_LISTENER,
            },
            None => return NO_LISTENER,
        },
    };
    learnt_segment(slot, learnt)
}

/// The segment of the task that made the learnt binding `learnt` points to, classified
/// under this generation's cgroup table; [`NO_LISTENER`] when no level of its ancestry is
/// known.
///
/// Verifier note: a constant-bounded loop over the stored levels, deepest first, like
/// [`task_segment`].
#[inline(always)]
pub fn learnt_segment<const B: bool>(slot: &Slot<B>, learnt: *const LearntListener) -> u32 {
    let mut level = CGROUP_LEVELS;
    let mut unknown_below = false;
    while level > 0 {
        level -= 1;
        // SAFETY: `learnt` comes from a successful map lookup; `level` is below the
        // array's length.
        let id = unsafe { (*learnt).ancestors[level] };
        if id != 0 {
            if let Some(value) = slot.cgroups().get_ptr(&id) {
                // SAFETY: the pointer comes from a successful map lookup.
                return cgroup_segment(unsafe { *value }, unknown_below);
            }
            unknown_below = true;
        }
    }
    NO_LISTENER
}

/// The segment the policy declares as serving local port `port`/`proto`, else
/// [`NO_LISTENER`].
#[inline(always)]
pub fn declared_listener<const B: bool>(slot: &Slot<B>, port: u16, proto: u8) -> u32 {
    match slot.listen().get_ptr(&ListenKey::new(port, proto)) {
        // SAFETY: the pointer comes from a successful map lookup.
        Some(segment) => unsafe { *segment },
        None => NO_LISTENER,
    }
}

/// The segment of the socket that receives `skb` (the per-socket ingress layer): its
/// cgroup's ([`socket_segment`]); for a socket of no segment, the segment the policy
/// declares for the port (a service the cgroup table does not name, identified by its
/// port as everywhere else), else `host`.
#[inline(always)]
pub fn receiver_segment<const B: bool>(
    slot: &Slot<B>,
    skb: *mut __sk_buff,
    port: u16,
    proto: u8,
) -> u32 {
    match socket_segment(slot, skb) {
        SEGMENT_HOST => match declared_listener(slot, port, proto) {
            NO_LISTENER => SEGMENT_HOST,
            declared => declared,
        },
        own => own,
    }
}

/// Whether an address (IPv4 in the first four bytes when `v4`) is this host, whatever
/// the address tries say: loopback (`127.0.0.0/8`, `::1`), the unspecified address
/// (`0.0.0.0`, `::`; a connect to it reaches this host), an address of this host
/// ([`LOCAL_ADDRESSES`]), or one a wider `local` route delivers here ([`LOCAL_PREFIXES`],
/// looked up only when the first table does not know the address; an empty trie answers
/// at once). An IPv4-mapped IPv6 address is judged as its IPv4 address.
#[inline(always)]
pub fn is_local(addr: &[u8; 16], v4: bool) -> bool {
    let mapped = !v4 && addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    let loopback_or_unspecified = if v4 {
        addr[0] == 127 || addr[..4] == [0; 4]
    } else if mapped {
        addr[12] == 127 || addr[12..] == [0; 4]
    } else {
        addr[..15] == [0; 15] && (addr[15] == 1 || addr[15] == 0)
    };
    loopback_or_unspecified
        || match local_address(addr, v4) {
            ADDRESS_LOCAL => true,
            0 => LOCAL_PREFIXES
                .get(&Key::new(128, local_address_key(addr, v4)))
                .is_some(),
            _ => false,
        }
}

/// What [`LOCAL_ADDRESSES`] says of an address: [`ADDRESS_LOCAL`], [`ADDRESS_BROADCAST`],
/// or 0 when it does not hold it.
#[inline(always)]
fn local_address(addr: &[u8; 16], v4: bool) -> u8 {
    match LOCAL_ADDRESSES.get_ptr(&local_address_key(addr, v4)) {
        // SAFETY: the pointer comes from a successful map lookup.
        Some(kind) => unsafe { *kind },
        None => 0,
    }
}

/// The class of a destination that reaches many hosts at once: [`SEGMENT_BROADCAST`] for
/// `255.255.255.255` and the broadcast address of a network this host is on,
/// [`SEGMENT_MULTICAST`] for `224.0.0.0/4` and `ff00::/8` (IPv4-mapped forms judged as
/// IPv4); `None` for any other destination.
#[inline(always)]
pub fn group_destination(addr: &[u8; 16], v4: bool) -> Option<u32> {
    let mapped = !v4 && addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    let first = if mapped { addr[12] } else { addr[0] };
    if v4 || mapped {
        let ip4 = if mapped {
            [addr[12], addr[13], addr[14], addr[15]]
        } else {
            [addr[0], addr[1], addr[2], addr[3]]
        };
        if ip4 == [255; 4] || local_address(addr, v4) == ADDRESS_BROADCAST {
            return Some(SEGMENT_BROADCAST);
        }
        if first & 0xf0 == 0xe0 {
            return Some(SEGMENT_MULTICAST);
        }
    } else if first == 0xff {
        return Some(SEGMENT_MULTICAST);
    }
    None
}
