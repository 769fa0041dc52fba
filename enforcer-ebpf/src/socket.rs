//! The per-socket ingress layer (cgroup skb ingress): every new inbound flow is decided
//! when the kernel is about to queue it on the socket that will receive it, after
//! reassembly and decapsulation, whatever interface or tunnel it came through. The
//! destination segment is that socket's (its cgroup's); only a socket of no segment is
//! classified by the port the policy declares ([`decide::receiver_segment`]).
//!
//! What is decided, by the receiving socket:
//! - a TCP listener: every packet (the SYN, and the ACK that completes a handshake, SYN
//!   cookies included); the SYN is recorded, a later handshake packet only when denied.
//!   Sockets of established connections are never asked: their connection was decided at
//!   its SYN (or at the local `connect()`), so their packets cost two loads and a helper.
//! - an unconnected UDP (or UDP-Lite) socket: each datagram, by its peer ([`peers`]): an
//!   answer to the socket's own datagram, or a peer allowed in under the active
//!   generation, passes after one lookup; anything else is a new flow. A connected UDP
//!   socket receives only from the peer its `connect()` was allowed to reach, and is not
//!   asked.
//! - other sockets (raw and ping sockets: ICMP requests are decided at XDP and as they
//!   leave, at `skb_egress`): not asked.
//!
//! A packet that arrived on loopback comes from a local socket whose `connect()` or
//! `sendmsg()` was decided against this socket's segment already (the sender is no longer
//! known here: loopback orphans the packet); it is not decided again, but a UDP socket may
//! answer it ([`peers::heard`]).

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    helpers::{bpf_get_socket_cookie, bpf_sk_fullsock},
    programs::SkBuffContext,
};
use enforcer_common::{
    decision::Decision,
    event::{Hook, Reason, Verdict, family},
    maps::{PROTO_TCP, PROTO_UDP, SEGMENT_ANY},
};

use crate::{
    decide,
    headers::{self, Chain, ETH_P_IP, ETH_P_IPV6},
    maps::{self, Slot, in_slot},
    peers::{self, Known},
    record::{Flow, Origin, Segments, record},
};

/// cgroup skb programs return 1 to let the packet through ...
const PASS: i32 = 1;
/// ... and 0 to drop it.
const DROP: i32 = 0;

/// `IPPROTO_UDPLITE`: datagram sockets like UDP's (same header layout), which no rule
/// names, so a new flow to one is denied by default rather than waved through.
const PROTO_UDPLITE: u8 = 136;
/// `TCP_ESTABLISHED` in `sk_state`: for a UDP socket, connected.
const TCP_ESTABLISHED: u32 = 1;
/// `TCP_LISTEN` in `sk_state`.
const TCP_LISTEN: u32 = 10;
/// `LOOPBACK_IFINDEX`: loopback's interface index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// The TCP flags byte's offset in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;
/// `SYN` in the TCP flags.
const TCP_SYN: u8 = 0x02;
/// `ACK` in the TCP flags.
const TCP_ACK: u8 = 0x10;

/// Which receiving socket a packet is for, as far as this layer asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// A TCP socket in `LISTEN`.
    Listener,
    /// An unconnected UDP socket.
    Datagram,
}

/// Decides a packet about to be queued on a socket of the attached cgroup subtree.
#[inline(always)]
pub fn ingress(ctx: &SkBuffContext) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the program's context; the kernel points `sk` at the receiving
    // socket for the run (the verifier still wants it checked for null).
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: `sk` is the context's socket, checked above.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return PASS;
    }
    // SAFETY: `full` is a full socket the helper returned, checked above.
    let (protocol, state) = unsafe { ((*full).protocol, (*full).state) };
    let receiver = match protocol as u8 {
        PROTO_TCP if state == TCP_LISTEN => Receiver::Listener,
        PROTO_UDP | PROTO_UDPLITE if state != TCP_ESTABLISHED => Receiver::Datagram,
        _ => return PASS,
    };
    // A handshake from a local client: its `connect()` was decided.
    // SAFETY: `skb` is the program's context.
    if receiver == Receiver::Listener && unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX {
        return PASS;
    }
    match maps::active_generation() {
        0 => PASS,
        generation => in_slot!(generation, |slot| new_flow(ctx, slot, generation, receiver)),
    }
}

/// Decides a packet for `receiver` under generation `generation` (slot `B`).
#[inline(always)]
fn new_flow<const B: bool>(
    ctx: &SkBuffContext,
    slot: &Slot<B>,
    generation: u32,
    receiver: Receiver,
) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let mut flow = Flow::EMPTY;
    let mut flags = 0;
    if !parse(ctx, &mut flow, &mut flags) {
        let decision = Decision {
            verdict: Verdict::Deny,
            reason: Reason::Malformed,
            rule_id: 0,
        };
        let segments = Segments {
            src: SEGMENT_ANY,
            dst: decide::socket_segment(slot, skb),
        };
        record(slot, &origin(skb, generation), &flow, &segments, &decision);
        return DROP;
    }
    let v4 = flow.family == family::INET;
    // SAFETY: `skb` is the program's context; the cookie is the receiving socket's.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    let peer = peers::key(cookie, &flow.src_addr, v4, flow.src_port);
    let now = peers::now();
    let mut group_answer = false;
    if receiver == Receiver::Datagram {
        // SAFETY: `skb` is the program's context.
        if unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX {
            peers::heard(&peer, now, generation, false);
            return PASS;
        }
        if peers::inbound(&peer, now, generation) == Known::Pass {
            return PASS;
        }
        group_answer =
            peers::answers_socket(&peers::group_key(cookie, flow.src_port), now, generation);
    }
    let segments = Segments {
        src: decide::address_segment(slot, &flow.src_addr, v4),
        dst: decide::receiver_segment(slot, skb, flow.dst_port, flow.protocol),
    };
    let decision = decide::inbound(slot, &flow, segments.src, segments.dst);
    // An answer to the socket's broadcast or multicast query, from whichever host heard
    // it, passes unrecorded (the query is on record), unless a deny rule names its sender:
    // a query opens the socket to the hosts that answer, not to those the policy refuses.
    let explicit_deny = decision.reason == Reason::Rule && decision.verdict != Verdict::Allow;
    if group_answer && !explicit_deny {
        return PASS;
    }
    let syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    if receiver == Receiver::Datagram || syn || decision.verdict == Verdict::Deny {
        record(slot, &origin(skb, generation), &flow, &segments, &decision);
    }
    if decision.verdict == Verdict::Deny {
        return DROP;
    }
    if receiver == Receiver::Datagram {
        peers::heard(&peer, now, generation, true);
    }
    PASS
}

/// Where this layer decides: the interface the packet came in on (the tunnel device for
/// decapsulated traffic) and the receiving socket's cgroup; no process is known here.
#[inline(always)]
fn origin(skb: *mut __sk_buff, generation: u32) -> Origin {
    // SAFETY: `skb` is the program's context.
    let ifindex = unsafe { (*skb).ifindex };
    Origin::of_socket(Hook::SkbIngress, generation, skb, ifindex)
}

/// Reads the addresses, protocol and ports of the packet into `flow`, and the TCP flags
/// into `flags`; `false` when its headers cannot be read (an IPv6 extension-header chain
/// longer than the bound, or a header cut short).
#[inline(always)]
fn parse(ctx: &SkBuffContext, flow: &mut Flow, flags: &mut u8) -> bool {
    let transport = match headers::network_protocol(ctx) {
        ETH_P_IP => {
            let Ok(ip) = ctx.load::<[u8; 20]>(0) else {
                return false;
            };
            flow.family = family::INET;
            flow.protocol = ip[9];
            flow.src_addr[..4].copy_from_slice(&ip[12..16]);
            flow.dst_addr[..4].copy_from_slice(&ip[16..20]);
            usize::from(ip[0] & 0x0f) * 4
        }
        ETH_P_IPV6 => {
            let Ok(addresses) = ctx.load::<[u8; 32]>(8) else {
                return false;
            };
            let mut chain = Chain::new();
            if !headers::ipv6_chain(ctx, &mut chain) {
                return false;
            }
            flow.family = family::INET6;
            flow.protocol = chain.next;
            flow.src_addr.copy_from_slice(&addresses[..16]);
            flow.dst_addr.copy_from_slice(&addresses[16..]);
            chain.offset
        }
        _ => return false,
    };
    let Ok(ports) = ctx.load::<[u8; 4]>(transport) else {
        return false;
    };
    flow.src_port = u16::from_be_bytes([ports[0], ports[1]]);
    flow.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    if flow.protocol == PROTO_TCP {
        let Ok(tcp_flags) = ctx.load::<u8>(transport + TCP_FLAGS_OFFSET) else {
            return false;
        };
        *flags = tcp_flags;
    }
    true
}
