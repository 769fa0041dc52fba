//! Inbound enforcement at XDP on a real veth: a test host's allowed connections succeed,
//! its denied SYNs and datagrams are dropped before the server sees them, and replies to
//! this host's own outbound connections keep flowing. Decisions are counted per rule and
//! recorded once per flow, by the layer that made it final (XDP for a drop, the
//! per-socket layer for what a socket received): retransmitted SYNs are suppressed and
//! counted.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::programs::XdpMode;
use enforcer_common::event::{Hook, Verdict, family};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{decided_by, drain, rule_counters, segment_id},
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

[[deny]]
id = "clients-not-web-admin"
from = ["clients"]
to = ["web"]
ports = ["18081/tcp"]
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
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
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

#[test]
fn inbound_decisions_are_counted_and_recorded_once_per_flow() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let image = policy(&veth);
    let parent = TestCgroup::new();
    let service = parent.child("web.service");
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    // Longer than the first SYN retransmission timeout (1 s), so the retransmit of the
    // denied SYN falls inside the window.
    loader
        .set_dedup_window(Duration::from_secs(30))
        .expect("set window");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    let host = IpAddr::from(veth.host_v4);
    let allowed = Spawn::tcp_server(SocketAddr::new(host, 18080))
        .cgroup(&service)
        .serve();
    let denied = Spawn::tcp_server(SocketAddr::new(host, 18081))
        .cgroup(&service)
        .serve();

    assert_eq!(
        Spawn::tcp_client(allowed.addr).netns(&netns).run(),
        Outcome::Ok
    );
    assert_eq!(
        Spawn::tcp_client(denied.addr).netns(&netns).run(),
        Outcome::Timeout
    );
    let recorded = drain(&mut events);
    let to_port = |port: u16| -> Vec<_> {
        recorded
            .iter()
            .filter(|e| e.dst_port == port)
            .copied()
            .collect()
    };

    // Allowed at XDP, which records only what it drops; decided again and recorded by the
    // per-socket layer that delivered it, against the receiving socket: a process in no
    // segment's cgroup, so the segment the policy declares for the port.
    let passed = to_port(18080);
    assert_eq!(passed.len(), 1, "{passed:#?}");
    let passed = passed[0];
    assert_eq!(passed.hook, Hook::SkbIngress as u8);
    assert_eq!(passed.verdict, Verdict::Allow as u8);
    assert_eq!(decided_by(&image, &passed), "clients-to-web");
    assert_eq!(passed.src_segment, segment_id(&image, "clients"));
    assert_eq!(passed.dst_segment, segment_id(&image, "web"));
    assert_eq!(passed.family, family::INET);
    assert_eq!(passed.src_addr[..4], veth.peer_v4.octets());
    assert_eq!(passed.dst_addr[..4], veth.host_v4.octets());
    assert_ne!(passed.src_port, 0);
    assert_eq!(passed.ifindex, veth.host_ifindex());
    assert_eq!(
        (passed.cgroup_id, passed.pid_tgid),
        (service.id(), 0),
        "the receiving socket's cgroup, no process"
    );

    // The client sent its SYN and at least one retransmission: every one was dropped and
    // counted by the rule, one event stands for them all, the rest are counted suppressed.
    let dropped = to_port(18081);
    assert_eq!(dropped.len(), 1, "{dropped:#?}");
    assert_eq!(dropped[0].hook, Hook::XdpIngress as u8);
    assert_eq!(dropped[0].verdict, Verdict::Deny as u8);
    assert_eq!(decided_by(&image, &dropped[0]), "clients-not-web-admin");
    let rule = rule_counters(&mut loader, &image, "clients-not-web-admin");
    assert!(rule.deny >= 2, "SYN and retransmit dropped: {rule:?}");
    assert_eq!(rule.allow, 0);
    let counters = loader.counters().expect("counters");
    assert_eq!(counters.events.suppressed, rule.deny - 1);
    assert_eq!(counters.events.lost, 0);
    assert_eq!(
        rule_counters(&mut loader, &image, "clients-to-web").allow,
        1
    );

    // Without a window every dropped SYN is its own event.
    loader.set_dedup_window(Duration::ZERO).expect("set window");
    assert_eq!(
        Spawn::tcp_client(denied.addr).netns(&netns).run(),
        Outcome::Timeout
    );
    let recorded = drain(&mut events);
    let every_syn = recorded.iter().filter(|e| e.dst_port == 18081).count() as u64;
    let now = rule_counters(&mut loader, &image, "clients-not-web-admin");
    assert_eq!(every_syn, now.deny - rule.deny);
}
