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
//! - a ping socket (ICMP or ICMPv6 `SOCK_DGRAM`): each echo reply, by its sender. The
//!   kernel hands a ping socket any echo reply that carries its identifier, from any
//!   host, asked or not; one from a host the socket's own echo request went to within
//!   the reply window (its request was allowed as it left, at `skb_egress`) passes, any
//!   other is a new flow the rules decide, the reply's type in place of the port.
//! - other sockets (raw sockets, which a segment holds only with `raw_sockets`): not
//!   asked.
//!
//! A packet that arrived on loopback comes from a local socket whose `connect()` or
//! `sendmsg()` was decided against the socket that then listened there. That may not be
//! this socket: a connected UDP socket keeps sending, and a SYN is retransmitted, after
//! the socket it was decided against closed and another segment's bound the port. So a
//! SYN to a listener, and a datagram from a peer the socket has not heard under the
//! active generation, are decided again here, the sender found by a socket lookup of the
//! packet's addresses and ports seen from its side ([`loopback_sender`]); a denial is
//! dropped and recorded, an allowed flow passes unrecorded (its `connect()` or
//! `sendmsg()` is on record). A packet from a process in no segment, or an unclassified
//! one, passes: it may be outside the attached subtree, ungoverned. A packet no socket
//! sent (a packet socket's or a raw socket's forgery; a datagram whose sender closed
//! before it was delivered) is decided here and recorded, allowed or not: from an address
//! that is not this host's, as a remote flow from that address; from a local one, as from
//! an unclassified process ([`local_flow`]). A UDP socket may answer what it let in
//! ([`peers::heard`]).

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS},
    helpers::{
        bpf_get_socket_cookie, bpf_sk_fullsock, bpf_sk_lookup_tcp, bpf_sk_lookup_udp,
        bpf_sk_release,
    },
    programs::SkBuffContext,
};
use enforcer_common::{
    decision::Decision,
    event::{FLOW_FLAG_ON_THIS_HOST, Hook, Reason, Verdict, family},
    maps::{
        PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PeerKey, SEGMENT_ANY, SEGMENT_HOST,
        SEGMENT_UNCLASSIFIED,
    },
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
/// `TCP_SYN_SENT` in `sk_state`: a TCP socket whose `connect()` sent its SYN.
const TCP_SYN_SENT: u32 = 2;
/// `TCP_LISTEN` in `sk_state`.
const TCP_LISTEN: u32 = 10;
/// `LOOPBACK_IFINDEX`: loopback's interface index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// `SOCK_DGRAM` in `type`: with an ICMP protocol, a ping socket.
const SOCK_DGRAM: u32 = 2;
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
    /// A ping socket.
    Ping,
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
    let (protocol, state, kind) = unsafe { ((*full).protocol, (*full).state, (*full).type_) };
    let receiver = match protocol as u8 {
        PROTO_TCP if state == TCP_LISTEN => Receiver::Listener,
        PROTO_UDP | PROTO_UDPLITE if state != TCP_ESTABLISHED => Receiver::Datagram,
        PROTO_ICMP | PROTO_ICMPV6 if kind == SOCK_DGRAM => Receiver::Ping,
        _ => return PASS,
    };
    // An echo reply over loopback: this host answered the request decided as it left.
    // SAFETY: `skb` is the program's context.
    if receiver == Receiver::Ping && unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX {
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
    if receiver == Receiver::Ping {
        return echo_reply(ctx, slot, generation, &flow, &peer, now);
    }
    // SAFETY: `skb` is the program's context.
    if unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX {
        let verdict = local_flow(ctx, slot, generation, receiver, &flow, flags, &peer);
        if verdict != AS_REMOTE {
            return verdict;
        }
    }
    let mut group_answer = false;
    if receiver == Receiver::Datagram {
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

/// What [`local_flow`] answers for a packet no local socket sent, from an address that is
/// not this host's: decide it as a remote flow. Neither [`PASS`] nor [`DROP`], and never
/// a verdict of the program: [`new_flow`] goes on to its remote decision on it.
///
/// Verifier note: `local_flow` is inlined, so the verifier sees each of its answers as
/// the constant it is, and the program still exits with 0 or 1 only (a BPF-to-BPF call
/// would return a value it cannot bound: see `skb_egress` in main.rs).
const AS_REMOTE: i32 = 2;

/// Decides a packet `flow` (with TCP flags `flags`) that came over loopback for
/// `receiver`, from the peer `peer` names, as the module's documentation says; or
/// answers [`AS_REMOTE`].
///
/// A sender in no segment (perhaps outside the attached subtree, where no hook decided it
/// and none governs it; there, a cgroup above a listed one reads as unclassified) is not
/// decided here. A packet no socket sent (none found: a packet socket's, a raw socket's,
/// or one whose sender has just closed) has no `connect()` or `sendmsg()` on record, so it
/// is decided here and recorded whatever the verdict: from an address that is not this
/// host's ([`decide::is_local`]), no local socket could have sent it through the IP stack
/// without holding that address (a transparent or free-bound socket is found by the
/// lookup), so it is decided as a remote flow ([`AS_REMOTE`]); from a local address
/// (loopback, an address of this host), it comes from a process of this host that cannot
/// be named, which is what an unclassified end is: the policy's `unclassified` verdict.
#[inline(always)]
fn local_flow<const B: bool>(
    ctx: &SkBuffContext,
    slot: &Slot<B>,
    generation: u32,
    receiver: Receiver,
    flow: &Flow,
    flags: u8,
    peer: &PeerKey,
) -> i32 {
    let syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    let now = peers::now();
    match receiver {
        // The rest of a handshake whose SYN was decided.
        Receiver::Listener if !syn => return PASS,
        Receiver::Datagram if peers::inbound(peer, now, generation) == Known::Pass => {
            return PASS;
        }
        _ => {}
    }
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let sender = loopback_sender(ctx, slot, flow);
    let src = match sender {
        NO_SENDER if !decide::is_local(&flow.src_addr, flow.family == family::INET) => {
            return AS_REMOTE;
        }
        NO_SENDER => SEGMENT_UNCLASSIFIED,
        SEGMENT_HOST | SEGMENT_UNCLASSIFIED => {
            if receiver == Receiver::Datagram {
                peers::heard(peer, now, generation, false);
            }
            return PASS;
        }
        src => src,
    };
    let dst = decide::receiver_segment(slot, skb, flow.dst_port, flow.protocol);
    let decision = decide::flow(slot, src, dst, flow.protocol, flow.dst_port);
    if decision.verdict == Verdict::Deny || sender == NO_SENDER {
        let mut flow = *flow;
        flow.flags |= FLOW_FLAG_ON_THIS_HOST;
        record(
            slot,
            &origin(skb, generation),
            &flow,
            &Segments { src, dst },
            &decision,
        );
    }
    if decision.verdict == Verdict::Deny {
        return DROP;
    }
    if receiver == Receiver::Datagram {
        peers::heard(peer, now, generation, true);
    }
    PASS
}

/// What [`loopback_sender`] returns when no local socket sent the packet: the id of `*`,
/// which never classifies a socket.
const NO_SENDER: u32 = SEGMENT_ANY;

/// The segment of the local socket that sent `flow` over loopback: the socket whose own
/// address and port are the packet's source and whose peer (or none, for an unconnected
/// UDP socket) its destination, looked up as the kernel would deliver the packet back
/// ([`decide::sock_segment`]); [`NO_SENDER`] when no socket holds them (any more). A TCP
/// sender is a socket in `SYN_SENT` (only `connect()` sends a SYN): the lookup falls back
/// to a listener on the packet's source address and port, which a forger could name.
///
/// Verifier notes: the tuple is a fully initialised stack buffer; its size is one of two
/// constants, one per branch, as the helper's size argument must be. The result is a
/// plain `u32` with a sentinel, not an `Option`, for the reason given at
/// [`decide::listener_segment`].
#[inline(always)]
fn loopback_sender<const B: bool>(ctx: &SkBuffContext, slot: &Slot<B>, flow: &Flow) -> u32 {
    // `bpf_sock_tuple`: the "remote" end first (the sender's peer), then the "local" one
    // (the sender), ports in network order.
    let mut tuple = [0u8; 36];
    let size = if flow.family == family::INET {
        tuple[..4].copy_from_slice(&flow.dst_addr[..4]);
        tuple[4..8].copy_from_slice(&flow.src_addr[..4]);
        tuple[8..10].copy_from_slice(&flow.dst_port.to_be_bytes());
        tuple[10..12].copy_from_slice(&flow.src_port.to_be_bytes());
        12
    } else {
        tuple[..16].copy_from_slice(&flow.dst_addr);
        tuple[16..32].copy_from_slice(&flow.src_addr);
        tuple[32..34].copy_from_slice(&flow.dst_port.to_be_bytes());
        tuple[34..36].copy_from_slice(&flow.src_port.to_be_bytes());
        36
    };
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the context is the program's; the tuple is `size` initialised bytes; a
    // socket returned is released below.
    let sk = unsafe {
        if flow.protocol == PROTO_TCP {
            bpf_sk_lookup_tcp(ctx.as_ptr(), tuple.as_mut_ptr().cast(), size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.as_ptr(), tuple.as_mut_ptr().cast(), size, netns, 0)
        }
    };
    if sk.is_null() {
        return NO_SENDER;
    }
    // SAFETY: `sk` is the full socket the lookup returned, checked above.
    let connecting = flow.protocol != PROTO_TCP || unsafe { (*sk).state } == TCP_SYN_SENT;
    let segment = if connecting {
        decide::sock_segment(slot, sk)
    } else {
        NO_SENDER
    };
    // SAFETY: `sk` is the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    segment
}

/// Decides an echo reply `flow` (its type in place of the destination port, no source
/// port) for a ping socket: an answer to the socket's own request to that host within
/// the window passes unrecorded; any other is decided, recorded, and dropped when denied.
/// The ping sockets of processes in no segment are not governed (as their requests).
#[inline(always)]
fn echo_reply<const B: bool>(
    ctx: &SkBuffContext,
    slot: &Slot<B>,
    generation: u32,
    flow: &Flow,
    peer: &PeerKey,
    now: u64,
) -> i32 {
    if peers::answers_socket(peer, now, generation) {
        return PASS;
    }
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let dst = decide::socket_segment(slot, skb);
    if dst == SEGMENT_HOST {
        return PASS;
    }
    let segments = Segments {
        src: decide::address_segment(slot, &flow.src_addr, flow.family == family::INET),
        dst,
    };
    let decision = decide::inbound(slot, flow, segments.src, segments.dst);
    record(slot, &origin(skb, generation), flow, &segments, &decision);
    if decision.verdict == Verdict::Deny {
        DROP
    } else {
        PASS
    }
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
    if flow.protocol == PROTO_ICMP || flow.protocol == PROTO_ICMPV6 {
        // The message type takes the port's place, as in the rules.
        flow.dst_port = u16::from(ports[0]);
        return true;
    }
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
