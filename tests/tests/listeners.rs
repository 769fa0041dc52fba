//! Listener ports learnt at `bind()`: a server in a segment's cgroup makes its port that
//! segment's, for inbound traffic at XDP and for local (loopback) connects, without the
//! policy declaring the port. A UDP server's replies from that port pass when the policy
//! allows the flow they answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::programs::XdpMode;
use enforcer_common::event::Hook;
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{drain, segment_id},
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, Spawn},
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
