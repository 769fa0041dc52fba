//! Outbound enforcement at the cgroup connect and sendmsg hooks: a process in a segment's
//! cgroup reaches what the policy allows, gets EPERM for what it denies, over TCP and UDP,
//! IPv4 and IPv6; child cgroups inherit; audit mode lets denials through.

use std::net::{IpAddr, SocketAddr};

use enforcer_tests::{
    cgroup::TestCgroup,
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, Server, Spawn},
};

const EPERM: i32 = 1;

fn policy(api_cgroup: &str, veth: &Veth, api_mode: &str) -> enforcer::policy::image::MapImage {
    let text = format!(
        r#"
[segments.api]
cgroups = ["{api_cgroup}"]
mode = "{api_mode}"

[segments.db]
cidrs = ["{}/32", "{}/128"]

[[allow]]
id = "api-to-db"
from = ["api"]
to = ["db"]
ports = ["5432/tcp", "5353/udp"]
"#,
        veth.peer_v4, veth.peer_v6
    );
    enforcer_tests::policy::image(&text)
}

/// Echo servers on the test host: TCP 5432 (allowed) and 5433 (denied), UDP 5353
/// (allowed) and 5354 (denied), on both address families.
/// The servers stop when the returned guards drop.
fn remote(netns: &Netns, veth: &Veth) -> Vec<Server> {
    let mut servers = Vec::new();
    for ip in [IpAddr::from(veth.peer_v4), IpAddr::from(veth.peer_v6)] {
        for port in [5432, 5433] {
            servers.push(
                Spawn::tcp_server(SocketAddr::new(ip, port))
                    .netns(netns)
                    .serve(),
            );
        }
        for port in [5353, 5354] {
            servers.push(
                Spawn::udp_server(SocketAddr::new(ip, port))
                    .netns(netns)
                    .serve(),
            );
        }
    }
    servers
}

fn tcp(cgroup: &TestCgroup, ip: IpAddr, port: u16) -> Outcome {
    Spawn::tcp_client(SocketAddr::new(ip, port))
        .cgroup(cgroup)
        .run()
}

fn udp(cgroup: &TestCgroup, ip: IpAddr, port: u16) -> Outcome {
    Spawn::udp_client(SocketAddr::new(ip, port))
        .cgroup(cgroup)
        .run()
}

fn is_eperm(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Error { errno, .. } if *errno == EPERM)
}

#[test]
fn segment_egress_is_allowed_or_refused_with_eperm() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _remote = remote(&netns, &veth);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let worker = api.child("worker.scope");
    let unsegmented = parent.child("other.service");
    let mut loader = loaded_with(&policy(&api.relative_path(), &veth, "enforce"));
    loader.attach_cgroup(parent.path()).expect("attach");

    for ip in [IpAddr::from(veth.peer_v4), IpAddr::from(veth.peer_v6)] {
        for cgroup in [&api, &worker] {
            assert_eq!(tcp(cgroup, ip, 5432), Outcome::Ok, "allowed TCP to {ip}");
            assert_eq!(udp(cgroup, ip, 5353), Outcome::Ok, "allowed UDP to {ip}");
            let denied = tcp(cgroup, ip, 5433);
            assert!(
                is_eperm(&denied),
                "TCP to {ip}:5433 should get EPERM, got {denied:?}"
            );
            let denied = udp(cgroup, ip, 5354);
            assert!(
                is_eperm(&denied),
                "UDP to {ip}:5354 should get EPERM, got {denied:?}"
            );
        }
        // A process in no segment is `host`: no rule lets it reach db.
        let denied = tcp(&unsegmented, ip, 5432);
        assert!(
            is_eperm(&denied),
            "host to {ip}:5432 should get EPERM, got {denied:?}"
        );
    }
    // IPv4-mapped IPv6 destinations are decided as IPv4.
    let mapped: IpAddr = veth.peer_v4.to_ipv6_mapped().into();
    assert!(is_eperm(&tcp(&api, mapped, 5433)));
}

#[test]
fn audit_mode_lets_denials_through_and_a_new_generation_takes_over() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _remote = remote(&netns, &veth);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let mut loader = loaded_with(&policy(&api.relative_path(), &veth, "enforce"));
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    loader.attach_cgroup(parent.path()).expect("attach");
    let ip = IpAddr::from(veth.peer_v4);
    assert!(is_eperm(&tcp(&api, ip, 5433)));

    let applied = loader
        .apply(&policy(&api.relative_path(), &veth, "audit"), &root)
        .expect("apply audit");
    assert_eq!(applied.generation, 2);
    assert_eq!(
        tcp(&api, ip, 5433),
        Outcome::Ok,
        "audit mode lets the would-be denial through"
    );
    assert_eq!(udp(&api, ip, 5354), Outcome::Ok);

    let applied = loader
        .apply(&policy(&api.relative_path(), &veth, "enforce"), &root)
        .expect("apply enforce");
    assert_eq!(applied.generation, 3);
    assert!(is_eperm(&tcp(&api, ip, 5433)), "enforcing again");
    assert_eq!(tcp(&api, ip, 5432), Outcome::Ok);
}
