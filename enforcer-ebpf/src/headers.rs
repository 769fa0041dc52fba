//! The IP headers of a socket buffer as the cgroup skb hooks see it: the data starts at the
//! IP header (the link-layer header is gone, fragments are reassembled on ingress).
//!
//! Verifier note: every read goes through `bpf_skb_load_bytes` (`SkBuffContext::load`),
//! which checks the variable offsets of the walk against the packet itself.

use aya_ebpf::programs::SkBuffContext;

use crate::xdp::MAX_IPV6_EXT_HEADERS;

/// `ETH_P_IP`, the EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_IPV6`, the EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// The length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// `NEXTHDR_FRAGMENT`: where [`ipv6_chain`] stops at a later fragment, which carries no
/// headers of its own.
pub const IPV6_FRAGMENT_HEADER: u8 = 44;

/// The packet's EtherType (`skb->protocol`, in host byte order).
#[inline(always)]
pub fn network_protocol(ctx: &SkBuffContext) -> u16 {
    u16::from_be(ctx.skb.protocol() as u16)
}

/// Where an IPv6 extension-header chain ends, as [`ipv6_chain`] walked it.
pub struct Chain {
    /// The first header that is not an extension header (the transport protocol), or
    /// [`IPV6_FRAGMENT_HEADER`] for a later fragment.
    pub next: u8,
    /// Its offset from the IP header.
    pub offset: usize,
    /// Whether a routing header was walked through.
    pub routing: bool,
}

impl Chain {
    /// A chain not walked yet.
    pub const fn new() -> Self {
        Self {
            next: 0,
            offset: 0,
            routing: false,
        }
    }
}

/// Walks the IPv6 extension-header chain into `chain` through hop-by-hop options,
/// routing, destination options, authentication and fragment headers; any other next
/// header ends it. `false` when the chain is longer than [`MAX_IPV6_EXT_HEADERS`] or cut
/// short by the end of the packet (`chain.routing` still tells whether a routing header
/// came before that).
///
/// Verifier note: a constant-bounded loop; the result is written through `chain` rather
/// than returned in an `Option`, for the reason `decide::listener_segment` gives.
#[inline(always)]
pub fn ipv6_chain(ctx: &SkBuffContext, chain: &mut Chain) -> bool {
    let Ok(mut next) = ctx.load::<u8>(6) else {
        return false;
    };
    let mut offset = IPV6_HEADER_LEN;
    let mut walked = 0;
    while walked <= MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units after the
            // first 8.
            0 | 43 | 60 => {
                chain.routing |= next == 43;
                let Ok(header) = ctx.load::<[u8; 2]>(offset) else {
                    return false;
                };
                next = header[0];
                offset += (usize::from(header[1]) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus 2.
            51 => {
                let Ok(header) = ctx.load::<[u8; 2]>(offset) else {
                    return false;
                };
                next = header[0];
                offset += (usize::from(header[1]) + 2) * 4;
            }
            // Fragment header: 8 bytes; only the first fragment goes on to headers.
            IPV6_FRAGMENT_HEADER => {
                let Ok(header) = ctx.load::<[u8; 4]>(offset) else {
                    return false;
                };
                if u16::from_be_bytes([header[2], header[3]]) >> 3 != 0 {
                    break;
                }
                next = header[0];
                offset += 8;
            }
            _ => break,
        }
        walked += 1;
    }
    if walked > MAX_IPV6_EXT_HEADERS {
        return false;
    }
    chain.next = next;
    chain.offset = offset;
    true
}
