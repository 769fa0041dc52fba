//! What every decision leaves behind: per-CPU counters by reason and by rule, and a
//! [`FlowEvent`] in the ring buffer unless the audit level skips it or the same flow was
//! recorded within the de-duplication window. A full ring is counted, never silent.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns, bpf_skb_cgroup_id,
    },
};
use enforcer_common::{
    decision::Decision,
    event::{FlowEvent, Hook, Reason, Verdict},
    maps::{
        AUDIT_DENY, EVENTS_EMITTED, EVENTS_LOST, EVENTS_SUPPRESSED, RecentFlowKey,
        reason_counter_index,
    },
};

use crate::maps::{self, EVENT_STATS, EVENTS, REASON_COUNTS, RECENT_FLOWS, Slot};

/// The addresses and ports of a flow, as far as the hook knows them.
#[derive(Clone, Copy)]
pub struct Flow {
    /// Source address (IPv4 in the first four bytes; zero where the hook has none).
    pub src_addr: [u8; 16],
    /// Destination address.
    pub dst_addr: [u8; 16],
    /// Source port (0 where the hook has none).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Address family (`AF_INET`, `AF_INET6`, or `AF_PACKET` for a packet socket).
    pub family: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// `FLOW_FLAG_*` bits for the record.
    pub flags: u8,
}

impl Flow {
    /// A flow nothing is known about yet.
    pub const EMPTY: Self = Self {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        family: 0,
        protocol: 0,
        flags: 0,
    };
}

/// Where a decision was made.
pub struct Origin {
    /// The hook.
    pub hook: Hook,
    /// The generation that decided.
    pub generation: u32,
    /// The receiving interface (XDP), else 0.
    pub ifindex: u32,
    /// Who the flow comes from, as far as the hook knows.
    pub sender: Sender,
}

impl Origin {
    /// Where a cgroup skb hook decides a packet of the socket `skb` belongs to: that
    /// socket's cgroup, no process (the hook may run in softirq context), interface
    /// `ifindex` (0 for a packet leaving).
    #[inline(always)]
    pub fn of_socket(hook: Hook, generation: u32, skb: *mut __sk_buff, ifindex: u32) -> Self {
        Self {
            hook,
            generation,
            ifindex,
            sender: Sender::Socket {
                // SAFETY: `skb` is the program's context.
                cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
            },
        }
    }
}

/// Who a decided flow comes from, for the record's cgroup, process and command name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A remote host (XDP ingress): no local cgroup or process.
    Remote,
    /// The calling task: the hook runs in its context.
    Task,
    /// A local socket, created in the cgroup with this id; the hook may run in another
    /// task's context (softirq), so no process is named.
    Socket {
        /// The socket's cgroup id.
        cgroup_id: u64,
    },
}

/// The segments on either side of a decided flow.
pub struct Segments {
    /// Source segment id.
    pub src: u32,
    /// Destination segment id.
    pub dst: u32,
}

/// Adds one to a per-CPU `u64` counter.
#[inline(always)]
fn bump(counters: &aya_ebpf::maps::PerCpuArray<u64>, index: u32) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup of this CPU's value; a
        // program runs with migration disabled, so no other writer shares it.
        unsafe { *counter += 1 };
    }
}

/// Counts `decision` and, unless the audit level or the de-duplication window says
/// otherwise, writes its event.
#[inline(always)]
pub fn record<const B: bool>(
    slot: &Slot<B>,
    origin: &Origin,
    flow: &Flow,
    segments: &Segments,
    decision: &Decision,
) {
    bump(
        &REASON_COUNTS,
        reason_counter_index(decision.reason, decision.verdict),
    );
    if decision.reason == Reason::Rule
        && let Some(counters) = slot.rule_counters().get_ptr_mut(decision.rule_id)
    {
        // SAFETY: as in `bump`.
        unsafe {
            match decision.verdict {
                Verdict::Allow => (*counters).allow += 1,
                Verdict::Deny => (*counters).deny += 1,
                Verdict::Audit => (*counters).audit += 1,
            }
        }
    }
    let audit_level = slot.policy().get(0).map_or(0, |config| config.audit_level);
    if audit_level == AUDIT_DENY && decision.verdict == Verdict::Allow {
        return;
    }

    // SAFETY: helpers without memory arguments; the task ones are only called for
    // hooks that run in the calling task's context.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let (cgroup_id, pid_tgid) = match origin.sender {
        Sender::Remote => (0, 0),
        // SAFETY: as above.
        Sender::Task => unsafe { (bpf_get_current_cgroup_id(), bpf_get_current_pid_tgid()) },
        Sender::Socket { cgroup_id } => (cgroup_id, 0),
    };
    let key = RecentFlowKey {
        cgroup_id,
        src_addr: flow.src_addr,
        dst_addr: flow.dst_addr,
        tgid: (pid_tgid >> 32) as u32,
        generation: origin.generation,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        hook: origin.hook as u8,
        protocol: flow.protocol,
        verdict: decision.verdict as u8,
        flags: flow.flags,
    };
    let window = maps::host_settings().dedup_window_ns;
    if window != 0
        && let Some(last) = RECENT_FLOWS.get_ptr(&key)
        // SAFETY: the pointer comes from a successful map lookup.
        && now.wrapping_sub(unsafe { *last }) < window
    {
        bump(&EVENT_STATS, EVENTS_SUPPRESSED);
        return;
    }

    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        bump(&EVENT_STATS, EVENTS_LOST);
        return;
    };
    let comm = if origin.sender == Sender::Task {
        bpf_get_current_comm().unwrap_or_default()
    } else {
        [0; 16]
    };
    entry.write(FlowEvent {
        timestamp_ns: now,
        cgroup_id,
        pid_tgid,
        generation: origin.generation,
        rule_id: decision.rule_id,
        src_segment: segments.src,
        dst_segment: segments.dst,
        ifindex: origin.ifindex,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        src_addr: flow.src_addr,
        dst_addr: flow.dst_addr,
        comm,
        hook: origin.hook as u8,
        verdict: decision.verdict as u8,
        reason: decision.reason as u8,
        family: flow.family,
        protocol: flow.protocol,
        flags: flow.flags,
        _pad: [0; 2],
    });
    entry.submit(0);
    bump(&EVENT_STATS, EVENTS_EMITTED);
    if window != 0 {
        // A full LRU evicts its oldest entry; a failed insert only means the next
        // duplicate is written rather than suppressed.
        let _ = RECENT_FLOWS.insert(&key, &now, 0);
    }
}
