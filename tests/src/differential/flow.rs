//! Random inbound frames aimed at a policy's edges: sources at, just inside and just
//! outside every prefix the policy writes (IPv4, IPv6, IPv4-mapped and IPv4-compatible
//! forms), destination ports on, next to and off the declared listeners, failsafe ports
//! and rule range ends; over TCP and UDP, with VLAN tags, IPv4 options, IPv6 extension
//! headers and padding, plus some packets that are not new flows and some malformed ones.

use super::{
    Rng,
    net::{Addr, Family, Net},
    spec::{Proto, Spec, all_nets},
};

/// TCP SYN.
pub const SYN: u8 = 0x02;
/// TCP ACK.
pub const ACK: u8 = 0x10;

/// What the XDP program is to make of a frame before any policy lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new flow: a TCP SYN without ACK, or a UDP datagram (first or whole fragment).
    New,
    /// Not a new flow (established TCP, a reply, a later fragment): passes unrecorded.
    NotNew,
    /// Truncated or beyond a parser bound: dropped and recorded as `malformed`.
    Malformed,
}

/// An IPv6 extension header: its type and its length byte.
#[derive(Clone, Copy, Debug)]
pub struct Extension {
    /// 0 hop-by-hop, 43 routing, 60 destination options, 51 authentication, 44 fragment.
    pub kind: u8,
    /// The header's length byte (8-byte units past the first 8; 4-byte units minus 2 for
    /// authentication). For a fragment header, the fragment offset in 8-byte units.
    pub len: u8,
}

impl Extension {
    fn size(self) -> usize {
        match self.kind {
            44 => 8,
            51 => (usize::from(self.len) + 2) * 4,
            _ => (usize::from(self.len) + 1) * 8,
        }
    }
}

/// One inbound frame, described.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Source address, as on the wire (IPv6 frames carry mapped and compatible forms).
    pub src: Addr,
    /// Destination address (the frame's family).
    pub dst: Addr,
    /// Transport protocol.
    pub proto: Proto,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TCP flags (ignored for UDP).
    pub tcp_flags: u8,
    /// VLAN tags after the MAC addresses: TPID and TCI.
    pub vlans: Vec<(u16, u16)>,
    /// IPv4 option words (IHL minus 5).
    pub ipv4_option_words: u8,
    /// IPv4 fragment offset (8-byte units); non-zero is a later fragment.
    pub ipv4_fragment_offset: u16,
    /// IPv6 extension headers, in order.
    pub extensions: Vec<Extension>,
    /// Transport payload bytes.
    pub payload: usize,
    /// Bytes after the IP datagram (Ethernet padding).
    pub padding: usize,
    /// Cut the frame to this many bytes, inside its headers.
    pub truncate_to: Option<usize>,
}

impl Probe {
    /// The frame's IP family.
    pub fn family(&self) -> Family {
        self.src.family
    }

    /// What XDP is to make of the frame before any policy lookup (docs/datapath.md,
    /// "Fixed verdicts at XDP ingress").
    pub fn kind(&self) -> Kind {
        if self.truncate_to.is_some() || self.vlans.len() > 2 || self.extensions.len() > 6 {
            return Kind::Malformed;
        }
        let later_fragment = self.ipv4_fragment_offset != 0
            || self.extensions.iter().any(|e| e.kind == 44 && e.len != 0);
        if later_fragment
            || (self.proto == Proto::Tcp
                && (self.tcp_flags & SYN == 0 || self.tcp_flags & ACK != 0))
        {
            return Kind::NotNew;
        }
        Kind::New
    }

    fn transport(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + self.payload);
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        match self.proto {
            Proto::Tcp => {
                out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 5 << 4, self.tcp_flags]);
                out.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            }
            Proto::Udp => {
                let len = u16::try_from(8 + self.payload).expect("small");
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
        out.extend((0..self.payload).map(|i| i as u8 ^ 0x5a));
        out
    }

    /// The Ethernet frame (checksums zero: the program does not read them), and the
    /// length of its headers up to the end of the TCP or UDP header.
    pub fn frame(&self) -> (Vec<u8>, usize) {
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (tpid, tci) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        let transport = self.transport();
        let transport_header = match self.proto {
            Proto::Tcp => 20,
            Proto::Udp => 8,
        };
        let headers = match self.family() {
            Family::V4 => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let header_len = 20 + 4 * usize::from(self.ipv4_option_words);
                let total = u16::try_from(header_len + transport.len()).expect("small");
                let mut ip = vec![0u8; header_len];
                ip[0] = 0x40 | (5 + self.ipv4_option_words);
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[6..8].copy_from_slice(&(self.ipv4_fragment_offset & 0x1fff).to_be_bytes());
                ip[8] = 64;
                ip[9] = self.proto.number();
                ip[12..16].copy_from_slice(&self.src.octets());
                ip[16..20].copy_from_slice(&self.dst.octets());
                // Options: no-operation bytes.
                ip[20..].fill(1);
                frame.extend_from_slice(&ip);
                frame.len() + transport_header
            }
            Family::V6 => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut chain = Vec::new();
                for (i, ext) in self.extensions.iter().enumerate() {
                    let next = self
                        .extensions
                        .get(i + 1)
                        .map_or(self.proto.number(), |e| e.kind);
                    let mut bytes = vec![0u8; ext.size()];
                    bytes[0] = next;
                    if ext.kind == 44 {
                        // Offset in 8-byte units in the top 13 bits; more-fragments set.
                        let field = (u16::from(ext.len) << 3) | 1;
                        bytes[2..4].copy_from_slice(&field.to_be_bytes());
                    } else {
                        bytes[1] = ext.len;
                    }
                    chain.extend_from_slice(&bytes);
                }
                let payload = u16::try_from(chain.len() + transport.len()).expect("small");
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&payload.to_be_bytes());
                ip[6] = self
                    .extensions
                    .first()
                    .map_or(self.proto.number(), |e| e.kind);
                ip[7] = 64;
                ip[8..24].copy_from_slice(&self.src.octets());
                ip[24..40].copy_from_slice(&self.dst.octets());
                frame.extend_from_slice(&ip);
                frame.extend_from_slice(&chain);
                frame.len() + transport_header
            }
        };
        frame.extend_from_slice(&transport);
        frame.extend(std::iter::repeat_n(0u8, self.padding));
        if let Some(len) = self.truncate_to {
            frame.truncate(len);
        }
        (frame, headers)
    }
}

/// The addresses and ports a policy makes interesting.
pub struct Targets {
    nets: Vec<Net>,
    ports: Vec<(Proto, u16)>,
    listeners: Vec<(Proto, u16)>,
    failsafes: Vec<(Vec<Net>, Proto, u16, u16)>,
}

impl Targets {
    /// Collects every prefix and every port edge of `spec`.
    pub fn new(spec: &Spec) -> Self {
        let mut ports = vec![
            (Proto::Tcp, 0),
            (Proto::Tcp, 1),
            (Proto::Udp, 1),
            (Proto::Tcp, u16::MAX),
            (Proto::Udp, u16::MAX),
        ];
        let mut edges = |proto: Proto, first: u16, last: u16| {
            for port in [first, last, first.saturating_sub(1), last.saturating_add(1)] {
                ports.push((proto, port));
            }
        };
        for segment in &spec.segments {
            for p in &segment.ports {
                edges(p.proto, p.first, p.last);
            }
        }
        for failsafe in &spec.failsafes {
            edges(failsafe.port.proto, failsafe.port.first, failsafe.port.last);
        }
        for rule in &spec.rules {
            for p in &rule.ports {
                edges(p.proto, p.first, p.last);
            }
        }
        let listeners = spec
            .segments
            .iter()
            .flat_map(|s| &s.ports)
            .flat_map(|p| (p.first..=p.last).map(move |port| (p.proto, port)))
            .collect();
        let failsafes = spec
            .failsafes
            .iter()
            .map(|f| (f.from.clone(), f.port.proto, f.port.first, f.port.last))
            .collect();
        Self {
            nets: all_nets(spec),
            ports,
            listeners,
            failsafes,
        }
    }

    /// An address at the edge of, inside or just outside a prefix of the policy.
    fn near_net(&self, rng: &mut Rng, net: &Net) -> Addr {
        match rng.below(6) {
            0 => net.first(),
            1 => net.last(),
            2 => net.first().offset(-1),
            3 => net.last().offset(1),
            _ => net.at(rng.u128()),
        }
    }

    /// An IPv4 address (as bits) near one of the policy's prefixes: IPv4 ones, and the
    /// IPv4 part of mapped and compatible ones.
    fn v4(&self, rng: &mut Rng) -> u32 {
        let candidates: Vec<&Net> = self
            .nets
            .iter()
            .filter(|n| n.addr.family == Family::V4 || n.len >= 96)
            .collect();
        if candidates.is_empty() || rng.chance(10) {
            return rng.u32();
        }
        let net = *rng.pick(&candidates);
        let addr = self.near_net(rng, net);
        addr.bits as u32
    }

    fn v6(&self, rng: &mut Rng) -> Addr {
        let candidates: Vec<&Net> = self
            .nets
            .iter()
            .filter(|n| n.addr.family == Family::V6)
            .collect();
        if candidates.is_empty() || rng.chance(10) {
            return Addr::v6(rng.u128());
        }
        let net = *rng.pick(&candidates);
        self.near_net(rng, net)
    }

    /// A random source address in any of the forms a frame can carry.
    fn source(&self, rng: &mut Rng) -> Addr {
        match rng.below(100) {
            0..45 => Addr::v4(self.v4(rng)),
            45..75 => self.v6(rng),
            75..92 => Addr::mapped(self.v4(rng)),
            _ => Addr::compatible(self.v4(rng)),
        }
    }

    fn destination(rng: &mut Rng, family: Family) -> Addr {
        match (family, rng.below(3)) {
            (Family::V4, 0) => Addr::v4(0xc612_0001),
            (Family::V4, 1) => Addr::v4(0xc612_0000 | (rng.u32() & 0x1_ffff)),
            (Family::V4, _) => Addr::v4(rng.u32()),
            (Family::V6, 0) => Addr::v6((0x2001_0db8_u128 << 96) | 1),
            (Family::V6, 1) => Addr::mapped(rng.u32()),
            (Family::V6, _) => Addr::v6(rng.u128()),
        }
    }

    /// A random probe: mostly well-formed new flows, some that are not new, a few
    /// malformed.
    pub fn probe(&self, rng: &mut Rng) -> Probe {
        let mut src = self.source(rng);
        let roll = rng.below(100);
        let (proto, dport) = if roll < 12 && !self.failsafes.is_empty() {
            // At a failsafe: near one of its prefixes, on or next to its ports.
            let (nets, proto, first, last) = rng.pick(&self.failsafes);
            let net = rng.pick(nets);
            src = self.near_net(rng, net);
            if src.family == Family::V4 && rng.chance(25) {
                src = Addr::mapped(src.bits as u32);
            }
            let port = match rng.below(4) {
                0 => first.saturating_sub(1),
                1 => last.saturating_add(1),
                _ => first + rng.below(usize::from(last - first) + 1) as u16,
            };
            (*proto, port)
        } else if roll < 40 && !self.listeners.is_empty() {
            *rng.pick(&self.listeners)
        } else if roll < 88 {
            let (proto, port) = *rng.pick(&self.ports);
            let proto = if rng.chance(80) {
                proto
            } else {
                [Proto::Tcp, Proto::Udp][rng.below(2)]
            };
            (proto, port)
        } else {
            ([Proto::Tcp, Proto::Udp][rng.below(2)], rng.port())
        };
        let mut probe = Probe {
            src,
            dst: Self::destination(rng, src.family),
            proto,
            sport: rng.port(),
            dport,
            tcp_flags: if rng.chance(20) { SYN | 0x08 } else { SYN },
            vlans: Vec::new(),
            ipv4_option_words: 0,
            ipv4_fragment_offset: 0,
            extensions: Vec::new(),
            payload: if rng.chance(20) { rng.below(40) } else { 0 },
            padding: if rng.chance(15) { rng.below(30) } else { 0 },
            truncate_to: None,
        };
        if rng.chance(10) {
            let tpids = [0x8100, 0x88a8];
            probe.vlans = (0..1 + rng.below(2))
                .map(|_| (*rng.pick(&tpids), rng.below(4096) as u16))
                .collect();
        }
        match src.family {
            Family::V4 if rng.chance(10) => probe.ipv4_option_words = 1 + rng.below(10) as u8,
            Family::V6 if rng.chance(15) => {
                probe.extensions = (0..1 + rng.below(6)).map(|_| extension(rng)).collect();
            }
            _ => {}
        }
        match rng.below(100) {
            // Not new: established TCP, a reply, or a later fragment.
            0..4 if proto == Proto::Tcp => {
                probe.tcp_flags = *rng.pick(&[ACK, SYN | ACK, 0x01 | ACK, 0x04, 0]);
            }
            4..6 => match src.family {
                Family::V4 => probe.ipv4_fragment_offset = 1 + rng.below(100) as u16,
                Family::V6 => {
                    // Within the parser's bound, so that the fragment header is reached.
                    probe.extensions.truncate(5);
                    probe.extensions.push(Extension {
                        kind: 44,
                        len: 1 + rng.below(100) as u8,
                    });
                }
            },
            // Malformed: cut inside the headers, a third VLAN tag, a seventh extension.
            6..9 => {
                let (_, headers) = probe.frame();
                probe.truncate_to = Some(14 + rng.below(headers - 14));
            }
            9 => probe.vlans = vec![(0x8100, 0); 3],
            10 if src.family == Family::V6 => {
                probe.extensions = (0..7).map(|_| extension(rng)).collect();
            }
            _ => {}
        }
        probe
    }
}

/// A random extension header that lets parsing go on (a first fragment at most).
fn extension(rng: &mut Rng) -> Extension {
    match rng.below(5) {
        0 => Extension {
            kind: 0,
            len: rng.below(3) as u8,
        },
        1 => Extension {
            kind: 43,
            len: rng.below(3) as u8,
        },
        2 => Extension {
            kind: 60,
            len: rng.below(3) as u8,
        },
        3 => Extension {
            kind: 51,
            len: 1 + rng.below(4) as u8,
        },
        _ => Extension { kind: 44, len: 0 },
    }
}
