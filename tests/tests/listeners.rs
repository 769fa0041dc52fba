//! Listener ports learnt at `bind()`: a server in a segment's cgroup makes its port that
//! segment's, for inbound traffic at XDP and for local (loopback) connects, without the
//! policy declaring the port. A UDP server's replies from that port pass when the policy
//! allows the flow they answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::programs::XdpMode;
use enforcer_common::event::{Hook, Verdict};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{drain, segment_id},
    netns::{Netns, Veth},
    policy::{loaded_with, orders_to_inventory},
    probe::{Gate, Outcome, Server, Spawn},
};

const EPERM: i32 = 1;

#[test]
fn a_port_bound_in_a_segment_belongs_to_that_segment() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let peers = parent.child("peers.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.clients]
cidrs = ["{}/32", "{}/128"]

[segments.web]
cgroups = ["{}"]

[segments.peers]
cgroups = ["{}"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["18090/tcp", "18093/udp"]

[[allow]]
id = "peers-to-web"
from = ["peers"]
to = ["web"]
ports = ["18090/tcp"]
"#,
        veth.peer_v4,
        veth.peer_v6,
        web.relative_path(),
        peers.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    // Dual-stack servers in `web`'s cgroup; no port is declared in the policy.
    let any = IpAddr::from(Ipv6Addr::UNSPECIFIED);
    let _allowed = Spawn::tcp_server(SocketAddr::new(any, 18090))
        .cgroup(&web)
        .serve();
    let _unlisted = Spawn::tcp_server(SocketAddr::new(any, 18091))
        .cgroup(&web)
        .serve();
    let _udp_allowed = Spawn::udp_server(SocketAddr::new(any, 18093))
        .cgroup(&web)
        .serve();
    let _udp_unlisted = Spawn::udp_server(SocketAddr::new(any, 18094))
        .cgroup(&web)
        .serve();

    // Inbound from the test host: had the port not been learnt, the destination would be
    // `host`, which no rule lets `clients` reach, and UDP would not be decided at all.
    for host in [IpAddr::from(veth.host_v4), IpAddr::from(veth.host_v6)] {
        let tcp = |port| {
            Spawn::tcp_client(SocketAddr::new(host, port))
                .netns(&netns)
                .run()
        };
        let udp = |port| {
            Spawn::udp_client(SocketAddr::new(host, port))
                .netns(&netns)
                .run()
        };
        assert_eq!(tcp(18090), Outcome::Ok, "{host}:18090");
        assert_eq!(tcp(18091), Outcome::Timeout, "{host}:18091");
        assert_eq!(udp(18093), Outcome::Ok, "{host}:18093/udp");
        assert_eq!(udp(18094), Outcome::Timeout, "{host}:18094/udp");
    }

    // Local connects over loopback are decided against the listener's segment too.
    for local in [
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(Ipv6Addr::LOCALHOST),
        IpAddr::from(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
    ] {
        let tcp = |port| {
            Spawn::tcp_client(SocketAddr::new(local, port))
                .cgroup(&peers)
                .run()
        };
        assert_eq!(tcp(18090), Outcome::Ok, "{local}:18090");
        let refused = tcp(18091);
        assert!(
            matches!(refused, Outcome::Error { errno, .. } if errno == EPERM),
            "{local}:18091 should get EPERM, got {refused:?}"
        );
    }

    let web_id = segment_id(&image, "web");
    let recorded = drain(&mut events);
    let inbound: Vec<_> = recorded
        .iter()
        .filter(|e| e.hook == Hook::XdpIngress as u8)
        .collect();
    assert!(!inbound.is_empty());
    assert!(
        inbound.iter().all(|e| e.dst_segment == web_id),
        "{inbound:#?}"
    );
}

#[test]
fn binding_another_services_port_on_another_address_does_not_take_the_port() {
    let parent = TestCgroup::new();
    let inventory = parent.child("inventory.service");
    let gateway = parent.child("gateway.service");
    let orders = parent.child("orders.service");
    let image =
        enforcer_tests::policy::image(&orders_to_inventory(&inventory, &gateway, &orders, 18095));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let at = |last: u8| SocketAddr::new(IpAddr::from(Ipv4Addr::new(127, 0, 0, last)), 18095);
    let orders_to = |last| Spawn::tcp_client(at(last)).cgroup(&orders).run();

    // The port is not declared: inventory's binding makes it inventory's.
    let _rightful = Spawn::tcp_server(at(1)).cgroup(&inventory).serve();
    assert_eq!(orders_to(1), Outcome::Ok, "before");
    {
        // A compromised gateway binds the same port on another loopback address.
        let _hijack = Spawn::tcp_server(at(2)).cgroup(&gateway).serve();
        assert_eq!(
            orders_to(1),
            Outcome::Ok,
            "the rightful service keeps its clients"
        );
        let to_gateway = orders_to(2);
        assert!(
            to_gateway.is_eperm(),
            "a connect the kernel delivers to gateway's socket is gateway's: {to_gateway:?}"
        );
    }
    // The hijacker is gone: nothing of its binding stays.
    assert_eq!(orders_to(1), Outcome::Ok, "after the hijacker exited");

    let orders_id = segment_id(&image, "orders");
    let decided: Vec<(u32, u8)> = drain(&mut events)
        .into_iter()
        .filter(|e| e.hook == Hook::Connect4 as u8 && e.src_segment == orders_id)
        .map(|e| (e.dst_segment, e.verdict))
        .collect();
    let inventory_id = segment_id(&image, "inventory");
    let gateway_id = segment_id(&image, "gateway");
    assert_eq!(
        decided,
        [
            (inventory_id, Verdict::Allow as u8),
            (inventory_id, Verdict::Allow as u8),
            (gateway_id, Verdict::Deny as u8),
            (inventory_id, Verdict::Allow as u8),
        ],
        "each connect recorded against the segment whose socket it reached"
    );
}

#[test]
fn a_released_binding_is_forgotten() {
    let parent = TestCgroup::new();
    let inventory = parent.child("inventory.service");
    let gateway = parent.child("gateway.service");
    let orders = parent.child("orders.service");
    let image =
        enforcer_tests::policy::image(&orders_to_inventory(&inventory, &gateway, &orders, 18097));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let loopback = SocketAddr::new(IpAddr::from(Ipv4Addr::LOCALHOST), 18097);
    let orders_to_the_port = || Spawn::tcp_client(loopback).cgroup(&orders).run();
    {
        // inventory serves the port on every address, then stops.
        let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), 18097);
        let _inventory = Spawn::tcp_server(any).cgroup(&inventory).serve();
        assert_eq!(orders_to_the_port(), Outcome::Ok, "while inventory serves");
    }
    // A process outside the attached subtree (no hook sees its bind) takes the port: had
    // inventory's binding outlived its socket, orders would reach this process as
    // inventory.
    let _stranger = Spawn::tcp_server(loopback).serve();
    let outcome = orders_to_the_port();
    assert!(
        outcome.is_eperm(),
        "the port is no longer inventory's once its socket is released: {outcome:?}"
    );
    let decided: Vec<(u32, u8)> = drain(&mut events)
        .into_iter()
        .filter(|e| e.hook == Hook::Connect4 as u8)
        .map(|e| (e.dst_segment, e.verdict))
        .collect();
    let host_id = segment_id(&image, "host");
    assert_eq!(
        decided,
        [
            (segment_id(&image, "inventory"), Verdict::Allow as u8),
            (host_id, Verdict::Deny as u8),
        ]
    );
}

#[test]
fn a_client_bound_before_the_hooks_in_the_ephemeral_range_is_not_taken_for_a_listener() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.clients]
cidrs = ["{}/32"]

[segments.web]
cgroups = ["{}"]

[[allow]]
id = "web-queries-clients"
from = ["web"]
to = ["clients"]
ports = ["18098/udp"]
"#,
        veth.peer_v4,
        web.relative_path()
    ));
    let mut loader = loaded_with(&image);
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    let _server = Spawn::udp_server(veth.peer_addr(18098))
        .netns(&netns)
        .serve();
    // A client of web started before the agent: its socket took a port of the ephemeral
    // range with bind(0) before any hook ran, and it queries the remote host later.
    let gate = Gate::new();
    let peer = veth.peer_v4.to_string();
    let gate_dir = gate.path().display().to_string();
    let client = Spawn::attack_script(&["udp-query-gated", &peer, "18098", &gate_dir])
        .cgroup(&web)
        .run_in_background();
    gate.wait_until_reached();
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let sockets = enforcer::host::sockets::listeners().expect("the host's sockets");
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    loader
        .learn_existing_listeners(&sockets, &root)
        .expect("learn them");
    gate.open();
    // Taken for web's listener, its port would make the answer a new flow from clients
    // to web, which no rule allows: dropped at XDP.
    assert_eq!(
        client.outcome(),
        Outcome::Ok,
        "the answer to the allowed query reaches the client"
    );
}

/// A remote host (`clients`, by its address) with no rule to `web` (a cgroup), XDP on the
/// link; the cgroup hooks are attached by the test, when it wants them.
struct Unadmitted {
    // Field order is drop order: the loader (and its links) first, the veth before its
    // namespace, the child cgroup before its parent.
    loader: enforcer::loader::Loader,
    events: enforcer::loader::EventReader,
    image: enforcer::policy::image::MapImage,
    veth: Veth,
    netns: Netns,
    web: TestCgroup,
    parent: TestCgroup,
}

impl Unadmitted {
    fn new() -> Self {
        let netns = Netns::new();
        let veth = Veth::new(&netns);
        let parent = TestCgroup::new();
        let web = parent.child("web.service");
        let image = enforcer_tests::policy::image(&format!(
            r#"
[segments.clients]
cidrs = ["{}/32"]

[segments.web]
cgroups = ["{}"]
"#,
            veth.peer_v4,
            web.relative_path()
        ));
        let mut loader = loaded_with(&image);
        let events = loader.take_events().expect("events");
        loader
            .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
            .expect("attach XDP");
        Self {
            loader,
            events,
            image,
            veth,
            netns,
            web,
            parent,
        }
    }

    /// A UDP server of `web` on this host's end of the link, at `port`.
    fn serve(&self, port: u16) -> Server {
        Spawn::udp_server(SocketAddr::new(self.veth.host_v4.into(), port))
            .cgroup(&self.web)
            .serve()
    }

    /// Asserts that a datagram from the remote host to `port` is dropped at XDP, with one
    /// record naming `web`: the port is known as `web`'s.
    fn assert_refused_at_xdp(&mut self, port: u16) {
        let sent = Spawn::udp_client(SocketAddr::new(self.veth.host_v4.into(), port))
            .netns(&self.netns)
            .run();
        assert_eq!(sent, Outcome::Timeout, "the datagram is dropped at XDP");
        let web_id = segment_id(&self.image, "web");
        let refused = drain(&mut self.events)
            .into_iter()
            .filter(|e| {
                e.hook == Hook::XdpIngress as u8
                    && e.dst_port == port
                    && e.dst_segment == web_id
                    && e.verdict == Verdict::Deny as u8
            })
            .count();
        assert_eq!(refused, 1, "one record of the refused datagram");
    }
}

#[test]
fn a_udp_service_on_a_port_of_the_ephemeral_range_is_learnt_when_it_asked_for_it() {
    let mut site = Unadmitted::new();
    site.loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("the ephemeral port range");
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|low| low.parse().ok())
        .expect("a port");
    let port = low + 1234;
    // A service that asked for a port inside the ephemeral range (as RTP or QUIC servers
    // do) is the segment's: a remote host no rule admits is refused at XDP.
    let _server = site.serve(port);
    site.assert_refused_at_xdp(port);
}

#[test]
fn a_listener_bound_before_the_hooks_is_learnt_from_the_hosts_sockets() {
    let mut site = Unadmitted::new();
    // A service started before the agent: its bind() ran before any hook.
    let _server = site.serve(18_096);
    site.loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");
    let sockets = enforcer::host::sockets::listeners().expect("the host's sockets");
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    let learnt = site
        .loader
        .learn_existing_listeners(&sockets, &root)
        .expect("learn them");
    assert!(learnt >= 1, "learnt {learnt} of {sockets:?}");
    // The port is web's: a remote host no rule admits is refused at XDP.
    site.assert_refused_at_xdp(18_096);
}
