//! XDP's verdict cache: the decision on a new inbound flow, kept per CPU by source
//! address, port, protocol and generation, so that a source that keeps sending to one
//! port (a scan's retries, a SYN flood from real addresses, a UDP client) is decided by
//! one array lookup instead of the declared-listener, source-CIDR, failsafe and rule
//! lookups. What is recorded and counted does not change: a hit goes through the same
//! `record` as a miss.
//!
//! What makes an entry right, and what it trusts:
//! - It holds only decisions whose inputs are all maps of one generation: the port's
//!   declared listener (never a binding learnt at `bind()`, which changes without a new
//!   generation), the source's CIDR, the failsafes, the rules, the segments' flags and the
//!   policy's settings. The agent never writes those maps of a generation in force (a
//!   generation's cgroup table is, and no cached decision reads it), and generation
//!   numbers are never reused, so an entry of generation `g` is right for as long as `g`
//!   is in force, and never matches afterwards.
//! - The one host-wide input, fail closed, is applied again on every hit (it turns what
//!   the rules allow into a denial), and a denial for reason `audit-unavailable` is not
//!   kept: it lifts when the agent writes audit records again.
//! - The destination address is not part of the key: with a declared listener the
//!   decision does not depend on it (the event still carries the packet's own).
//! - The key is compared whole; the index is only where to look. Sources that share an
//!   index evict each other, which costs the full lookups again and nothing else.
//! - An entry is read and written under a sequence count (odd while it is written): a
//!   reader that an entry's writer interrupted on its CPU, or that interrupted its
//!   writer, sees the count odd or changed and decides the flow in full; a writer that
//!   interrupted another leaves the entry to it.

use core::{
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, compiler_fence},
};

use enforcer_common::{
    decision::Decision,
    event::{Reason, Verdict},
    maps::XDP_VERDICT_BITS,
};

use crate::{
    decide,
    maps::XDP_VERDICTS,
    record::{Flow, Segments},
};

/// The multiplier of the index hash (2^32 divided by the golden ratio).
const GOLDEN: u32 = 0x9e37_79b9;

/// The source address as four words, as the cache keeps it.
///
/// Cost note: compared as words, never as byte arrays. A `[u8; 16]` comparison is a call
/// to the object's `bcmp`, a BPF subprogram that compares one byte per loop turn.
#[inline(always)]
fn source_words(flow: &Flow) -> [u32; 4] {
    let a = &flow.src_addr;
    let word = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// Where in the cache the entry of a flow with source `words` lives: a multiplicative
/// hash of the source address, port and protocol, reduced to [`XDP_VERDICT_BITS`] bits.
#[inline(always)]
fn index(flow: &Flow, words: [u32; 4]) -> u32 {
    let mut hash =
        ((u32::from(flow.dst_port) << 8) | u32::from(flow.protocol)).wrapping_mul(GOLDEN);
    hash = (hash ^ words[0]).wrapping_mul(GOLDEN);
    hash = (hash ^ words[1]).wrapping_mul(GOLDEN);
    hash = (hash ^ words[2]).wrapping_mul(GOLDEN);
    hash = (hash ^ words[3]).wrapping_mul(GOLDEN);
    hash >> (32 - XDP_VERDICT_BITS)
}

/// Fills `decision` and `segments` from the cache when it holds this flow's decision
/// under `generation`, with fail closed applied now; `false` on a miss (nothing written).
///
/// Verifier note: the result comes back through the two references and a `bool`, not an
/// `Option`, for the reason given at `decide::listener_segment`.
#[inline(always)]
pub fn cached(
    generation: u32,
    flow: &Flow,
    decision: &mut Decision,
    segments: &mut Segments,
) -> bool {
    let words = source_words(flow);
    let Some(entry) = XDP_VERDICTS.get_ptr(index(flow, words)) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup of this CPU's entry; its fields
    // are read in place (no torn copy survives the sequence check).
    unsafe {
        let seq = read_volatile(&raw const (*entry).seq);
        compiler_fence(Ordering::SeqCst);
        let matches = seq & 1 == 0
            && (*entry).generation == generation
            && (*entry).dst_port == flow.dst_port
            && (*entry).protocol == flow.protocol
            && (*entry).family == flow.family
            && (*entry).src_addr[0] == words[0]
            && (*entry).src_addr[1] == words[1]
            && (*entry).src_addr[2] == words[2]
            && (*entry).src_addr[3] == words[3];
        if !matches {
            return false;
        }
        let kept = (*entry).decision;
        let (src, dst) = ((*entry).src_segment, (*entry).dst_segment);
        compiler_fence(Ordering::SeqCst);
        if read_volatile(&raw const (*entry).seq) != seq {
            return false;
        }
        *decision = if kept.reason == Reason::Failsafe {
            kept
        } else {
            decide::unless_fail_closed(kept)
        };
        segments.src = src;
        segments.dst = dst;
    }
    true
}

/// Keeps `decision` on `flow` (to a port the policy declares a listener for) under
/// `generation`, replacing whatever shared its index; a denial for reason
/// `audit-unavailable` is not kept.
#[inline(always)]
pub fn remember(generation: u32, flow: &Flow, decision: &Decision, segments: &Segments) {
    if decision.verdict == Verdict::Deny && decision.reason == Reason::AuditUnavailable {
        return;
    }
    let words = source_words(flow);
    let Some(entry) = XDP_VERDICTS.get_ptr_mut(index(flow, words)) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup of this CPU's entry.
    unsafe {
        let seq = read_volatile(&raw const (*entry).seq);
        if seq & 1 != 0 {
            // This run interrupted a write of this entry on its CPU: writing too would
            // leave a mix of both behind an even count. The interrupted write finishes.
            return;
        }
        let seq = seq.wrapping_add(1);
        write_volatile(&raw mut (*entry).seq, seq);
        compiler_fence(Ordering::SeqCst);
        (*entry).generation = generation;
        (*entry).src_addr = words;
        (*entry).dst_port = flow.dst_port;
        (*entry).protocol = flow.protocol;
        (*entry).family = flow.family;
        (*entry).decision = *decision;
        (*entry).src_segment = segments.src;
        (*entry).dst_segment = segments.dst;
        compiler_fence(Ordering::SeqCst);
        write_volatile(&raw mut (*entry).seq, seq.wrapping_add(1));
    }
}
