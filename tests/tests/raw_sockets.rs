//! `socket()` at the cgroup sock_create hook: a process of a segment cannot open a raw
//! socket (it passes neither the connect nor the sendmsg hook) unless its segment is
//! granted `raw_sockets`; audit mode lets it through and records `audit`; processes in no
//! segment are not governed. ICMP ping sockets may be opened, and every echo request one
//! sends is decided by the rules (`echo/icmp`, `echo/icmpv6`) as it leaves. A SYN or a
//! datagram forged onto loopback (a packet socket's, root or `CAP_NET_RAW`, which the
//! enforcer does not refuse; a granted raw socket's), which no local socket sent, is
//! decided by its source.

use std::net::{IpAddr, SocketAddr};

use enforcer_common::{
    event::{Hook, Verdict},
    maps::SEGMENT_UNCLASSIFIED,
};
use enforcer_tests::{
    cgroup::TestCgroup,
    cmd::run,
    events::{decided_by, drain, segment_id},
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, SinkLog, Spawn},
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

/// The listener port of [`a_syn_forged_onto_loopback_is_decided_by_its_source`].
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

/// What the per-socket layer recorded of a forged SYN: its source port, verdict, source
/// segment and what decided it.
type ForgedRecord = (u16, u8, u32, String);

/// The addresses of [`a_syn_forged_onto_loopback_is_decided_by_its_source`], in a
/// namespace of the test's own: the service's (on `lo`), and forged sources in `world`
/// and in the `partner` segment's ranges, none of them local. The IPv4 sources are routed
/// through `lo` (a listener drops a SYN it has no route to answer; the route stands for a
/// host's default route, and the packet socket sees the SYN-ACK come back on `lo`); IPv6
/// turns a route through `lo` into a reject route, so no SYN-ACK ever answers an IPv6
/// forged source: what the layer decided shows in its record only.
struct ForgedAddresses {
    service: String,
    world: String,
    partner: String,
}

/// Puts [`ForgedAddresses`] of one family into `netns`: the third IPv4 byte (the 4th
/// IPv6 group) is `third`.
fn forged_addresses(netns: &Netns, third: u32, v6: bool) -> ForgedAddresses {
    if v6 {
        let addresses = ForgedAddresses {
            service: format!("2001:db8:18:{third}::1"),
            world: format!("2001:db8:19:{third}::2"),
            partner: format!("2001:db8:19:{third}:1::2"),
        };
        let service = format!("{}/128", addresses.service);
        netns.ip(&["addr", "add", &service, "dev", "lo"]);
        return addresses;
    }
    let addresses = ForgedAddresses {
        service: format!("198.18.{third}.1"),
        world: format!("198.19.{third}.2"),
        partner: format!("198.19.{third}.18"),
    };
    let service = format!("{}/32", addresses.service);
    netns.ip(&["addr", "add", &service, "dev", "lo"]);
    let routed = format!("198.19.{third}.0/24");
    netns.ip(&["route", "add", &routed, "dev", "lo"]);
    addresses
}

/// A packet that arrives on loopback is taken as decided at its local sender's
/// `connect()`, the sender found by a socket lookup of the packet's addresses and ports.
/// A SYN that no socket sent (none found) is decided here instead: from an address that
/// is not this host's, as a remote SYN by its source's segment; from a local one
/// (loopback, an address of this host), as an unclassified sender's. Putting one on `lo`
/// needs a raw IP socket or a packet socket. On a SYN to a listener of `server`, which
/// the policy denies every segment but `partner` (a CIDR segment):
/// - a raw IP socket is refused (EPERM, recorded `raw-socket`) to `forger`, a segment
///   without the `raw_sockets` grant, root or not;
/// - a packet socket (`AF_PACKET`, `SOCK_RAW` and `SOCK_DGRAM`) is refused to `forger`
///   only by the kernel, without `CAP_NET_RAW` (as `nobody`); as root, `forger` gets one
///   (the enforcer does not refuse packet sockets: the open AF_PACKET item of
///   docs/threat-model.md), but the SYN it puts on `lo` from a `world` address is
///   dropped (no SYN-ACK) and recorded at `skb_ingress` (`default-deny`, IPv4 and IPv6),
///   and one from a `partner` address passes (IPv4: the SYN-ACK comes back) and is
///   recorded, allowed by `partner`'s rule, as a remote SYN would be; one from `::1`
///   (IPv6 lets a packet socket put a loopback source on `lo`) is dropped and recorded
///   `unclassified`, and so is one that names a listener's address and port as its
///   source (a listener sends no SYN);
/// - `tools`, granted `raw_sockets`, builds a SYN "from" `127.0.0.1` on a raw socket: no
///   socket sent it, so it is dropped and recorded `unclassified` too.
///
/// IPv4 sources of `127.0.0.0/8` or of this host's addresses put on `lo` by a packet
/// socket are martians, which the kernel drops before any socket sees them.
#[test]
fn a_syn_forged_onto_loopback_is_decided_by_its_source() {
    let netns = Netns::new();
    let third = std::process::id() % 250;
    let v4 = forged_addresses(&netns, third, false);
    let v6 = forged_addresses(&netns, third, true);
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

[segments.partner]
cidrs = ["198.19.{third}.16/28", "2001:db8:19:{third}:1::/80"]

[[allow]]
id = "partner-in"
from = ["partner"]
to = ["server"]
ports = ["{FORGED_TO}/tcp"]
"#,
        forger.relative_path(),
        tools.relative_path(),
        server.relative_path(),
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let listen = |address: &str| {
        Spawn::tcp_server(SocketAddr::new(
            address.parse().expect("an address"),
            FORGED_TO,
        ))
        .netns(&netns)
        .cgroup(&server)
        .serve()
    };
    let (listener, _listener_v6) = (listen(&v4.service), listen(&v6.service));
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
    // Without the grant: no raw IP socket, root or not.
    for as_nobody in [false, true] {
        eperm(
            forge_syn(
                &netns,
                &forger,
                "raw-ip",
                ("127.0.0.1", &v4.service),
                41_001,
                as_nobody,
            ),
            "a raw IP socket in `forger`",
        );
    }
    let mut sport = 41_010;
    let mut forged = |via: &str, src: &str, dst: &str, as_nobody: bool| {
        sport += 1;
        (
            sport,
            forge_syn(&netns, &forger, via, (src, dst), sport, as_nobody),
        )
    };
    let mut expected: Vec<ForgedRecord> = Vec::new();
    let (world, partner) = (segment_id(&image, "world"), segment_id(&image, "partner"));
    let deny = |sport: u16, src: u32, by: &str| (sport, Verdict::Deny as u8, src, by.to_owned());
    for family in [&v4, &v6] {
        // A packet socket: the kernel's capability check is all that refuses it, ...
        for via in ["packet-raw", "packet-dgram"] {
            let (_, refused) = forged(via, &family.world, &family.service, true);
            eperm(refused, &format!("{via} in `forger` without CAP_NET_RAW"));
            // ... but the SYN it forges is decided as from its source.
            let (sport, outcome) = forged(via, &family.world, &family.service, false);
            assert_eq!(
                outcome,
                Outcome::Timeout,
                "{via} in `forger` as root, from {} (world): dropped",
                family.world
            );
            expected.push(deny(sport, world, "default-deny"));
        }
        let (sport, outcome) = forged("packet-raw", &family.partner, &family.service, false);
        let answered = if family.partner.contains(':') {
            Outcome::Timeout
        } else {
            Outcome::Ok
        };
        assert_eq!(
            outcome, answered,
            "from {} (partner): allowed, as a remote SYN (answered when routed)",
            family.partner
        );
        expected.push((
            sport,
            Verdict::Allow as u8,
            partner,
            "partner-in".to_owned(),
        ));
    }
    // IPv6 lets a packet socket put a loopback source on `lo`; no socket sent the SYN.
    let (sport, outcome) = forged("packet-dgram", "::1", &v6.service, false);
    assert_eq!(outcome, Outcome::Timeout, "from ::1, no sender: dropped");
    expected.push(deny(sport, SEGMENT_UNCLASSIFIED, "unclassified"));
    // Nor is a listener one, of no segment here, whose address and port the SYN names as
    // its source (the sender's lookup falls back to listeners): only `connect()` sends a
    // SYN.
    let bystander = Spawn::tcp_server("[::1]:0".parse().expect("an address"))
        .netns(&netns)
        .serve();
    let named = bystander.addr.port();
    assert_eq!(
        forge_syn(
            &netns,
            &forger,
            "packet-dgram",
            ("::1", &v6.service),
            named,
            false
        ),
        Outcome::Timeout,
        "from [::1]:{named}, a listener's: dropped"
    );
    expected.push(deny(named, SEGMENT_UNCLASSIFIED, "unclassified"));
    // With the grant, a raw socket forges a local sender that no socket is.
    assert_eq!(
        forge_syn(
            &netns,
            &tools,
            "raw-ip",
            ("127.0.0.1", &v4.service),
            41_004,
            false
        ),
        Outcome::Timeout,
        "a raw IP socket in `tools` (granted): the SYN it forges from 127.0.0.1 is dropped"
    );
    expected.push(deny(41_004, SEGMENT_UNCLASSIFIED, "unclassified"));

    let recorded = drain(&mut events);
    let to_listener: Vec<_> = recorded
        .iter()
        .filter(|e| e.dst_port == FORGED_TO)
        .collect();
    assert_eq!(
        to_listener.first().map(|e| e.hook),
        Some(Hook::Connect4 as u8),
        "forger's connect() first: {recorded:#?}"
    );
    let mut forged_records: Vec<ForgedRecord> = to_listener[1..]
        .iter()
        .map(|e| {
            assert_eq!(e.hook, Hook::SkbIngress as u8, "{e:#?}");
            assert_eq!(e.dst_segment, segment_id(&image, "server"), "{e:#?}");
            (e.src_port, e.verdict, e.src_segment, decided_by(&image, e))
        })
        .collect();
    forged_records.sort();
    expected.sort();
    assert_eq!(
        forged_records, expected,
        "each forged SYN root put on `lo` decided and recorded once, at skb_ingress: \
         {recorded:#?}"
    );
    assert!(
        recorded
            .iter()
            .all(|e| e.dst_port == FORGED_TO || e.hook == Hook::SockCreate as u8),
        "nothing but socket() and the SYNs to the listener is on record: {recorded:#?}"
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

/// A datagram no UDP socket sent, put on `lo` by a root process of `forger` with a packet
/// socket, takes the same path as a forged SYN
/// ([`a_syn_forged_onto_loopback_is_decided_by_its_source`]): to a UDP server of `server`,
/// which the policy opens to `partner` only, one from a `world` address is dropped and
/// recorded `default-deny`, one from a `partner` address arrives, recorded allowed by
/// `partner`'s rule, one from `::1` is dropped and recorded `unclassified` (IPv4 and
/// IPv6 but `::1`, which only IPv6 lets a packet socket put on `lo`).
#[test]
fn a_datagram_forged_onto_loopback_is_decided_by_its_source() {
    let netns = Netns::new();
    let third = std::process::id() % 250;
    let v4 = forged_addresses(&netns, third, false);
    let v6 = forged_addresses(&netns, third, true);
    let parent = TestCgroup::new();
    let forger = parent.child("forger.service");
    let server = parent.child("server.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.forger]
cgroups = ["{}"]

[segments.server]
cgroups = ["{}"]
ports = ["{FORGED_TO}/udp"]

[segments.partner]
cidrs = ["198.19.{third}.16/28", "2001:db8:19:{third}:1::/80"]

[[allow]]
id = "partner-in"
from = ["partner"]
to = ["server"]
ports = ["{FORGED_TO}/udp"]
"#,
        forger.relative_path(),
        server.relative_path(),
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let port = FORGED_TO.to_string();
    let sink = |address: &str, log: &SinkLog| {
        Spawn::attack_script(&["udp-sink", address, &port, log.path()])
            .netns(&netns)
            .cgroup(&server)
            .serve()
    };
    let (log_v4, log_v6) = (SinkLog::new(), SinkLog::new());
    let _sinks = (sink(&v4.service, &log_v4), sink(&v6.service, &log_v6));
    let forge = |src: &str, dst: &str, sport: u16| {
        let sport = sport.to_string();
        let sent = Spawn::attack_script(&["forge-udp", src, dst, &port, &sport])
            .netns(&netns)
            .cgroup(&forger)
            .run();
        assert_eq!(sent, Outcome::Ok, "forged from {src}");
    };
    // The refused ones first: once the allowed ones have arrived, so would they have.
    forge(&v4.world, &v4.service, 42_001);
    forge(&v6.world, &v6.service, 42_002);
    forge("::1", &v6.service, 42_003);
    forge(&v4.partner, &v4.service, 42_004);
    forge(&v6.partner, &v6.service, 42_005);
    let arrived = |log: &SinkLog| {
        let first = log.sources(std::time::Duration::from_secs(2));
        std::thread::sleep(std::time::Duration::from_millis(200));
        let later = log.sources(std::time::Duration::ZERO);
        assert_eq!(later, first, "nothing more arrives");
        first
    };
    assert_eq!(arrived(&log_v4), [format!("{} 42004", v4.partner)]);
    assert_eq!(arrived(&log_v6), [format!("{} 42005", v6.partner)]);

    let recorded = drain(&mut events);
    let mut forged_records: Vec<ForgedRecord> = recorded
        .iter()
        .filter(|e| e.dst_port == FORGED_TO)
        .map(|e| {
            assert_eq!((e.hook, e.protocol), (Hook::SkbIngress as u8, 17), "{e:#?}");
            (e.src_port, e.verdict, e.src_segment, decided_by(&image, e))
        })
        .collect();
    forged_records.sort();
    let (world, partner) = (segment_id(&image, "world"), segment_id(&image, "partner"));
    let (deny, allow) = (Verdict::Deny as u8, Verdict::Allow as u8);
    let by = |what: &str| what.to_owned();
    assert_eq!(
        forged_records,
        [
            (42_001, deny, world, by("default-deny")),
            (42_002, deny, world, by("default-deny")),
            (42_003, deny, SEGMENT_UNCLASSIFIED, by("unclassified")),
            (42_004, allow, partner, by("partner-in")),
            (42_005, allow, partner, by("partner-in")),
        ],
        "each forged datagram decided and recorded once, at skb_ingress: {recorded:#?}"
    );
}
