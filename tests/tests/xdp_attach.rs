//! The XDP program attaches in generic mode to a veth whose peer is a test host, and TCP
//! and UDP keep flowing across it in both directions of a connection.

use std::net::{IpAddr, SocketAddr};

use aya::programs::{XdpMode, loaded_links};
use enforcer::loader::Loader;
use enforcer_common::event::Hook;
use enforcer_tests::{
    netns::{Netns, Veth},
    probe::{Outcome, Spawn},
};

fn flows_from_remote_host(netns: &Netns, host_addr: IpAddr) {
    let tcp = Spawn::tcp_server(SocketAddr::new(host_addr, 0)).serve();
    assert_eq!(
        Spawn::tcp_client(tcp.addr).netns(netns).run(),
        Outcome::Ok,
        "TCP to {}",
        tcp.addr
    );
    let udp = Spawn::udp_server(SocketAddr::new(host_addr, 0)).serve();
    assert_eq!(
        Spawn::udp_client(udp.addr).netns(netns).run(),
        Outcome::Ok,
        "UDP to {}",
        udp.addr
    );
}

#[test]
fn xdp_attaches_in_generic_mode_and_traffic_still_flows() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let mut loader = Loader::load().expect("load");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");

    // The kernel shows the program on the interface, in generic mode.
    let details = veth.host_link_details();
    assert!(
        details.contains("xdpgeneric"),
        "no generic XDP on {}: {details}",
        veth.host_if()
    );
    let xdp_id = loader
        .programs()
        .expect("info")
        .into_iter()
        .find(|p| p.hook == Hook::XdpIngress)
        .expect("xdp program")
        .id;
    assert!(
        loaded_links().any(|link| link.expect("link info").program_id() == xdp_id),
        "no kernel link runs the XDP program"
    );

    flows_from_remote_host(&netns, veth.host_v4.into());
    flows_from_remote_host(&netns, veth.host_v6.into());

    drop(loader);
    let details = veth.host_link_details();
    assert!(
        !details.contains("xdpgeneric"),
        "XDP stayed attached after the loader dropped"
    );
}
