//! XDP ingress: parse Ethernet (with up to two VLAN tags), IPv4 or IPv6 (extension
//! headers skipped up to a bound) and TCP or UDP, and decide new inbound flows.
//!
//! Fixed verdicts (documented in docs/datapath.md):
//! - not IP (ARP, LLDP, ...): pass;
//! - IP but neither TCP nor UDP (ICMP, ...): pass;
//! - a non-first fragment (no transport header): pass; the first fragment was decided;
//! - TCP that is not a new connection (no SYN, or SYN+ACK): pass; it belongs to a flow
//!   decided at its SYN, or answers one of ours;
//! - UDP to a port no segment listens on: pass (replies to our own queries);
//! - truncated headers, an IPv4 header length below 20, a wrong IP version, or an IPv6
//!   extension-header chain longer than [`MAX_IPV6_EXT_HEADERS`]: drop, as malformed.
//!
//! Everything else is a new flow: failsafe access passes; otherwise the source segment
//! (longest CIDR, else `world`), the destination segment (the listener port's segment,
//! else `host`) and the rules decide; a denial drops the packet.

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key, programs::XdpContext};
use enforcer_common::{
    event::Verdict,
    maps::{FAILSAFE_KEY_FIXED_BITS, FailsafeKey, ListenKey, PROTO_TCP, PROTO_UDP, SEGMENT_HOST},
};

use crate::{decide, maps::Slot};

/// How many IPv6 extension headers are skipped before a packet counts as malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

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

#[inline(always)]
fn transport(ctx: &XdpContext, offset: usize, proto: u8) -> Result<Option<(u8, u16)>, Malformed> {
    match proto {
        PROTO_TCP => {
            let header: [u8; 20] = bytes(ctx, offset)?;
            let flags = header[13];
            if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
                return Ok(None);
            }
            Ok(Some((
                PROTO_TCP,
                u16::from_be_bytes([header[2], header[3]]),
            )))
        }
        PROTO_UDP => {
            let header: [u8; 8] = bytes(ctx, offset)?;
            Ok(Some((
                PROTO_UDP,
                u16::from_be_bytes([header[2], header[3]]),
            )))
        }
        _ => Ok(None),
    }
}

/// Parses a frame and decides it under generation slot `B`.
///
/// Verifier note: parsing and deciding are one function on purpose. Returning the parsed
/// flow as an enum let LLVM assemble the variants' fields into one register from
/// whatever the other paths left there, a packet pointer included, and the verifier
/// rejects bitwise operations on pointers.
#[inline(always)]
pub fn ingress<const B: bool>(ctx: &XdpContext, slot: &Slot<B>) -> Result<u32, Malformed> {
    let eth: [u8; ETH_LEN] = bytes(ctx, 0)?;
    let mut ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_LEN;
    let mut tags = 0;
    while tags < 2 && (ether_type == ETHERTYPE_VLAN || ether_type == ETHERTYPE_QINQ) {
        let tag: [u8; 4] = bytes(ctx, offset)?;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
        tags += 1;
    }
    match ether_type {
        ETHERTYPE_IPV4 => {
            let ip: [u8; 20] = bytes(ctx, offset)?;
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || header_len < 20 {
                return Err(Malformed);
            }
            let fragment_offset = u16::from_be_bytes([ip[6] & 0x1f, ip[7]]);
            if fragment_offset != 0 {
                return Ok(xdp_action::XDP_PASS);
            }
            let src = [ip[12], ip[13], ip[14], ip[15]];
            Ok(match transport(ctx, offset + header_len, ip[9])? {
                Some((proto, port)) => {
                    let failsafe = Key::new(
                        FAILSAFE_KEY_FIXED_BITS + 32,
                        FailsafeKey::new(proto, port, src),
                    );
                    if slot.failsafes_v4().get(&failsafe).is_some() {
                        return Ok(xdp_action::XDP_PASS);
                    }
                    new_flow(slot, decide::ipv4_segment(slot, src), proto, port)
                }
                None => xdp_action::XDP_PASS,
            })
        }
        ETHERTYPE_IPV6 => {
            let ip: [u8; 40] = bytes(ctx, offset)?;
            if ip[0] >> 4 != 6 {
                return Err(Malformed);
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&ip[8..24]);
            let mut next = ip[6];
            let mut offset = offset + 40;
            let mut skipped = 0;
            loop {
                match next {
                    // Hop-by-hop, routing, destination options: length in 8-byte units.
                    0 | 43 | 60 => {
                        let ext: [u8; 2] = bytes(ctx, offset)?;
                        next = ext[0];
                        offset += (usize::from(ext[1]) + 1) * 8;
                    }
                    // Authentication header: length in 4-byte units, minus 2.
                    51 => {
                        let ext: [u8; 2] = bytes(ctx, offset)?;
                        next = ext[0];
                        offset += (usize::from(ext[1]) + 2) * 4;
                    }
                    // Fragment header: only the first fragment carries the transport header.
                    44 => {
                        let ext: [u8; 8] = bytes(ctx, offset)?;
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
            Ok(match transport(ctx, offset, next)? {
                Some((proto, port)) => {
                    let failsafe = Key::new(
                        FAILSAFE_KEY_FIXED_BITS + 128,
                        FailsafeKey::new(proto, port, src),
                    );
                    if slot.failsafes_v6().get(&failsafe).is_some() {
                        return Ok(xdp_action::XDP_PASS);
                    }
                    new_flow(slot, decide::ipv6_segment(slot, src), proto, port)
                }
                None => xdp_action::XDP_PASS,
            })
        }
        _ => Ok(xdp_action::XDP_PASS),
    }
}

/// The XDP action for a new inbound flow from segment `src_segment` to local port
/// `port`/`proto` (failsafe access already ruled out).
#[inline(always)]
fn new_flow<const B: bool>(slot: &Slot<B>, src_segment: u32, proto: u8, port: u16) -> u32 {
    let listener = slot.listen().get_ptr(&ListenKey::new(port, proto));
    let dst_segment = match listener {
        // SAFETY: the pointer comes from a successful map lookup.
        Some(segment) => unsafe { *segment },
        // UDP to no listener of a segment is not a new flow the policy governs.
        None if proto == PROTO_UDP => return xdp_action::XDP_PASS,
        None => SEGMENT_HOST,
    };
    match decide::flow(slot, src_segment, dst_segment, proto, port).verdict {
        Verdict::Deny => xdp_action::XDP_DROP,
        Verdict::Allow | Verdict::Audit => xdp_action::XDP_PASS,
    }
}
