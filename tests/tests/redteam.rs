//! Red-team attacks on the inbound direction and on UDP exchanges, kept as regression
//! tests once closed. Each test asserts what the enforcer must do.
//!
//! Every test here failed against 864e8d2 (each was a working bypass):
//! - `a_discovery_query_does_not_open_its_socket_to_a_denied_host`: after one allowed
//!   multicast/broadcast datagram to port P, any host (one an explicit deny names
//!   included) gets unicast datagrams from source port P into that socket for 120 s,
//!   with no record.
//! - `a_reuseport_partner_does_not_get_another_segments_connections`: a same-uid
//!   `SO_REUSEPORT` partner takes over the learnt listener; its segment's connects to the
//!   port are decided as to itself and land on the other segment's socket.
//! - `a_binding_in_another_network_namespace_does_not_take_a_local_port`: learnt
//!   listeners have no network namespace in their key; a binding in a namespace of one's
//!   own (`unshare -U -r -n`) replaces another segment's, TCP and UDP.
//! - `a_reload_that_denies_a_peer_ends_the_servers_answers_to_it`: the UDP reply window
//!   outlives a reload that denies the peer (up to 120 s), unrecorded.
//!
//! - `icmp_errors_do_not_carry_a_denied_hosts_bytes_into_a_segment_socket`: an ICMP
//!   error from a denied host, quoting a datagram "from" a segment's UDP socket that set
//!   `IP_RECVERR`, put the host's bytes on that socket's error queue, unrecorded.
//!
//! The last finding of the same red team, local addresses that are not interface
//! addresses, is a test of `local_destinations.rs`.
//!
//! Objects these tests create themselves carry the harness's prefixes with `rt` in the
//! name; the host side of the loader-driven tests is this process's namespace (addresses
//! in 198.19.250.0/30 and 2001:db8:5eed::/64, which the harness's `Veth` never uses).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use aya::programs::XdpMode;
use enforcer_common::event::{FlowEvent, Hook, Reason, Verdict};
use enforcer_tests::{
    LINK_PREFIX, PREFIX,
    cgroup::TestCgroup,
    events::{drain, segment_id},
    netns::{Netns, add_veth, address_up},
    policy::{image, loaded_with},
    probe::{Outcome, Spawn},
    script::{Log, Script},
};

// ---------------------------------------------------------------------------------------
// Harness of our own: a Python helper started in a netns and/or cgroup.

/// A helper of `tests/scripts/rt_attack.py`.
fn script(args: &[&str]) -> Script {
    Script::new("rt_attack.py", args)
}

/// [`script`] run by `unshare -U -r -n`, in a user and network namespace of its own.
fn script_in_new_netns(args: &[&str]) -> Script {
    Script::in_new_netns("rt_attack.py", args)
}

struct RtVeth {
    host_if: String,
    host_ifindex: u32,
}

const HOST4: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 2);
const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5eed, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5eed, 0, 0, 0, 0, 2);

impl RtVeth {
    /// Host side in this process's namespace, peer side in `peer`.
    fn new(peer: &Netns, tag: &str) -> Self {
        let pid = std::process::id() % 100_000;
        let host_if = format!("{LINK_PREFIX}r{}{tag}h", pid % 10_000);
        let peer_if = format!("{LINK_PREFIX}r{}{tag}p", pid % 10_000);
        add_veth(None, &host_if, peer, &peer_if);
        let mut veth = Self {
            host_if,
            host_ifindex: 0,
        };
        address_up(
            None,
            &veth.host_if,
            &[(HOST4.into(), 30), (HOST6.into(), 64)],
        );
        address_up(
            Some(peer),
            &peer_if,
            &[(PEER4.into(), 30), (PEER6.into(), 64)],
        );
        veth.host_ifindex =
            std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", veth.host_if))
                .expect("ifindex")
                .trim()
                .parse()
                .expect("number");
        veth
    }
}

impl Drop for RtVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
    }
}

fn rt_netns(tag: &str) -> Netns {
    Netns::named(&format!("{PREFIX}rt-{}-{tag}", std::process::id()))
}

fn rt_cgroup(tag: &str) -> TestCgroup {
    TestCgroup::named(&format!("{PREFIX}rt-{}-{tag}", std::process::id()))
}

fn ingress_records(events: &[FlowEvent]) -> Vec<FlowEvent> {
    events
        .iter()
        .filter(|e| {
            matches!(
                Hook::from_code(e.hook),
                Some(Hook::SkbIngress | Hook::XdpIngress)
            )
        })
        .copied()
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. A discovery datagram opens the socket to any host that uses the group's port.

/// `app` may send mDNS-style discovery to a multicast group; `evil` (the peer) is
/// explicitly denied every UDP port of `app`. After one allowed discovery datagram, the
/// peer (which is on the link, so it sees the query and its source port) sends a unicast
/// datagram from source port 5353 to the discovery socket: it must be decided (and
/// denied, and recorded) like any other datagram from `evil`.
#[test]
fn a_discovery_query_does_not_open_its_socket_to_a_denied_host() {
    let peer = rt_netns("g");
    let veth = RtVeth::new(&peer, "g");
    let parent = rt_cgroup("g");
    let app = parent.child("app.service");
    let image = image(&format!(
        r#"
[segments.app]
cgroups = ["{}"]

[segments.evil]
cidrs = ["{PEER4}/32", "{PEER6}/128"]

[[allow]]
id = "app-discovery"
from = ["app"]
to = ["multicast"]
ports = ["5353/udp"]

[[deny]]
id = "evil-to-app"
from = ["evil"]
to = ["app"]
ports = ["1-65535/udp"]
"#,
        app.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(&veth.host_if, veth.host_ifindex, XdpMode::Skb)
        .expect("attach XDP");

    let log = Log::new("group");
    // The discovery client: an ephemeral port, one query to 224.0.0.251:5353.
    let (_client, bound) = script(&[
        "group-then-listen",
        "0.0.0.0",
        "0",
        "224.0.0.251",
        "5353",
        &HOST4.to_string(),
        "4000",
        log.path(),
    ])
    .cgroup(&app)
    .serve_at();
    assert!(
        log.text().starts_with("sent"),
        "the query is allowed: {}",
        log.text()
    );
    let port = bound.port().to_string();

    // Control: from any other source port the peer is denied (and recorded).
    let sent = script(&[
        "fire-from",
        "5354",
        &HOST4.to_string(),
        &port,
        "control-5354",
    ])
    .netns(&peer)
    .run();
    assert!(sent.starts_with("ok"), "{sent}");
    // The attack: the same peer, from the group's port.
    let sent = script(&["fire-from", "5353", &HOST4.to_string(), &port, "evil-5353"])
        .netns(&peer)
        .run();
    assert!(sent.starts_with("ok"), "{sent}");
    let received = log.wait_for("evil-5353", Duration::from_millis(1500));
    let recorded = ingress_records(&drain(&mut events));
    eprintln!("received by the app socket:\n{received}");
    eprintln!("ingress records: {recorded:#?}");
    assert!(
        !received.contains("control-5354"),
        "control: the deny holds for other ports"
    );
    let evil = segment_id(&image, "evil");
    let recorded_5353 = recorded
        .iter()
        .any(|e| e.src_port == 5353 && e.src_segment == evil);
    assert!(
        !received.contains("evil-5353"),
        "BYPASS: a host of `evil` (explicitly denied) delivered a datagram to `app`'s \
         socket from source port 5353, {} ",
        if recorded_5353 {
            "recorded"
        } else {
            "with no record at all"
        }
    );
}

// ---------------------------------------------------------------------------------------
// 4. SO_REUSEPORT: one port, two segments' sockets, one learnt listener.

const REUSE_PORT: u16 = 47_123;

/// `b` serves a TCP port with `SO_REUSEPORT` (nginx, envoy, most Go servers); its
/// processes run as root, like `c`'s. `c` may talk to its own services. `c` binds the
/// same port with `SO_REUSEPORT` (same uid: allowed), which overwrites the learnt
/// listener, then connects to it: the connect is decided as `c` to `c`, while the kernel
/// spreads the connections over both sockets of the group, `b`'s included.
#[test]
fn a_reuseport_partner_does_not_get_another_segments_connections() {
    let parent = rt_cgroup("r");
    let b = parent.child("b.service");
    let c = parent.child("c.service");
    let image = image(&format!(
        r#"
[segments.b]
cgroups = ["{}"]

[segments.c]
cgroups = ["{}"]

[[allow]]
id = "c-internal"
from = ["c"]
to = ["c"]
ports = ["{REUSE_PORT}/tcp"]
"#,
        b.relative_path(),
        c.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let port = REUSE_PORT.to_string();
    let _b = script(&["reuseport-serve", "0.0.0.0", &port, "B", "20000"])
        .cgroup(&b)
        .serve();
    // Control: c cannot reach b's port while b alone serves it.
    let control = script(&["connect-names", "127.0.0.1", &port, "4"])
        .cgroup(&c)
        .run();
    assert!(!control.contains("\nB"), "control: {control}");
    // c's server may not join b's socket group: the bind is refused (EPERM).
    let joined = script(&["reuseport-serve", "0.0.0.0", &port, "C", "20000"])
        .cgroup(&c)
        .run();
    assert!(
        joined.starts_with("error 1 "),
        "c joined b's group: {joined:?}"
    );
    let answered = script(&["connect-names", "127.0.0.1", &port, "24"])
        .cgroup(&c)
        .run();
    let recorded = drain(&mut events);
    let refused_bind: Vec<_> = recorded
        .iter()
        .filter(|e| e.hook == Hook::PostBind4 as u8 && e.dst_port == REUSE_PORT)
        .collect();
    assert_eq!(refused_bind.len(), 1, "{recorded:#?}");
    assert_eq!(refused_bind[0].verdict, Verdict::Deny as u8);
    assert_eq!(refused_bind[0].reason, Reason::ListenerTaken as u8);
    let records: Vec<FlowEvent> = recorded
        .into_iter()
        .filter(|e| e.dst_port == REUSE_PORT && Hook::from_code(e.hook) == Some(Hook::Connect4))
        .collect();
    let b_id = segment_id(&image, "b");
    let c_id = segment_id(&image, "c");
    let allowed_as_c = records
        .iter()
        .filter(|e| e.verdict == Verdict::Allow as u8 && e.dst_segment == c_id)
        .count();
    let b_answers = answered.lines().filter(|l| *l == "B").count();
    eprintln!(
        "control: {control:?}\nanswers: {answered:?}\nconnect records: {} (allowed as c->c: {allowed_as_c}, \
         naming b: {})",
        records.len(),
        records.iter().filter(|e| e.dst_segment == b_id).count()
    );
    assert_eq!(
        b_answers, 0,
        "BYPASS: {b_answers} of c's connections reached b's server, recorded as c -> c"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Learnt listeners are keyed without the network namespace.

const NETNS_PORT: u16 = 47_125;

/// `b` serves a TCP port on `0.0.0.0` in this host's namespace (no `SO_REUSEPORT`, no
/// shared uid needed). `c` may talk to its own services. A process of `c` creates a
/// network namespace of its own (`unshare -U -r -n`) and binds the same port there: no
/// conflict, different namespace, but the learnt-listener key is address+port+protocol
/// only, so the binding replaces `b`'s. `c`'s client in the host namespace then connects
/// to `127.0.0.1`: decided (and recorded) as `c` to `c`, delivered to `b`.
#[test]
fn a_binding_in_another_network_namespace_does_not_take_a_local_port() {
    let parent = rt_cgroup("n");
    let b = parent.child("b.service");
    let c = parent.child("c.service");
    let image = image(&format!(
        r#"
[segments.b]
cgroups = ["{}"]

[segments.c]
cgroups = ["{}"]

[[allow]]
id = "c-internal"
from = ["c"]
to = ["c"]
ports = ["{NETNS_PORT}/tcp", "{NETNS_PORT}/udp"]
"#,
        b.relative_path(),
        c.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let port = NETNS_PORT.to_string();
    let _b = script(&["reuseport-serve", "0.0.0.0", &port, "B", "20000", "noreuse"])
        .cgroup(&b)
        .serve();
    let control = script(&["connect-names", "127.0.0.1", &port, "2"])
        .cgroup(&c)
        .run();
    assert!(!control.contains("\nB"), "control: {control}");
    // c's process in a namespace of its own binds the port there.
    let _shadow =
        script_in_new_netns(&["reuseport-serve", "0.0.0.0", &port, "C", "20000", "noreuse"])
            .cgroup(&c)
            .serve();
    let answered = script(&["connect-names", "127.0.0.1", &port, "4"])
        .cgroup(&c)
        .run();
    let records: Vec<FlowEvent> = drain(&mut events)
        .into_iter()
        .filter(|e| e.dst_port == NETNS_PORT && Hook::from_code(e.hook) == Some(Hook::Connect4))
        .collect();
    let c_id = segment_id(&image, "c");
    eprintln!(
        "control: {control:?}\nanswers: {answered:?}\nconnect records: {:?}",
        records
            .iter()
            .map(|e| (e.verdict, e.src_segment, e.dst_segment, e.rule_id))
            .collect::<Vec<_>>()
    );
    // The same for UDP: b's echo server answers c's datagrams (b's socket takes a
    // datagram that came over loopback as decided, and may answer its sender).
    let _b_udp = Spawn::udp_server(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), NETNS_PORT))
        .cgroup(&b)
        .serve();
    let udp_control = Spawn::udp_client(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), NETNS_PORT))
        .cgroup(&c)
        .run();
    let _shadow_udp = script_in_new_netns(&["udp-hold", "0.0.0.0", &port, "20000"])
        .cgroup(&c)
        .serve();
    let udp_exchange = Spawn::udp_client(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), NETNS_PORT))
        .cgroup(&c)
        .run();
    eprintln!("udp control: {udp_control:?}; udp after the shadow bind: {udp_exchange:?}");
    assert!(udp_control.is_eperm(), "udp control: {udp_control:?}");
    let b_answers = answered.lines().filter(|l| *l == "B").count();
    assert!(
        udp_exchange != Outcome::Ok,
        "BYPASS (udp): c exchanged datagrams with b's server (tcp: {b_answers} of 4 reached b)"
    );
    let as_c = records
        .iter()
        .any(|e| e.verdict == Verdict::Allow as u8 && e.dst_segment == c_id);
    assert_eq!(
        b_answers, 0,
        "BYPASS: c reached b's server {b_answers} times (recorded as allowed c -> c: {as_c})"
    );
}

// ---------------------------------------------------------------------------------------
// 6. A policy reload and the UDP reply window.

/// Under generation 1 the peer may query `app`'s UDP service, and gets its answer. The
/// operator then applies a policy that denies the peer (an explicit deny: an incident).
/// The server sends to the peer again after the reload, without a new query: the
/// reply window (`heard_until`, 120 s after the last query) is not tied to the
/// generation that allowed the query, so the datagram passes, unrecorded.
#[test]
fn a_reload_that_denies_a_peer_ends_the_servers_answers_to_it() {
    let peer = rt_netns("l");
    let veth = RtVeth::new(&peer, "l");
    let parent = rt_cgroup("l");
    let app = parent.child("app.service");
    let base = format!(
        r#"
[segments.app]
cgroups = ["{}"]
ports = ["18060/udp"]

[segments.evil]
cidrs = ["{PEER4}/32"]
"#,
        app.relative_path()
    );
    let first = image(&format!(
        "{base}\n[[allow]]\nid = \"evil-to-app\"\nfrom = [\"evil\"]\nto = [\"app\"]\nports = [\"18060/udp\"]\n"
    ));
    let second = image(&format!(
        "{base}\n[[deny]]\nid = \"incident\"\nfrom = [\"evil\"]\nto = [\"app\"]\nports = [\"1-65535/udp\"]\n\n[[deny]]\nid = \"incident-out\"\nfrom = [\"app\"]\nto = [\"evil\"]\nports = [\"1-65535/udp\"]\n"
    ));
    let mut loader = loaded_with(&first);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(&veth.host_if, veth.host_ifindex, XdpMode::Skb)
        .expect("attach XDP");

    let server_log = Log::new("late-server");
    let peer_log = Log::new("late-peer");
    let gate = Log::new("late-gate");
    let _server = script(&[
        "answer-later",
        &HOST4.to_string(),
        "18060",
        gate.path(),
        server_log.path(),
    ])
    .cgroup(&app)
    .serve();
    let _peer = script(&[
        "query-and-listen",
        &HOST4.to_string(),
        "18060",
        "45000",
        "6000",
        peer_log.path(),
    ])
    .netns(&peer)
    .serve();
    let answered = peer_log.wait_for("answer", Duration::from_millis(2000));
    assert!(
        answered.contains("answer"),
        "generation 1 allows the exchange: {answered}"
    );

    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    let applied = loader.apply(&second, &root).expect("apply generation 2");
    assert_eq!(applied.generation, 2);
    drain(&mut events);
    gate.open_gate();
    let server = server_log.wait_for("late", Duration::from_millis(2000));
    let got = peer_log.wait_for("late-answer", Duration::from_millis(1500));
    let sends: Vec<FlowEvent> = drain(&mut events)
        .into_iter()
        .filter(|e| Hook::from_code(e.hook) == Some(Hook::Sendmsg4))
        .collect();
    eprintln!("server: {server}\npeer got: {got}\nsendmsg records after the reload: {sends:#?}");
    assert!(
        !got.contains("late-answer"),
        "BYPASS: after the reload denied the peer, the server still sent it a datagram \
         ({} sendmsg records)",
        sends.len()
    );
}

// ---------------------------------------------------------------------------------------
// 5. ICMP errors carry a denied host's bytes into a segment's UDP socket.

/// `app` serves UDP with `IP_RECVERR`/`IPV6_RECVERR` (resolvers, QUIC stacks, or a
/// compromised service that wants a command channel); no rule lets the peer (`evil`) in.
/// An ICMP port-unreachable from the peer that quotes a datagram "from" the server's port
/// carries any bytes the peer chooses into the socket's error queue: past XDP, which
/// passes ICMP errors, and past the per-socket layer, for the kernel queues errors without
/// running the socket's filter. Turning the option on is refused to a segment without
/// the `icmp_errors` grant, and recorded; turning it off stays allowed. `quic`, granted,
/// gets its errors, the injected bytes included: that is what the grant means.
#[test]
fn icmp_errors_do_not_carry_a_denied_hosts_bytes_into_a_segment_socket() {
    let peer = rt_netns("i");
    let veth = RtVeth::new(&peer, "i");
    let parent = rt_cgroup("i");
    let app = parent.child("app.service");
    let quic = parent.child("quic.service");
    let image = image(&format!(
        r#"
[segments.app]
cgroups = ["{}"]
ports = ["18053/udp", "18054/udp"]

[segments.quic]
cgroups = ["{}"]
ports = ["18056/udp"]
icmp_errors = true

[segments.evil]
cidrs = ["{PEER4}/32", "{PEER6}/128"]
"#,
        app.relative_path(),
        quic.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(&veth.host_if, veth.host_ifindex, XdpMode::Skb)
        .expect("attach XDP");

    let serve = |tag: &str, addr: String, port: &str, cgroup: &TestCgroup| {
        let log = Log::new(tag);
        let server = script(&["recverr-serve", &addr, port, "6000", log.path()])
            .cgroup(cgroup)
            .serve();
        (log, server)
    };
    let (log4, _s4) = serve("icmp4", HOST4.to_string(), "18053", &app);
    let (log6, _s6) = serve("icmp6", HOST6.to_string(), "18054", &app);
    let (granted, _sq) = serve("icmpq", HOST4.to_string(), "18056", &quic);
    let inject = |server: String, port: &str, peer_addr: String, payload: &str| {
        let sent = script(&["icmp-inject", &server, port, &peer_addr, payload])
            .netns(&peer)
            .run();
        assert!(sent.starts_with("ok"), "{sent}");
    };
    inject(HOST4.to_string(), "18053", PEER4.to_string(), "evil-cmd-v4");
    inject(HOST6.to_string(), "18054", PEER6.to_string(), "evil-cmd-v6");
    inject(HOST4.to_string(), "18056", PEER4.to_string(), "granted-v4");

    let got = granted.wait_for("granted-v4", Duration::from_millis(1500));
    assert!(got.contains("err granted-v4"), "the granted socket: {got}");
    let got4 = log4.wait_for("evil-cmd-v4", Duration::from_millis(300));
    let got6 = log6.wait_for("evil-cmd-v6", Duration::from_millis(300));
    assert!(
        !got4.contains("evil-cmd-v4") && !got6.contains("evil-cmd-v6"),
        "BYPASS: a denied host's bytes reached `app`'s socket in an ICMP error\nv4: {got4}\nv6: {got6}"
    );
    for got in [&got4, &got6] {
        assert_eq!(
            got.lines().take(3).collect::<Vec<_>>(),
            ["recverr error 1", "recverr-off ok", "recverr error 1"],
            "turning the option on is refused (EPERM), turning it off is not"
        );
    }
    assert!(
        got.starts_with("recverr ok\nrecverr-off ok\nrecverr ok\n"),
        "{got}"
    );

    // The refusals are recorded, naming the option (the second of each socket within
    // the de-duplication window is counted, not recorded again); none of the granted
    // segment.
    let app_id = segment_id(&image, "app");
    let refused: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|e| Hook::from_code(e.hook) == Some(Hook::Setsockopt))
        .filter(|e| e.verdict == Verdict::Deny as u8)
        .collect();
    let options: Vec<(u8, u8)> = refused.iter().map(|e| (e.family, e.protocol)).collect();
    assert_eq!(options, [(2, 11), (10, 25)], "{refused:#?}");
    for event in &refused {
        assert_eq!(event.src_segment, app_id, "{event:?}");
        assert_eq!(event.reason, Reason::IcmpErrors as u8, "{event:?}");
    }
}
