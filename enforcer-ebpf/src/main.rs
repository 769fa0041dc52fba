//! The enforcer kernel programs: one per hook described in `docs/datapath.md`.
//!
//! Decided: new inbound flows at XDP ingress, outbound `connect()` and unconnected
//! `sendmsg()` from local processes (IPv4 and IPv6), by the two ends' segments and the
//! rules of the active generation; raw, packet and ping sockets at `socket()`. `post_bind`
//! learns which segment listens on a port. Every decision is counted and recorded
//! (module `record`). Before the first policy is applied (generation 0) every hook lets
//! everything through: the agent applies a policy before it attaches anything.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "aya-ebpf's program macros emit undocumented `extern \"C\"` wrappers"
)]

mod decide;
mod learn;
mod maps;
mod record;
mod xdp;

use maps::{Slot, in_slot};
use record::{Flow, Origin, Segments, record};

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_sock, cgroup_sock_addr, xdp},
    programs::{SockAddrContext, SockContext, XdpContext},
};
use enforcer_common::{
    decision::Decision,
    event::{Hook, Reason, Verdict, family},
    maps::{
        SEGMENT_ANY, SEGMENT_FLAG_AUDIT, SEGMENT_FLAG_RAW_SOCKETS, SEGMENT_HOST,
        SEGMENT_UNCLASSIFIED,
    },
};

/// cgroup sock and sock_addr programs return 1 to let the call proceed.
const CGROUP_ALLOW: i32 = 1;
/// ... and 0 to refuse it: the caller sees EPERM.
const CGROUP_DENY: i32 = 0;

/// `SOCK_DGRAM` from the socket(2) types.
const SOCK_DGRAM: u32 = 2;
/// `SOCK_RAW` from the socket(2) types.
const SOCK_RAW: u32 = 3;
/// `AF_INET`.
const AF_INET: u32 = 2;
/// `AF_INET6`.
const AF_INET6: u32 = 10;
/// `AF_PACKET`: link-layer sockets.
const AF_PACKET: u32 = 17;
/// `IPPROTO_ICMP`.
const IPPROTO_ICMP: u32 = 1;
/// `IPPROTO_ICMPV6`.
const IPPROTO_ICMPV6: u32 = 58;

/// XDP ingress on the host's interfaces.
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    match maps::active_generation() {
        0 => xdp_action::XDP_PASS,
        generation => in_slot!(generation, |slot| xdp_in_slot(&ctx, slot, generation)),
    }
}

/// XDP ingress under generation `generation`, which lives in slot `B`; a malformed frame
/// is dropped, counted and recorded.
#[inline(always)]
fn xdp_in_slot<const B: bool>(ctx: &XdpContext, slot: &Slot<B>, generation: u32) -> u32 {
    let origin = Origin {
        hook: Hook::XdpIngress,
        generation,
        // SAFETY: the context pointer is valid for the whole run of the program.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
    };
    match xdp::ingress(ctx, slot, &origin) {
        Ok(action) => action,
        Err(xdp::Malformed) => {
            let decision = Decision {
                verdict: Verdict::Deny,
                reason: Reason::Malformed,
                rule_id: 0,
            };
            let segments = Segments {
                src: SEGMENT_ANY,
                dst: SEGMENT_HOST,
            };
            record(slot, &origin, &Flow::EMPTY, &segments, &decision);
            xdp_action::XDP_DROP
        }
    }
}

/// Outbound IPv4 `connect()` from a process in the attached cgroup subtree.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Connect4, family::INET)
}

/// Outbound IPv6 `connect()` from a process in the attached cgroup subtree.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Connect6, family::INET6)
}

/// Outbound IPv4 `sendmsg()`/`sendto()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Sendmsg4, family::INET)
}

/// Outbound IPv6 `sendmsg()`/`sendto()` on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, Hook::Sendmsg6, family::INET6)
}

/// Allow, or refuse with EPERM; audit-mode denials pass.
#[inline(always)]
fn verdict_to_return(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Deny => CGROUP_DENY,
        Verdict::Allow | Verdict::Audit => CGROUP_ALLOW,
    }
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, hook: Hook, address_family: u8) -> i32 {
    let generation = maps::active_generation();
    if generation == 0 {
        return CGROUP_ALLOW;
    }
    let mut flow = destination(ctx, address_family);
    // SAFETY: the context pointer is valid for the whole run, and `sk` always points to
    // the calling socket (a full socket: `src_port` is readable, in host byte order).
    flow.src_port = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_port } as u16;
    let origin = Origin {
        hook,
        generation,
        ifindex: 0,
    };
    in_slot!(generation, |slot| sock_addr_in_slot(slot, &origin, &flow))
}

/// The destination of a sock_addr call.
///
/// Verifier note: `user_ip4`, each `user_ip6` word, `user_port` and `protocol` are read
/// with full 4-byte loads, the only width the kernel accepts for these context fields;
/// the port is in network byte order in the low 16 bits.
#[inline(always)]
fn destination(ctx: &SockAddrContext, address_family: u8) -> Flow {
    let mut flow = Flow::EMPTY;
    flow.family = address_family;
    // SAFETY: the context pointer is valid for the whole run of the program.
    let (port, proto) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    flow.dst_port = u16::from_be(port as u16);
    flow.protocol = proto as u8;
    if address_family == family::INET {
        // SAFETY: as above; `user_ip4` is in network byte order.
        let addr = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
        flow.dst_addr[..4].copy_from_slice(&addr);
    } else {
        // SAFETY: as above.
        let words = unsafe { (*ctx.sock_addr).user_ip6 };
        let mut i = 0;
        while i < 4 {
            let bytes = words[i].to_ne_bytes();
            flow.dst_addr[i * 4] = bytes[0];
            flow.dst_addr[i * 4 + 1] = bytes[1];
            flow.dst_addr[i * 4 + 2] = bytes[2];
            flow.dst_addr[i * 4 + 3] = bytes[3];
            i += 1;
        }
    }
    flow
}

/// Decides an outbound flow: the task's segment to the destination's (a destination on
/// this host, [`decide::is_local`], is the segment listening on its port, else `host`;
/// an IPv4-mapped IPv6 address is decided as IPv4).
///
/// A datagram a UDP server sends from its listener port is a reply, not a new flow: it
/// passes, unrecorded, when the policy allows the reverse flow (the destination reaching
/// the sender's segment on that port).
#[inline(always)]
fn sock_addr_in_slot<const B: bool>(slot: &Slot<B>, origin: &Origin, flow: &Flow) -> i32 {
    let v4 = flow.family == family::INET;
    let dst = if decide::is_local(&flow.dst_addr, v4) {
        match decide::listener_segment(slot, &flow.dst_addr, v4, flow.dst_port, flow.protocol) {
            decide::NO_LISTENER => SEGMENT_HOST,
            segment => segment,
        }
    } else if v4 {
        let addr = [
            flow.dst_addr[0],
            flow.dst_addr[1],
            flow.dst_addr[2],
            flow.dst_addr[3],
        ];
        decide::ipv4_segment(slot, addr)
    } else {
        decide::ipv6_segment(slot, flow.dst_addr)
    };
    let src = decide::task_segment(slot);
    if matches!(origin.hook, Hook::Sendmsg4 | Hook::Sendmsg6)
        && flow.src_port != 0
        // The source address is not known here: the socket bound to any address.
        && decide::listener_segment(slot, &[0; 16], v4, flow.src_port, flow.protocol) == src
        && decide::flow(slot, dst, src, flow.protocol, flow.src_port).verdict != Verdict::Deny
    {
        return CGROUP_ALLOW;
    }
    let decision = decide::flow(slot, src, dst, flow.protocol, flow.dst_port);
    record(slot, origin, flow, &Segments { src, dst }, &decision);
    verdict_to_return(decision.verdict)
}

/// `socket()` creation: raw, packet and ICMP ping sockets are refused to processes of a
/// segment unless the segment is granted `raw_sockets` (audit mode lets them through,
/// recorded). None of them passes the connect/sendmsg hooks: a ping socket's `sendto()`
/// without `connect()` reaches any address (the kernel lets every group open one where
/// `net.ipv4.ping_group_range` says so, systemd's default). Processes in no segment are
/// not governed.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole run; these fields are readable
    // at socket creation, with 4-byte loads.
    let (address_family, kind, protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    let ping = kind == SOCK_DGRAM
        && ((address_family == AF_INET && protocol == IPPROTO_ICMP)
            || (address_family == AF_INET6 && protocol == IPPROTO_ICMPV6));
    if kind != SOCK_RAW && address_family != AF_PACKET && !ping {
        return CGROUP_ALLOW;
    }
    let mut flow = Flow::EMPTY;
    flow.family = address_family as u8;
    // A packet socket's protocol is an EtherType, not an IP protocol number.
    flow.protocol = if address_family == AF_PACKET {
        0
    } else {
        protocol as u8
    };
    match maps::active_generation() {
        0 => CGROUP_ALLOW,
        generation => in_slot!(generation, |slot| raw_socket(slot, generation, &flow)),
    }
}

#[inline(always)]
fn raw_socket<const B: bool>(slot: &Slot<B>, generation: u32, flow: &Flow) -> i32 {
    let src = decide::task_segment(slot);
    if src == SEGMENT_HOST {
        return CGROUP_ALLOW;
    }
    let decision = if src == SEGMENT_UNCLASSIFIED {
        decide::unclassified(slot)
    } else {
        let flags = slot.segments().get(src).map_or(0, |info| info.flags);
        let verdict = if flags & SEGMENT_FLAG_RAW_SOCKETS != 0 {
            Verdict::Allow
        } else if flags & SEGMENT_FLAG_AUDIT != 0 {
            Verdict::Audit
        } else {
            Verdict::Deny
        };
        decide::unless_fail_closed(Decision {
            verdict,
            reason: Reason::RawSocket,
            rule_id: 0,
        })
    };
    let origin = Origin {
        hook: Hook::SockCreate,
        generation,
        ifindex: 0,
    };
    let segments = Segments {
        src,
        dst: SEGMENT_ANY,
    };
    record(slot, &origin, flow, &segments, &decision);
    verdict_to_return(decision.verdict)
}

/// IPv4 `bind()` completion: the bound port is learnt as a listener of the task's cgroup.
#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    learn::listener::<true>(&ctx);
    CGROUP_ALLOW
}

/// IPv6 `bind()` completion: the bound port is learnt as a listener of the task's cgroup.
#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    learn::listener::<false>(&ctx);
    CGROUP_ALLOW
}

/// Socket release: a learnt binding goes with the socket that made it, so a port is not
/// classified as a segment's after its server is gone.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    learn::released(&ctx);
    CGROUP_ALLOW
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a loaded program: the verifier rejects any path that could get here.
    loop {}
}

/// The kernel refuses GPL-only helpers to programs without a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
