//! Stateful UDP replies, per socket (DESIGN principle 4): what each UDP socket and each of
//! its peers have exchanged ([`SOCKET_PEERS`], keyed by the socket's cookie and the peer's
//! address and port).
//!
//! - A datagram the socket sends to a peer whose datagram the per-socket ingress layer let
//!   in within [`REPLY_WINDOW_NS`] is the answer: it passes, unrecorded (the inbound
//!   datagram is on record). To anyone else it is a new flow.
//! - A datagram from a peer the socket sent to within the window (its `sendmsg()` was
//!   allowed) is the answer to it, and passes at ingress, unrecorded; after an allowed
//!   datagram to a broadcast or multicast destination, so is one from any host's port
//!   that the datagram went to ([`group_key`]).
//! - A peer allowed in under the active generation passes at ingress after one lookup.
//! - Every window holds only under the generation that opened it: after a new policy is
//!   applied, the next datagram either way is decided anew.

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use enforcer_common::maps::{PeerKey, PeerState, REPLY_WINDOW_NS, local_address_key};

use crate::maps::SOCKET_PEERS;

/// Socket `cookie`'s peer at `addr` (IPv4 in the first four bytes when `v4`):`port`.
#[inline(always)]
pub fn key(cookie: u64, addr: &[u8; 16], v4: bool, port: u16) -> PeerKey {
    PeerKey::new(cookie, local_address_key(addr, v4), port)
}

/// Socket `cookie`'s datagrams to a broadcast or multicast destination on `port`: answers
/// come from whichever hosts heard them, at their own addresses, so they are noted under
/// the all-ones address (a multicast address, never a datagram's source) and the port.
#[inline(always)]
pub fn group_key(cookie: u64, port: u16) -> PeerKey {
    PeerKey::new(cookie, [0xff; 16], port)
}

/// The boot clock, in ns.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Changes the state of `key` in place, or starts it from nothing.
///
/// A known peer is changed through the lookup's pointer, which costs a lookup, not the
/// element allocation of an insert; a full LRU evicts its least recently used peer, whose
/// next datagram is then decided again (fail closed).
#[inline(always)]
fn update(key: &PeerKey, change: impl Fn(&mut PeerState)) {
    if let Some(state) = SOCKET_PEERS.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a successful map lookup.
        change(unsafe { &mut *state });
        return;
    }
    let mut state = PeerState::default();
    change(&mut state);
    let _ = SOCKET_PEERS.insert(key, &state, 0);
}

/// Notes that the peer's datagram to the socket was let in at `now` under `generation`:
/// the socket may answer it until [`REPLY_WINDOW_NS`] later, under that generation.
/// `by_rule` when the generation's rules (or failsafes) allowed it, not when no rule was
/// asked (a local sender, decided at its own `sendmsg()`).
#[inline(always)]
pub fn heard(key: &PeerKey, now: u64, generation: u32, by_rule: bool) {
    update(key, |state| {
        state.heard_until = now + REPLY_WINDOW_NS;
        state.heard_generation = generation;
        if by_rule {
            state.allowed_generation = generation;
        }
    });
}

/// Notes that the socket's datagram to the peer was allowed at `now` under `generation`:
/// the peer's datagrams are answers until [`REPLY_WINDOW_NS`] later, under that
/// generation.
#[inline(always)]
pub fn sent(key: &PeerKey, now: u64, generation: u32) {
    update(key, |state| {
        state.sent_until = now + REPLY_WINDOW_NS;
        state.sent_generation = generation;
    });
}

/// Whether the socket's own datagram to the peer `key` names (or, for a [`group_key`],
/// to a group on that port) was allowed within the window, under `generation`: a
/// datagram from there answers it.
#[inline(always)]
pub fn answers_socket(key: &PeerKey, now: u64, generation: u32) -> bool {
    match SOCKET_PEERS.get_ptr(key) {
        // SAFETY: the pointer comes from a successful map lookup.
        Some(state) => unsafe {
            (*state).sent_until >= now && (*state).sent_generation == generation
        },
        None => false,
    }
}

/// Whether a datagram from the socket to the peer answers one the ingress layer let in
/// within the window, under `generation`.
#[inline(always)]
pub fn answers_peer(key: &PeerKey, now: u64, generation: u32) -> bool {
    match SOCKET_PEERS.get_ptr(key) {
        // SAFETY: the pointer comes from a successful map lookup.
        Some(state) => unsafe {
            (*state).heard_until >= now && (*state).heard_generation == generation
        },
        None => false,
    }
}

/// What the ingress layer does with a datagram from a peer, before any rule is asked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// It answers the socket's own datagram within the window, or comes from a peer
    /// allowed in under the active generation (whose reply window it moves on): it passes.
    Pass,
    /// A new flow: the rules decide.
    Decide,
}

/// Classifies a datagram from the peer `key` names to its socket under `generation`.
#[inline(always)]
pub fn inbound(key: &PeerKey, now: u64, generation: u32) -> Known {
    let Some(state) = SOCKET_PEERS.get_ptr_mut(key) else {
        return Known::Decide;
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let state = unsafe { &mut *state };
    if state.sent_until >= now && state.sent_generation == generation {
        return Known::Pass;
    }
    if state.allowed_generation == generation {
        state.heard_until = now + REPLY_WINDOW_NS;
        state.heard_generation = generation;
        return Known::Pass;
    }
    Known::Decide
}
