//! `socket()` at the cgroup sock_create hook: a process of a segment cannot open a raw
//! socket (it passes neither the connect nor the sendmsg hook) unless its segment is
//! granted `raw_sockets`; audit mode lets it through and records `audit`; processes in no
//! segment are not governed. ICMP ping sockets may be opened, and every echo request one
//! sends is decided by the rules (`echo/icmp`, `echo/icmpv6`) as it leaves.

use std::net::{IpAddr, SocketAddr};

use enforcer_common::event::{Hook, Verdict};
use enforcer_tests::{
    cgroup::TestCgroup,
    cmd::run,
    events::{decided_by, drain, segment_id},
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, Spawn},
};

const EPERM: i32 = 1;

fn raw_socket(cgroup: &TestCgroup, v6: bool) -> Outcome {
    let addr: SocketAddr = if v6 {
        "[2001:db8::1]:0".parse().expect("valid")
    } else {
        "198.18.0.1:0".parse().expect("valid")
    };
    Spawn::raw_socket(addr).cgroup(cgroup).run()
}

/// Three segments under one attached parent cgroup: `locked` (no grant), `tools`
/// (`raw_sockets = true`), `trial` (audit mode), and a cgroup in no segment.
struct Fixture {
    // Field order is drop order: the loader (and its links) goes before the cgroups.
    _loader: enforcer::loader::Loader,
    events: enforcer::loader::EventReader,
    image: enforcer::policy::image::MapImage,
    locked: TestCgroup,
    tools: TestCgroup,
    trial: TestCgroup,
    unsegmented: TestCgroup,
    _parent: TestCgroup,
}

fn fixture() -> Fixture {
    let parent = TestCgroup::new();
    let locked = parent.child("locked.service");
    let tools = parent.child("tools.service");
    let trial = parent.child("trial.service");
    let unsegmented = parent.child("other.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.locked]
cgroups = ["{}"]

[segments.tools]
cgroups = ["{}"]
raw_sockets = true

[segments.trial]
cgroups = ["{}"]
mode = "audit"

[[allow]]
id = "tools-ping"
from = ["tools"]
to = ["*"]
ports = ["echo/icmp", "echo/icmpv6"]
"#,
        locked.relative_path(),
        tools.relative_path(),
        trial.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    Fixture {
        _loader: loader,
        events,
        image,
        locked,
        tools,
        trial,
        unsegmented,
        _parent: parent,
    }
}

#[test]
fn raw_sockets_are_refused_to_segments_without_the_grant() {
    let mut fx = fixture();
    for v6 in [false, true] {
        let refused = raw_socket(&fx.locked, v6);
        assert!(
            matches!(refused, Outcome::Error { errno, .. } if errno == EPERM),
            "a raw socket in `locked` (v6: {v6}) should get EPERM, got {refused:?}"
        );
        assert_eq!(raw_socket(&fx.tools, v6), Outcome::Ok, "granted (v6: {v6})");
        assert_eq!(
            raw_socket(&fx.trial, v6),
            Outcome::Ok,
            "audit mode (v6: {v6})"
        );
        assert_eq!(raw_socket(&fx.unsegmented, v6), Outcome::Ok, "no segment");
    }

    let recorded: Vec<_> = drain(&mut fx.events)
        .into_iter()
        .filter(|e| e.hook == Hook::SockCreate as u8)
        .collect();
    let verdicts = |segment: &str| -> Vec<u8> {
        let id = segment_id(&fx.image, segment);
        recorded
            .iter()
            .filter(|e| e.src_segment == id)
            .map(|e| e.verdict)
            .collect()
    };
    assert_eq!(verdicts("locked"), [Verdict::Deny as u8; 2]);
    assert_eq!(verdicts("tools"), [Verdict::Allow as u8; 2]);
    assert_eq!(verdicts("trial"), [Verdict::Audit as u8; 2]);
    assert_eq!(
        recorded.len(),
        6,
        "nothing recorded for `host`: {recorded:#?}"
    );
    assert!(
        recorded
            .iter()
            .all(|e| decided_by(&fx.image, e) == "raw-socket")
    );
}

#[test]
fn every_echo_request_from_a_ping_socket_is_decided_by_the_rules() {
    // The segment's processes live in a namespace whose ping_group_range lets every
    // group open ping sockets (systemd's default). An echo request sent with `sendto`
    // (no `connect`, so no connect hook) reached any host, the reply came back; now each
    // one is decided as it leaves.
    let protected = Netns::new();
    let veth = Veth::new(&protected);
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
    let mut fx = fixture();

    let ping = |cgroup: &TestCgroup, to: IpAddr| {
        Spawn::ping(SocketAddr::new(to, 0))
            .netns(&protected)
            .cgroup(cgroup)
            .run()
    };
    for to in [IpAddr::from(veth.host_v4), IpAddr::from(veth.host_v6)] {
        // The path works: a process in no segment gets its reply.
        assert_eq!(
            ping(&fx.unsegmented, to),
            Outcome::Ok,
            "no segment, to {to}"
        );
        // Dropped as it leaves: IPv4's ping `sendto()` reports it with EPERM; IPv6's
        // ignores the error, and no reply ever comes.
        let refused = ping(&fx.locked, to);
        if to.is_ipv4() {
            assert!(
                refused.is_eperm(),
                "an echo request from `locked` (to {to}) should get EPERM, got {refused:?}"
            );
        } else {
            assert_eq!(refused, Outcome::Timeout, "from `locked` to {to}");
        }
        assert_eq!(
            ping(&fx.tools, to),
            Outcome::Ok,
            "a rule allows it, to {to}"
        );
        assert_eq!(ping(&fx.trial, to), Outcome::Ok, "audit mode, to {to}");
    }

    let recorded = drain(&mut fx.events);
    assert!(
        recorded.iter().all(|e| e.hook == Hook::SkbEgress as u8),
        "a ping socket is not refused at socket(): {recorded:#?}"
    );
    let by_segment = |segment: &str| -> Vec<(u8, u16, u8, String)> {
        let id = segment_id(&fx.image, segment);
        let mut found: Vec<_> = recorded
            .iter()
            .filter(|e| e.src_segment == id)
            .map(|e| (e.protocol, e.dst_port, e.verdict, decided_by(&fx.image, e)))
            .collect();
        found.sort_unstable();
        found
    };
    // Each record carries the protocol and the request's type in place of the port.
    let (deny, allow, audit) = (
        Verdict::Deny as u8,
        Verdict::Allow as u8,
        Verdict::Audit as u8,
    );
    let rule = |name: &str| name.to_owned();
    assert_eq!(
        by_segment("locked"),
        [
            (1, 8, deny, rule("default-deny")),
            (58, 128, deny, rule("default-deny"))
        ]
    );
    assert_eq!(
        by_segment("tools"),
        [
            (1, 8, allow, rule("tools-ping")),
            (58, 128, allow, rule("tools-ping"))
        ]
    );
    assert_eq!(
        by_segment("trial"),
        [
            (1, 8, audit, rule("default-deny")),
            (58, 128, audit, rule("default-deny"))
        ]
    );
    assert_eq!(recorded.len(), 6, "nothing for `host`: {recorded:#?}");
}
