//! XDP ingress: parse Ethernet (with up to two VLAN tags), IPv4 or IPv6 (extension
//! headers skipped up to a bound) and TCP or UDP, and decide new inbound flows.
//!
//! Every read past the IP header is bounded by the datagram's own length (IPv4 total
//! length, IPv6 payload length), never by the frame: bytes after the datagram (Ethernet
//! padding, or anything a sender appends) are not part of the packet the kernel delivers,
//! and a header read from them is a header the kernel never sees.
//!
//! Fixed verdicts (documented in docs/datapath.md):
//! - not IP (ARP, LLDP, ...): pass;
//! - IP but neither TCP, UDP nor ICMP: pass;
//! - ICMP and ICMPv6 other than a request (replies, errors, neighbour discovery): pass
//!   ([`icmp`]); a request is a new flow, its type in place of the port, decided and
//!   recorded whatever the verdict (the kernel answers it, no socket layer sees it);
//! - a non-first fragment (no transport header): pass; the first fragment was decided;
//! - TCP that is not a new connection (no SYN, or SYN+ACK): pass; it belongs to a flow
//!   decided at its SYN, or answers one of ours;
//! - UDP to a port no segment listens on: pass (the per-socket layer decides it);
//! - drop, as malformed (counted and recorded with reason `malformed`, never as allowed
//!   by a rule): truncated headers; a datagram longer than its frame; an IPv4 header
//!   length below 20 or past the total length; a wrong IP version; an IPv6 payload length
//!   of 0 (jumbograms are not accepted); an IPv6 extension-header chain longer than
//!   [`MAX_IPV6_EXT_HEADERS`]; a first fragment (or unfragmented datagram) that ends
//!   before the whole extension-header chain and TCP or UDP header; more VLAN tags than
//!   [`MAX_VLAN_TAGS`] (the kernel strips any number, so "not IP" would be a lie).
//!
//! Everything else is a new flow: failsafe access passes; otherwise the source segment
//! (longest CIDR, else `world`), the destination segment (the listener port's segment,
//! declared or learnt, else `host`) and the rules decide (or the verdict cache, which
//! holds such decisions per source, see [`verdicts`]); a denial drops the packet and is
//! counted and recorded. What passes is decided again, counted and recorded by the
//! per-socket layer where a socket receives it (`socket`).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use enforcer_common::{
    decision::Decision,
    event::{Reason, Verdict, family},
    maps::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SEGMENT_ANY, SEGMENT_HOST},
};

use crate::{
    decide, icmp,
    maps::Slot,
    record::{Flow, Origin, Segments, record},
    verdicts,
};

/// How many IPv6 extension headers are skipped before a packet counts as malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// How many VLAN tags (802.1Q or 802.1ad, priority tags with VID 0 included) are skipped
/// before a frame counts as malformed.
pub const MAX_VLAN_TAGS: usize = 2;

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A packet that cannot be parsed: truncated or malformed.
pub struct Malformed;

/// Reads `N` bytes at `offset`, or fails if the packet is shorter.
///
/// Verifier note: the bounds check compares `data + offset + N` against `data_end`
/// before any load, and `offset` is masked to 14 bits so the verifier can bound it.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Malformed> {
    let offset = offset & 0x3fff;
    let start = ctx.data() + offset;
    if start + N > ctx.data_end() {
        return Err(Malformed);
    }
    // SAFETY: the range was checked against the packet's end just above.
    Ok(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

/// Reads `N` bytes at `offset` of a datagram that ends at `end` (an offset from the
/// frame's start): fails if the read reaches past the datagram, even where the frame
/// goes on (padding).
#[inline(always)]
fn datagram_bytes<const N: usize>(
    ctx: &XdpContext,
    offset: usize,
    end: usize,
) -> Result<[u8; N], Malformed> {
    if offset + N > end {
        return Err(Malformed);
    }
    bytes(ctx, offset)
}

/// Where a datagram of `len` bytes starting at `offset` ends; fails when the frame is
/// shorter (the kernel would discard it, so no decision on it may be recorded).
///
/// Verifier note: the frame's length is the difference of the two packet pointers
/// (allowed to a loader with CAP_PERFMON, and an unbounded scalar to the verifier); it is
/// only compared, never added back to a packet pointer. `data_end` is loaded here with a
/// volatile read: with a plain one, LLVM saw that `offset + N <= end <= frame_len`
/// implies `data + offset + N <= data_end` and dropped the pointer comparison in
/// [`bytes`], which is the only one the verifier accepts as a bounds check.
#[inline(always)]
fn datagram_end(ctx: &XdpContext, offset: usize, len: usize) -> Result<usize, Malformed> {
    // SAFETY: `ctx.ctx` is the program's context, valid for the whole run.
    let data_end = unsafe { core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) };
    let frame_len = (data_end as usize).wrapping_sub(ctx.data());
    let end = offset + len;
    if end > frame_len {
        return Err(Malformed);
    }
    Ok(end)
}

/// What a new flow's transport header says.
struct Ports {
    /// IP protocol number.
    protocol: u8,
    /// Source port (0 for ICMP).
    src: u16,
    /// Destination port (an ICMP request's type).
    dst: u16,
}

/// Reads the transport header of a new flow into `ports`: `false` when the packet is not
/// one (not TCP, UDP or an ICMP request, or TCP other than a bare SYN).
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    offset: usize,
    end: usize,
    proto: u8,
    ports: &mut Ports,
) -> Result<bool, Malformed> {
    let bytes = match proto {
        PROTO_TCP => {
            let header: [u8; 20] = datagram_bytes(ctx, offset, end)?;
            let flags = header[13];
            if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
                return Ok(false);
            }
            [header[0], header[1], header[2], header[3]]
        }
        PROTO_UDP => {
            let header: [u8; 8] = datagram_bytes(ctx, offset, end)?;
            [header[0], header[1], header[2], header[3]]
        }
        // An ICMP request is decided with its type in place of the destination port;
        // replies, errors and neighbour discovery pass. The header is 8 bytes.
        PROTO_ICMP | PROTO_ICMPV6 => {
            let header: [u8; 8] = datagram_bytes(ctx, offset, end)?;
            if !icmp::is_request(proto == PROTO_ICMP, header[0]) {
                return Ok(false);
            }
            [0, 0, 0, header[0]]
        }
        _ => return Ok(false),
    };
    ports.protocol = proto;
    ports.src = u16::from_be_bytes([bytes[0], bytes[1]]);
    ports.dst = u16::from_be_bytes([bytes[2], bytes[3]]);
    Ok(true)
}

/// Whether `ether_type` is a VLAN tag's TPID.
#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETHERTYPE_VLAN || ether_type == ETHERTYPE_QINQ
}

/// Parses a frame and decides it under generation slot `B`.
///
/// Verifier note: the transport header is read into a stack [`Ports`] rather than
/// returned. Returning it as an enum let LLVM assemble the variants' fields into one
/// register from whatever the other paths left there, a packet pointer included, and the
/// verifier rejects bitwise operations on pointers.
///
/// A cost note: the [`Flow`] is made only once the packet is known to be a new flow.
/// Made before, LLVM zeroed it for every packet with a call to the object's `memset`, a
/// byte-by-byte loop, whenever the decision's code kept it whole on the stack: 30 ns more
/// per established packet.
#[inline(always)]
pub fn ingress<const B: bool>(
    ctx: &XdpContext,
    slot: &Slot<B>,
    origin: &Origin,
) -> Result<u32, Malformed> {
    let eth: [u8; ETH_LEN] = bytes(ctx, 0)?;
    let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_LEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && is_vlan(ether_type) {
        let tag: [u8; 4] = bytes(ctx, offset)?;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
        tags += 1;
    }
    if is_vlan(ether_type) {
        return Err(Malformed);
    }
    let mut ports = Ports {
        protocol: 0,
        src: 0,
        dst: 0,
    };
    let mut flow = match ether_type {
        ETHERTYPE_IPV4 => {
            let ip: [u8; 20] = bytes(ctx, offset)?;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if ip[0] >> 4 != 4 || header_len < 20 || total_len < header_len {
                return Err(Malformed);
            }
            let end = datagram_end(ctx, offset, total_len)?;
            let fragment_offset = u16::from_be_bytes([ip[6] & 0x1f, ip[7]]);
            if fragment_offset != 0 {
                return Ok(xdp_action::XDP_PASS);
            }
            if !transport(ctx, offset + header_len, end, ip[9], &mut ports)? {
                return Ok(xdp_action::XDP_PASS);
            }
            Flow::ipv4(
                [ip[12], ip[13], ip[14], ip[15]],
                [ip[16], ip[17], ip[18], ip[19]],
            )
        }
        ETHERTYPE_IPV6 => {
            let ip: [u8; 40] = bytes(ctx, offset)?;
            let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if ip[0] >> 4 != 6 || payload_len == 0 {
                return Err(Malformed);
            }
            let end = datagram_end(ctx, offset, 40 + payload_len)?;
            let mut next = ip[6];
            let mut offset = offset + 40;
            let mut skipped = 0;
            loop {
                match next {
                    // Hop-by-hop, routing, destination options: length in 8-byte units.
                    0 | 43 | 60 => {
                        let ext: [u8; 2] = datagram_bytes(ctx, offset, end)?;
                        next = ext[0];
                        offset += (usize::from(ext[1]) + 1) * 8;
                    }
                    // Authentication header: length in 4-byte units, minus 2.
                    51 => {
                        let ext: [u8; 2] = datagram_bytes(ctx, offset, end)?;
                        next = ext[0];
                        offset += (usize::from(ext[1]) + 2) * 4;
                    }
                    // Fragment header: only the first fragment carries the transport header.
                    44 => {
                        let ext: [u8; 8] = datagram_bytes(ctx, offset, end)?;
                        if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                            return Ok(xdp_action::XDP_PASS);
                        }
                        next = ext[0];
                        offset += 8;
                    }
                    _ => break,
                }
                skipped += 1;
                if skipped > MAX_IPV6_EXT_HEADERS {
                    return Err(Malformed);
                }
            }
            // A chain that claims to run past the datagram cannot be finished.
            if offset > end {
                return Err(Malformed);
            }
            if !transport(ctx, offset, end, next, &mut ports)? {
                return Ok(xdp_action::XDP_PASS);
            }
            let mut flow = Flow::EMPTY;
            flow.family = family::INET6;
            flow.src_addr.copy_from_slice(&ip[8..24]);
            flow.dst_addr.copy_from_slice(&ip[24..40]);
            flow
        }
        _ => return Ok(xdp_action::XDP_PASS),
    };
    flow.protocol = ports.protocol;
    flow.src_port = ports.src;
    flow.dst_port = ports.dst;
    Ok(decide_new_flow(slot, origin, &flow))
}

/// The XDP action for a new inbound flow: the source address's segment, the listener's
/// segment (else `host`), failsafe access and the rules decide ([`decide::inbound`]), or
/// the verdict cache when it holds this flow's decision under this generation
/// ([`verdicts`]); [`act`] on it.
#[inline(always)]
fn decide_new_flow<const B: bool>(slot: &Slot<B>, origin: &Origin, flow: &Flow) -> u32 {
    let mut segments = Segments {
        src: SEGMENT_ANY,
        dst: SEGMENT_HOST,
    };
    let mut decision = Decision {
        verdict: Verdict::Deny,
        reason: Reason::DefaultDeny,
        rule_id: 0,
    };
    if verdicts::cached(origin.generation, flow, &mut decision, &mut segments) {
        return act(slot, origin, flow, &segments, &decision);
    }
    let v4 = flow.family == family::INET;
    let mut declared = false;
    let listener = decide::xdp_listener_segment(
        slot,
        &flow.dst_addr,
        v4,
        flow.dst_port,
        flow.protocol,
        &mut declared,
    );
    // UDP to no listener of a segment: the per-socket layer decides it, if any socket
    // receives it (a client's answer, or a port bound before the agent started).
    if listener == decide::NO_LISTENER && flow.protocol == PROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    segments.dst = match listener {
        decide::NO_LISTENER => SEGMENT_HOST,
        segment => segment,
    };
    segments.src = decide::address_segment(slot, &flow.src_addr, v4);
    let decision = decide::inbound(slot, flow, segments.src, segments.dst);
    // A learnt binding changes without a new generation: only a decision against a
    // declared listener is kept.
    if declared {
        verdicts::remember(origin.generation, flow, &decision, &segments);
    }
    act(slot, origin, flow, &segments, &decision)
}

/// The XDP action for a decided new flow. Only a denial is recorded: it is final, the
/// packet goes no further. A flow let through is recorded where it is delivered, by the
/// per-socket layer (`socket`), which decides it again against the socket that receives
/// it; a packet the kernel then discards (no socket, a bad checksum) leaves no record
/// that says it was allowed.
#[inline(always)]
fn act<const B: bool>(
    slot: &Slot<B>,
    origin: &Origin,
    flow: &Flow,
    segments: &Segments,
    decision: &Decision,
) -> u32 {
    // The kernel answers an ICMP request itself, with no socket: XDP's decision is the
    // only one, allow or deny, and is recorded either way.
    let icmp = flow.protocol == PROTO_ICMP || flow.protocol == PROTO_ICMPV6;
    if decision.verdict != Verdict::Deny && !icmp {
        return xdp_action::XDP_PASS;
    }
    record(slot, origin, flow, segments, decision);
    match decision.verdict {
        Verdict::Deny => xdp_action::XDP_DROP,
        Verdict::Allow | Verdict::Audit => xdp_action::XDP_PASS,
    }
}
