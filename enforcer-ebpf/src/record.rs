//! What every decision leaves behind: per-CPU counters by reason and by rule, and a
//! [`FlowEvent`] in the ring buffer unless the audit level skips it or the same flow was
//! recorded within the de-duplication window. A full ring is counted, never silent.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns, bpf_skb_cgroup_id,
    },
};
use enforcer_common::{
    decision::Decision,
    event::{
        FOLD_DESTINATION, FOLD_FLOW, FOLD_NONE, FOLD_SOURCE, FlowEvent, Hook, Reason, Verdict,
    },
    maps::{
        AUDIT_DENY, EVENTS_EMITTED, EVENTS_LOST, EVENTS_SUPPRESSED, FoldKey, FoldState,
        reason_counter_index,
    },
};

use crate::maps::{self, EVENT_STATS, EVENTS, FOLDS, REASON_COUNTS, SCRATCH, Scratch, Slot};

/// The addresses and ports of a flow, as far as the hook knows them.
///
/// 8-byte aligned, so that [`Flow::ipv4`] can write its addresses a word at a time.
#[derive(Clone, Copy)]
#[repr(align(8))]
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

    /// An IPv4 flow from `src` to `dst`, the rest zero (ports and protocol are the
    /// caller's to fill).
    ///
    /// Cost note: each address is written as two volatile 8-byte words (its four bytes,
    /// then zeros). Copying four bytes into a zeroed array became calls to the object's
    /// `memset` for the twelve zeros, a BPF subprogram that stores one byte per loop
    /// turn, on every new flow's packet.
    #[inline(always)]
    pub fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Self {
        let mut flow = Self {
            family: enforcer_common::event::family::INET,
            ..Self::EMPTY
        };
        for (address, bytes) in [(&raw mut flow.src_addr, src), (&raw mut flow.dst_addr, dst)] {
            let words = address.cast::<u64>();
            // SAFETY: `Flow` is 8-byte aligned and both addresses sit at multiples of 8
            // (asserted below), so both words lie inside each 16-byte address.
            unsafe {
                core::ptr::write_volatile(words, u64::from(u32::from_le_bytes(bytes)));
                core::ptr::write_volatile(words.add(1), 0);
            }
        }
        flow
    }
}

const _: () = assert!(
    align_of::<Flow>() == 8
        && core::mem::offset_of!(Flow, src_addr) % 8 == 0
        && core::mem::offset_of!(Flow, dst_addr) % 8 == 0
);

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

/// Zeroes the 16 bytes at `bytes` as two 8-byte stores.
///
/// Cost note: `[0; 16]` became a call to the object's `memset`, a BPF subprogram that
/// stores one byte per loop turn; volatile stores are never merged into one.
#[inline(always)]
fn zero_words(bytes: *mut [u8; 16]) {
    let words = bytes.cast::<u64>();
    // SAFETY: callers pass a field of a map value at an 8-byte aligned offset (the
    // event's `comm`), so both words lie inside it.
    unsafe {
        core::ptr::write_volatile(words, 0);
        core::ptr::write_volatile(words.add(1), 0);
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
    // The event and a new fold's state are made in per-CPU room, one slot per hook: on
    // the stack they pushed the callers past the verifier's 512 bytes. A program is
    // interrupted on its CPU only by softirq work, which runs the ingress hooks (slots of
    // their own) and, for TCP timers, `skb_egress`: a softirq `skb_egress` run over a
    // process-context one overwrites the event being made, and that one attempt is then
    // counted in the other's fold (counts stay whole; its attribution is lost).
    let Some(room) = SCRATCH.get_ptr_mut(u32::from(origin.hook as u8)) else {
        bump(&EVENT_STATS, EVENTS_LOST);
        return;
    };
    // SAFETY: the pointer comes from a successful lookup of this CPU's value.
    let event = unsafe { &mut (*room).event };
    // Field by field: a struct literal is built on the stack first.
    event.timestamp_ns = now;
    // Cost note: volatile, so that LLVM does not merge the two stores of a remote
    // sender's zeros into a call to the object's `memset`, a byte-by-byte loop.
    // SAFETY: both fields are in this CPU's scratch entry, from a successful lookup.
    unsafe {
        core::ptr::write_volatile(&raw mut event.cgroup_id, cgroup_id);
        core::ptr::write_volatile(&raw mut event.pid_tgid, pid_tgid);
    }
    event.generation = origin.generation;
    event.rule_id = decision.rule_id;
    event.src_segment = segments.src;
    event.dst_segment = segments.dst;
    event.ifindex = origin.ifindex;
    event.src_port = flow.src_port;
    event.dst_port = flow.dst_port;
    event.src_addr = flow.src_addr;
    event.dst_addr = flow.dst_addr;
    if origin.sender == Sender::Task {
        event.comm = bpf_get_current_comm().unwrap_or_default();
    } else {
        zero_words(&raw mut event.comm);
    }
    event.hook = origin.hook as u8;
    event.verdict = decision.verdict as u8;
    event.reason = decision.reason as u8;
    event.family = flow.family;
    event.protocol = flow.protocol;
    event.flags = flow.flags;
    event.fold = FOLD_NONE;
    event._pad = 0;
    event.first_ns = now;
    event.count = 1;
    event._tail = 0;
    let settings = maps::host_settings();
    let window = settings.dedup_window_ns;
    if window == 0 {
        write_alone(event);
        return;
    }
    fold(room, window, u64::from(settings.fold_sources));
}

/// Counts the attempt whose event is in `room` into its fold, making the fold if it is
/// new (and writing the event then), or into its destination's fold past `fold_sources`
/// sources within the window. A BPF subprogram, not inlined: inlined at every hook's
/// call sites, its branches multiplied the verifier's states past its limit (the
/// callers' states converge again at the return).
#[inline(never)]
fn fold(room: *mut Scratch, window: u64, fold_sources: u64) {
    // SAFETY: `room` is this CPU's scratch entry, from a successful map lookup.
    let (event, key) = unsafe { (&mut (*room).event, &mut (*room).key) };
    let now = event.timestamp_ns;
    let denied = event.verdict != Verdict::Allow as u8;
    key.cgroup_id = event.cgroup_id;
    key.src_addr = event.src_addr;
    key.dst_addr = event.dst_addr;
    key.tgid = (event.pid_tgid >> 32) as u32;
    key.generation = event.generation;
    key.rule_id = event.rule_id;
    // A denied source folds whatever port it comes from.
    key.src_port = if denied { 0 } else { event.src_port };
    key.dst_port = event.dst_port;
    key.hook = event.hook;
    key.protocol = event.protocol;
    key.verdict = event.verdict;
    key.reason = event.reason;
    key.flags = event.flags;
    key.fold = if denied { FOLD_SOURCE } else { FOLD_FLOW };
    key.family = event.family;
    key._pad = 0;
    if let Some(state) = FOLDS.get_ptr_mut(key) {
        fold_into(state, event, key.fold, window);
        return;
    }
    if denied && fold_sources != 0 {
        // The same key, for the destination: no source address, cgroup or process.
        key.src_addr = [0; 16];
        key.cgroup_id = 0;
        key.tgid = 0;
        key.fold = FOLD_DESTINATION;
        // SAFETY: as above.
        if let Some(state) = destination_fold(key, unsafe { &mut (*room).state }, now) {
            // SAFETY: the pointer comes from a successful map lookup; the counting
            // window's fields are only approximate under concurrent updates.
            unsafe {
                if now.wrapping_sub((*state).window_ns) >= window {
                    (*state).window_ns = now;
                    (*state).sources = 0;
                }
                if (*state).sources >= fold_sources {
                    fold_into(state, event, FOLD_DESTINATION, window);
                    return;
                }
                add(&raw mut (*state).sources, 1);
                // Counting sources is activity: the agent's sweep deletes only idle folds.
                (*state).last_ns = now;
            }
        }
        key.src_addr = event.src_addr;
        key.cgroup_id = event.cgroup_id;
        key.tgid = (event.pid_tgid >> 32) as u32;
        key.fold = FOLD_SOURCE;
    }
    // A new fold; its first attempt is written at once.
    // SAFETY: as above.
    let state = unsafe { &mut (*room).state };
    clear(state);
    state.emitted_ns = now;
    state.last_ns = now;
    state.pid_tgid = event.pid_tgid;
    state.src_segment = event.src_segment;
    state.dst_segment = event.dst_segment;
    state.ifindex = event.ifindex;
    state.src_port = event.src_port;
    state.src_addr = event.src_addr;
    state.comm = event.comm;
    if FOLDS.insert(key, state, u64::from(BPF_NOEXIST)).is_err() {
        // The table is full (or another CPU made the fold this instant): this attempt is
        // an event of its own.
        write_alone(event);
        return;
    }
    event.fold = key.fold;
    if !write(event) {
        // The ring is full: the attempt waits in its fold for the next event or report.
        if let Some(state) = FOLDS.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe {
                (*state).first_ns = now;
                (*state).emitted_ns = 0;
                add(&raw mut (*state).pending, 1);
            }
        }
    }
}

/// The destination fold for `key`, made (empty, its window starting `now`, from `fresh`)
/// if missing.
#[inline(always)]
fn destination_fold(key: &FoldKey, fresh: &mut FoldState, now: u64) -> Option<*mut FoldState> {
    if let Some(state) = FOLDS.get_ptr_mut(key) {
        return Some(state);
    }
    clear(fresh);
    fresh.window_ns = now;
    fresh.last_ns = now;
    // Another CPU may have made it meanwhile; either way it is there now, unless full.
    let _ = FOLDS.insert(key, fresh, u64::from(BPF_NOEXIST));
    FOLDS.get_ptr_mut(key)
}

/// Zeroes every field of `state`, in place (a `FoldState::default()` would be built on
/// the stack first).
#[inline(always)]
fn clear(state: &mut FoldState) {
    state.pending = 0;
    state.emitted_ns = 0;
    state.first_ns = 0;
    state.last_ns = 0;
    state.window_ns = 0;
    state.sources = 0;
    state.pid_tgid = 0;
    state.src_segment = 0;
    state.dst_segment = 0;
    state.ifindex = 0;
    state.src_port = 0;
    state._pad = 0;
    state.src_addr = [0; 16];
    state.comm = [0; 16];
}

/// Counts an attempt (`event`) into the fold at `state`; once the fold's window since its
/// last event has passed, writes an event carrying every pending attempt.
#[inline(always)]
fn fold_into(state: *mut FoldState, event: &mut FlowEvent, fold: u8, window: u64) {
    let now = event.timestamp_ns;
    // SAFETY: `state` comes from a successful map lookup. The latest attempt's details
    // are plain stores: racing attempts leave one of them, which is all a sample needs.
    unsafe {
        add(&raw mut (*state).pending, 1);
        if (*state).first_ns == 0 {
            (*state).first_ns = now;
        }
        (*state).last_ns = now;
        (*state).src_addr = event.src_addr;
        (*state).src_port = event.src_port;
        (*state).pid_tgid = event.pid_tgid;
        (*state).ifindex = event.ifindex;
        if now.wrapping_sub((*state).emitted_ns) < window {
            bump(&EVENT_STATS, EVENTS_SUPPRESSED);
            return;
        }
    }
    event.fold = fold;
    let _ = report(state, event);
}

/// Writes `event` carrying the pending attempts of the fold at `state` (the event's own
/// attempt already counted there); `false` when the ring is full, and the attempts stay
/// pending. Nothing is written when nothing is pending.
#[inline(always)]
pub fn report(state: *mut FoldState, event: &mut FlowEvent) -> bool {
    // SAFETY: `state` comes from a successful map lookup.
    let pending = unsafe { core::ptr::read_volatile(&raw const (*state).pending) };
    if pending == 0 {
        return true;
    }
    let count = pending.min(u64::from(u32::MAX));
    event.count = count as u32;
    // SAFETY: as above.
    event.first_ns = match unsafe { (*state).first_ns } {
        0 => event.timestamp_ns,
        first => first,
    };
    if !write(event) {
        return false;
    }
    // SAFETY: as above. Subtracting what was read, once it is written, keeps attempts
    // counted meanwhile for the next event.
    unsafe {
        add(&raw mut (*state).pending, count.wrapping_neg());
        (*state).first_ns = 0;
        (*state).emitted_ns = event.timestamp_ns;
    }
    true
}

/// Writes `event`, which stands for itself alone; a full ring loses it, counted.
#[inline(always)]
fn write_alone(event: &FlowEvent) {
    if !write(event) {
        bump(&EVENT_STATS, EVENTS_LOST);
    }
}

/// Writes `event` to the ring; `false` when the ring is full. `bpf_ringbuf_output`
/// copies it in the helper: a reserved entry filled from the scratch entry became a
/// byte-by-byte copy loop that the verifier walked on every path (past its limit).
#[inline(always)]
fn write(event: &FlowEvent) -> bool {
    if EVENTS.output(event, 0).is_err() {
        return false;
    }
    bump(&EVENT_STATS, EVENTS_EMITTED);
    true
}

/// Adds `value` to the `u64` at `target` atomically. Written as BPF assembly (`lock +=`,
/// the v1 instruction set's atomic add, whose result cannot be read): `core`'s atomics are
/// not available for the BPF target.
#[inline(always)]
fn add(target: *mut u64, value: u64) {
    // SAFETY: `target` points into a map value, which lives as long as the program runs
    // and is 8-byte aligned (every counted fold field is a u64 at an 8-byte offset).
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({target} + 0) += {value}",
            target = in(reg) target,
            value = in(reg) value,
        );
    }
}

/// What [`report_fold`] did, as the XDP action its program returns.
pub mod reported {
    /// The fold's pending attempts were written as one event (or none were pending).
    pub const DONE: u32 = aya_ebpf::bindings::xdp_action::XDP_PASS;
    /// The ring was full: the attempts stay pending.
    pub const RING_FULL: u32 = aya_ebpf::bindings::xdp_action::XDP_DROP;
    /// No fold has that key, or the packet is not a key.
    pub const NO_FOLD: u32 = aya_ebpf::bindings::xdp_action::XDP_ABORTED;
}

/// Writes the pending attempts of the fold whose [`FoldKey`] is the packet's bytes as one
/// event, for the agent (through `BPF_PROG_TEST_RUN`); returns a [`reported`] code.
#[inline(always)]
pub fn report_fold(ctx: &aya_ebpf::programs::XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + size_of::<FoldKey>() > end {
        return reported::NO_FOLD;
    }
    // SAFETY: the bounds check above covers the key's bytes; the copy is unaligned-safe.
    let key = unsafe { core::ptr::read_unaligned(start as *const FoldKey) };
    let Some(state) = FOLDS.get_ptr_mut(&key) else {
        return reported::NO_FOLD;
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let latest = unsafe { *state };
    let (src_addr, cgroup_id, pid_tgid) = if key.fold == FOLD_DESTINATION {
        (latest.src_addr, 0, 0)
    } else {
        (key.src_addr, key.cgroup_id, latest.pid_tgid)
    };
    let mut event = FlowEvent {
        timestamp_ns: latest.last_ns,
        cgroup_id,
        pid_tgid,
        generation: key.generation,
        rule_id: key.rule_id,
        src_segment: latest.src_segment,
        dst_segment: latest.dst_segment,
        ifindex: latest.ifindex,
        src_port: latest.src_port,
        dst_port: key.dst_port,
        src_addr,
        dst_addr: key.dst_addr,
        comm: latest.comm,
        hook: key.hook,
        verdict: key.verdict,
        reason: key.reason,
        family: key.family,
        protocol: key.protocol,
        flags: key.flags,
        fold: key.fold,
        _pad: 0,
        first_ns: latest.last_ns,
        count: 0,
        _tail: 0,
    };
    if report(state, &mut event) {
        reported::DONE
    } else {
        reported::RING_FULL
    }
}
