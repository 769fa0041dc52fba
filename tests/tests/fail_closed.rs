//! Fail-closed in the kernel: while the agent cannot write audit records (and its config
//! says `on_write_error = "fail-closed"`), it sets the switch in the pinned host settings,
//! and every hook denies what it would have allowed or let through in audit mode, for
//! reason `audit-unavailable`; failsafe management access stays open. The attacker here
//! fills the audit disk so that its flows go unrecorded: none of them may pass.
//!
//! The switch is thrown as the agent throws it, through the pinned maps
//! (`PinnedMaps::set_fail_closed`, through [`PinnedHost::fail_closed`]); `audit.rs` shows
//! the agent throwing it on a full disk.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use aya::programs::XdpMode;
use enforcer_common::event::{FlowEvent, Hook, Reason, Verdict};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::drain,
    netns::{Netns, Veth},
    packet::{SYN, XDP_DROP, XDP_PASS, tcp4, udp4},
    pins::PinnedHost,
    policy::image,
    probe::{Outcome, Spawn},
};

/// How many decisions the kernel counted as denied for `audit-unavailable`.
fn audit_unavailable_denials(host: &mut PinnedHost) -> u64 {
    host.loader
        .counters()
        .expect("counters")
        .by_reason
        .iter()
        .filter(|c| c.reason == Reason::AuditUnavailable && c.verdict == Verdict::Deny)
        .map(|c| c.count)
        .sum()
}

/// The events for `port`.
fn to_port(events: &[FlowEvent], port: u16) -> Vec<FlowEvent> {
    events
        .iter()
        .filter(|e| e.dst_port == port)
        .copied()
        .collect()
}

/// Asserts that `events` is exactly one denial by `hook` for `audit-unavailable`.
fn one_audit_unavailable_denial(events: &[FlowEvent], hook: Hook, what: &str) {
    assert_eq!(events.len(), 1, "{what}: {events:#?}");
    let event = events[0];
    assert_eq!(
        (event.hook, event.verdict, event.reason, event.rule_id),
        (
            hook as u8,
            Verdict::Deny as u8,
            Reason::AuditUnavailable as u8,
            0
        ),
        "{what}: {event:#?}"
    );
}

const XDP_POLICY: &str = r#"
[failsafe.ssh]
from = ["198.18.250.0/24"]
port = "22/tcp"

[segments.clients]
cidrs = ["198.18.7.0/24"]

[segments.web]
ports = ["8080/tcp", "5353/udp"]

[segments.trial]
ports = ["8082/tcp"]
mode = "audit"

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["8080/tcp", "5353/udp"]
"#;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 5);
const ADMIN: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 9);

#[test]
fn fail_closed_drops_allowed_and_audit_mode_flows_at_xdp_but_not_failsafe_access() {
    let mut host = PinnedHost::new(&image(XDP_POLICY));
    let mut events = host.loader.take_events().expect("events");
    let allowed_syn = tcp4(CLIENT, 8080, SYN);
    let allowed_udp = udp4(CLIENT, 5353);
    // No rule lets clients reach trial: a denial that audit mode lets through.
    let audit_syn = tcp4(CLIENT, 8082, SYN);
    let failsafe_syn = tcp4(ADMIN, 22, SYN);
    let frames = [
        ("an allowed SYN", &allowed_syn),
        ("an allowed datagram", &allowed_udp),
        ("an audit-mode SYN", &audit_syn),
        ("a failsafe SYN", &failsafe_syn),
    ];
    for (what, frame) in frames {
        assert_eq!(host.xdp(frame), XDP_PASS, "{what}, before fail-closed");
    }
    drain(&mut events);

    host.fail_closed(true);
    assert_eq!(host.xdp(&allowed_syn), XDP_DROP, "an allowed SYN");
    assert_eq!(host.xdp(&allowed_udp), XDP_DROP, "an allowed datagram");
    assert_eq!(host.xdp(&audit_syn), XDP_DROP, "an audit-mode SYN");
    assert_eq!(
        host.xdp(&failsafe_syn),
        XDP_PASS,
        "failsafe access stays open"
    );
    let recorded = drain(&mut events);
    for (port, what) in [(8080, "allowed SYN"), (5353, "datagram"), (8082, "audit")] {
        one_audit_unavailable_denial(&to_port(&recorded, port), Hook::XdpIngress, what);
    }
    assert!(to_port(&recorded, 22).is_empty(), "{recorded:#?}");
    assert_eq!(audit_unavailable_denials(&mut host), 3);

    host.fail_closed(false);
    for (what, frame) in frames {
        assert_eq!(host.xdp(frame), XDP_PASS, "{what}, once lifted");
    }
}

/// The port `clients` (the veth's peer) may reach `web` on.
const ALLOWED_PORT: u16 = 18080;
/// The failsafe port, open to the peer whatever the rules.
const FAILSAFE_PORT: u16 = 18022;
/// The peer's port, which no rule lets the audit-mode `trial` reach.
const PEER_PORT: u16 = 15432;

/// A policy for a veth's peer (`clients`), a `web` service (a cgroup) serving
/// [`ALLOWED_PORT`] and the failsafe port, and an audit-mode `trial` job (a cgroup) with
/// no rule at all.
fn socket_policy(veth: &Veth, web: &TestCgroup, trial: &TestCgroup) -> String {
    format!(
        r#"
[failsafe.ssh]
from = ["{peer}/32"]
port = "{FAILSAFE_PORT}/tcp"

[segments.clients]
cidrs = ["{peer}/32"]

[segments.web]
cgroups = ["{web}"]
ports = ["{ALLOWED_PORT}/tcp"]

[segments.trial]
cgroups = ["{trial}"]
mode = "audit"

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["{ALLOWED_PORT}/tcp"]
"#,
        peer = veth.peer_v4,
        web = web.relative_path(),
        trial = trial.relative_path(),
    )
}

#[test]
fn fail_closed_refuses_real_flows_at_every_hook_but_keeps_failsafe_access_open() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let web = parent.child("web.service");
    let trial = parent.child("trial.service");
    let mut host = PinnedHost::new(&image(&socket_policy(&veth, &web, &trial)));
    let mut events = host.loader.take_events().expect("events");
    host.loader
        .attach_cgroup(parent.path())
        .expect("attach cgroup");
    host.loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    let at_host = |port| SocketAddr::new(IpAddr::from(veth.host_v4), port);
    let _allowed = Spawn::tcp_server(at_host(ALLOWED_PORT))
        .cgroup(&web)
        .serve();
    let _ssh = Spawn::tcp_server(at_host(FAILSAFE_PORT))
        .cgroup(&web)
        .serve();
    let _peer = Spawn::tcp_server(veth.peer_addr(PEER_PORT))
        .netns(&netns)
        .serve();
    let inbound = |port| Spawn::tcp_client(at_host(port)).netns(&netns).run();
    let audit_mode_connect = || {
        Spawn::tcp_client(veth.peer_addr(PEER_PORT))
            .cgroup(&trial)
            .run()
    };
    assert_eq!(inbound(ALLOWED_PORT), Outcome::Ok, "allowed, before");
    assert_eq!(inbound(FAILSAFE_PORT), Outcome::Ok, "failsafe, before");
    assert_eq!(audit_mode_connect(), Outcome::Ok, "audit mode, before");
    drain(&mut events);

    host.fail_closed(true);
    assert_eq!(
        inbound(ALLOWED_PORT),
        Outcome::Timeout,
        "an allowed SYN is dropped"
    );
    let outcome = audit_mode_connect();
    assert!(
        outcome.is_eperm(),
        "an audit-mode connect is refused: {outcome:?}"
    );
    // Failsafe access passes XDP and the receiving socket's layer alike.
    assert_eq!(
        inbound(FAILSAFE_PORT),
        Outcome::Ok,
        "failsafe access stays open"
    );
    let recorded = drain(&mut events);
    // The client retransmits its SYN; every copy is dropped at XDP, each one recorded.
    let dropped = to_port(&recorded, ALLOWED_PORT);
    assert!(!dropped.is_empty(), "{recorded:#?}");
    for event in &dropped {
        one_audit_unavailable_denial(&[*event], Hook::XdpIngress, "the allowed SYN");
    }
    one_audit_unavailable_denial(
        &to_port(&recorded, PEER_PORT),
        Hook::Connect4,
        "the audit-mode connect",
    );
    let failsafe = to_port(&recorded, FAILSAFE_PORT);
    assert_eq!(failsafe.len(), 1, "{failsafe:#?}");
    assert_eq!(
        (failsafe[0].hook, failsafe[0].verdict, failsafe[0].reason),
        (
            Hook::SkbIngress as u8,
            Verdict::Allow as u8,
            Reason::Failsafe as u8
        ),
        "{failsafe:#?}"
    );

    host.fail_closed(false);
    assert_eq!(inbound(ALLOWED_PORT), Outcome::Ok, "allowed, once lifted");
    assert_eq!(audit_mode_connect(), Outcome::Ok, "audit mode, once lifted");
}
