//! Stateful UDP replies: a segment's UDP server may answer exactly the remote peers whose
//! datagrams to its listener port XDP let in, for [`REPLY_WINDOW_NS`] after the last one
//! (DESIGN principle 4). A datagram from a listener port to anyone else is a new flow,
//! decided and recorded like any other.

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use enforcer_common::maps::{REPLY_WINDOW_NS, ReplyKey, local_address_key};

use crate::maps::REPLY_PEERS;

/// Lets the listener on `local_port` answer `peer_addr:peer_port` (IPv4 in the first four
/// address bytes when `v4`) from now until [`REPLY_WINDOW_NS`] later.
#[inline(always)]
pub fn allow(peer_addr: &[u8; 16], v4: bool, peer_port: u16, local_port: u16, proto: u8) {
    let key = ReplyKey::new(
        local_address_key(peer_addr, v4),
        peer_port,
        local_port,
        proto,
    );
    // SAFETY: a helper without arguments.
    let until = unsafe { bpf_ktime_get_boot_ns() } + REPLY_WINDOW_NS;
    // Every datagram of a stream comes here: a known peer's deadline is moved in place,
    // which costs a lookup, not the element allocation of an insert.
    if let Some(deadline) = REPLY_PEERS.get_ptr_mut(&key) {
        // SAFETY: the pointer comes from a successful map lookup.
        unsafe { *deadline = until };
        return;
    }
    // A full LRU evicts its least recently used peer, whose replies are then decided as
    // new flows (fail closed).
    let _ = REPLY_PEERS.insert(&key, &until, 0);
}

/// Whether a datagram from local port `local_port` to `peer_addr:peer_port` answers a
/// peer XDP let in within the window.
#[inline(always)]
pub fn answers(peer_addr: &[u8; 16], v4: bool, peer_port: u16, local_port: u16, proto: u8) -> bool {
    let key = ReplyKey::new(
        local_address_key(peer_addr, v4),
        peer_port,
        local_port,
        proto,
    );
    let Some(until) = REPLY_PEERS.get_ptr(&key) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let until = unsafe { *until };
    // SAFETY: a helper without arguments.
    until >= unsafe { bpf_ktime_get_boot_ns() }
}
