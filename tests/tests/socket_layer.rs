//! The per-socket ingress layer (cgroup skb ingress) on real sockets: a flow that reaches a
//! segment's socket without meeting an XDP program (inside a tunnel device that has none,
//! to a UDP port the segment bound without declaring it) is refused at the socket and
//! recorded there; an allowed connection leaves one record, from the layer that delivered
//! it, and a packet to a port nobody serves leaves none that says it was allowed. UDP
//! replies are exact both ways, for local clients as for remote ones. A datagram whose
//! IPv6 header chain is too long to read is dropped at the socket as malformed. The ACK
//! that completes a SYN-cookie handshake is decided at the listener under the active
//! policy; an allowed flow over loopback is recorded and counted once, at its sender.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::programs::XdpMode;
use enforcer_common::event::{FlowEvent, Hook, Reason, Verdict, family};
use enforcer_tests::{
    LINK_PREFIX,
    cgroup::TestCgroup,
    cmd::run,
    events::{decided_by, drain, rule_counters, segment_id},
    netns::{Netns, Veth, add_veth, address_up},
    next_serial,
    policy::loaded_with,
    probe::{Gate, Outcome, SinkLog, Spawn},
    script::{Log, Script},
};

const ALLOWED: u16 = 18_080;
const DENIED: u16 = 18_081;
const ALLOWED_UDP: u16 = 18_053;
const DENIED_UDP: u16 = 18_054;

/// The records one hook wrote about flows to local port `port`.
fn to_port(records: &[FlowEvent], hook: Hook, port: u16) -> Vec<FlowEvent> {
    records
        .iter()
        .filter(|e| e.hook == hook as u8 && e.dst_port == port)
        .copied()
        .collect()
}

/// The interface index of `name` in the test's own namespace.
fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .expect("read ifindex")
        .trim()
        .parse()
        .expect("ifindex is a number")
}

/// A VXLAN tunnel over a veth pair, with inner addresses on both ends; the host end is
/// deleted on drop (the remote end goes with its namespace).
struct Tunnel {
    name: String,
    host_v4: Ipv4Addr,
    remote_v4: Ipv4Addr,
    host_v6: Ipv6Addr,
    remote_v6: Ipv6Addr,
}

impl Tunnel {
    /// A tunnel between this namespace and `remote` over `veth`, its inner addresses
    /// spread by pid and serial like the veth's.
    fn new(veth: &Veth, remote: &Netns) -> Self {
        let serial = next_serial();
        let pid = std::process::id();
        let name = format!("{LINK_PREFIX}x{}-{serial}", pid % 10_000);
        let third = u8::try_from(pid % 250).expect("below 250");
        let fourth = u8::try_from(serial % 64 * 4).expect("below 256");
        let vni = (1000 + pid % 100_000 * 64 + serial).to_string();
        let create = |netns: Option<&Netns>, local: Ipv4Addr, peer: Ipv4Addr| {
            let args = [
                "link",
                "add",
                &name,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local.to_string(),
                "remote",
                &peer.to_string(),
                "dstport",
                "4789",
            ];
            match netns {
                Some(netns) => {
                    netns.ip(&args);
                }
                None => {
                    let status = std::process::Command::new("ip")
                        .args(args)
                        .status()
                        .expect("run ip");
                    assert!(status.success(), "ip {args:?}");
                }
            }
        };
        create(None, veth.host_v4, veth.peer_v4);
        create(Some(remote), veth.peer_v4, veth.host_v4);
        let tunnel = Self {
            name: name.clone(),
            host_v4: Ipv4Addr::new(198, 19, third, fourth + 1),
            remote_v4: Ipv4Addr::new(198, 19, third, fourth + 2),
            host_v6: Ipv6Addr::new(0x2001, 0xdb8, 0xf000 | u16::from(third), 0, 0, 0, 0, 1),
            remote_v6: Ipv6Addr::new(0x2001, 0xdb8, 0xf000 | u16::from(third), 0, 0, 0, 0, 2),
        };
        address_up(
            None,
            &tunnel.name,
            &[(tunnel.host_v4.into(), 30), (tunnel.host_v6.into(), 64)],
        );
        address_up(
            Some(remote),
            &tunnel.name,
            &[(tunnel.remote_v4.into(), 30), (tunnel.remote_v6.into(), 64)],
        );
        tunnel
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

#[test]
fn a_tunnel_without_xdp_is_decided_at_the_receiving_socket() {
    let remote = Netns::new();
    let veth = Veth::new(&remote);
    let tunnel = Tunnel::new(&veth, &remote);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.web]
cgroups = ["{}"]
ports = ["{ALLOWED}/tcp", "{DENIED}/tcp", "{ALLOWED_UDP}/udp", "{DENIED_UDP}/udp"]

[segments.tunnelled]
cidrs = ["{}/32", "{}/128"]

[[allow]]
id = "tunnelled-to-web"
from = ["tunnelled"]
to = ["web"]
ports = ["{ALLOWED}/tcp", "{ALLOWED_UDP}/udp"]
"#,
        web.relative_path(),
        tunnel.remote_v4,
        tunnel.remote_v6,
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    // Longer than the client's SYN retransmissions, so a refused attempt is one record.
    loader
        .set_dedup_window(Duration::from_secs(30))
        .expect("set window");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    // XDP on the outer interface only: the tunnel device has none, as an interface the
    // operator excluded or one XDP cannot parse (an L3 tunnel) would not.
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");

    for (host, peer) in [
        (IpAddr::from(tunnel.host_v4), IpAddr::from(tunnel.remote_v4)),
        (IpAddr::from(tunnel.host_v6), IpAddr::from(tunnel.remote_v6)),
    ] {
        let servers: Vec<_> = [
            Spawn::tcp_server(SocketAddr::new(host, ALLOWED)),
            Spawn::tcp_server(SocketAddr::new(host, DENIED)),
            Spawn::udp_server(SocketAddr::new(host, ALLOWED_UDP)),
            Spawn::udp_server(SocketAddr::new(host, DENIED_UDP)),
        ]
        .into_iter()
        .map(|server| server.cgroup(&web).serve())
        .collect();
        let outcome = |spawn: Spawn| spawn.netns(&remote).run();
        assert_eq!(
            outcome(Spawn::tcp_client(servers[0].addr)),
            Outcome::Ok,
            "{host}:{ALLOWED} through the tunnel"
        );
        assert_eq!(
            outcome(Spawn::udp_client(servers[2].addr)),
            Outcome::Ok,
            "{host}:{ALLOWED_UDP} through the tunnel"
        );
        // Refused at the socket: no handshake, no echo.
        assert_eq!(
            outcome(Spawn::tcp_client(servers[1].addr)),
            Outcome::Timeout,
            "{host}:{DENIED} through the tunnel"
        );
        assert_eq!(
            outcome(Spawn::udp_client(servers[3].addr)),
            Outcome::Timeout,
            "{host}:{DENIED_UDP} through the tunnel"
        );

        let records = drain(&mut events);
        assert!(
            records.iter().all(|e| e.hook == Hook::SkbIngress as u8),
            "the outer packets are no new flow at XDP: {records:#?}"
        );
        let v4 = host.is_ipv4();
        let expected = [
            (ALLOWED, Verdict::Allow, "tunnelled-to-web"),
            (ALLOWED_UDP, Verdict::Allow, "tunnelled-to-web"),
            (DENIED, Verdict::Deny, "default-deny"),
            (DENIED_UDP, Verdict::Deny, "default-deny"),
        ];
        for (port, verdict, rule) in expected {
            let decided = to_port(&records, Hook::SkbIngress, port);
            // A refused SYN is retransmitted: each retransmission is decided again, and
            // de-duplication keeps one record for them.
            assert_eq!(decided.len(), 1, "{host}:{port}: {records:#?}");
            let record = decided[0];
            assert_eq!(record.verdict, verdict as u8, "{host}:{port}");
            assert_eq!(decided_by(&image, &record), rule, "{host}:{port}");
            assert_eq!(record.src_segment, segment_id(&image, "tunnelled"));
            assert_eq!(record.dst_segment, segment_id(&image, "web"));
            assert_eq!(record.ifindex, ifindex(&tunnel.name), "{host}:{port}");
            assert_eq!(record.cgroup_id, web.id(), "the receiving socket's cgroup");
            let (family, len) = if v4 {
                (family::INET, 4)
            } else {
                (family::INET6, 16)
            };
            assert_eq!(record.family, family);
            let octets = |addr: IpAddr| match addr {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            assert_eq!(record.src_addr[..len], octets(peer)[..]);
            assert_eq!(record.dst_addr[..len], octets(host)[..]);
        }
    }
}

#[test]
fn one_record_per_delivered_flow_and_none_for_a_port_nobody_serves() {
    let remote = Netns::new();
    let veth = Veth::new(&remote);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.web]
cgroups = ["{}"]
ports = ["{ALLOWED}/tcp", "{DENIED}/tcp", "{ALLOWED_UDP}/udp"]

[segments.clients]
cidrs = ["{}/32", "{}/128"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["{ALLOWED}/tcp", "{ALLOWED_UDP}/udp"]
"#,
        web.relative_path(),
        veth.peer_v4,
        veth.peer_v6,
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    let host = IpAddr::from(veth.host_v4);
    loader
        .set_dedup_window(Duration::from_secs(30))
        .expect("set window");

    // Allowed at XDP, delivered, and recorded once, by the socket layer that delivered it.
    let server = Spawn::tcp_server(SocketAddr::new(host, ALLOWED))
        .cgroup(&web)
        .serve();
    assert_eq!(
        Spawn::tcp_client(server.addr).netns(&remote).run(),
        Outcome::Ok
    );
    drop(server);
    // The same flow with nobody serving the port: the kernel answers with a reset, and
    // nothing says the flow was allowed.
    let refused = Spawn::tcp_client(SocketAddr::new(host, ALLOWED))
        .netns(&remote)
        .run();
    assert!(
        matches!(refused, Outcome::Error { errno, .. } if errno == libc::ECONNREFUSED),
        "{refused:?}"
    );
    assert_eq!(
        Spawn::udp_client(SocketAddr::new(host, ALLOWED_UDP))
            .netns(&remote)
            .run(),
        Outcome::Timeout,
        "nobody serves the UDP port"
    );
    // Denied at XDP: the one record is XDP's, and no socket saw the flow.
    let denied = Spawn::tcp_server(SocketAddr::new(host, DENIED))
        .cgroup(&web)
        .serve();
    assert_eq!(
        Spawn::tcp_client(denied.addr).netns(&remote).run(),
        Outcome::Timeout
    );

    let records = drain(&mut events);
    let allowed: Vec<_> = records.iter().filter(|e| e.dst_port == ALLOWED).collect();
    assert_eq!(allowed.len(), 1, "{records:#?}");
    assert_eq!(allowed[0].hook, Hook::SkbIngress as u8);
    assert_eq!(allowed[0].verdict, Verdict::Allow as u8);
    assert_eq!(decided_by(&image, allowed[0]), "clients-to-web");
    assert_eq!(allowed[0].dst_segment, segment_id(&image, "web"));
    assert!(
        records.iter().all(|e| e.dst_port != ALLOWED_UDP),
        "{records:#?}"
    );
    let refused: Vec<_> = records.iter().filter(|e| e.dst_port == DENIED).collect();
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert_eq!(refused[0].hook, Hook::XdpIngress as u8);
    assert_eq!(refused[0].verdict, Verdict::Deny as u8);
}

#[test]
fn udp_to_a_port_the_segment_never_declared_is_decided_at_the_socket() {
    let remote = Netns::new();
    let veth = Veth::new(&remote);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.web]
cgroups = ["{}"]
ports = ["{ALLOWED_UDP}/udp"]

[segments.clients]
cidrs = ["{}/32", "{}/128"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["{ALLOWED_UDP}/udp"]

[[allow]]
id = "web-queries-clients"
from = ["web"]
to = ["clients"]
ports = ["{DENIED_UDP}/udp"]
"#,
        web.relative_path(),
        veth.peer_v4,
        veth.peer_v6,
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");

    for (host, peer) in [
        (IpAddr::from(veth.host_v4), IpAddr::from(veth.peer_v4)),
        (IpAddr::from(veth.host_v6), IpAddr::from(veth.peer_v6)),
    ] {
        // A server of `web` on a port the kernel picked (bind to port 0): in the
        // ephemeral range, never learnt, so XDP lets its datagrams through as answers.
        let unlearnt = Spawn::udp_server(SocketAddr::new(host, 0))
            .cgroup(&web)
            .serve();
        assert_eq!(
            Spawn::udp_client(unlearnt.addr).netns(&remote).run(),
            Outcome::Timeout,
            "{}: refused at the socket",
            unlearnt.addr
        );
        // `web` queries a client-side server it may reach, from an unconnected socket on
        // an ephemeral port: the answer comes back to that port and passes.
        let queried = Spawn::udp_server(SocketAddr::new(peer, DENIED_UDP))
            .netns(&remote)
            .serve();
        assert_eq!(
            Spawn::udp_client(queried.addr).cgroup(&web).run(),
            Outcome::Ok,
            "{}: the answer to web's own query",
            queried.addr
        );

        let records = drain(&mut events);
        let refused = to_port(&records, Hook::SkbIngress, unlearnt.addr.port());
        assert_eq!(refused.len(), 1, "{records:#?}");
        assert_eq!(refused[0].verdict, Verdict::Deny as u8);
        assert_eq!(refused[0].src_segment, segment_id(&image, "clients"));
        assert_eq!(refused[0].dst_segment, segment_id(&image, "web"));
        assert_eq!(decided_by(&image, &refused[0]), "default-deny");
        // The query is on record (sendmsg); its answer is not a flow of its own.
        let queries: Vec<_> = records
            .iter()
            .filter(|e| e.dst_port == DENIED_UDP && e.verdict == Verdict::Allow as u8)
            .collect();
        assert_eq!(queries.len(), 1, "{records:#?}");
        assert!(
            records
                .iter()
                .all(|e| e.hook != Hook::SkbIngress as u8 || e.dst_port == unlearnt.addr.port()),
            "{records:#?}"
        );
    }
}

#[test]
fn a_local_udp_server_answers_exactly_its_local_client() {
    let parent = TestCgroup::new();
    let dns = parent.child("dns.service");
    let app = parent.child("app.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.dns]
cgroups = ["{}"]
ports = ["{ALLOWED_UDP}/udp"]

[segments.app]
cgroups = ["{}"]
ports = ["{DENIED_UDP}/udp"]

[[allow]]
id = "app-to-dns"
from = ["app"]
to = ["dns"]
ports = ["{ALLOWED_UDP}/udp"]
"#,
        dns.relative_path(),
        app.relative_path(),
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let loopback = IpAddr::from(Ipv4Addr::LOCALHOST);
    let _app_server = Spawn::udp_server(SocketAddr::new(loopback, DENIED_UDP))
        .cgroup(&app)
        .serve();

    {
        let _dns_server = Spawn::udp_server(SocketAddr::new(loopback, ALLOWED_UDP))
            .cgroup(&dns)
            .serve();
        assert_eq!(
            Spawn::udp_client(SocketAddr::new(loopback, ALLOWED_UDP))
                .cgroup(&app)
                .run(),
            Outcome::Ok,
            "app's query is answered"
        );
    }
    // From its listener port, `dns` sends to another port of `app` that never asked it
    // anything: a new flow, which no rule allows. Before, a local "reply" passed whenever
    // `app` could reach `dns`.
    let unasked = Spawn::udp_client_from(SocketAddr::new(loopback, DENIED_UDP), ALLOWED_UDP)
        .cgroup(&dns)
        .run();
    assert!(unasked.is_eperm(), "{unasked:?}");

    let records = drain(&mut events);
    let from_dns: Vec<_> = records
        .iter()
        .filter(|e| e.src_port == ALLOWED_UDP && e.hook == Hook::Sendmsg4 as u8)
        .collect();
    assert_eq!(from_dns.len(), 1, "only the unasked send: {records:#?}");
    assert_eq!(from_dns[0].dst_port, DENIED_UDP);
    assert_eq!(from_dns[0].verdict, Verdict::Deny as u8);
    assert_eq!(from_dns[0].dst_segment, segment_id(&image, "app"));
}

#[test]
fn udp_lite_to_a_segment_socket_is_decided_not_waved_through() {
    let remote = Netns::new();
    let veth = Veth::new(&remote);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    // The rule opens the port for UDP; UDP-Lite is another protocol, which no rule names.
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.web]
cgroups = ["{}"]
ports = ["{ALLOWED_UDP}/udp"]

[segments.clients]
cidrs = ["{}/32"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["{ALLOWED_UDP}/udp"]
"#,
        web.relative_path(),
        veth.peer_v4,
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    let received = std::env::temp_dir().join(enforcer_tests::unique_name());
    std::fs::write(&received, "").expect("create the receipt file");
    let port = ALLOWED_UDP.to_string();
    let host = veth.host_v4.to_string();
    let received_path = received.to_string_lossy().into_owned();
    let _sink = Spawn::attack_script(&["udp-sink", &host, &port, &received_path, "udplite"])
        .cgroup(&web)
        .serve();
    let fired = Spawn::attack_script(&["udp-fire", &host, &port, "udplite"])
        .netns(&remote)
        .run();
    assert_eq!(fired, Outcome::Ok, "sent");
    // The datagram would be queued at once; give the sink time to write it down if it did.
    std::thread::sleep(Duration::from_millis(300));
    let receipts = std::fs::read_to_string(&received).expect("read the receipt file");
    let _ = std::fs::remove_file(&received);
    assert_eq!(receipts, "", "the UDP-Lite server received the datagram");

    let records = drain(&mut events);
    let refused = to_port(&records, Hook::SkbIngress, ALLOWED_UDP);
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert_eq!(refused[0].verdict, Verdict::Deny as u8);
    assert_eq!(refused[0].protocol, 136);
    assert_eq!(decided_by(&image, &refused[0]), "default-deny");
}

#[test]
fn an_ipv6_chain_longer_than_the_bound_is_dropped_at_the_socket_as_malformed() {
    // Loopback carries no XDP: the receiving socket's layer is the only one that reads
    // the chain. A process in no segment builds the datagrams whole on a raw socket: no
    // socket holds their source, `::1`, so the layer takes them as from an unclassified
    // process of this host, which this policy lets through.
    let parent = TestCgroup::new();
    let service = parent.child("svc.service");
    let image = enforcer_tests::policy::image(&format!(
        "[defaults]\nunclassified = \"allow\"\n\n[segments.svc]\ncgroups = [\"{}\"]\n",
        service.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let log = SinkLog::new();
    // A port no other test binds on loopback.
    let port = 18_455.to_string();
    let _sink = Spawn::attack_script(&["udp-sink", "::1", &port, log.path()])
        .cgroup(&service)
        .serve();
    let send =
        |headers: &str| Spawn::attack_script(&["udp6-chain", "::1", "::1", &port, headers]).run();

    // Seven headers, then six: only the second reaches the service.
    assert_eq!(send("7"), Outcome::Ok, "sent seven headers");
    assert_eq!(send("6"), Outcome::Ok, "sent six headers");
    let received = log.sources(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(200));
    let received_later = log.sources(Duration::ZERO);
    assert_eq!(received, ["::1 40000"], "the six-header datagram arrives");
    assert_eq!(received_later, received, "and nothing else");

    let recorded = drain(&mut events);
    let malformed: Vec<_> = recorded
        .iter()
        .filter(|e| e.reason == Reason::Malformed as u8)
        .collect();
    assert_eq!(malformed.len(), 1, "{recorded:#?}");
    assert_eq!(
        (
            malformed[0].hook,
            malformed[0].verdict,
            malformed[0].cgroup_id
        ),
        (Hook::SkbIngress as u8, Verdict::Deny as u8, service.id()),
        "{recorded:#?}"
    );
}

/// Every decision the programs counted so far, whatever its reason and verdict.
fn decisions(loader: &mut enforcer::loader::Loader) -> u64 {
    loader
        .counters()
        .expect("counters")
        .by_reason
        .iter()
        .map(|count| count.count)
        .sum()
}

/// The decisions one `chat` of `messages` over a fresh connection costs.
fn decisions_of_a_chat(
    loader: &mut enforcer::loader::Loader,
    chat: impl Fn(u32) -> Spawn,
    messages: u32,
) -> u64 {
    let before = decisions(loader);
    let outcome = chat(messages).run();
    assert_eq!(outcome, Outcome::Ok, "a chat of {messages} messages");
    decisions(loader) - before
}

#[test]
fn established_tcp_and_connected_udp_are_not_decided_again() {
    let remote = Netns::new();
    let veth = Veth::new(&remote);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.web]
cgroups = ["{}"]
ports = ["{ALLOWED}/tcp"]

[segments.clients]
cidrs = ["{}/32"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["{ALLOWED}/tcp"]

[[allow]]
id = "web-to-clients"
from = ["web"]
to = ["clients"]
ports = ["{ALLOWED_UDP}/udp"]
"#,
        web.relative_path(),
        veth.peer_v4,
    ));
    let mut loader = loaded_with(&image);
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let server =
        Spawn::attack_script(&["tcp-echo", &veth.host_v4.to_string(), &ALLOWED.to_string()])
            .cgroup(&web)
            .serve();
    let _udp_echo = Spawn::udp_server(veth.peer_addr(ALLOWED_UDP))
        .netns(&remote)
        .serve();
    let server_addr = server.addr.to_string();
    let inbound_tcp = |messages: u32| {
        Spawn::attack_script(&[
            "chat",
            "tcp",
            &server.addr.ip().to_string(),
            &ALLOWED.to_string(),
            &messages.to_string(),
        ])
        .netns(&remote)
    };
    let peer = veth.peer_v4.to_string();
    let outbound_udp = |messages: u32| {
        Spawn::attack_script(&[
            "chat",
            "udp",
            &peer,
            &ALLOWED_UDP.to_string(),
            &messages.to_string(),
        ])
        .cgroup(&web)
    };
    // One message or forty on the same connection: one decision (the SYN at the
    // listener; the UDP socket's connect), none for the packets after.
    for (what, chat) in [
        (
            "TCP to a listener of web",
            &inbound_tcp as &dyn Fn(u32) -> Spawn,
        ),
        ("connected UDP from web", &outbound_udp),
    ] {
        let one = decisions_of_a_chat(&mut loader, chat, 1);
        let forty = decisions_of_a_chat(&mut loader, chat, 40);
        assert_eq!(
            (one, forty),
            (1, 1),
            "{what}: one decision per connection, whatever it carries ({server_addr})"
        );
    }
}

/// The listener port of [`the_ack_that_completes_a_syn_cookie_handshake_is_decided_at_the_listener`].
const COOKIE_PORT: u16 = 18_083;

/// The policy of the SYN-cookie test: `web` serves [`COOKIE_PORT`]; `clients` (the
/// address `client`) may reach it only when `allowed`.
fn cookie_policy(web: &TestCgroup, client: Ipv4Addr, allowed: bool) -> String {
    let rule = if allowed {
        format!(
            "[[allow]]\nid = \"clients-to-web\"\nfrom = [\"clients\"]\nto = [\"web\"]\n\
             ports = [\"{COOKIE_PORT}/tcp\"]\n"
        )
    } else {
        String::new()
    };
    format!(
        "[segments.web]\ncgroups = [\"{}\"]\nports = [\"{COOKIE_PORT}/tcp\"]\n\n\
         [segments.clients]\ncidrs = [\"{client}/32\"]\n\n{rule}",
        web.relative_path()
    )
}

/// Two namespaces of the test's own joined by a veth: the server's, which sends a SYN
/// cookie for every SYN (`net.ipv4.tcp_syncookies = 2`, set in it alone), and the
/// client's.
struct CookieLink {
    server: Netns,
    client: Netns,
    server_v4: Ipv4Addr,
    client_v4: Ipv4Addr,
}

impl CookieLink {
    /// Both namespaces, the veth between them (a /30 in 198.18.0.0/15, spread by pid and
    /// serial), and the server's SYN cookies turned on for every SYN.
    fn new() -> Self {
        let server = Netns::new();
        let client = Netns::new();
        let serial = next_serial();
        let pid = std::process::id();
        let near = format!("{LINK_PREFIX}c{}-{serial}", pid % 10_000);
        let far = format!("{LINK_PREFIX}d{}-{serial}", pid % 10_000);
        add_veth(Some(&server), &near, &client, &far);
        let third = u8::try_from(pid % 250).expect("below 250");
        let fourth = u8::try_from(serial % 64 * 4).expect("below 256");
        let server_v4 = Ipv4Addr::new(198, 18, third, fourth + 1);
        let client_v4 = Ipv4Addr::new(198, 18, third, fourth + 2);
        address_up(Some(&server), &near, &[(server_v4.into(), 30)]);
        address_up(Some(&client), &far, &[(client_v4.into(), 30)]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                server.name(),
                "sh",
                "-c",
                "echo 2 > /proc/sys/net/ipv4/tcp_syncookies",
            ],
        );
        Self {
            server,
            client,
            server_v4,
            client_v4,
        }
    }

    /// How many SYN cookies the server's namespace has sent (`TcpExt: SyncookiesSent`
    /// of its `/proc/net/netstat`).
    fn syn_cookies_sent(&self) -> u64 {
        let netstat = run(
            "ip",
            &[
                "netns",
                "exec",
                self.server.name(),
                "cat",
                "/proc/net/netstat",
            ],
        );
        let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
        let (names, values) = (lines.next(), lines.next());
        names
            .zip(values)
            .and_then(|(names, values)| {
                names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(name, _)| *name == "SyncookiesSent")
                    .and_then(|(_, value)| value.parse().ok())
            })
            .expect("TcpExt: SyncookiesSent in /proc/net/netstat")
    }
}

/// XDP decides SYNs only; with SYN cookies the listener keeps nothing of a handshake
/// until its last ACK, which is all that reaches the listener when the SYN was decided
/// under an older policy. So the per-socket layer decides every packet to a listener
/// under the active generation, the completing ACK included. A client builds the
/// handshake by hand on a raw socket (`handshake-gated`: its own kernel answers the
/// unexpected SYN-ACK with a reset, which a listener that keeps no state ignores): the
/// SYN under a policy that lets it in, the SYN-ACK read for its cookie, then the ACK.
/// Control: with no new policy in between, the ACK completes the handshake and the
/// server's `accept()` returns the connection. Attack: the policy that denies the client
/// is applied between the SYN-ACK and the ACK; the ACK is dropped at the listener,
/// recorded as denied under the new generation, and `accept()` gets nothing.
#[test]
fn the_ack_that_completes_a_syn_cookie_handshake_is_decided_at_the_listener() {
    let link = CookieLink::new();
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let allowing = enforcer_tests::policy::image(&cookie_policy(&web, link.client_v4, true));
    let denying = enforcer_tests::policy::image(&cookie_policy(&web, link.client_v4, false));
    let mut loader = loaded_with(&allowing);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let cgroup_root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let accepted = Log::new("cookie-accepted");
    let _server = Script::new(
        "rt3_attack.py",
        &[
            "tcp-listen",
            &link.server_v4.to_string(),
            &COOKIE_PORT.to_string(),
            "30000",
            accepted.path(),
            "web",
        ],
    )
    .netns(&link.server)
    .cgroup(&web)
    .serve();
    let accepted_so_far = || accepted.text().lines().count();

    // The client's handshake from `sport`; `between` runs after the SYN-ACK, before the
    // ACK. Returns how many connections the server accepted within a second of the ACK.
    let handshake = |sport: u16, between: &mut dyn FnMut()| {
        let before = accepted_so_far();
        let gate = Gate::new();
        let (_client, mut lines) = Script::new(
            "attack.py",
            &[
                "handshake-gated",
                &link.client_v4.to_string(),
                &link.server_v4.to_string(),
                &COOKIE_PORT.to_string(),
                &sport.to_string(),
                gate.path().to_str().expect("utf-8"),
            ],
        )
        .netns(&link.client)
        .start();
        gate.wait_until_reached();
        between();
        gate.open();
        let sent = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(sent, "ok", "the client's ACK from port {sport}");
        // The server accepts within moments; the client sends nothing more.
        for _ in 0..20 {
            if accepted_so_far() > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        accepted_so_far() - before
    };
    let (control, attack) = (41_100, 41_101);
    assert_eq!(
        handshake(control, &mut || {}),
        1,
        "control: the raw handshake completes"
    );
    assert_eq!(
        handshake(attack, &mut || {
            let applied = loader.apply(&denying, &cgroup_root).expect("apply");
            assert_eq!(applied.generation, 2);
        }),
        0,
        "the ACK under the denying policy reached accept()"
    );

    assert!(
        link.syn_cookies_sent() >= 2,
        "the server answered both SYNs with a cookie"
    );

    let records = drain(&mut events);
    let from = |sport: u16| -> Vec<(u8, u8, u32)> {
        records
            .iter()
            .filter(|e| e.src_port == sport && e.dst_port == COOKIE_PORT)
            .map(|e| (e.hook, e.verdict, e.generation))
            .collect()
    };
    let at_socket = Hook::SkbIngress as u8;
    let (allow, deny) = (Verdict::Allow as u8, Verdict::Deny as u8);
    assert_eq!(
        from(control),
        [(at_socket, allow, 1)],
        "the SYN, allowed; the ACK that completed the handshake is not recorded: {records:#?}"
    );
    assert_eq!(
        from(attack),
        [(at_socket, allow, 1), (at_socket, deny, 2)],
        "the SYN allowed under the first policy, the ACK denied under the second: {records:#?}"
    );
    let denied = records
        .iter()
        .find(|e| e.src_port == attack && e.verdict == deny)
        .expect("the ACK's record");
    assert_eq!(decided_by(&denying, denied), "default-deny");
    assert_eq!(denied.src_segment, segment_id(&denying, "clients"));
    assert_eq!(denied.dst_segment, segment_id(&denying, "web"));
    assert_eq!(denied.cgroup_id, web.id(), "the listener's cgroup");
}

const LOOPBACK_TCP: u16 = 18_084;
const LOOPBACK_UDP: u16 = 18_056;

/// A flow over loopback was decided at its sender's `connect()` or `sendmsg()`, against
/// the segment of the socket it reaches. The per-socket layer decides a loopback SYN to
/// a listener, and a loopback datagram from a peer the socket has not let in, again
/// against the sender's segment, but records only a denial, and counts nothing else: an
/// allowed TCP connection and an allowed UDP exchange (query and answer) between two
/// segments, over `127.0.0.1` and `::1`, each leave one record (`connect4`/`connect6`,
/// `sendmsg4`/`sendmsg6`) and cost one counted decision (and one count on the rule);
/// none is recorded at `skb_ingress`.
#[test]
fn an_allowed_loopback_flow_is_recorded_and_counted_once_at_its_sender() {
    let parent = TestCgroup::new();
    let app = parent.child("app.service");
    let db = parent.child("db.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.app]
cgroups = ["{}"]

[segments.db]
cgroups = ["{}"]
ports = ["{LOOPBACK_TCP}/tcp", "{LOOPBACK_UDP}/udp"]

[[allow]]
id = "app-to-db"
from = ["app"]
to = ["db"]
ports = ["{LOOPBACK_TCP}/tcp", "{LOOPBACK_UDP}/udp"]
"#,
        app.relative_path(),
        db.relative_path(),
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");

    let flows = [
        (Ipv4Addr::LOCALHOST.into(), Hook::Connect4, Hook::Sendmsg4),
        (
            IpAddr::from(Ipv6Addr::LOCALHOST),
            Hook::Connect6,
            Hook::Sendmsg6,
        ),
    ];
    let mut expected = Vec::new();
    for (loopback, connect, sendmsg) in flows {
        let tcp = Spawn::tcp_server(SocketAddr::new(loopback, LOOPBACK_TCP))
            .cgroup(&db)
            .serve();
        let udp = Spawn::udp_server(SocketAddr::new(loopback, LOOPBACK_UDP))
            .cgroup(&db)
            .serve();
        for (client, hook) in [
            (Spawn::tcp_client(tcp.addr), connect),
            (Spawn::udp_client(udp.addr), sendmsg),
        ] {
            let before = decisions(&mut loader);
            assert_eq!(client.cgroup(&app).run(), Outcome::Ok, "{hook:?}");
            assert_eq!(
                decisions(&mut loader) - before,
                1,
                "{hook:?}: one counted decision"
            );
            expected.push(hook as u8);
        }
    }

    assert_eq!(
        rule_counters(&mut loader, &image, "app-to-db").allow,
        4,
        "the rule counted each flow once"
    );
    let records = drain(&mut events);
    let hooks: Vec<u8> = records.iter().map(|e| e.hook).collect();
    assert_eq!(
        hooks, expected,
        "one record per flow, at its sender: {records:#?}"
    );
    for record in &records {
        assert_eq!(record.verdict, Verdict::Allow as u8, "{record:?}");
        assert_eq!(decided_by(&image, record), "app-to-db");
        assert_eq!(record.src_segment, segment_id(&image, "app"));
        assert_eq!(record.dst_segment, segment_id(&image, "db"));
    }
}
