//! Source routes in packets leaving a local socket, as the cgroup skb egress hook sees
//! them (the data starts at the IP header): an IPv6 routing header anywhere in the
//! extension-header chain, or an IPv4 loose or strict source route option.
//!
//! The common packet pays one or two reads: an IPv4 header without options (IHL 5) or an
//! IPv6 header whose next header is not an extension header is done after one byte.
//!
//! The result is a `u8` with a sentinel ([`NONE`]) rather than an `Option`, for the
//! reason `decide::listener_segment` gives.

use aya_ebpf::programs::SkBuffContext;

use crate::headers::{self, Chain, ETH_P_IP, ETH_P_IPV6, network_protocol};

/// No source route.
pub const NONE: u8 = 0;
/// An IPv6 routing header (`IPPROTO_ROUTING`, the next-header value that announces it).
pub const IPV6_ROUTING_HEADER: u8 = 43;
/// IPv4 option type of a loose source and record route.
pub const IPOPT_LSRR: u8 = 0x83;
/// IPv4 option type of a strict source and record route.
pub const IPOPT_SSRR: u8 = 0x89;
/// A header chain the walk could not finish: longer than
/// [`crate::xdp::MAX_IPV6_EXT_HEADERS`], or cut short by the end of the packet. It may
/// hide a routing header.
pub const UNREADABLE: u8 = 255;

/// The length of an IPv4 header without options.
const IPV4_HEADER_LEN: usize = 20;
/// The largest IPv4 options area (IHL 15): also the most options it can hold.
const MAX_IPV4_OPTIONS_LEN: usize = 40;

/// What source route the outgoing packet carries: [`NONE`], [`IPV6_ROUTING_HEADER`],
/// [`IPOPT_LSRR`], [`IPOPT_SSRR`] or [`UNREADABLE`]. Packets that are neither IPv4 nor
/// IPv6 carry none.
#[inline(always)]
pub fn source_route(ctx: &SkBuffContext) -> u8 {
    match network_protocol(ctx) {
        ETH_P_IP => ipv4_source_route(ctx),
        ETH_P_IPV6 => ipv6_routing_header(ctx),
        _ => NONE,
    }
}

/// Whether the packet is IPv4.
#[inline(always)]
pub fn is_ipv4(ctx: &SkBuffContext) -> bool {
    network_protocol(ctx) == ETH_P_IP
}

/// The protocol number the IP header names (for IPv6, its first next header); 0 when it
/// cannot be read.
#[inline(always)]
pub fn protocol(ctx: &SkBuffContext) -> u8 {
    let at = if is_ipv4(ctx) { 9 } else { 6 };
    ctx.load::<u8>(at).unwrap_or(0)
}

/// The first LSRR or SSRR option of an IPv4 header, walked option by option within the
/// header length.
///
/// Verifier note: the loop runs at most [`MAX_IPV4_OPTIONS_LEN`] times (every option
/// takes at least one byte); the variable offsets go to `bpf_skb_load_bytes`, which
/// checks them against the packet itself.
#[inline(always)]
fn ipv4_source_route(ctx: &SkBuffContext) -> u8 {
    let Ok(version_and_length) = ctx.load::<u8>(0) else {
        return UNREADABLE;
    };
    let header_len = usize::from(version_and_length & 0x0f) * 4;
    let mut offset = IPV4_HEADER_LEN;
    let mut walked = 0;
    while walked < MAX_IPV4_OPTIONS_LEN && offset < header_len {
        let Ok(kind) = ctx.load::<u8>(offset) else {
            return UNREADABLE;
        };
        match kind {
            // End of options.
            0 => return NONE,
            // No operation: one byte.
            1 => offset += 1,
            IPOPT_LSRR | IPOPT_SSRR => return kind,
            // Type, length, data.
            _ => {
                let Ok(len) = ctx.load::<u8>(offset + 1) else {
                    return UNREADABLE;
                };
                if len < 2 {
                    return UNREADABLE;
                }
                offset += usize::from(len);
            }
        }
        walked += 1;
    }
    NONE
}

/// Whether the IPv6 extension-header chain holds a routing header, walked as
/// [`headers::ipv6_chain`] walks it (as at XDP ingress).
#[inline(always)]
fn ipv6_routing_header(ctx: &SkBuffContext) -> u8 {
    let mut chain = Chain::new();
    let readable = headers::ipv6_chain(ctx, &mut chain);
    if chain.routing {
        IPV6_ROUTING_HEADER
    } else if readable {
        NONE
    } else {
        UNREADABLE
    }
}
