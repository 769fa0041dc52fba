//! The XDP program run through `BPF_PROG_TEST_RUN` on crafted frames: every header
//! truncated at every offset, bad IHL, long IPv6 extension chains, VLAN tags, non-IP, and
//! the policy verdicts for new and established flows.

use std::net::{Ipv4Addr, Ipv6Addr};

use enforcer::loader::Loader;
use enforcer_common::event::{Reason, Verdict};
use enforcer_tests::{
    events::{decided_by, drain},
    packet::{
        ACK, SYN, XDP_DROP, XDP_PASS, arp, ipv4_with, ipv6_with, tcp_header, tcp4, tcp6, udp4,
        with_vlans,
    },
    policy::{image, loaded_with},
    require_root,
};

const POLICY: &str = r#"
[failsafe.ssh]
from = ["198.18.250.0/24"]
port = "22/tcp"

[segments.clients]
cidrs = ["198.18.7.0/24", "2001:db8:7::/64"]

[segments.web]
ports = ["8080/tcp", "8081/tcp", "5353/udp"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["8080/tcp", "5353/udp"]
"#;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 5);
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const ADMIN: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 9);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 5);

fn loaded() -> Loader {
    loaded_with(&image(POLICY))
}

fn run(loader: &Loader, frame: &[u8]) -> u32 {
    loader.test_run_xdp(frame, 1).expect("test run").0
}

#[test]
fn new_flows_get_the_policy_verdict_and_established_ones_pass() {
    let loader = loaded();
    let cases: [(&str, Vec<u8>, u32); 14] = [
        ("allowed SYN", tcp4(CLIENT, 8080, SYN), XDP_PASS),
        (
            "SYN to a segment port no rule allows",
            tcp4(CLIENT, 8081, SYN),
            XDP_DROP,
        ),
        (
            "SYN to an undeclared port (host)",
            tcp4(CLIENT, 9999, SYN),
            XDP_DROP,
        ),
        ("SYN from world", tcp4(STRANGER, 8080, SYN), XDP_DROP),
        (
            "SYN+ACK (reply to our connect)",
            tcp4(STRANGER, 9999, SYN | ACK),
            XDP_PASS,
        ),
        (
            "ACK of an established flow",
            tcp4(STRANGER, 8081, ACK),
            XDP_PASS,
        ),
        ("failsafe SSH", tcp4(ADMIN, 22, SYN), XDP_PASS),
        (
            "SSH from outside the failsafe",
            tcp4(CLIENT, 22, SYN),
            XDP_DROP,
        ),
        ("allowed UDP to a listener", udp4(CLIENT, 5353), XDP_PASS),
        (
            "UDP from world to a listener",
            udp4(STRANGER, 5353),
            XDP_DROP,
        ),
        (
            "UDP to no listener (a reply)",
            udp4(STRANGER, 40_001),
            XDP_PASS,
        ),
        ("allowed IPv6 SYN", tcp6(CLIENT6, 8080, SYN), XDP_PASS),
        ("denied IPv6 SYN", tcp6(CLIENT6, 8081, SYN), XDP_DROP),
        ("non-IP", arp(), XDP_PASS),
    ];
    for (what, frame, want) in cases {
        assert_eq!(run(&loader, &frame), want, "{what}");
    }
}

#[test]
fn before_any_policy_everything_passes() {
    require_root();
    let loader = Loader::load().expect("load");
    assert_eq!(run(&loader, &tcp4(STRANGER, 8081, SYN)), XDP_PASS);
}

#[test]
fn vlan_tagged_frames_are_decided_like_untagged_ones() {
    let loader = loaded();
    for tags in [vec![(0x8100, 7)], vec![(0x88a8, 100), (0x8100, 7)]] {
        assert_eq!(
            run(&loader, &with_vlans(&tcp4(CLIENT, 8080, SYN), &tags)),
            XDP_PASS,
            "{tags:?}"
        );
        assert_eq!(
            run(&loader, &with_vlans(&tcp4(CLIENT, 8081, SYN), &tags)),
            XDP_DROP,
            "{tags:?}"
        );
    }
}

#[test]
fn ipv6_extension_headers_are_skipped_up_to_the_bound() {
    let loader = loaded();
    let tcp = tcp_header(8081, SYN);
    for chain in [&[0u8][..], &[0, 60, 43], &[0, 43, 60, 44, 60, 60]] {
        let frame = ipv6_with(CLIENT6, chain, 6, &tcp);
        assert_eq!(
            run(&loader, &frame),
            XDP_DROP,
            "denied SYN behind {chain:?}"
        );
        let frame = ipv6_with(CLIENT6, chain, 6, &tcp_header(8080, SYN));
        assert_eq!(
            run(&loader, &frame),
            XDP_PASS,
            "allowed SYN behind {chain:?}"
        );
    }
    // One more than the bound: malformed, dropped even though the SYN would be allowed.
    let frame = ipv6_with(CLIENT6, &[60; 7], 6, &tcp_header(8080, SYN));
    assert_eq!(run(&loader, &frame), XDP_DROP);
}

#[test]
fn bad_ihl_and_non_first_fragments_get_their_fixed_verdicts() {
    let loader = loaded();
    let syn = tcp_header(8080, SYN);
    assert_eq!(
        run(&loader, &ipv4_with(CLIENT, 6, &syn, 4, 0)),
        XDP_DROP,
        "IHL 4 is malformed"
    );
    assert_eq!(
        run(&loader, &ipv4_with(CLIENT, 6, &syn, 6, 0)),
        XDP_PASS,
        "IHL 6 (options) is fine"
    );
    assert_eq!(
        run(&loader, &ipv4_with(STRANGER, 6, &syn, 5, 100)),
        XDP_PASS,
        "a non-first fragment has no ports"
    );
}

#[test]
fn lying_lengths_and_wrong_versions_are_malformed() {
    let loader = loaded();
    // Every frame below is an allowed SYN but for one field, so a parser that skipped
    // that check would pass it.
    let v4 = tcp4(CLIENT, 8080, SYN);
    let v6 = tcp6(CLIENT6, 8080, SYN);
    assert_eq!(run(&loader, &v4), XDP_PASS, "the unaltered IPv4 SYN");
    assert_eq!(run(&loader, &v6), XDP_PASS, "the unaltered IPv6 SYN");
    // Ethernet is 14 bytes: the IPv4 version and header length are at 14, its total
    // length at 16; the IPv6 version at 14, its payload length at 18.
    let with = |frame: &[u8], at: usize, bytes: &[u8]| {
        let mut changed = frame.to_vec();
        changed[at..at + bytes.len()].copy_from_slice(bytes);
        changed
    };
    let ip4_len = u16::try_from(v4.len() - 14).expect("small");
    let ip6_payload = u16::try_from(v6.len() - 14 - 40).expect("small");
    let cases: [(&str, Vec<u8>); 7] = [
        (
            "IPv4 total length below the header length",
            with(&v4, 16, &16u16.to_be_bytes()),
        ),
        (
            "IPv4 header length (60) past the total length",
            with(&with(&v4, 14, &[0x4f]), 16, &40u16.to_be_bytes()),
        ),
        (
            "IPv4 datagram longer than its frame",
            with(&v4, 16, &(ip4_len + 10).to_be_bytes()),
        ),
        (
            "IPv6 payload longer than its frame",
            with(&v6, 18, &(ip6_payload + 10).to_be_bytes()),
        ),
        ("IPv6 payload length 0", with(&v6, 18, &0u16.to_be_bytes())),
        (
            "version 6 behind the IPv4 EtherType",
            with(&v4, 14, &[0x65]),
        ),
        (
            "version 4 behind the IPv6 EtherType",
            with(&v6, 14, &[0x40]),
        ),
    ];
    let passed: Vec<&str> = cases
        .iter()
        .filter(|(_, frame)| run(&loader, frame) != XDP_DROP)
        .map(|(what, _)| *what)
        .collect();
    assert!(passed.is_empty(), "passed: {passed:?}");
    // A header length past the total length on datagrams XDP lets through undecided (a
    // later fragment, a protocol it does not decide): a parser that skipped the check
    // would pass them, since it reads no transport header there. 20 bytes of payload
    // keep the frame as long as the total length claims.
    let later_fragment = ipv4_with(STRANGER, 6, &[0; 20], 5, 100);
    let gre = ipv4_with(CLIENT, 47, &[0; 20], 5, 0);
    for (what, frame) in [("a later fragment", later_fragment), ("GRE", gre)] {
        assert_eq!(run(&loader, &frame), XDP_PASS, "{what}, unaltered");
        let lying = with(&with(&frame, 14, &[0x4f]), 16, &40u16.to_be_bytes());
        assert_eq!(
            run(&loader, &lying),
            XDP_DROP,
            "{what} whose header length (60) is past its total length (40)"
        );
    }
}

#[test]
fn every_truncation_of_every_header_is_dropped() {
    let mut loader = loaded();
    let frames = [
        ("allowed IPv4 SYN", tcp4(CLIENT, 8080, SYN)),
        ("allowed IPv4 UDP", udp4(CLIENT, 5353)),
        ("allowed IPv6 SYN", tcp6(CLIENT6, 8080, SYN)),
        (
            "allowed VLAN SYN",
            with_vlans(&tcp4(CLIENT, 8080, SYN), &[(0x8100, 7)]),
        ),
        (
            "allowed IPv6 SYN behind extensions",
            ipv6_with(CLIENT6, &[0, 60], 6, &tcp_header(8080, SYN)),
        ),
    ];
    let mut truncated = 0;
    for (what, frame) in &frames {
        assert_eq!(run(&loader, frame), XDP_PASS, "{what} whole");
        // BPF_PROG_TEST_RUN needs at least an Ethernet header's worth of data.
        for len in 14..frame.len() {
            assert_eq!(
                run(&loader, &frame[..len]),
                XDP_DROP,
                "{what} cut to {len} bytes"
            );
            truncated += 1;
        }
    }

    // Each cut frame was counted as malformed, never as a decision of the rule. The whole
    // frames pass uncounted: XDP counts and records only what it drops, and the
    // per-socket layer counts what a socket receives.
    let counters = loader.counters().expect("counters");
    let malformed = counters
        .by_reason
        .iter()
        .find(|c| c.reason == Reason::Malformed && c.verdict == Verdict::Deny)
        .expect("a malformed/deny counter");
    assert_eq!(malformed.count, truncated);
    let rule = counters.rules[0];
    assert_eq!((rule.allow, rule.deny), (0, 0));
}

/// The first `keep` bytes of `frame`'s IP datagram (which starts after `l2` bytes), the
/// IP length field rewritten to say so, then `padding` bytes after it in the frame:
/// what a sender puts on the wire to make a short fragment look longer.
fn cut_datagram(frame: &[u8], l2: usize, keep: usize, padding: &[u8]) -> Vec<u8> {
    let mut out = frame[..l2 + keep].to_vec();
    if out[l2] >> 4 == 4 {
        out[l2 + 2..l2 + 4].copy_from_slice(&u16::try_from(keep).unwrap().to_be_bytes());
    } else {
        out[l2 + 4..l2 + 6].copy_from_slice(&u16::try_from(keep - 40).unwrap().to_be_bytes());
    }
    out.extend_from_slice(padding);
    out
}

#[test]
fn a_first_fragment_without_the_whole_tcp_header_is_malformed_whatever_the_padding() {
    let loader = loaded();
    // A denied SYN cut after 12 bytes of TCP header, marked "more fragments": the SYN
    // flag is in the part a later fragment brings. Ethernet padding (zeros, or bytes of
    // the sender's choosing) after the datagram must not be read as the missing header.
    let mut first = tcp4(CLIENT, 8081, SYN);
    first[14 + 6] = 0x20;
    for padding in [&[0u8; 18][..], &[0x10; 18][..], &[][..]] {
        let frame = cut_datagram(&first, 14, 20 + 12, padding);
        assert_eq!(
            run(&loader, &frame),
            XDP_DROP,
            "first fragment of 12 TCP bytes, padding {padding:?}"
        );
    }
    // The same cut without "more fragments" is a datagram too short for its header.
    let whole = tcp4(CLIENT, 8081, SYN);
    assert_eq!(
        run(&loader, &cut_datagram(&whole, 14, 20 + 12, &[0; 18])),
        XDP_DROP
    );
    // A UDP first fragment with 4 bytes of header.
    let mut udp = udp4(CLIENT, 5353);
    udp[14 + 6] = 0x20;
    assert_eq!(
        run(&loader, &cut_datagram(&udp, 14, 20 + 4, &[0; 22])),
        XDP_DROP
    );
    // Padding after a whole datagram is fine: the decision is the datagram's.
    let mut padded = tcp4(CLIENT, 8080, SYN);
    padded.extend_from_slice(&[0x10; 6]);
    assert_eq!(run(&loader, &padded), XDP_PASS, "allowed SYN, padded");
    let mut padded = tcp4(CLIENT, 8081, SYN);
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(run(&loader, &padded), XDP_DROP, "denied SYN, padded");
    // A datagram that claims more bytes than the frame holds.
    let mut long = tcp4(CLIENT, 8080, SYN);
    long[14 + 2..14 + 4].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(run(&loader, &long), XDP_DROP, "total length past the frame");
}

#[test]
fn an_ipv6_first_fragment_that_ends_inside_the_header_chain_is_malformed() {
    let loader = loaded();
    // Fragment header, then a destination-options header and the TCP header, cut so the
    // first fragment ends inside the options header (or right after it).
    let frame = ipv6_with(CLIENT6, &[44, 60], 6, &tcp_header(8081, SYN));
    for keep in [40 + 8 + 4, 40 + 8 + 8, 40 + 8 + 8 + 12] {
        for padding in [&[0u8; 24][..], &[0x10; 24][..]] {
            assert_eq!(
                run(&loader, &cut_datagram(&frame, 14, keep, padding)),
                XDP_DROP,
                "cut at {keep} of the datagram, padding {padding:?}"
            );
        }
    }
    // An options header whose length runs past the datagram, followed by "no next
    // header": a chain that cannot be finished.
    let mut frame = ipv6_with(CLIENT6, &[44, 60], 59, &[]);
    frame[14 + 40 + 8 + 1] = 4;
    assert_eq!(run(&loader, &frame), XDP_DROP, "options past the end");
    // A payload length of zero (a jumbogram claim).
    let mut frame = tcp6(CLIENT6, 8080, SYN);
    frame[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
    assert_eq!(run(&loader, &frame), XDP_DROP, "payload length 0");
}

#[test]
fn more_vlan_tags_than_the_bound_are_malformed_not_other_traffic() {
    let loader = loaded();
    // Three tags (priority tags with VID 0, 802.1Q and 802.1ad): the kernel strips them
    // all and delivers the SYN, so XDP may not wave it through as "not IP".
    for tags in [
        vec![(0x8100, 0), (0x8100, 0), (0x8100, 0)],
        vec![(0x88a8, 100), (0x8100, 7), (0x8100, 0)],
    ] {
        for port in [8080, 8081] {
            assert_eq!(
                run(&loader, &with_vlans(&tcp4(CLIENT, port, SYN), &tags)),
                XDP_DROP,
                "{tags:?} port {port}"
            );
        }
    }
    // Two priority tags are within the bound and decided like untagged frames.
    let tags = [(0x8100, 0), (0x8100, 0)];
    assert_eq!(
        run(&loader, &with_vlans(&tcp4(CLIENT, 8080, SYN), &tags)),
        XDP_PASS
    );
}

#[test]
fn the_transport_header_is_found_through_the_ipv4_header_length() {
    let loader = loaded();
    // IHL 6: four bytes of options hold what a parser ignoring the header length would
    // take for ports 40000 -> 8080 (allowed), and the real header's acknowledgement
    // number holds a SYN flag at the place that parser would read flags from. The real
    // TCP header is a SYN to 8081: denied.
    let mut tcp = tcp_header(8081, SYN);
    tcp[9] = SYN;
    let mut frame = ipv4_with(CLIENT, 6, &tcp, 6, 0);
    frame[14 + 20..14 + 24].copy_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
    assert_eq!(run(&loader, &frame), XDP_DROP);
    // The same frame with the real header aimed at 8080 passes.
    let mut tcp = tcp_header(8080, SYN);
    tcp[9] = SYN;
    let mut frame = ipv4_with(CLIENT, 6, &tcp, 6, 0);
    frame[14 + 20..14 + 24].copy_from_slice(&[0x9c, 0x40, 0x1f, 0x91]);
    assert_eq!(run(&loader, &frame), XDP_PASS);
}

#[test]
fn icmp_requests_are_decided_by_the_rules_and_the_rest_passes() {
    let image = image(&format!(
        "{POLICY}
[[allow]]
id = \"clients-ping-host\"
from = [\"clients\"]
to = [\"host\"]
ports = [\"echo/icmp\", \"echo/icmpv6\"]
"
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    // Type, code, checksum, identifier, sequence: the checksum is not checked at XDP.
    let icmp = |kind: u8| vec![kind, 0, 0, 0, 0, 1, 0, 1];
    let icmp4 = |src: Ipv4Addr, kind: u8| ipv4_with(src, 1, &icmp(kind), 5, 0);
    let icmp6 = |src: Ipv6Addr, kind: u8| ipv6_with(src, &[], 58, &icmp(kind));
    let stranger6 = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 1);
    let cases: [(&str, Vec<u8>, u32); 11] = [
        ("echo request from clients", icmp4(CLIENT, 8), XDP_PASS),
        ("echo request from world", icmp4(STRANGER, 8), XDP_DROP),
        (
            "timestamp request from clients (no rule)",
            icmp4(CLIENT, 13),
            XDP_DROP,
        ),
        ("echo reply (to our ping)", icmp4(STRANGER, 0), XDP_PASS),
        ("destination unreachable", icmp4(STRANGER, 3), XDP_PASS),
        ("time exceeded", icmp4(STRANGER, 11), XDP_PASS),
        (
            "IPv6 echo request from clients",
            icmp6(CLIENT6, 128),
            XDP_PASS,
        ),
        (
            "IPv6 echo request from world",
            icmp6(stranger6, 128),
            XDP_DROP,
        ),
        ("neighbour solicitation", icmp6(stranger6, 135), XDP_PASS),
        ("packet too big", icmp6(stranger6, 2), XDP_PASS),
        (
            "an ICMP header cut short",
            ipv4_with(STRANGER, 1, &[8, 0, 0, 0], 5, 0),
            XDP_DROP,
        ),
    ];
    for (what, frame, want) in &cases {
        assert_eq!(run(&loader, frame), *want, "{what}");
    }

    // Every request is on record, allowed or not (the kernel answers it; no socket
    // layer sees it), with its type as the port; replies and errors are not.
    let recorded = drain(&mut events);
    let requests: Vec<_> = recorded
        .iter()
        .filter(|e| e.reason != Reason::Malformed as u8)
        .map(|e| (e.protocol, e.dst_port, e.verdict, decided_by(&image, e)))
        .collect();
    let (allow, deny) = (Verdict::Allow as u8, Verdict::Deny as u8);
    assert_eq!(
        requests,
        [
            (1, 8, allow, "clients-ping-host".to_owned()),
            (1, 8, deny, "default-deny".to_owned()),
            (1, 13, deny, "default-deny".to_owned()),
            (58, 128, allow, "clients-ping-host".to_owned()),
            (58, 128, deny, "default-deny".to_owned()),
        ],
        "{recorded:#?}"
    );
}
