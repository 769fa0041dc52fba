//! Inbound enforcement at XDP on a real veth: a test host's allowed connections succeed,
//! its denied SYNs and datagrams are dropped before the server sees them, and replies to
//! this host's own outbound connections keep flowing.

use std::net::{IpAddr, SocketAddr};

use aya::programs::XdpMode;
use enforcer_tests::{
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, Spawn},
};

fn policy(veth: &Veth) -> enforcer::policy::image::MapImage {
    let text = format!(
        r#"
[segments.clients]
cidrs = ["{}/32", "{}/128"]

[segments.web]
ports = ["18080/tcp", "18081/tcp", "18053/udp", "18054/udp"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["18080/tcp", "18053/udp"]
"#,
        veth.peer_v4, veth.peer_v6
    );
    enforcer_tests::policy::image(&text)
}

#[test]
fn xdp_drops_denied_inbound_flows_and_passes_allowed_ones_and_replies() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let mut loader = loaded_with(&policy(&veth));
    loader
        .attach_xdp(veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");

    for host in [IpAddr::from(veth.host_v4), IpAddr::from(veth.host_v6)] {
        let allowed_tcp = Spawn::tcp_server(SocketAddr::new(host, 18080)).serve();
        let denied_tcp = Spawn::tcp_server(SocketAddr::new(host, 18081)).serve();
        let allowed_udp = Spawn::udp_server(SocketAddr::new(host, 18053)).serve();
        let denied_udp = Spawn::udp_server(SocketAddr::new(host, 18054)).serve();
        assert_eq!(
            Spawn::tcp_client(allowed_tcp.addr).netns(&netns).run(),
            Outcome::Ok,
            "{host}:18080"
        );
        assert_eq!(
            Spawn::udp_client(allowed_udp.addr).netns(&netns).run(),
            Outcome::Ok,
            "{host}:18053"
        );
        // Dropped at XDP: the client hears nothing back (no RST, no echo).
        assert_eq!(
            Spawn::tcp_client(denied_tcp.addr).netns(&netns).run(),
            Outcome::Timeout,
            "{host}:18081"
        );
        assert_eq!(
            Spawn::udp_client(denied_udp.addr).netns(&netns).run(),
            Outcome::Timeout,
            "{host}:18054"
        );
    }

    // This host's own connections out to the test host: the SYN+ACK and the UDP reply
    // come in through the XDP program and must not be dropped.
    for remote in [IpAddr::from(veth.peer_v4), IpAddr::from(veth.peer_v6)] {
        let tcp = Spawn::tcp_server(SocketAddr::new(remote, 28080))
            .netns(&netns)
            .serve();
        let udp = Spawn::udp_server(SocketAddr::new(remote, 28053))
            .netns(&netns)
            .serve();
        assert_eq!(
            Spawn::tcp_client(tcp.addr).run(),
            Outcome::Ok,
            "outbound TCP to {remote}"
        );
        assert_eq!(
            Spawn::udp_client(udp.addr).run(),
            Outcome::Ok,
            "outbound UDP to {remote}"
        );
    }
}
