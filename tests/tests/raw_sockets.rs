//! `socket()` at the cgroup sock_create hook: a process of a segment cannot open a raw
//! socket (it passes neither the connect nor the sendmsg hook) unless its segment is
//! granted `raw_sockets`; audit mode lets it through and records `audit`; processes in no
//! segment are not governed. ICMP ping sockets may be opened, and every echo request one
//! sends is decided by the rules (`echo/icmp`, `echo/icmpv6`) as it leaves. A SYN forged
//! onto loopback, which the per-socket layer takes as decided at a local sender, needs a
//! packet socket (root or `CAP_NET_RAW`; not refused by the enforcer) or a granted raw
//! socket.

use std::net::{IpAddr, SocketAddr};

use enforcer_common::event::{Hook, Verdict};
use enforcer_tests::{
    cgroup::TestCgroup,
    cmd::run,
    events::{decided_by, drain, segment_id},
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, Spawn},
};

const EPERM: i32 = 1;

fn raw_socket(cgroup: &TestCgroup, v6: bool) -> Outcome {
    let addr: SocketAddr = if v6 {
        "[2001:db8::1]:0".parse().expect("valid")
    } else {
        "198.18.0.1:0".parse().expect("valid")
    };
    Spawn::raw_socket(addr).cgroup(cgroup).run()
}

/// Three segments under one attached parent cgroup: `locked` (no grant), `tools`
/// (`raw_sockets = true`), `trial` (audit mode), and a cgroup in no segment.
struct Fixture {
    // Field order is drop order: the loader (and its links) goes before the cgroups.
    _loader: enforcer::loader::Loader,
    events: enforcer::loader::EventReader,
    image: enforcer::policy::image::MapImage,
    locked: TestCgroup,
    tools: TestCgroup,
    trial: TestCgroup,
    unsegmented: TestCgroup,
    _parent: TestCgroup,
}

fn fixture() -> Fixture {
    let parent = TestCgroup::new();
    let locked = parent.child("locked.service");
    let tools = parent.child("tools.service");
    let trial = parent.child("trial.service");
    let unsegmented = parent.child("other.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.locked]
cgroups = ["{}"]

[segments.tools]
cgroups = ["{}"]
raw_sockets = true

[segments.trial]
cgroups = ["{}"]
mode = "audit"

[[allow]]
id = "tools-ping"
from = ["tools"]
to = ["*"]
ports = ["echo/icmp", "echo/icmpv6"]
"#,
        locked.relative_path(),
        tools.relative_path(),
        trial.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    Fixture {
        _loader: loader,
        events,
        image,
        locked,
        tools,
        trial,
        unsegmented,
        _parent: parent,
    }
}

#[test]
fn raw_sockets_are_refused_to_segments_without_the_grant() {
    let mut fx = fixture();
    for v6 in [false, true] {
        let refused = raw_socket(&fx.locked, v6);
        assert!(
            matches!(refused, Outcome::Error { errno, .. } if errno == EPERM),
            "a raw socket in `locked` (v6: {v6}) should get EPERM, got {refused:?}"
        );
        assert_eq!(raw_socket(&fx.tools, v6), Outcome::Ok, "granted (v6: {v6})");
        assert_eq!(
            raw_socket(&fx.trial, v6),
            Outcome::Ok,
            "audit mode (v6: {v6})"
        );
        assert_eq!(raw_socket(&fx.unsegmented, v6), Outcome::Ok, "no segment");
    }

    let recorded: Vec<_> = drain(&mut fx.events)
        .into_iter()
        .filter(|e| e.hook == Hook::SockCreate as u8)
        .collect();
    let verdicts = |segment: &str| -> Vec<u8> {
        let id = segment_id(&fx.image, segment);
        recorded
            .iter()
            .filter(|e| e.src_segment == id)
            .map(|e| e.verdict)
            .collect()
    };
    assert_eq!(verdicts("locked"), [Verdict::Deny as u8; 2]);
    assert_eq!(verdicts("tools"), [Verdict::Allow as u8; 2]);
    assert_eq!(verdicts("trial"), [Verdict::Audit as u8; 2]);
    assert_eq!(
        recorded.len(),
        6,
        "nothing recorded for `host`: {recorded:#?}"
    );
    assert!(
        recorded
            .iter()
            .all(|e| decided_by(&fx.image, e) == "raw-socket")
    );
}

#[test]
fn every_echo_request_from_a_ping_socket_is_decided_by_the_rules() {
    // The segment's processes live in a namespace whose ping_group_range lets every
    // group open ping sockets (systemd's default). An echo request sent with `sendto`
    // (no `connect`, so no connect hook) reached any host, the reply came back; now each
    // one is decided as it leaves.
    let protected = Netns::new();
    let veth = Veth::new(&protected);
    run(
        "ip",
        &[
            "netns",
            "exec",
            protected.name(),
            "sh",
            "-c",
            "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range",
        ],
    );
    let mut fx = fixture();

    let ping = |cgroup: &TestCgroup, to: IpAddr| {
        Spawn::ping(SocketAddr::new(to, 0))
            .netns(&protected)
            .cgroup(cgroup)
            .run()
    };
    for to in [IpAddr::from(veth.host_v4), IpAddr::from(veth.host_v6)] {
        // The path works: a process in no segment gets its reply.
        assert_eq!(
            ping(&fx.unsegmented, to),
            Outcome::Ok,
            "no segment, to {to}"
        );
        // Dropped as it leaves: IPv4's ping `sendto()` reports it with EPERM; IPv6's
        // ignores the error, and no reply ever comes.
        let refused = ping(&fx.locked, to);
        if to.is_ipv4() {
            assert!(
                refused.is_eperm(),
                "an echo request from `locked` (to {to}) should get EPERM, got {refused:?}"
            );
        } else {
            assert_eq!(refused, Outcome::Timeout, "from `locked` to {to}");
        }
        assert_eq!(
            ping(&fx.tools, to),
            Outcome::Ok,
            "a rule allows it, to {to}"
        );
        assert_eq!(ping(&fx.trial, to), Outcome::Ok, "audit mode, to {to}");
    }

    let recorded = drain(&mut fx.events);
    assert!(
        recorded.iter().all(|e| e.hook == Hook::SkbEgress as u8),
        "a ping socket is not refused at socket(): {recorded:#?}"
    );
    let by_segment = |segment: &str| -> Vec<(u8, u16, u8, String)> {
        let id = segment_id(&fx.image, segment);
        let mut found: Vec<_> = recorded
            .iter()
            .filter(|e| e.src_segment == id)
            .map(|e| (e.protocol, e.dst_port, e.verdict, decided_by(&fx.image, e)))
            .collect();
        found.sort_unstable();
        found
    };
    // Each record carries the protocol and the request's type in place of the port.
    let (deny, allow, audit) = (
        Verdict::Deny as u8,
        Verdict::Allow as u8,
        Verdict::Audit as u8,
    );
    let rule = |name: &str| name.to_owned();
    assert_eq!(
        by_segment("locked"),
        [
            (1, 8, deny, rule("default-deny")),
            (58, 128, deny, rule("default-deny"))
        ]
    );
    assert_eq!(
        by_segment("tools"),
        [
            (1, 8, allow, rule("tools-ping")),
            (58, 128, allow, rule("tools-ping"))
        ]
    );
    assert_eq!(
        by_segment("trial"),
        [
            (1, 8, audit, rule("default-deny")),
            (58, 128, audit, rule("default-deny"))
        ]
    );
    assert_eq!(recorded.len(), 6, "nothing for `host`: {recorded:#?}");
}

/// The listener port of [`a_forged_loopback_syn_needs_a_packet_socket_or_a_granted_raw_socket`].
const FORGED_TO: u16 = 18_470;

/// One forged SYN ([`Spawn::attack_script`] `forge-syn`): through `via`, from `src` and
/// local port `sport` to `dst`:[`FORGED_TO`], by a process of `cgroup` in `netns`, as
/// `nobody` (no capabilities) or as root.
fn forge_syn(
    netns: &Netns,
    cgroup: &TestCgroup,
    via: &str,
    (src, dst): (&str, &str),
    sport: u16,
    as_nobody: bool,
) -> Outcome {
    let (dport, sport) = (FORGED_TO.to_string(), sport.to_string());
    let mut args = vec!["forge-syn", via, src, dst, &dport, &sport];
    if as_nobody {
        args.push("nobody");
    }
    Spawn::attack_script(&args)
        .netns(netns)
        .cgroup(cgroup)
        .run()
}

/// A packet that arrives on loopback is taken as decided at its local sender's
/// `connect()`: a SYN that no socket sent (no sender found) passes the per-socket layer
/// undecided. Putting one on `lo` needs a raw IP socket or a packet socket. This shows
/// what stands in the way of each, on a SYN to a listener of `server`, which the policy
/// denies every other segment and `world`:
/// - a raw IP socket is refused (EPERM, recorded `raw-socket`) to `forger`, a segment
///   without the `raw_sockets` grant, root or not;
/// - a packet socket (`AF_PACKET`, `SOCK_RAW` and `SOCK_DGRAM`) is refused to `forger`
///   only by the kernel, without `CAP_NET_RAW` (as `nobody`); as root, `forger` gets one
///   (the enforcer does not refuse packet sockets: the open AF_PACKET item of
///   docs/threat-model.md), and the SYN it puts on `lo`, from an address of no local
///   socket, reaches the listener (its SYN-ACK comes back) undecided and unrecorded;
/// - `tools`, granted `raw_sockets`, builds a SYN "from" `127.0.0.1` on a raw socket,
///   and it reaches the listener undecided too: the grant trusts the segment with that.
///
/// The flows run in a namespace of the test's own, whose loopback holds the service's
/// address (198.18.x.1) and routes the forged sources' network (198.19.x.0/24), none of
/// whose addresses is local: a SYN from `127.0.0.0/8` or from a local address that a
/// packet socket puts on `lo` is a martian, which the kernel drops before any socket
/// sees it, and a listener drops a SYN it has no route to answer. The route stands for a
/// host's default route; the packet socket sees the SYN-ACK leave on `lo`.
#[test]
fn a_forged_loopback_syn_needs_a_packet_socket_or_a_granted_raw_socket() {
    let netns = Netns::new();
    let third = (std::process::id() % 250).to_string();
    let service = format!("198.18.{third}.1");
    let forged_from = format!("198.19.{third}.2");
    netns.ip(&["addr", "add", &format!("{service}/32"), "dev", "lo"]);
    netns.ip(&["route", "add", &format!("198.19.{third}.0/24"), "dev", "lo"]);
    let parent = TestCgroup::new();
    let forger = parent.child("forger.service");
    let tools = parent.child("tools.service");
    let server = parent.child("server.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.forger]
cgroups = ["{}"]

[segments.tools]
cgroups = ["{}"]
raw_sockets = true

[segments.server]
cgroups = ["{}"]
ports = ["{FORGED_TO}/tcp"]
"#,
        forger.relative_path(),
        tools.relative_path(),
        server.relative_path(),
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let listener = Spawn::tcp_server(SocketAddr::new(
        service.parse().expect("an address"),
        FORGED_TO,
    ))
    .netns(&netns)
    .cgroup(&server)
    .serve();
    // Control: the policy denies `forger` the listener.
    let connect = Spawn::tcp_client(listener.addr)
        .netns(&netns)
        .cgroup(&forger)
        .run();
    assert!(connect.is_eperm(), "forger's connect(): {connect:?}");

    let eperm = |outcome: Outcome, what: &str| {
        assert!(
            matches!(outcome, Outcome::Error { errno, .. } if errno == EPERM),
            "{what}: EPERM expected, got {outcome:?}"
        );
    };
    let from_packet_socket = (forged_from.as_str(), service.as_str());
    let from_loopback = ("127.0.0.1", service.as_str());
    // Without the grant: no raw IP socket, root or not.
    for as_nobody in [false, true] {
        eperm(
            forge_syn(&netns, &forger, "raw-ip", from_loopback, 41_001, as_nobody),
            "a raw IP socket in `forger`",
        );
    }
    // A packet socket: the kernel's capability check is all that refuses it.
    for (via, sport) in [("packet-raw", 41_002), ("packet-dgram", 41_003)] {
        eperm(
            forge_syn(&netns, &forger, via, from_packet_socket, sport, true),
            &format!("{via} in `forger` without CAP_NET_RAW"),
        );
        assert_eq!(
            forge_syn(&netns, &forger, via, from_packet_socket, sport, false),
            Outcome::Ok,
            "{via} in `forger` as root (the open AF_PACKET item): the forged SYN reaches \
             the listener"
        );
    }
    // With the grant, a raw socket forges a local sender no hook decided.
    assert_eq!(
        forge_syn(&netns, &tools, "raw-ip", from_loopback, 41_004, false),
        Outcome::Ok,
        "a raw IP socket in `tools` (granted): the forged SYN reaches the listener"
    );

    let recorded = drain(&mut events);
    let to_listener: Vec<_> = recorded
        .iter()
        .filter(|e| e.dst_port == FORGED_TO)
        .collect();
    assert_eq!(
        to_listener.len(),
        1,
        "only forger's connect() is on record: {recorded:#?}"
    );
    assert_eq!(to_listener[0].hook, Hook::Connect4 as u8);
    assert!(
        recorded
            .iter()
            .all(|e| e.dst_port == FORGED_TO || e.hook == Hook::SockCreate as u8),
        "nothing but socket() and the connect() is on record: {recorded:#?}"
    );
    let raw_sockets: Vec<_> = recorded
        .iter()
        .filter(|e| e.hook == Hook::SockCreate as u8)
        .map(|e| (e.src_segment, e.verdict, decided_by(&image, e)))
        .collect();
    assert_eq!(
        raw_sockets,
        [
            (
                segment_id(&image, "forger"),
                Verdict::Deny as u8,
                "raw-socket".to_owned()
            ),
            (
                segment_id(&image, "tools"),
                Verdict::Allow as u8,
                "raw-socket".to_owned()
            ),
        ],
        "root's raw socket in `forger` refused, `tools`' granted; `nobody`'s refused \
         by the kernel first: {recorded:#?}"
    );
}
