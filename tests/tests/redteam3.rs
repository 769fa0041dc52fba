//! Red team 3: local destinations the enforcer decides as something else, and bytes from
//! a denied host that reach a segment's process past the per-socket layer. Each test
//! asserts what the enforcer must do; each was a working bypass against acf4a85. One more
//! finding of the pass is open and not a test here (a test that must fail cannot be a
//! tier): `IP_RECVERR` turned on through the 32-bit `setsockopt`, for which the kernel runs
//! no cgroup program (docs/threat-model.md says what closes it).
//!
//! Objects these tests create carry the harness's prefixes with `rt3` in the name;
//! addresses are in 198.19.240.0/21 and 2001:db8:5ee3::/48 only. Helpers:
//! `tests/scripts/rt3_attack.py`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use enforcer_common::event::{FLOW_FLAG_ON_THIS_HOST, FlowEvent, Hook, Reason, Verdict};
use enforcer_tests::{
    LINK_PREFIX, PREFIX,
    cgroup::TestCgroup,
    cmd::{run, run_quietly},
    events::{decided_by, drain, segment_id},
    netns::{Netns, Route, address_up},
    policy::{image, loaded_with},
    probe::{Outcome, Spawn},
    script::{Log, Script},
};

// ---------------------------------------------------------------------------------------
// Harness of our own: the Python helper, started in a netns and/or cgroup.

/// A helper of `tests/scripts/rt3_attack.py`.
fn script(args: &[&str]) -> Script {
    Script::new("rt3_attack.py", args)
}

fn rt3_netns(tag: &str) -> Netns {
    Netns::named(&format!("{PREFIX}rt3-{}-{tag}", std::process::id()))
}

fn rt3_cgroup(tag: &str) -> TestCgroup {
    TestCgroup::named(&format!("{PREFIX}rt3-{}-{tag}", std::process::id()))
}

/// A veth pair: `near` in `near_ns` (`None`: this process's namespace), `far` in
/// `far_ns`; deleted (both ends) on drop.
struct Link {
    near: String,
    near_ns: Option<String>,
}

impl Link {
    fn new(
        near_ns: Option<&Netns>,
        far_ns: &Netns,
        tag: &str,
        near_addresses: &[(IpAddr, u8)],
        far_addresses: &[(IpAddr, u8)],
    ) -> Self {
        let pid = std::process::id() % 10_000;
        let near = format!("{LINK_PREFIX}rt3{pid:04}{tag}n");
        let far = format!("{LINK_PREFIX}rt3{pid:04}{tag}f");
        assert!(near.len() <= 15, "{near}");
        enforcer_tests::netns::add_veth(near_ns, &near, far_ns, &far);
        let link = Self {
            near: near.clone(),
            near_ns: near_ns.map(|ns| ns.name().to_owned()),
        };
        address_up(near_ns, &near, near_addresses);
        address_up(Some(far_ns), &far, far_addresses);
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let mut args = Vec::new();
        if let Some(ns) = &self.near_ns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(["link", "del", self.near.as_str()]);
        let _ = run_quietly("ip", &args);
    }
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("v6"))
}

fn local_addresses_into(loader: &mut enforcer::loader::Loader) {
    let local = enforcer::host::interfaces::addresses().expect("this host's addresses");
    loader
        .set_local_addresses(&local)
        .expect("local addresses into the kernel");
}

fn show(records: &[FlowEvent]) -> Vec<String> {
    records
        .iter()
        .map(|e| {
            format!(
                "{:?} v{} src_seg {} dst_seg {} dst_port {} proto {} reason {} rule {}",
                Hook::from_code(e.hook),
                e.verdict,
                e.src_segment,
                e.dst_segment,
                e.dst_port,
                e.protocol,
                e.reason,
                e.rule_id
            )
        })
        .collect()
}

// =======================================================================================
// Class 2: bytes from a denied host into a segment's process past the per-socket layer.
// =======================================================================================

/// A ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`; any user where `ping_group_range`
/// admits its group, systemd's default) in `app`, which has no rule at all, binds an
/// identifier. `evil`, a host no rule lets in, sends it ICMP echo *replies* carrying any
/// bytes it likes: XDP passes replies, and the per-socket layer waves ping sockets
/// through, so the kernel queues them on the socket (it matches a reply to a ping socket
/// by identifier alone, whoever sent it and whether or not a request went out). A
/// command channel into the segment, unrecorded. The enforcer must not deliver them.
#[test]
fn a_ping_socket_takes_no_echo_replies_from_a_denied_host() {
    let protected = rt3_netns("ps");
    let evil_ns = rt3_netns("pe");
    let _link = Link::new(
        Some(&protected),
        &evil_ns,
        "p",
        &[(v4([198, 19, 240, 1]), 30), (v6("2001:db8:5ee3:1::1"), 64)],
        &[(v4([198, 19, 240, 2]), 30), (v6("2001:db8:5ee3:1::2"), 64)],
    );
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
    let parent = rt3_cgroup("p");
    let app = parent.child("app.service");
    let image = image(&format!(
        r#"
[segments.app]
cgroups = ["{}"]

[segments.evil]
cidrs = ["198.19.240.2/32", "2001:db8:5ee3:1::2/128"]
"#,
        app.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");

    let log4 = Log::new("ping4");
    let log6 = Log::new("ping6");
    let _l4 = script(&["ping-listen", "198.19.240.1", "4242", "4000", log4.path()])
        .netns(&protected)
        .cgroup(&app)
        .serve();
    let _l6 = script(&[
        "ping-listen",
        "2001:db8:5ee3:1::1",
        "4243",
        "4000",
        log6.path(),
    ])
    .netns(&protected)
    .cgroup(&app)
    .serve();
    for (dst, ident, payload) in [
        ("198.19.240.1", "4242", "evil-cmd-v4"),
        ("2001:db8:5ee3:1::1", "4243", "evil-cmd-v6"),
    ] {
        let sent = script(&["echo-reply-inject", dst, ident, payload])
            .netns(&evil_ns)
            .run();
        assert!(sent.starts_with("ok"), "{sent}");
    }
    let got4 = log4.wait_for("evil-cmd-v4", Duration::from_millis(1500));
    let got6 = log6.wait_for("evil-cmd-v6", Duration::from_millis(500));
    let recorded = drain(&mut events);
    eprintln!("app's ping sockets received:\nv4: {got4}\nv6: {got6}");
    eprintln!("records: {:#?}", show(&recorded));
    assert!(
        !got4.contains("evil-cmd") && !got6.contains("evil-cmd"),
        "BYPASS: `evil` (no rule) delivered its bytes to `app`'s ping sockets as echo \
         replies ({} records)\nv4: {got4}\nv6: {got6}",
        recorded.len()
    );
    // Each unasked reply is a new flow from `evil`, denied and recorded at the socket,
    // its type in place of the port.
    let replies: BTreeSet<(u8, u16)> = recorded
        .iter()
        .filter(|e| e.hook == Hook::SkbIngress as u8 && e.verdict == Verdict::Deny as u8)
        .map(|e| (e.protocol, e.dst_port))
        .collect();
    assert_eq!(
        replies,
        BTreeSet::from([(1, 0), (58, 129)]),
        "{:#?}",
        show(&recorded)
    );
}

/// The host's side of a veth into an `evil` peer namespace, for the ICMP error tests.
struct ErrorSite {
    evil_ns: Netns,
    _link: Link,
    parent: TestCgroup,
    app: TestCgroup,
    image: enforcer::policy::image::MapImage,
    host4: String,
    host6: String,
    peer4: String,
    peer6: String,
}

impl ErrorSite {
    fn new(tag: &str, third: u8) -> Self {
        let evil_ns = rt3_netns(&format!("{tag}e"));
        let base = third * 4;
        let host4 = Ipv4Addr::new(198, 19, 240, base + 1);
        let peer4 = Ipv4Addr::new(198, 19, 240, base + 2);
        let net = 0x10 + u16::from(third);
        let host6: Ipv6Addr = format!("2001:db8:5ee3:{net:x}::1").parse().expect("v6");
        let peer6: Ipv6Addr = format!("2001:db8:5ee3:{net:x}::2").parse().expect("v6");
        let link = Link::new(
            None,
            &evil_ns,
            tag,
            &[(host4.into(), 30), (host6.into(), 64)],
            &[(peer4.into(), 30), (peer6.into(), 64)],
        );
        let parent = rt3_cgroup(tag);
        let app = parent.child("app.service");
        let image = image(&format!(
            r#"
[segments.app]
cgroups = ["{}"]
ports = ["18353/udp", "18354/udp"]

[segments.evil]
cidrs = ["{peer4}/32", "{peer6}/128"]
"#,
            app.relative_path()
        ));
        Self {
            evil_ns,
            _link: link,
            parent,
            app,
            image,
            host4: host4.to_string(),
            host6: host6.to_string(),
            peer4: peer4.to_string(),
            peer6: peer6.to_string(),
        }
    }

    fn inject(&self, server: &str, port: &str, peer: &str, payload: &str) {
        // The existing helper builds the ICMP error (tests/scripts/rt_attack.py).
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rt_attack.py");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.evil_ns.name(), "python3"])
            .arg(path)
            .args(["icmp-inject", server, port, peer, payload]);
        let output = command.output().expect("icmp-inject");
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(printed.starts_with("ok"), "{printed}");
    }
}

/// `app` has no `icmp_errors` grant. It turns `IP_RECVERR`/`IPV6_RECVERR` on through the
/// 64-bit `setsockopt` with a value longer than a page (4100 bytes). The kernel shows a cgroup `setsockopt` program only the first page, a
/// copy; when the program lets the call through unchanged, the kernel's own handler reads
/// the value again from user memory. A second process sharing the page flips the first
/// int between 0 and 1: the program reads 0 ("turning it off"), the kernel reads 1.
/// Bounded: at most 200,000 calls within 8 s per socket.
#[test]
fn icmp_errors_stay_refused_to_a_setsockopt_longer_than_a_page() {
    let site = ErrorSite::new("t", 2);
    let mut loader = loaded_with(&site.image);
    let mut events = loader.take_events().expect("events");
    loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");

    let log4 = Log::new("race4");
    let log6 = Log::new("race6");
    let _s4 = script(&[
        "recverr-serve-race",
        &site.host4,
        "18353",
        "4000",
        log4.path(),
        "200000",
        "8000",
    ])
    .cgroup(&site.app)
    .serve();
    let _s6 = script(&[
        "recverr-serve-race",
        &site.host6,
        "18354",
        "4000",
        log6.path(),
        "200000",
        "8000",
    ])
    .cgroup(&site.app)
    .serve();
    site.inject(&site.host4, "18353", &site.peer4, "evil-race-v4");
    site.inject(&site.host6, "18354", &site.peer6, "evil-race-v6");
    let got4 = log4.wait_for("evil-race-v4", Duration::from_millis(1500));
    let got6 = log6.wait_for("evil-race-v6", Duration::from_millis(500));
    let denials = drain(&mut events)
        .iter()
        .filter(|e| e.hook == Hook::Setsockopt as u8 && e.verdict == Verdict::Deny as u8)
        .count();
    eprintln!("v4 socket: {got4}\nv6 socket: {got6}\nsetsockopt denials recorded: {denials}");
    assert!(
        !got4.contains("evil-race") && !got6.contains("evil-race"),
        "BYPASS: a setsockopt value longer than a page, flipped after the program read it, \
         turned IP_RECVERR/IPV6_RECVERR on in `app` (no grant) and `evil` put its bytes on \
         the error queue\nv4: {got4}\nv6: {got6}"
    );
}

// =======================================================================================
// Class 1: a local service of another segment reached while the enforcer decides the
// flow as some other destination.
// =======================================================================================

const PORT: u16 = 18_443;

/// `client` may reach `world` on [`PORT`]; `gateway` may reach `payments`, which serves
/// [`PORT`]; as in `local_destinations.rs`.
struct Site {
    client: TestCgroup,
    _gateway: TestCgroup,
    payments: TestCgroup,
    parent: TestCgroup,
    policy: String,
}

impl Site {
    fn new(tag: &str) -> Self {
        let parent = rt3_cgroup(tag);
        let client = parent.child("client.service");
        let gateway = parent.child("gateway.service");
        let payments = parent.child("payments.service");
        let policy = format!(
            r#"
[segments.client]
cgroups = ["{}"]

[segments.gateway]
cgroups = ["{}"]

[segments.payments]
cgroups = ["{}"]
ports = ["{PORT}/tcp"]

[[allow]]
id = "client-out"
from = ["client"]
to = ["world"]
ports = ["{PORT}/tcp"]

[[allow]]
id = "gateway-to-payments"
from = ["gateway"]
to = ["payments"]
ports = ["{PORT}/tcp"]
"#,
            client.relative_path(),
            gateway.relative_path(),
            payments.relative_path()
        );
        Self {
            client,
            _gateway: gateway,
            payments,
            parent,
            policy,
        }
    }
}

/// A `local` route in the `main` table (`ip route add local PREFIX dev lo table main`;
/// root with `CAP_NET_ADMIN`, or the operator: the kernel consults `main` with no `ip
/// rule` at all) makes every address of the prefix this host's. The agent reads only the
/// `local` table, so `client`, allowed out to `world`, reaches `payments` there.
#[test]
fn a_local_route_in_the_main_table_is_this_host() {
    let site = Site::new("m");
    let _r4 = Route::add(&["local", "198.19.244.0/28", "dev", "lo", "table", "main"]);
    let _r6 = Route::add(&[
        "local",
        "2001:db8:5ee3:44::/64",
        "dev",
        "lo",
        "table",
        "main",
    ]);
    let image = image(&site.policy);
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    local_addresses_into(&mut loader);
    loader.attach_cgroup(site.parent.path()).expect("attach");
    let _server = Spawn::tcp_server(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT))
        .cgroup(&site.payments)
        .serve();

    let mut reached = Vec::new();
    for to in [v4([198, 19, 244, 5]), v6("2001:db8:5ee3:44::5")] {
        let at = SocketAddr::new(to, PORT);
        // Control: a process outside the attached subtree (not governed) reaches the
        // local service there.
        assert_eq!(
            Spawn::tcp_client(at).run(),
            Outcome::Ok,
            "control: the kernel delivers {at} to the local service"
        );
        let outcome = Spawn::tcp_client(at).cgroup(&site.client).run();
        if outcome == Outcome::Ok {
            reached.push(at);
        }
    }
    let client_id = segment_id(&image, "client");
    let recorded: Vec<FlowEvent> = drain(&mut events)
        .into_iter()
        .filter(|e| e.src_segment == client_id)
        .collect();
    let named: Vec<String> = recorded.iter().map(|e| decided_by(&image, e)).collect();
    eprintln!(
        "client's records: {:#?} decided by {named:?}",
        show(&recorded)
    );
    assert!(
        reached.is_empty(),
        "BYPASS: `client` reached `payments` at {reached:?} (a `local` route of the main \
         table), recorded as {named:?} (destination segment {:?})",
        recorded.iter().map(|e| e.dst_segment).collect::<Vec<_>>()
    );
}

/// TCP Fast Open (`sendto` with `MSG_FASTOPEN`, no `connect()`) to the local `payments`
/// from `client`, allowed only to `world`: the kernel runs the connect hook on this path
/// too. Held against acf4a85.
#[test]
fn tcp_fast_open_to_a_denied_local_service_is_refused() {
    let site = Site::new("f");
    let image = image(&site.policy);
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    local_addresses_into(&mut loader);
    loader.attach_cgroup(site.parent.path()).expect("attach");
    let _server = Spawn::tcp_server(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT))
        .cgroup(&site.payments)
        .serve();
    let port = PORT.to_string();
    let control = script(&["tfo-send", "127.0.0.1", &port]).run();
    assert!(
        control.starts_with("ok tfo-hello"),
        "control, no segment: {control}"
    );
    let mut reached = Vec::new();
    for to in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let got = script(&["tfo-send", to, &port]).cgroup(&site.client).run();
        if !got.starts_with("error 1 ") {
            reached.push((to, got));
        }
    }
    let recorded = drain(&mut events);
    eprintln!("records: {:#?}", show(&recorded));
    assert!(
        reached.is_empty(),
        "BYPASS: TCP Fast Open from `client`: {reached:?}"
    );
}

/// The segments of the stale-decision tests: `client` may talk to itself on the port
/// (its own replicas), `payments` declares and serves it; no rule lets `client` reach
/// `payments`.
fn stale_policy(client: &TestCgroup, payments: &TestCgroup, port: u16) -> String {
    format!(
        r#"
[segments.client]
cgroups = ["{}"]

[segments.payments]
cgroups = ["{}"]
ports = ["{port}/tcp", "{port}/udp"]

[[allow]]
id = "client-internal"
from = ["client"]
to = ["client"]
ports = ["{port}/tcp", "{port}/udp"]
"#,
        client.relative_path(),
        payments.relative_path()
    )
}

const STALE_UDP_PORT: u16 = 47_331;
const STALE_TCP_PORT: u16 = 47_332;

/// A local destination is the socket the kernel delivers to, decided when the flow
/// starts; for a *connected* UDP socket that is the `connect()`, never again, and the
/// per-socket layer passes everything that arrives on loopback. `client` (as `nobody`)
/// binds a decoy on `127.0.0.1:P`, connects a second socket to it (decided `client` to
/// `client`, allowed), closes the decoy. When `payments` (re)starts on `0.0.0.0:P`, the
/// connected socket's datagrams reach it and its answers come back: an exchange the
/// policy denies, recorded as `client` to `client`.
#[test]
fn a_connected_udp_socket_does_not_outlive_the_listener_it_was_decided_against() {
    stale_decision(&Stale {
        tag: "u",
        port: STALE_UDP_PORT,
        protocol: 17,
        mode: "udp-stale",
        wait_ms: "2000",
        server: Spawn::udp_server,
        client: Spawn::udp_client,
    });
}

/// One stale-decision attack: `client` sets it up with the helper's `mode` (which prints
/// `ready`, waits for the gate, then what came of it), `payments` starts serving the port.
struct Stale {
    tag: &'static str,
    port: u16,
    protocol: u8,
    mode: &'static str,
    wait_ms: &'static str,
    server: fn(SocketAddr) -> Spawn,
    client: fn(SocketAddr) -> Spawn,
}

/// Runs `stale`: the control (while `payments` serves the port, `client` cannot reach
/// it), then the attack, which must not get `payments`' answer, and whose flow must be
/// recorded as denied where it arrived.
fn stale_decision(stale: &Stale) {
    let parent = rt3_cgroup(stale.tag);
    let client = parent.child("client.service");
    let payments = parent.child("payments.service");
    let image = image(&stale_policy(&client, &payments, stale.port));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let port = stale.port.to_string();
    let server_at = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), stale.port);
    {
        let _server = (stale.server)(server_at).cgroup(&payments).serve();
        let control = (stale.client)(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), stale.port))
            .cgroup(&client)
            .run();
        assert!(control.is_eperm(), "control: {control:?}");
    }

    let gate = Log::new(&format!("{}-gate", stale.tag));
    let (_attacker, mut lines) =
        script(&[stale.mode, gate.path(), &port, "127.0.0.1", stale.wait_ms])
            .cgroup(&client)
            .start();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "ready", "the stale {} was not set up", stale.mode);
    let _server = (stale.server)(server_at).cgroup(&payments).serve();
    gate.open_gate();
    let answer = lines.next().and_then(Result::ok).unwrap_or_default();
    let recorded = drain(&mut events);
    let names: Vec<String> = recorded.iter().map(|e| decided_by(&image, e)).collect();
    eprintln!(
        "client's stale flow: {answer:?}\nrecords: {:#?} {names:?}",
        show(&recorded)
    );
    assert!(
        !answer.starts_with("answer"),
        "BYPASS: `client`'s {} exchanged data with `payments` ({answer:?}); records: {names:?}",
        stale.mode
    );
    assert_stale_denial_recorded(&image, &recorded, stale.protocol);
}

/// The stale flow was decided again where it arrived: a denial at the receiving socket,
/// `client` to `payments`, protocol `protocol`.
fn assert_stale_denial_recorded(
    image: &enforcer::policy::image::MapImage,
    recorded: &[FlowEvent],
    protocol: u8,
) {
    let at_socket: Vec<&FlowEvent> = recorded
        .iter()
        .filter(|e| e.hook == Hook::SkbIngress as u8 && e.verdict == Verdict::Deny as u8)
        .collect();
    assert!(!at_socket.is_empty(), "{:#?}", show(recorded));
    for event in at_socket {
        assert_eq!(event.protocol, protocol, "{event:?}");
        assert_eq!(event.src_segment, segment_id(image, "client"), "{event:?}");
        assert_eq!(
            event.dst_segment,
            segment_id(image, "payments"),
            "{event:?}"
        );
        assert_eq!(decided_by(image, event), "default-deny");
        assert_eq!(
            event.flags & FLOW_FLAG_ON_THIS_HOST,
            FLOW_FLAG_ON_THIS_HOST,
            "the record says the flow stayed on this host: {event:?}"
        );
    }
}

/// The same for TCP, through a retransmitted SYN. `client` (as `nobody`) listens on
/// `127.0.0.1:P` with a backlog of 0 and fills it with one connection; its next
/// `connect()` there is decided `client` to `client` (allowed) and its SYN is dropped by
/// the full backlog. It closes the decoy. `payments` starts on `0.0.0.0:P` within the
/// second; the SYN's retransmission reaches it over loopback, where the per-socket layer
/// passes every handshake, and the connection is made.
#[test]
fn a_retransmitted_syn_does_not_reach_a_listener_it_was_not_decided_against() {
    stale_decision(&Stale {
        tag: "s",
        port: STALE_TCP_PORT,
        protocol: 6,
        mode: "tcp-stale",
        wait_ms: "6000",
        server: Spawn::tcp_server,
        client: Spawn::tcp_client,
    });
}

// =======================================================================================
// The other way round: a flow decided as local that the kernel sends to another host.
// =======================================================================================

/// `gateway` may reach `payments` (a local service) on [`PORT`], UDP and TCP, and nothing
/// else; `evil` is a host on one of this host's links. A socket bound to a device
/// (`SO_BINDTODEVICE`, any user since Linux 5.7) sends to an address this host holds on
/// *another* interface: the hooks decide it as local (`payments`, allowed), but the
/// kernel's route lookup for that device finds no local route and sends the packet out
/// of the device (IPv4: "assume on link", ARP; IPv6: the enclave's route behind the
/// link). `evil`, which answers for that address, gets the datagram, and over IPv6 a
/// whole TCP connection.
#[test]
fn a_flow_decided_as_local_does_not_leave_through_a_bound_device() {
    let evil_ns = rt3_netns("be");
    let other_ns = rt3_netns("bo");
    let evil_link = Link::new(
        None,
        &evil_ns,
        "b",
        &[(v4([198, 19, 240, 13]), 30), (v6("2001:db8:5ee3:4::1"), 64)],
        &[
            (v4([198, 19, 240, 14]), 30),
            (v6("2001:db8:5ee3:4::2"), 64),
            // `evil` answers for this host's addresses on the other link.
            (v4([198, 19, 240, 17]), 32),
            (v6("2001:db8:5ee3:5::1"), 128),
        ],
    );
    let _other_link = Link::new(
        None,
        &other_ns,
        "o",
        &[(v4([198, 19, 240, 17]), 30), (v6("2001:db8:5ee3:5::1"), 64)],
        &[(v4([198, 19, 240, 18]), 30), (v6("2001:db8:5ee3:5::2"), 64)],
    );
    // The enclave's /48 is behind the uplink router (here `evil`'s link); `evil` routes
    // back to this host.
    let _summary = Route::add(&[
        "2001:db8:5ee3::/48",
        "via",
        "2001:db8:5ee3:4::2",
        "dev",
        &evil_link.near,
    ]);
    let parent = rt3_cgroup("b");
    let gateway = parent.child("gateway.service");
    let payments = parent.child("payments.service");
    let image = image(&format!(
        r#"
[segments.gateway]
cgroups = ["{}"]

[segments.payments]
cgroups = ["{}"]
ports = ["{PORT}/tcp", "{PORT}/udp"]

[segments.evil]
cidrs = ["198.19.240.14/32", "2001:db8:5ee3:4::2/128"]

[[allow]]
id = "gateway-to-payments"
from = ["gateway"]
to = ["payments"]
ports = ["{PORT}/tcp", "{PORT}/udp"]
"#,
        gateway.relative_path(),
        payments.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    local_addresses_into(&mut loader);
    loader.attach_cgroup(parent.path()).expect("attach");

    let port = PORT.to_string();
    let udp_log = Log::new("dev-udp");
    let tcp_log = Log::new("dev-tcp");
    let _evil_udp = script(&["udp-listen", "198.19.240.17", &port, "5000", udp_log.path()])
        .netns(&evil_ns)
        .serve();
    let _evil_tcp = script(&[
        "tcp-listen",
        "2001:db8:5ee3:5::1",
        &port,
        "5000",
        tcp_log.path(),
        "evil",
    ])
    .netns(&evil_ns)
    .serve();

    let sent = script(&[
        "udp-send-dev",
        &evil_link.near,
        "198.19.240.17",
        &port,
        "exfil-v4",
    ])
    .cgroup(&gateway)
    .run();
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", evil_link.near))
        .expect("ifindex");
    let sent_pktinfo = script(&[
        "udp-send-pktinfo",
        ifindex.trim(),
        "198.19.240.17",
        &port,
        "exfil-pktinfo",
    ])
    .cgroup(&gateway)
    .run();
    let connected = script(&[
        "tcp-connect-dev",
        &evil_link.near,
        "2001:db8:5ee3:4::1",
        "2001:db8:5ee3:5::1",
        &port,
    ])
    .cgroup(&gateway)
    .run();
    let got_udp = udp_log.wait_for("exfil-pktinfo", Duration::from_millis(1000));
    let got_tcp = tcp_log.text();
    let recorded = drain(&mut events);
    let names: Vec<String> = recorded.iter().map(|e| decided_by(&image, e)).collect();
    eprintln!(
        "udp send: {sent:?}, with IP_PKTINFO: {sent_pktinfo:?} -> evil got {got_udp:?}\ntcp connect: {connected:?} -> evil: \
         {got_tcp:?}\nrecords: {:#?} {names:?}",
        show(&recorded)
    );
    assert!(
        !got_udp.contains("exfil") && !connected.starts_with("ok evil"),
        "BYPASS: `gateway`'s flows decided as to local `payments` ({names:?}) reached \
         `evil`: udp {got_udp:?}, tcp {connected:?}"
    );
    // Each packet that tried to leave is recorded as what it was, naming where it went.
    let elsewhere: Vec<&FlowEvent> = recorded
        .iter()
        .filter(|e| e.reason == Reason::LocalElsewhere as u8)
        .collect();
    let families: BTreeSet<u8> = elsewhere.iter().map(|e| e.family).collect();
    assert_eq!(families, BTreeSet::from([2, 10]), "{:#?}", show(&recorded));
    for event in &elsewhere {
        assert_eq!(event.verdict, Verdict::Deny as u8);
        assert_eq!(event.hook, Hook::SkbEgress as u8);
        assert_eq!(event.src_segment, segment_id(&image, "gateway"));
    }
}

/// An IPv6 address whose duplicate address detection failed stays on the interface
/// (`dadfailed tentative`) and in the enforcer's local addresses, but the kernel does not
/// deliver it here: the flow is decided as to local `payments` (allowed) while the kernel
/// tries the link, where the host that defended the address (`evil`) holds it. `gateway`
/// must not get a connection to `evil` this way. Held against acf4a85: the kernel ignores
/// neighbour advertisements for an address it holds itself (even one that failed
/// detection), so the SYN never leaves; the record still names `payments` for a flow no
/// local socket could receive.
#[test]
fn an_address_whose_duplicate_detection_failed_is_not_this_host() {
    let evil_ns = rt3_netns("de");
    let link = Link::new(
        None,
        &evil_ns,
        "d",
        &[(v4([198, 19, 240, 21]), 30), (v6("2001:db8:5ee3:6::1"), 64)],
        &[
            (v4([198, 19, 240, 22]), 30),
            (v6("2001:db8:5ee3:6::2"), 64),
            (v6("2001:db8:5ee3:6::99"), 128),
        ],
    );
    // This host configures ::99 with duplicate address detection; `evil` holds it.
    run(
        "ip",
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:5ee3:6::99/64",
            "dev",
            &link.near,
        ],
    );
    let since = Instant::now();
    loop {
        let shown = run("ip", &["-6", "addr", "show", "dev", &link.near]);
        if shown.contains("dadfailed") {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "duplicate address detection did not fail: {shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let parent = rt3_cgroup("d");
    let gateway = parent.child("gateway.service");
    let payments = parent.child("payments.service");
    let image = image(&format!(
        r#"
[segments.gateway]
cgroups = ["{}"]

[segments.payments]
cgroups = ["{}"]
ports = ["{PORT}/tcp"]

[segments.evil]
cidrs = ["2001:db8:5ee3:6::2/128"]

[[allow]]
id = "gateway-to-payments"
from = ["gateway"]
to = ["payments"]
ports = ["{PORT}/tcp"]
"#,
        gateway.relative_path(),
        payments.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    local_addresses_into(&mut loader);
    loader.attach_cgroup(parent.path()).expect("attach");
    let port = PORT.to_string();
    let tcp_log = Log::new("dad-tcp");
    let _evil_tcp = script(&[
        "tcp-listen",
        "2001:db8:5ee3:6::99",
        &port,
        "5000",
        tcp_log.path(),
        "evil",
    ])
    .netns(&evil_ns)
    .serve();
    let outcome = Spawn::tcp_client(SocketAddr::new(v6("2001:db8:5ee3:6::99"), PORT))
        .cgroup(&gateway)
        .run();
    let got = tcp_log.text();
    let recorded = drain(&mut events);
    let names: Vec<String> = recorded.iter().map(|e| decided_by(&image, e)).collect();
    eprintln!(
        "gateway's connect: {outcome:?}; evil: {got:?}\nrecords: {:#?} {names:?}",
        show(&recorded)
    );
    assert!(
        !got.contains("accepted"),
        "BYPASS: `gateway` connected to `evil` through a dadfailed address of this host, \
         recorded as {names:?}"
    );
}
