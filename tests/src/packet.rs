//! Hand-built frames for running the XDP program through `BPF_PROG_TEST_RUN`.
//! Checksums are left zero: the program does not check them.

use std::net::{Ipv4Addr, Ipv6Addr};

/// TCP SYN flag.
pub const SYN: u8 = 0x02;
/// TCP ACK flag.
pub const ACK: u8 = 0x10;
/// XDP_DROP.
pub const XDP_DROP: u32 = 1;
/// XDP_PASS.
pub const XDP_PASS: u32 = 2;

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// A TCP header to `dport` with `flags`.
pub fn tcp_header(dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

/// A UDP header to `dport`.
pub fn udp_header(dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&8u16.to_be_bytes());
    h
}

/// An IPv4 frame from `src` carrying `transport` (protocol `proto`), with the header
/// length field set to `ihl` 32-bit words and the fragment offset to `fragment_offset`.
pub fn ipv4_with(
    src: Ipv4Addr,
    proto: u8,
    transport: &[u8],
    ihl: u8,
    fragment_offset: u16,
) -> Vec<u8> {
    let mut frame = ethernet(0x0800);
    let header_len = usize::from(ihl.max(5)) * 4;
    let mut ip = vec![0u8; header_len];
    ip[0] = (4 << 4) | ihl;
    ip[2..4].copy_from_slice(
        &u16::try_from(header_len + transport.len())
            .expect("small")
            .to_be_bytes(),
    );
    ip[6..8].copy_from_slice(&(fragment_offset & 0x1fff).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&[198, 18, 0, 1]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(transport);
    frame
}

/// A well-formed IPv4 TCP frame.
pub fn tcp4(src: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    ipv4_with(src, 6, &tcp_header(dport, flags), 5, 0)
}

/// A well-formed IPv4 TCP frame from `src`, source port `sport`.
pub fn tcp4_from(src: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = tcp_header(dport, flags);
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    ipv4_with(src, 6, &tcp, 5, 0)
}

/// A well-formed IPv4 UDP frame.
pub fn udp4(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    ipv4_with(src, 17, &udp_header(dport), 5, 0)
}

/// An IPv6 frame from `src` whose payload passes through extension headers of the given
/// types (0 hop-by-hop, 43 routing, 60 destination options, 44 fragment) before
/// `transport` with protocol `proto`.
pub fn ipv6_with(src: Ipv6Addr, extensions: &[u8], proto: u8, transport: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(0x86dd);
    let mut payload = Vec::new();
    for (i, kind) in extensions.iter().enumerate() {
        let next = extensions.get(i + 1).copied().unwrap_or(proto);
        // Every extension here is 8 bytes: next header, length 0 (8-byte units minus one).
        payload.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
        if *kind == 44 {
            // A first fragment: offset 0, more-fragments set.
            let at = payload.len() - 8;
            payload[at + 3] = 1;
        }
    }
    payload.extend_from_slice(transport);
    let mut ip = vec![0u8; 40];
    ip[0] = 6 << 4;
    ip[4..6].copy_from_slice(&u16::try_from(payload.len()).expect("small").to_be_bytes());
    ip[6] = extensions.first().copied().unwrap_or(proto);
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&payload);
    frame
}

/// A well-formed IPv6 TCP frame.
pub fn tcp6(src: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    ipv6_with(src, &[], 6, &tcp_header(dport, flags))
}

/// The same frame with 802.1Q tags (outermost first) inserted after the MAC addresses.
pub fn with_vlans(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (tpid, vid) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// A frame of another ethertype (ARP here).
pub fn arp() -> Vec<u8> {
    let mut frame = ethernet(0x0806);
    frame.extend_from_slice(&[0u8; 28]);
    frame
}
