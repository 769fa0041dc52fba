//! Broadcast and multicast destinations are classes of their own: a `to = ["world"]`
//! allow does not let a segment's process send to `255.255.255.255`, to the broadcast
//! address of its network, or to a multicast group (which would reach every host on the
//! link, those in denied segments too); only a rule that names `broadcast` or `multicast`
//! does. The real agent runs in the host's namespace and knows its networks' broadcast
//! addresses from the interfaces. IPv6 has no broadcast: `ff00::/8` is `multicast`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use enforcer_common::{
    event::{Hook, Verdict},
    maps::SEGMENT_MULTICAST,
};
use enforcer_tests::{
    LINK_PREFIX,
    agent::AgentHost,
    cgroup::TestCgroup,
    events::{decided_by, drain},
    netns::{Netns, add_veth, address_up},
    next_serial,
    policy::loaded_with,
    probe::{Outcome, Spawn},
};

const PORT: u16 = 15_353;

#[test]
fn only_a_rule_naming_broadcast_or_multicast_lets_a_segment_send_there() {
    // This host (its own namespace, so no route leads anywhere but the test link) and a
    // peer on a /24, with routes for the limited broadcast and multicast on the link.
    let host = Netns::new();
    let peer = Netns::new();
    let link = format!("{LINK_PREFIX}{}-{}b", std::process::id(), next_serial());
    add_veth(Some(&host), &link, &peer, "eth0");
    let third = u8::try_from(std::process::id() % 200).expect("below 200");
    let net = |last| Ipv4Addr::new(198, 19, third, last);
    address_up(Some(&host), &link, &[(net(1).into(), 24)]);
    address_up(Some(&peer), "eth0", &[(net(2).into(), 24)]);
    host.ip(&["route", "add", "255.255.255.255/32", "dev", &link]);
    host.ip(&["route", "add", "224.0.0.0/4", "dev", &link]);
    let _echo = Spawn::udp_server(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORT))
        .netns(&peer)
        .serve();

    let parent = TestCgroup::new();
    let app = parent.child("app.service");
    let lan = parent.child("lan.service");
    let policy = format!(
        r#"
[segments.app]
cgroups = ["{}"]

[segments.lan]
cgroups = ["{}"]

[[allow]]
id = "app-out"
from = ["app"]
to = ["world"]
ports = ["{PORT}/udp"]

[[allow]]
id = "lan-anywhere"
from = ["lan"]
to = ["*"]
ports = ["{PORT}/udp"]

[[allow]]
id = "lan-broadcast"
from = ["lan"]
to = ["broadcast"]
ports = ["{PORT}/udp"]
"#,
        app.relative_path(),
        lan.relative_path()
    );
    let mut agent = AgentHost::new(&parent, &policy, "127.0.0.1:19651", "").in_netns(&host);
    agent.start();
    let send = |cgroup: &TestCgroup, to: Ipv4Addr| {
        Spawn::udp_broadcast_client(SocketAddr::new(IpAddr::V4(to), PORT))
            .netns(&host)
            .cgroup(cgroup)
            .run()
    };

    // The link works: unicast to the peer is `world`, which `app` may reach.
    assert_eq!(send(&app, net(2)), Outcome::Ok, "unicast");
    let limited = Ipv4Addr::BROADCAST;
    let directed = net(255);
    let group = Ipv4Addr::new(224, 0, 0, 251);
    for to in [limited, directed, group] {
        let refused = send(&app, to);
        assert!(refused.is_eperm(), "app to {to}: {refused:?}");
    }
    // `lan`'s `*` does not cover them either, but its rule naming `broadcast` does: the
    // peer answers its broadcasts.
    assert_eq!(send(&lan, limited), Outcome::Ok, "lan to {limited}");
    assert_eq!(send(&lan, directed), Outcome::Ok, "lan to {directed}");
    let refused = send(&lan, group);
    assert!(refused.is_eperm(), "lan to {group}: {refused:?}");

    // One record per refused send, naming the class and the address tried.
    let records: Vec<serde_json::Value> = agent.audit_records();
    let denied = |from: &str, class: &str, to: Ipv4Addr| {
        records.iter().any(|r| {
            let flow = &r["unmapped"]["flow"];
            flow["verdict"] == "deny"
                && flow["src_segment"] == from
                && flow["dst_segment"] == class
                && flow["reason"] == "default-deny"
                && r["dst_endpoint"]["ip"] == to.to_string()
        })
    };
    assert!(denied("app", "broadcast", limited), "{records:#?}");
    assert!(denied("app", "broadcast", directed), "{records:#?}");
    assert!(denied("app", "multicast", group), "{records:#?}");
    assert!(denied("lan", "multicast", group), "{records:#?}");
}

#[test]
fn ipv6_multicast_is_the_multicast_class_not_world() {
    // This host in a namespace of its own with one link to a peer: the all-nodes group
    // (`ff02::1`) reaches the peer, whose echo server answers from its own address.
    let host = Netns::new();
    let peer = Netns::new();
    let link = format!("{LINK_PREFIX}{}-{}m", std::process::id(), next_serial());
    add_veth(Some(&host), &link, &peer, "eth0");
    let third = u16::try_from(std::process::id() % 0xffff).expect("below 0xffff");
    let net = |last| Ipv6Addr::new(0x2001, 0xdb8, 0x6d, third, 0, 0, 0, last);
    address_up(Some(&host), &link, &[(net(1).into(), 64)]);
    address_up(Some(&peer), "eth0", &[(net(2).into(), 64)]);
    let _echo = Spawn::udp_server(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT))
        .netns(&peer)
        .serve();

    let parent = TestCgroup::new();
    let app = parent.child("app.service");
    let lan = parent.child("lan.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.app]
cgroups = ["{}"]

[segments.lan]
cgroups = ["{}"]

[[allow]]
id = "app-out"
from = ["app"]
to = ["world"]
ports = ["{PORT}/udp"]

[[allow]]
id = "lan-multicast"
from = ["lan"]
to = ["multicast"]
ports = ["{PORT}/udp"]
"#,
        app.relative_path(),
        lan.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let send = |cgroup: &TestCgroup, to: Ipv6Addr| {
        Spawn::udp_client(SocketAddr::new(IpAddr::V6(to), PORT))
            .netns(&host)
            .cgroup(cgroup)
            .run()
    };

    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    assert_eq!(send(&app, net(2)), Outcome::Ok, "unicast is world");
    let refused = send(&app, all_nodes);
    assert!(
        refused.is_eperm(),
        "a group is not world: app to {all_nodes}: {refused:?}"
    );
    assert_eq!(
        send(&lan, all_nodes),
        Outcome::Ok,
        "a rule naming multicast lets lan reach the group"
    );

    let multicast = SEGMENT_MULTICAST;
    let decided: Vec<(u32, u8, String)> = drain(&mut events)
        .iter()
        .filter(|e| e.hook == Hook::Sendmsg6 as u8 && e.dst_addr == all_nodes.octets())
        .map(|e| (e.dst_segment, e.verdict, decided_by(&image, e)))
        .collect();
    assert_eq!(
        decided,
        [
            (multicast, Verdict::Deny as u8, "default-deny".to_owned()),
            (multicast, Verdict::Allow as u8, "lan-multicast".to_owned()),
        ]
    );
}
