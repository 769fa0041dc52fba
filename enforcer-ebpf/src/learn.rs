//! Listener learning at `bind()`: which task's cgroup serves a local port. The ancestry
//! is stored, not a segment, so every later generation classifies the binding with its
//! own cgroup table.

use aya_ebpf::{helpers::bpf_get_current_ancestor_cgroup_id, programs::SockContext};
use enforcer_common::maps::{CGROUP_LEVELS, LearntListener, ListenKey, PROTO_UDP};

use crate::maps::{self, LEARNT_LISTENERS};

/// Records the port `ctx`'s socket was just bound to, with the calling task's cgroup
/// ancestry. UDP ports in the host's ephemeral range are skipped: they belong to clients,
/// whose replies must not be decided as new inbound flows.
///
/// Verifier note: `src_port` and `protocol` are read with 4-byte loads; `src_port` is in
/// host byte order.
#[inline(always)]
pub fn listener(ctx: &SockContext) {
    // SAFETY: the context pointer is valid for the whole run of the program.
    let (port, proto) = unsafe { ((*ctx.sock).src_port, (*ctx.sock).protocol) };
    let (port, proto) = (port as u16, proto as u8);
    if port == 0 {
        return;
    }
    let settings = maps::host_settings();
    if proto == PROTO_UDP && settings.ephemeral_low <= port && port <= settings.ephemeral_high {
        return;
    }
    let mut learnt = LearntListener {
        ancestors: [0; CGROUP_LEVELS],
    };
    let mut level = 0;
    while level < CGROUP_LEVELS {
        // SAFETY: a helper without memory arguments; allowed in cgroup sock hooks.
        learnt.ancestors[level] = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        level += 1;
    }
    // A full LRU evicts its least recently used binding; a failed insert leaves the port
    // classified as `host`, as if it had not been learnt.
    let _ = LEARNT_LISTENERS.insert(&ListenKey::new(port, proto), &learnt, 0);
}
