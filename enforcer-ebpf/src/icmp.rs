//! ICMP and ICMPv6 as policy protocols. A request that asks a host to answer (echo,
//! timestamp, information and address-mask requests; ICMPv6 echo and node information
//! queries) is a new flow, decided by the rules with its message type in place of a port.
//! Every other message passes undecided: replies belong to a request that was decided,
//! errors to a flow that was, and neighbour discovery and multicast listener messages keep
//! the network working (docs/datapath.md).

use aya_ebpf::programs::SkBuffContext;
use enforcer_common::maps::{PROTO_ICMP, PROTO_ICMPV6};

use crate::headers::{self, Chain, ETH_P_IP, ETH_P_IPV6, IPV6_HEADER_LEN};

/// What [`outgoing_request`] returns for a packet that carries no ICMP request.
pub const NO_REQUEST: u16 = 0xffff;

/// Whether an ICMP message of type `kind` (ICMPv6 unless `v4`) is a request the rules
/// decide.
#[inline(always)]
pub fn is_request(v4: bool, kind: u8) -> bool {
    if v4 {
        matches!(kind, 8 | 13 | 15 | 17)
    } else {
        matches!(kind, 128 | 139)
    }
}

/// The type of the ICMP (IPv4) or ICMPv6 (IPv6) request an outgoing packet carries, or
/// [`NO_REQUEST`]. A message whose header cannot be read carries none (the receiver
/// drops it).
#[inline(always)]
pub fn outgoing_request(ctx: &SkBuffContext) -> u16 {
    let (v4, offset) = match headers::network_protocol(ctx) {
        ETH_P_IP => {
            let Ok(ip) = ctx.load::<[u8; 10]>(0) else {
                return NO_REQUEST;
            };
            if ip[9] != PROTO_ICMP {
                return NO_REQUEST;
            }
            (true, usize::from(ip[0] & 0x0f) * 4)
        }
        ETH_P_IPV6 => {
            let Ok(next) = ctx.load::<u8>(6) else {
                return NO_REQUEST;
            };
            let offset = match next {
                PROTO_ICMPV6 => IPV6_HEADER_LEN,
                // Extension headers: walk them (rare on locally sent packets).
                0 | 43 | 44 | 51 | 60 => {
                    let mut chain = Chain::new();
                    if !headers::ipv6_chain(ctx, &mut chain) || chain.next != PROTO_ICMPV6 {
                        return NO_REQUEST;
                    }
                    chain.offset
                }
                _ => return NO_REQUEST,
            };
            (false, offset)
        }
        _ => return NO_REQUEST,
    };
    match ctx.load::<u8>(offset) {
        Ok(kind) if is_request(v4, kind) => u16::from(kind),
        _ => NO_REQUEST,
    }
}
