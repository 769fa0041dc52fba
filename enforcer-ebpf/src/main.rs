//! The enforcer kernel programs: one per hook described in `docs/datapath.md`.
//!
//! Decided: new inbound flows at XDP ingress and again, against the receiving socket, at
//! cgroup skb ingress (the per-socket layer), outbound `connect()` and unconnected
//! `sendmsg()` from local processes (IPv4 and IPv6), by the two ends' segments and the
//! rules of the active generation; ICMP requests inbound at XDP and outbound as they leave
//! a segment's socket; raw sockets at `socket()`; source routes and routing headers, at
//! `setsockopt()` and on packets leaving segment sockets; the SYN of a TCP connection
//! whose `connect()` was not its socket's owner's (an MPTCP path manager's subflow, a
//! socket handed to another cgroup), against the socket's segment ([`connecting`]).
//! `post_bind`
//! learns which segment listens on an address and port (`bind` notes the sockets that asked
//! for their port, `sock_release` forgets the binding). Every decision is counted and recorded
//! (module `record`). Before the first policy is applied (generation 0) every hook lets
//! everything through: the agent applies a policy before it attaches anything.
#![no_std]
#![no_main]
// Inline BPF assembly: the atomic add of `record::add`.
#![feature(asm_experimental_arch)]
#![expect(
    missing_docs,
    reason = "aya-ebpf's program macros emit undocumented `extern \"C\"` wrappers"
)]

mod connecting;
mod decide;
mod headers;
mod icmp;
mod learn;
mod maps;
mod peers;
mod record;
mod route;
mod socket;
mod verdicts;
mod xdp;

use maps::{Slot, in_slot};
use record::{Flow, Origin, Segments, Sender, record};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, xdp_action},
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, xdp},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockoptContext, XdpContext},
};
use enforcer_common::{
    decision::Decision,
    event::{FLOW_FLAG_MPTCP, Hook, Reason, Verdict, family},
    maps::{
        PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SEGMENT_ANY, SEGMENT_BROADCAST,
        SEGMENT_FLAG_ICMP_ERRORS, SEGMENT_FLAG_RAW_SOCKETS, SEGMENT_HOST, SEGMENT_MULTICAST,
    },
};

/// cgroup sock and sock_addr programs return 1 to let the call proceed.
const CGROUP_ALLOW: i32 = 1;
/// ... and 0 to refuse it: the caller sees EPERM.
const CGROUP_DENY: i32 = 0;

/// `SOCK_RAW` from the socket(2) types.
const SOCK_RAW: u32 = 3;
/// `SOL_IP`: socket options of the IPv4 layer.
const SOL_IP: i32 = 0;
/// `SOL_IPV6`: socket options of the IPv6 layer.
const SOL_IPV6: i32 = 41;
/// `IP_OPTIONS`: the IPv4 options of every packet the socket sends (source routes).
const IP_OPTIONS: i32 = 4;
/// `IPV6_2292RTHDR`: the RFC 2292 name of the sticky routing header option.
const IPV6_2292RTHDR: i32 = 5;
/// `IPV6_RTHDR`: a routing header for every packet the socket sends.
const IPV6_RTHDR: i32 = 57;
/// `IP_RECVERR`: queue ICMP errors, with the datagram they quote, on the socket.
const IP_RECVERR: i32 = 11;
/// `IPV6_RECVERR`: the IPv6 `IP_RECVERR`.
const IPV6_RECVERR: i32 = 25;
/// The most option bytes the kernel copies for a cgroup `setsockopt` program and then
/// uses itself (a page; 4 KiB, the smallest page size Linux has).
const SOCKOPT_COPIED_BYTES: i32 = 4096;

/// Something segment processes may do only with a grant, or never.
struct Restriction {
    /// The reason a decision on it records.
    reason: Reason,
    /// The segment flag that grants it; 0 when nothing does.
    grant: u32,
}

/// Raw sockets: granted by `raw_sockets`.
const RAW_SOCKETS: Restriction = Restriction {
    reason: Reason::RawSocket,
    grant: SEGMENT_FLAG_RAW_SOCKETS,
};

/// Source routes and routing headers: never granted.
const SOURCE_ROUTES: Restriction = Restriction {
    reason: Reason::SourceRoute,
    grant: 0,
};

/// ICMP errors queued with their payload (`IP_RECVERR`, `IPV6_RECVERR`): granted by
/// `icmp_errors`.
const ICMP_ERRORS: Restriction = Restriction {
    reason: Reason::IcmpErrors,
    grant: SEGMENT_FLAG_ICMP_ERRORS,
};

/// Packets to an address of this host leaving through another interface: never granted.
const LOCAL_ELSEWHERE: Restriction = Restriction {
    reason: Reason::LocalElsewhere,
    grant: 0,
};

/// The index of the loopback interface in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Outgoing packets whose header chain cannot be walked (it may hide a routing header):
/// never granted.
const UNREADABLE_HEADERS: Restriction = Restriction {
    reason: Reason::Malformed,
    grant: 0,
};

/// Never attached: the agent runs it through `BPF_PROG_TEST_RUN` with a fold's key as the
/// packet to write that fold's pending attempts as one event (`record::report_fold`).
#[xdp]
pub fn fold_report(ctx: XdpContext) -> u32 {
    record::report_fold(&ctx)
}

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
        sender: Sender::Remote,
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

/// IPv4 `bind()`, before the kernel binds: notes a socket that asks for a port of its own
/// ([`learn::bind_requested`]). Never refuses.
#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    bind_requested(&ctx);
    CGROUP_ALLOW
}

/// IPv6 `bind()`: as [`bind4`].
#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    bind_requested(&ctx);
    CGROUP_ALLOW
}

/// The port a `bind()` asks for, for [`learn::bind_requested`]; and the subflow an MPTCP
/// socket binds through, for [`learn::mptcp_bind`].
///
/// Verifier note: `user_port` is read with a 4-byte load (network byte order in the low
/// 16 bits), as for connect.
#[inline(always)]
fn bind_requested(ctx: &SockAddrContext) {
    // SAFETY: the context pointer is valid for the whole run of the program.
    let (port, protocol) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    // SAFETY: the helper reads the socket behind the context, valid for the run.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    learn::bind_requested(cookie, u16::from_be(port as u16));
    if protocol == u32::from(PROTO_TCP) {
        learn::mptcp_bind(ctx, cookie);
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

/// Decides a `connect()` or `sendmsg()` against the calling task's segment
/// ([`sock_addr_in_slot`]).
///
/// A TCP `connect()` also notes its decision, with the task's cgroup and segment, in the
/// socket's storage ([`connecting::decided_at_connect`]): `skb_egress` passes the SYN of
/// a connection a task of the socket's own cgroup (or segment) decided, and decides any
/// other against the socket's segment. An MPTCP subflow is flagged [`FLOW_FLAG_MPTCP`] for its record (the hook
/// sees the subflow, a TCP socket, so the protocol says 6); one a kernel worker connects
/// (the path manager's, for an address or port the peer announced, or a `subflow`
/// endpoint of the host) is not decided here at all: the worker's cgroup is not the
/// connection's, and `skb_egress` decides its SYN against the socket's segment, once.
#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, hook: Hook, address_family: u8) -> i32 {
    let generation = maps::active_generation();
    if generation == 0 {
        return CGROUP_ALLOW;
    }
    let mut flow = destination(ctx, address_family);
    // SAFETY: the context pointer is valid for the whole run, and `sk` always points to
    // the calling socket (a full socket: `src_port` is readable, in host byte order).
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    // SAFETY: as above.
    flow.src_port = unsafe { (*sk).src_port } as u16;
    let connect = matches!(hook, Hook::Connect4 | Hook::Connect6);
    if flow.protocol == PROTO_TCP && connecting::is_mptcp_subflow(sk.cast()) {
        flow.flags |= FLOW_FLAG_MPTCP;
        if connect && decide::by_a_kernel_worker() {
            connecting::left_to_egress(ctx);
            return CGROUP_ALLOW;
        }
    }
    // SAFETY: the helper reads the calling socket behind the context, valid for the run.
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    in_slot!(generation, |slot| sock_addr_in_slot(
        ctx,
        slot,
        &task_origin(hook, generation),
        &flow,
        cookie
    ))
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
/// a broadcast or multicast destination is its class, [`decide::group_destination`],
/// which only a rule naming it allows; an IPv4-mapped IPv6 address is decided as IPv4).
///
/// A UDP datagram sent (unconnected) to a peer whose datagram the per-socket ingress layer
/// let in to this socket (`cookie`) within the reply window is the answer, not a new flow:
/// it passes, unrecorded (the inbound datagram is on record). An allowed one opens the
/// window for the peer's answers ([`peers`]); for a broadcast or multicast destination,
/// for answers from any host's port the datagram went to.
#[inline(always)]
fn sock_addr_in_slot<const B: bool>(
    ctx: &SockAddrContext,
    slot: &Slot<B>,
    origin: &Origin,
    flow: &Flow,
    cookie: u64,
) -> i32 {
    let v4 = flow.family == family::INET;
    let sendmsg = matches!(origin.hook, Hook::Sendmsg4 | Hook::Sendmsg6);
    let peer = peers::key(cookie, &flow.dst_addr, v4, flow.dst_port);
    let now = peers::now();
    if sendmsg && flow.protocol == PROTO_UDP && peers::answers_peer(&peer, now, origin.generation) {
        return CGROUP_ALLOW;
    }
    let mut flow = *flow;
    let dst = decide::destination_segment(slot, &mut flow);
    let src = decide::task_segment(slot);
    let decision = decide::flow(slot, src, dst, flow.protocol, flow.dst_port);
    record(slot, origin, &flow, &Segments { src, dst }, &decision);
    if !sendmsg && flow.protocol == PROTO_TCP {
        connecting::decided_at_connect(
            ctx,
            src,
            origin.generation,
            decision.verdict == Verdict::Deny,
        );
    }
    if sendmsg && flow.protocol == PROTO_UDP && decision.verdict != Verdict::Deny {
        let answered_by = if dst == SEGMENT_BROADCAST || dst == SEGMENT_MULTICAST {
            peers::group_key(cookie, flow.dst_port)
        } else {
            peer
        };
        peers::sent(&answered_by, now, origin.generation);
    }
    verdict_to_return(decision.verdict)
}

/// `socket()` creation: raw sockets are refused to processes of a segment unless the
/// segment is granted `raw_sockets` (audit mode lets them through, recorded): a raw socket
/// builds whole packets, past the connect and sendmsg hooks. ICMP ping sockets are not
/// refused: every request one sends is decided by the rules at `skb_egress`. Processes in
/// no segment are not governed. The kernel runs this hook for IPv4 and IPv6 sockets only:
/// packet (`AF_PACKET`) and XDP sockets never reach it (docs/threat-model.md says how the
/// host closes that).
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole run; these fields are readable
    // at socket creation, with 4-byte loads.
    let (address_family, kind, protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    if kind != SOCK_RAW {
        return CGROUP_ALLOW;
    }
    let mut flow = Flow::EMPTY;
    flow.family = address_family as u8;
    flow.protocol = protocol as u8;
    match maps::active_generation() {
        0 => CGROUP_ALLOW,
        generation => in_slot!(generation, |slot| contain(
            slot,
            &task_origin(Hook::SockCreate, generation),
            &flow,
            &Segments {
                src: decide::task_segment(slot),
                dst: SEGMENT_ANY,
            },
            &RAW_SOCKETS,
        )),
    }
}

/// `setsockopt()`: a source route or routing header (`IP_OPTIONS` with a value,
/// `IPV6_RTHDR`, `IPV6_2292RTHDR`) is refused to processes of a segment whatever the
/// policy says; turning on `IP_RECVERR` or `IPV6_RECVERR` is refused unless the segment is
/// granted `icmp_errors`: with it, the kernel queues every ICMP error that quotes one of
/// the socket's datagrams on the socket, the bytes it carries included, without any
/// socket filter running, so any host could hand the process data the policy denies.
/// Audit mode lets both through, recorded. Clearing either (an empty value, a zero) stays
/// allowed. Processes in no segment are not governed. The record carries the option's
/// level as its family (`SOL_IP` as IPv4, `SOL_IPV6` as IPv6) and the option's number as
/// its protocol.
///
/// Verifier note: `level`, `optname` and `optlen` are read with 4-byte loads, the width
/// the kernel accepts for them; `optval` is read only for the error-queue options, through
/// the packet-style `optval`/`optval_end` bounds check. The restriction is chosen by
/// value: a reference to one of two constants would put them in `.rodata`, a map this
/// object does not declare.
#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole run of the program.
    let (level, option, len) = unsafe {
        (
            (*ctx.sockopt).level,
            (*ctx.sockopt).optname,
            (*ctx.sockopt).optlen,
        )
    };
    let restriction = match (level, option) {
        (SOL_IP, IP_OPTIONS) | (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR) if len > 0 => SOURCE_ROUTES,
        (SOL_IP, IP_RECVERR) | (SOL_IPV6, IPV6_RECVERR) if turns_on(&ctx, len) => ICMP_ERRORS,
        _ => return CGROUP_ALLOW,
    };
    let mut flow = Flow::EMPTY;
    flow.family = if level == SOL_IP {
        family::INET
    } else {
        family::INET6
    };
    flow.protocol = option as u8;
    match maps::active_generation() {
        0 => CGROUP_ALLOW,
        generation => in_slot!(generation, |slot| contain(
            slot,
            &task_origin(Hook::Setsockopt, generation),
            &flow,
            &Segments {
                src: decide::task_segment(slot),
                dst: SEGMENT_ANY,
            },
            &restriction,
        )),
    }
}

/// Whether the value of a boolean socket option of `len` bytes turns it on, read as the
/// kernel reads it: an `int` when it has four bytes or more, else one byte. A value the
/// program cannot read counts as on, and so does one longer than a page: the program
/// then sees a copy of the first page only, and the kernel reads the value again from
/// the caller's memory, which another thread can change in between.
#[inline(always)]
fn turns_on(ctx: &SockoptContext, len: i32) -> bool {
    if len > SOCKOPT_COPIED_BYTES {
        return true;
    }
    // SAFETY: the context pointer is valid for the whole run of the program; the bounds
    // are checked before each read.
    unsafe {
        let start = (*ctx.sockopt).__bindgen_anon_2.optval as *const u8;
        let end = (*ctx.sockopt).__bindgen_anon_3.optval_end as *const u8;
        if len >= 4 {
            if start.add(4) > end {
                return true;
            }
            core::ptr::read_unaligned(start.cast::<i32>()) != 0
        } else if len >= 1 {
            if start.add(1) > end {
                return true;
            }
            *start != 0
        } else {
            false
        }
    }
}

/// Packets about to be queued on a socket in the attached cgroup subtree: the per-socket
/// ingress layer ([`socket`]) decides every new inbound flow against the receiving
/// socket's segment, whatever interface or tunnel it came through.
///
/// Not `pub`, for the reason given at [`skb_egress`].
#[cgroup_skb(ingress)]
fn skb_ingress(ctx: SkBuffContext) -> i32 {
    socket::ingress(&ctx)
}

/// Packets leaving a socket in the attached cgroup subtree: one that carries a source
/// route (an IPv6 routing header, an IPv4 LSRR or SSRR option), whatever put it there
/// (ancillary data of `sendmsg`, a socket option set before the hooks were attached, a
/// raw socket), is dropped when the socket belongs to a segment, whatever the policy
/// says (audit mode lets it through, recorded). A UDP sender's `sendmsg()` then fails
/// with EPERM. Sockets of no segment are not governed. Then: a packet to an address of
/// this host leaving through another interface ([`local_elsewhere`]); a SYN whose
/// `connect()` was not decided for its socket's own segment ([`syn`]); an ICMP request
/// ([`icmp_request`]).
///
/// The common packet costs one or two reads ([`route`]); only a packet carrying a
/// source route, or a header chain that cannot be walked (dropped as malformed, for it
/// may hide one), is classified. The socket's segment comes from its cgroup, not the
/// current task's (this may run in softirq context); the record names the real first
/// hop (the packet's destination address) and its segment, and carries what was found
/// as its protocol: 43 for a routing header, the option type (131 LSRR, 137 SSRR).
///
/// Not `pub`: aya's macro gives the exported wrapper a raw-pointer argument, which
/// clippy refuses in a public safe function; `no_mangle` exports it all the same.
#[cgroup_skb(egress)]
fn skb_egress(ctx: SkBuffContext) -> i32 {
    let found = route::source_route(&ctx);
    if found != route::NONE {
        return egress_verdict(source_route_in_generation(&ctx, found));
    }
    // SAFETY: the context pointer is valid for the whole run of the program.
    let ifindex = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).ifindex };
    if ifindex != LOOPBACK_IFINDEX {
        let outcome = local_elsewhere_in_generation(&ctx);
        if outcome != NOT_LOCAL {
            return egress_verdict(outcome);
        }
    }
    let connecting = connecting::connecting_socket(&ctx);
    if !connecting.is_null() {
        return egress_verdict(syn_in_generation(&ctx, connecting));
    }
    let request = icmp::outgoing_request(&ctx);
    if request == icmp::NO_REQUEST {
        return CGROUP_ALLOW;
    }
    egress_verdict(icmp_request_in_generation(&ctx, request))
}

// The four decisions `skb_egress` makes, each under the active generation (everything
// passes before the first) in a function of its own that returns an outcome code
// (`PASS`, `DROP`, `NOT_LOCAL`), which `skb_egress` turns into its verdict.
//
// Verifier notes: BPF-to-BPF calls, not inlined. Inlined side by side into `skb_egress`,
// each with both slots, they made LLVM's frame pass the 512-byte stack; as calls, a run
// needs the small dispatching frame plus the one decision it makes. The context (behind
// the reference) and the socket pointer keep their types across a call. The codes are
// not the verdicts (0 and 1) themselves: where LLVM knew a register to equal 1 it
// returned that register for `CGROUP_ALLOW`, a value the verifier could not bound, and a
// program may only exit with 0 or 1; mapping a code to a verdict makes `skb_egress`
// return constants.

/// The outcome of an egress decision: let the packet through.
const PASS: u8 = 0xa1;
/// The outcome of an egress decision: drop the packet.
const DROP: u8 = 0xd2;
/// The outcome of [`local_elsewhere_in_generation`] for a packet to an address that is
/// not this host's: nothing decided.
const NOT_LOCAL: u8 = 0x3c;

/// The outcome code of a cgroup verdict.
#[inline(always)]
fn outcome(verdict: i32) -> u8 {
    if verdict == CGROUP_DENY { DROP } else { PASS }
}

/// The verdict of an outcome code.
#[inline(always)]
fn egress_verdict(outcome: u8) -> i32 {
    if outcome == DROP {
        CGROUP_DENY
    } else {
        CGROUP_ALLOW
    }
}

/// [`source_routed_packet`] under the active generation.
#[inline(never)]
fn source_route_in_generation(ctx: &SkBuffContext, found: u8) -> u8 {
    match maps::active_generation() {
        0 => PASS,
        generation => outcome(in_slot!(generation, |slot| source_routed_packet(
            ctx, slot, generation, found
        ))),
    }
}

/// [`local_elsewhere`] under the active generation, for a packet leaving through another
/// interface than loopback; [`NOT_LOCAL`] when its destination is not this host.
#[inline(never)]
fn local_elsewhere_in_generation(ctx: &SkBuffContext) -> u8 {
    let flow = addresses(ctx);
    if !decide::is_local(&flow.dst_addr, flow.family == family::INET) {
        return NOT_LOCAL;
    }
    match maps::active_generation() {
        0 => PASS,
        generation => outcome(in_slot!(generation, |slot| local_elsewhere(
            ctx, slot, generation, &flow
        ))),
    }
}

/// [`syn`] under the active generation.
#[inline(never)]
fn syn_in_generation(ctx: &SkBuffContext, sk: *mut aya_ebpf::bindings::bpf_sock) -> u8 {
    match maps::active_generation() {
        0 => PASS,
        generation => outcome(in_slot!(generation, |slot| syn(ctx, slot, generation, sk))),
    }
}

/// [`icmp_request`] under the active generation.
#[inline(never)]
fn icmp_request_in_generation(ctx: &SkBuffContext, request: u16) -> u8 {
    match maps::active_generation() {
        0 => PASS,
        generation => outcome(in_slot!(generation, |slot| icmp_request(
            ctx, slot, generation, request
        ))),
    }
}

/// Holds a SYN of the TCP socket `sk` (still connecting) to its `connect()`: one a task of
/// the socket's own cgroup made, or a task of the socket's own segment under this
/// generation (the same decision), passes, or is dropped, as decided there
/// ([`connecting::noted`]). Any other (a kernel worker's `connect()`, an MPTCP path
/// manager's subflow; a task's of another cgroup, on a socket handed over with
/// `SCM_RIGHTS`; one made before the hooks were attached) is decided here against the
/// segment of the socket's own cgroup, like a `connect()` of its owner, and recorded
/// once: the decision is noted for the retransmissions of the same SYN. The record
/// names the socket's cgroup (no process: a kernel worker, or softirq, may be running),
/// the packet's destination, the socket's ports, and [`FLOW_FLAG_MPTCP`] for a subflow.
/// A refused SYN is dropped: the subflow (or the connection) never opens.
///
/// Verifier note: the ports are the socket's (`src_port` in host byte order, `dst_port`
/// in network byte order, a 2-byte read), not the packet's: no TCP header is parsed
/// behind a header chain of unknown length.
#[inline(always)]
fn syn<const B: bool>(
    ctx: &SkBuffContext,
    slot: &Slot<B>,
    generation: u32,
    sk: *mut aya_ebpf::bindings::bpf_sock,
) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: `skb` is the program's context; the id is its socket's cgroup's.
    let owner = unsafe { aya_ebpf::helpers::bpf_skb_cgroup_id(skb) };
    let noted = connecting::noted(sk);
    let follow = if noted.denied != 0 {
        CGROUP_DENY
    } else {
        CGROUP_ALLOW
    };
    if noted.cgroup_id == owner {
        return follow;
    }
    let src = decide::socket_segment(slot, skb);
    if noted.generation == generation && noted.segment == src {
        return follow;
    }
    let mut flow = addresses(ctx);
    flow.protocol = PROTO_TCP;
    // SAFETY: `sk` is the full socket `bpf_sk_fullsock` returned, checked for null.
    let (src_port, dst_port) = unsafe { ((*sk).src_port, (*sk).dst_port) };
    flow.src_port = src_port as u16;
    flow.dst_port = u16::from_be(dst_port);
    if connecting::is_mptcp_subflow(sk.cast()) {
        flow.flags |= FLOW_FLAG_MPTCP;
    }
    let dst = decide::destination_segment(slot, &mut flow);
    let decision = decide::flow(slot, src, dst, PROTO_TCP, flow.dst_port);
    record(
        slot,
        &Origin::of_socket(Hook::SkbEgress, generation, skb, 0),
        &flow,
        &Segments { src, dst },
        &decision,
    );
    connecting::decided_at_egress(
        sk,
        owner,
        src,
        generation,
        decision.verdict == Verdict::Deny,
    );
    verdict_to_return(decision.verdict)
}

/// Decides an ICMP request of type `kind` leaving a segment's socket (a ping socket, or a
/// raw socket the segment was granted): the socket's segment to the destination's, by the
/// rules, the type in place of the port, like a `connect()`. Refused, the packet is
/// dropped: an IPv4 ping socket's `sendto()` fails with EPERM, an IPv6 one ignores the
/// error (no reply comes). Sockets of no segment are not governed.
#[inline(always)]
fn icmp_request<const B: bool>(
    ctx: &SkBuffContext,
    slot: &Slot<B>,
    generation: u32,
    kind: u16,
) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let src = decide::socket_segment(slot, skb);
    if src == SEGMENT_HOST {
        return CGROUP_ALLOW;
    }
    let mut flow = addresses(ctx);
    flow.dst_port = kind;
    flow.protocol = if flow.family == family::INET {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    };
    let dst = decide::destination_segment(slot, &mut flow);
    let decision = decide::flow(slot, src, dst, flow.protocol, kind);
    if decision.verdict != Verdict::Deny {
        // The echo replies of this host may come back to the socket (the per-socket
        // layer asks for them).
        // SAFETY: `skb` is the program's context; the cookie is the sending socket's.
        let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(skb.cast()) };
        let v4 = flow.family == family::INET;
        peers::sent(
            &peers::key(cookie, &flow.dst_addr, v4, 0),
            peers::now(),
            generation,
        );
    }
    record(
        slot,
        &Origin::of_socket(Hook::SkbEgress, generation, skb, 0),
        &flow,
        &Segments { src, dst },
        &decision,
    );
    verdict_to_return(decision.verdict)
}

/// The family and addresses of an outgoing packet (its IP header).
#[inline(always)]
fn addresses(ctx: &SkBuffContext) -> Flow {
    let mut flow = Flow::EMPTY;
    if route::is_ipv4(ctx) {
        flow.family = family::INET;
        if let Ok(addresses) = ctx.load::<[u8; 8]>(12) {
            flow.src_addr[..4].copy_from_slice(&addresses[..4]);
            flow.dst_addr[..4].copy_from_slice(&addresses[4..]);
        }
    } else {
        flow.family = family::INET6;
        if let Ok(addresses) = ctx.load::<[u8; 32]>(8) {
            flow.src_addr.copy_from_slice(&addresses[..16]);
            flow.dst_addr.copy_from_slice(&addresses[16..]);
        }
    }
    flow
}

/// Decides and records a packet of `flow` (its addresses) to an address of this host that
/// leaves through another interface than loopback: the connect or sendmsg hook decided
/// the flow as one to this host, against the segment serving the port, but the socket
/// was tied to a device (`SO_BINDTODEVICE`, `IP_UNICAST_IF`, the interface of
/// `IP_PKTINFO`), so the kernel sends the packet to whoever holds the address on that
/// link. The record names the address's own segment and carries the packet's protocol.
#[inline(always)]
fn local_elsewhere<const B: bool>(
    ctx: &SkBuffContext,
    slot: &Slot<B>,
    generation: u32,
    flow: &Flow,
) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let mut flow = *flow;
    flow.protocol = route::protocol(ctx);
    let segments = Segments {
        src: decide::socket_segment(slot, skb),
        dst: decide::address_segment(slot, &flow.dst_addr, flow.family == family::INET),
    };
    let origin = Origin::of_socket(Hook::SkbEgress, generation, skb, 0);
    contain(slot, &origin, &flow, &segments, &LOCAL_ELSEWHERE)
}

/// Decides and records a packet that carries source route `found` (a [`route`] code).
#[inline(always)]
fn source_routed_packet<const B: bool>(
    ctx: &SkBuffContext,
    slot: &Slot<B>,
    generation: u32,
    found: u8,
) -> i32 {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    let mut flow = addresses(ctx);
    flow.protocol = found;
    let v4 = flow.family == family::INET;
    let origin = Origin::of_socket(Hook::SkbEgress, generation, skb, 0);
    let segments = Segments {
        src: decide::socket_segment(slot, skb),
        dst: decide::address_segment(slot, &flow.dst_addr, v4),
    };
    let restriction = if found == route::UNREADABLE {
        &UNREADABLE_HEADERS
    } else {
        &SOURCE_ROUTES
    };
    contain(slot, &origin, &flow, &segments, restriction)
}

/// Where a hook that runs in the calling task's context decides.
#[inline(always)]
fn task_origin(hook: Hook, generation: u32) -> Origin {
    Origin {
        hook,
        generation,
        ifindex: 0,
        sender: Sender::Task,
    }
}

/// The one decision on what segment processes may do only with a grant, or never
/// ([`Restriction`]): recorded and answered (allow, or refuse with EPERM / drop), except
/// for processes in no segment, which are not governed and let through unrecorded.
#[inline(always)]
fn contain<const B: bool>(
    slot: &Slot<B>,
    origin: &Origin,
    flow: &Flow,
    segments: &Segments,
    restriction: &Restriction,
) -> i32 {
    if segments.src == SEGMENT_HOST {
        return CGROUP_ALLOW;
    }
    let decision = decide::containment(slot, segments.src, restriction.reason, restriction.grant);
    record(slot, origin, flow, segments, &decision);
    verdict_to_return(decision.verdict)
}

/// IPv4 `bind()` completion: the bound port is learnt as a listener of the task's cgroup
/// ([`bind_completed`]).
#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    bind_completed::<true>(&ctx)
}

/// IPv6 `bind()` completion: as [`post_bind4`].
#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    bind_completed::<false>(&ctx)
}

/// Learns the binding `ctx`'s socket (IPv4 when `V4`) just made in the agent's network
/// namespace (bindings elsewhere are not this host's listeners), unless it joins a socket
/// group on an address and port a process of another segment holds: that `bind()` is
/// refused (EPERM; the kernel releases the port), recorded with reason `listener-taken`
/// (audit mode lets it through), because the kernel would hand the joiner a share of the
/// other segment's connections, decided as the other segment's.
///
/// A kernel worker's binding is not learnt: it is the MPTCP path manager's, for a subflow
/// (a client's socket, not a listener), and nothing would forget it (the release hook
/// does not run for the kernel's own sockets).
#[inline(always)]
fn bind_completed<const V4: bool>(ctx: &SockContext) -> i32 {
    if !learn::in_host_netns(ctx) || decide::by_a_kernel_worker() {
        return CGROUP_ALLOW;
    }
    if let Some(sharer) = learn::sharer::<V4>(ctx) {
        let verdict = match maps::active_generation() {
            0 => CGROUP_ALLOW,
            generation => in_slot!(generation, |slot| join_group::<V4, _>(
                ctx, slot, generation, sharer
            )),
        };
        if verdict == CGROUP_DENY {
            return CGROUP_DENY;
        }
    }
    learn::listener::<V4>(ctx);
    CGROUP_ALLOW
}

/// Decides a socket joining the group of the learnt binding `sharer` points to: allowed
/// when the joiner's segment is the holder's (a service's own workers, a reload handing
/// over), else refused and recorded.
#[inline(always)]
fn join_group<const V4: bool, const B: bool>(
    ctx: &SockContext,
    slot: &Slot<B>,
    generation: u32,
    sharer: *const enforcer_common::maps::LearntListener,
) -> i32 {
    let src = decide::task_segment(slot);
    let owner = match decide::learnt_segment(slot, sharer) {
        decide::NO_LISTENER => SEGMENT_HOST,
        segment => segment,
    };
    if owner == src {
        return CGROUP_ALLOW;
    }
    let mut flow = Flow::EMPTY;
    if let Some(key) = learn::bound::<V4>(ctx) {
        flow.dst_port = key.port;
        flow.protocol = key.proto;
        if V4 {
            flow.family = family::INET;
            flow.dst_addr[..4].copy_from_slice(&key.addr[12..]);
        } else {
            flow.family = family::INET6;
            flow.dst_addr = key.addr;
        }
    }
    let hook = if V4 { Hook::PostBind4 } else { Hook::PostBind6 };
    let decision = decide::containment(slot, src, Reason::ListenerTaken, 0);
    record(
        slot,
        &task_origin(hook, generation),
        &flow,
        &Segments { src, dst: owner },
        &decision,
    );
    verdict_to_return(decision.verdict)
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
