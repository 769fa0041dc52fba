//! Source routes and routing headers (issue #17, class 4): a process of a segment whose
//! policy lets it reach host A but not host B cannot reach B by sending to A with a
//! source route through B: an IPv6 routing header or an IPv4 loose source route, set as
//! a socket option (refused at `setsockopt` with EPERM) or passed as ancillary data to
//! `sendmsg` (the datagram is dropped on its way out and the send fails with EPERM).
//! Audit mode lets it through, recorded as `audit`; processes in no segment are not
//! governed. Every refusal is recorded with reason `source-route`. The same holds for the
//! RFC 2292 routing header option, a strict source route, and a TCP SYN whose socket got
//! its route before the hooks; an unclassified process gets the `unclassified` verdict;
//! an IPv6 header chain the egress hook cannot walk to its end (longer than the bound, or
//! cut short) is dropped as `malformed`. The echo requests a granted raw socket builds
//! are decided by the rules as they leave.

use std::net::{IpAddr, SocketAddr};

use enforcer_common::event::{FlowEvent, Hook, Reason, Verdict, family};
use enforcer_tests::{
    cgroup::TestCgroup,
    cmd::run,
    events::{drain, segment_id},
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Gate, Outcome, RouteBy, Server, Spawn},
};

/// `SOL_IPV6`.
const SOL_IPV6: &str = "41";
/// `IPV6_2292RTHDR`, the routing header option of RFC 2292.
const IPV6_2292RTHDR: &str = "5";
/// The protocol of a record for an IPv4 loose source route (its option type).
const IPOPT_LSRR: u8 = 131;
/// The protocol of a record for an IPv4 strict source route (its option type).
const IPOPT_SSRR: u8 = 137;
/// The protocol of a record for a header chain `skb_egress` could not finish.
const UNREADABLE_CHAIN: u8 = 255;

/// The UDP port of the echo servers on A and B; the policy allows it to A only.
const PORT: u16 = 5353;

/// A segment `app` (enforced) and a segment `trial` (audit mode) under one parent
/// cgroup, a cgroup in no segment, and two remote hosts: A (`allowed`, which every
/// process may reach on [`PORT`]/udp) and B (`denied`, which no rule lets anything
/// reach). Both run a UDP echo server on [`PORT`]. B processes segment routing headers
/// (`seg6_enabled`), so an IPv6 datagram routed to it reaches its UDP layer (which
/// discards it: the checksum covers A's address); it discards IPv4 source-routed
/// datagrams at the IP layer. Either way B's counters show what reached it.
struct Fixture {
    // Field order is drop order: the loader (and its links) goes before the cgroups,
    // the servers before their namespaces.
    loader: enforcer::loader::Loader,
    events: enforcer::loader::EventReader,
    image: enforcer::policy::image::MapImage,
    app: TestCgroup,
    trial: TestCgroup,
    raw: TestCgroup,
    unsegmented: TestCgroup,
    parent: TestCgroup,
    _servers: Vec<Server>,
    allowed: Veth,
    denied: Veth,
    allowed_ns: Netns,
    denied_ns: Netns,
}

/// The fixture with the policy applied and nothing attached yet.
fn fixture() -> Fixture {
    let allowed_ns = Netns::new();
    let denied_ns = Netns::new();
    run(
        "ip",
        &[
            "netns",
            "exec",
            denied_ns.name(),
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.seg6_enabled=1",
            "net.ipv6.conf.default.seg6_enabled=1",
        ],
    );
    let allowed = Veth::new(&allowed_ns);
    let denied = Veth::new(&denied_ns);
    let mut servers = Vec::new();
    for (netns, veth) in [(&allowed_ns, &allowed), (&denied_ns, &denied)] {
        for ip in [IpAddr::from(veth.peer_v4), IpAddr::from(veth.peer_v6)] {
            servers.push(
                Spawn::udp_server(SocketAddr::new(ip, PORT))
                    .netns(netns)
                    .serve(),
            );
        }
    }
    let parent = TestCgroup::new();
    let app = parent.child("app.service");
    let trial = parent.child("trial.service");
    let raw = parent.child("raw.service");
    let unsegmented = parent.child("other.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.app]
cgroups = ["{app}"]

[segments.trial]
cgroups = ["{trial}"]
mode = "audit"

[segments.raw]
cgroups = ["{raw}"]
raw_sockets = true

[segments.allowed]
cidrs = ["{a4}/32", "{a6}/128"]

[segments.denied]
cidrs = ["{b4}/32", "{b6}/128"]

[[allow]]
id = "to-allowed"
from = ["*"]
to = ["allowed"]
ports = ["{PORT}/udp", "{PORT}/tcp", "echo/icmp"]
"#,
        app = app.relative_path(),
        trial = trial.relative_path(),
        raw = raw.relative_path(),
        a4 = allowed.peer_v4,
        a6 = allowed.peer_v6,
        b4 = denied.peer_v4,
        b6 = denied.peer_v6,
    ));
    let mut loader = loaded_with(&image);
    let events = loader.take_events().expect("events");
    Fixture {
        loader,
        events,
        image,
        app,
        trial,
        raw,
        unsegmented,
        parent,
        _servers: servers,
        allowed,
        denied,
        allowed_ns,
        denied_ns,
    }
}

impl Fixture {
    /// Attaches the cgroup hooks to the parent cgroup.
    fn attach(&mut self) {
        self.loader
            .attach_cgroup(self.parent.path())
            .expect("attach");
    }

    /// A (v6: its IPv6 address) on [`PORT`].
    fn to_allowed(&self, v6: bool) -> SocketAddr {
        if v6 {
            SocketAddr::new(self.allowed.peer_v6.into(), PORT)
        } else {
            SocketAddr::new(self.allowed.peer_v4.into(), PORT)
        }
    }

    /// B's address of the family.
    fn via_denied(&self, v6: bool) -> IpAddr {
        if v6 {
            self.denied.peer_v6.into()
        } else {
            self.denied.peer_v4.into()
        }
    }

    /// What B has received of the family: IPv4 datagrams, or IPv6 UDP datagrams (its
    /// neighbour discovery traffic aside).
    fn received_by_denied(&self, v6: bool) -> u64 {
        if v6 {
            self.denied_ns.udp6_received()
        } else {
            self.denied_ns.ipv4_received()
        }
    }

    /// The events recorded since the last call with reason `source-route`.
    fn source_route_records(&mut self) -> Vec<FlowEvent> {
        self.records_for(Reason::SourceRoute)
    }

    /// The events recorded since the last call with `reason`.
    fn records_for(&mut self, reason: Reason) -> Vec<FlowEvent> {
        drain(&mut self.events)
            .into_iter()
            .filter(|e| e.reason == reason as u8)
            .collect()
    }

    /// Those of `records` from segment `name`.
    fn of_segment<'a>(&self, records: &'a [FlowEvent], name: &str) -> Vec<&'a FlowEvent> {
        let id = segment_id(&self.image, name);
        records.iter().filter(|e| e.src_segment == id).collect()
    }
}

/// What a client in `cgroup` observed sending to `to` with a route through `via`, and
/// who answered its echo (empty without an answer).
fn routed(cgroup: &TestCgroup, to: SocketAddr, via: IpAddr, by: RouteBy) -> (Outcome, String) {
    let (outcome, answer) = Spawn::udp_source_routed(to, via, by)
        .cgroup(cgroup)
        .run_in_background()
        .outcome_and_answer();
    (outcome, answer.trim().to_owned())
}

/// The name of the hook that recorded `event`.
fn hook_of(event: &FlowEvent) -> &'static str {
    Hook::from_code(event.hook).map_or("unknown", Hook::program_name)
}

#[test]
fn a_routing_header_socket_option_is_refused_to_segment_processes() {
    let mut fx = fixture();
    fx.attach();
    let (to_a, via_b) = (fx.to_allowed(true), fx.via_denied(true));

    // The path works: a process in no segment is not governed, and its datagram to A
    // goes to B.
    let before = fx.received_by_denied(true);
    let (outcome, _) = routed(&fx.unsegmented, to_a, via_b, RouteBy::SocketOption);
    assert_eq!(outcome, Outcome::Timeout, "no segment");
    assert!(fx.received_by_denied(true) > before, "B received it");

    let before = fx.received_by_denied(true);
    let (refused, _) = routed(&fx.app, to_a, via_b, RouteBy::SocketOption);
    assert!(
        refused.is_eperm(),
        "IPV6_RTHDR in `app` should get EPERM, got {refused:?}"
    );
    assert_eq!(fx.received_by_denied(true), before, "B received nothing");

    let (outcome, _) = routed(&fx.trial, to_a, via_b, RouteBy::SocketOption);
    assert_eq!(outcome, Outcome::Timeout, "audit mode lets it through");
    assert!(fx.received_by_denied(true) > before, "B received it");

    let records = fx.source_route_records();
    let denied = fx.of_segment(&records, "app");
    assert_eq!(denied.len(), 1, "one record per refusal: {records:#?}");
    assert_eq!(
        (
            denied[0].verdict,
            hook_of(denied[0]),
            denied[0].family,
            denied[0].cgroup_id
        ),
        (
            Verdict::Deny as u8,
            "setsockopt",
            family::INET6,
            fx.app.id()
        )
    );
    // Audit mode records the option where it was set and the datagram where it left,
    // for its real first hop, B.
    let audited = fx.of_segment(&records, "trial");
    let hooks: Vec<_> = audited.iter().map(|e| hook_of(e)).collect();
    assert_eq!(hooks, ["setsockopt", "skb_egress"], "{records:#?}");
    assert!(audited.iter().all(|e| e.verdict == Verdict::Audit as u8));
    assert_eq!(audited[1].dst_addr, fx.denied.peer_v6.octets());
    assert_eq!(
        records.len(),
        3,
        "nothing recorded for `host`: {records:#?}"
    );
}

#[test]
fn an_ipv4_source_route_option_is_refused_to_segment_processes() {
    let mut fx = fixture();
    fx.attach();
    let (to_a, via_b) = (fx.to_allowed(false), fx.via_denied(false));

    // The path works: a process in no segment sets the option, and its datagram to A
    // goes to B (which discards source-routed datagrams, so nobody answers).
    let before = fx.received_by_denied(false);
    let (outcome, _) = routed(&fx.unsegmented, to_a, via_b, RouteBy::SocketOption);
    assert_eq!(outcome, Outcome::Timeout, "no segment");
    assert!(fx.received_by_denied(false) > before, "B received it");

    let before = fx.received_by_denied(false);
    let (refused, _) = routed(&fx.app, to_a, via_b, RouteBy::SocketOption);
    assert!(
        refused.is_eperm(),
        "IP_OPTIONS with LSRR in `app` should get EPERM, got {refused:?}"
    );
    assert_eq!(fx.received_by_denied(false), before, "B received nothing");

    let records = fx.source_route_records();
    assert_eq!(
        records.len(),
        1,
        "one record, none for `host`: {records:#?}"
    );
    assert_eq!(
        (
            records[0].verdict,
            hook_of(&records[0]),
            records[0].family,
            records[0].src_segment
        ),
        (
            Verdict::Deny as u8,
            "setsockopt",
            family::INET,
            segment_id(&fx.image, "app")
        )
    );
}

#[test]
fn a_source_route_passed_as_ancillary_data_never_reaches_the_denied_host() {
    let mut fx = fixture();
    fx.attach();
    let (to_a, via_b) = (fx.to_allowed(false), fx.via_denied(false));

    // The path works: a process in no segment reaches B with `IP_RETOPTS`.
    let before = fx.received_by_denied(false);
    let (outcome, _) = routed(&fx.unsegmented, to_a, via_b, RouteBy::AncillaryData);
    assert_eq!(outcome, Outcome::Timeout, "no segment");
    assert!(fx.received_by_denied(false) > before, "B received it");

    let before = fx.received_by_denied(false);
    let (refused, _) = routed(&fx.app, to_a, via_b, RouteBy::AncillaryData);
    assert!(
        refused.is_eperm(),
        "sendmsg with IP_RETOPTS in `app` should fail with EPERM, got {refused:?}"
    );
    assert_eq!(fx.received_by_denied(false), before, "B received nothing");

    // The kernel itself refuses a segment routing header as ancillary data (it accepts
    // only a Mobile IPv6 type 2 header there, on kernels built with it): the send fails
    // and B receives nothing.
    let before = fx.received_by_denied(true);
    let (outcome, _) = routed(
        &fx.app,
        fx.to_allowed(true),
        fx.via_denied(true),
        RouteBy::AncillaryData,
    );
    assert!(
        matches!(outcome, Outcome::Error { .. }),
        "sendmsg with IPV6_RTHDR in `app` should fail, got {outcome:?}"
    );
    assert_eq!(fx.received_by_denied(true), before, "B received nothing");

    // The record names the real first hop, B, and its segment.
    let records = fx.source_route_records();
    assert_eq!(
        records.len(),
        1,
        "one record, none for `host`: {records:#?}"
    );
    let dropped = &records[0];
    assert_eq!(
        (dropped.verdict, hook_of(dropped), dropped.family),
        (Verdict::Deny as u8, "skb_egress", family::INET)
    );
    assert_eq!(dropped.dst_addr[..4], fx.denied.peer_v4.octets());
    assert_eq!(dropped.src_segment, segment_id(&fx.image, "app"));
    assert_eq!(dropped.dst_segment, segment_id(&fx.image, "denied"));
    assert_eq!(dropped.cgroup_id, fx.app.id());
}

#[test]
fn a_routing_header_set_before_the_hooks_were_attached_is_dropped_on_the_way_out() {
    // A service that was running before the agent attached its hooks may already hold a
    // socket with a routing header: the datagrams it sends afterwards are refused.
    let mut fx = fixture();
    let gate = Gate::new();
    let client = Spawn::udp_source_routed_gated(fx.to_allowed(true), fx.via_denied(true), &gate)
        .cgroup(&fx.app)
        .run_in_background();
    gate.wait_until_reached();
    fx.attach();
    let before = fx.received_by_denied(true);
    gate.open();
    let outcome = client.outcome();
    assert!(
        outcome.is_eperm(),
        "the send should fail with EPERM, got {outcome:?}"
    );
    assert_eq!(fx.received_by_denied(true), before, "B received nothing");

    let records = fx.source_route_records();
    assert_eq!(records.len(), 1, "{records:#?}");
    let dropped = &records[0];
    assert_eq!(
        (dropped.verdict, hook_of(dropped), dropped.family),
        (Verdict::Deny as u8, "skb_egress", family::INET6)
    );
    assert_eq!(dropped.dst_addr, fx.denied.peer_v6.octets());
    assert_eq!(dropped.dst_segment, segment_id(&fx.image, "denied"));
}

#[test]
fn plain_datagrams_to_the_allowed_host_still_arrive() {
    let mut fx = fixture();
    fx.attach();
    for v6 in [false, true] {
        let to_a = fx.to_allowed(v6);
        // Clearing the option (an empty value) is allowed, and the datagram reaches A.
        assert_eq!(
            routed(&fx.app, to_a, fx.via_denied(v6), RouteBy::Cleared),
            (Outcome::Ok, to_a.to_string()),
            "v6: {v6}"
        );
    }
    assert_eq!(fx.source_route_records(), []);
}

#[test]
fn the_rfc_2292_routing_header_option_is_refused_to_segment_processes() {
    let mut fx = fixture();
    fx.attach();
    let set = |cgroup: &TestCgroup| {
        Spawn::attack_script(&["sockopt", "::1", SOL_IPV6, IPV6_2292RTHDR, "1"])
            .cgroup(cgroup)
            .run()
    };
    assert_eq!(set(&fx.unsegmented), Outcome::Ok, "no segment");
    let refused = set(&fx.app);
    assert!(
        refused.is_eperm(),
        "IPV6_2292RTHDR in `app` should get EPERM, got {refused:?}"
    );
    let records = fx.source_route_records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(
        (
            records[0].verdict,
            hook_of(&records[0]),
            records[0].family,
            records[0].protocol,
            records[0].src_segment
        ),
        (
            Verdict::Deny as u8,
            "setsockopt",
            family::INET6,
            5,
            segment_id(&fx.image, "app")
        )
    );
}

#[test]
fn a_strict_source_route_as_ancillary_data_never_reaches_the_denied_host() {
    let mut fx = fixture();
    fx.attach();
    let to_a = fx.to_allowed(false);
    let (a, port, via_b) = (
        to_a.ip().to_string(),
        PORT.to_string(),
        fx.via_denied(false),
    );
    let via = via_b.to_string();
    let send = |cgroup: &TestCgroup| {
        Spawn::attack_script(&["udp-ssrr", &a, &port, &via])
            .cgroup(cgroup)
            .run()
    };
    // The path works: a process in no segment reaches B with an SSRR.
    let before = fx.received_by_denied(false);
    assert_eq!(send(&fx.unsegmented), Outcome::Ok, "no segment");
    assert!(fx.received_by_denied(false) > before, "B received it");

    let before = fx.received_by_denied(false);
    let refused = send(&fx.app);
    assert!(
        refused.is_eperm(),
        "sendmsg with an SSRR in `app` should fail with EPERM, got {refused:?}"
    );
    assert_eq!(fx.received_by_denied(false), before, "B received nothing");
    let records = fx.source_route_records();
    assert_eq!(records.len(), 1, "{records:#?}");
    let dropped = &records[0];
    assert_eq!(
        (
            dropped.verdict,
            hook_of(dropped),
            dropped.protocol,
            dropped.dst_segment
        ),
        (
            Verdict::Deny as u8,
            "skb_egress",
            IPOPT_SSRR,
            segment_id(&fx.image, "denied")
        )
    );
    assert_eq!(dropped.dst_addr[..4], fx.denied.peer_v4.octets());
}

#[test]
fn a_tcp_syn_with_a_source_route_set_before_the_hooks_never_reaches_the_denied_host() {
    // A service running before the agent holds a TCP socket with a loose source route
    // through B; it connects to A (which its policy allows) once the hooks are attached.
    let mut fx = fixture();
    let gate = Gate::new();
    let to_a = fx.to_allowed(false);
    let (a, port, via) = (
        to_a.ip().to_string(),
        PORT.to_string(),
        fx.via_denied(false).to_string(),
    );
    let gate_dir = gate.path().display().to_string();
    let client = Spawn::attack_script(&["tcp-lsrr-gated", &a, &port, &via, &gate_dir])
        .cgroup(&fx.app)
        .run_in_background();
    gate.wait_until_reached();
    fx.attach();
    let before = fx.received_by_denied(false);
    gate.open();
    // The connect hook allows A; every SYN is dropped on its way out.
    assert_eq!(client.outcome(), Outcome::Timeout);
    assert_eq!(fx.received_by_denied(false), before, "B received nothing");
    let records = fx.source_route_records();
    assert!(!records.is_empty(), "the dropped SYN is on record");
    for dropped in &records {
        assert_eq!(
            (
                dropped.verdict,
                hook_of(dropped),
                dropped.protocol,
                dropped.src_segment,
                dropped.dst_segment
            ),
            (
                Verdict::Deny as u8,
                "skb_egress",
                IPOPT_LSRR,
                segment_id(&fx.image, "app"),
                segment_id(&fx.image, "denied")
            ),
            "{records:#?}"
        );
        assert_eq!(dropped.dst_addr[..4], fx.denied.peer_v4.octets());
    }
}

#[test]
fn an_unclassified_processs_source_route_gets_the_unclassified_verdict() {
    let mut fx = fixture();
    // A service (re)started under the guarded parent after the apply: not resolved yet.
    let late = fx.parent.child("late.service");
    fx.attach();
    let (to_a, via_b) = (fx.to_allowed(false), fx.via_denied(false));
    let before = fx.received_by_denied(false);
    let (refused, _) = routed(&late, to_a, via_b, RouteBy::SocketOption);
    assert!(
        refused.is_eperm(),
        "IP_OPTIONS in an unresolved cgroup should get EPERM, got {refused:?}"
    );
    assert_eq!(fx.received_by_denied(false), before, "B received nothing");
    let records = fx.records_for(Reason::Unclassified);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(
        (
            records[0].verdict,
            hook_of(&records[0]),
            records[0].cgroup_id
        ),
        (Verdict::Deny as u8, "setsockopt", late.id())
    );
}

#[test]
fn a_header_chain_too_long_or_cut_short_leaves_no_segment_socket() {
    // A segment granted raw sockets builds whole IPv6 packets to A: a chain the hook
    // cannot walk to its end might hide a routing header, so it does not leave.
    let mut fx = fixture();
    fx.attach();
    // Both refusals are the same flow (no process is known at egress): record each.
    fx.loader
        .set_dedup_window(std::time::Duration::ZERO)
        .expect("de-duplication off");
    let src = fx.allowed.host_v6.to_string();
    let dst = fx.allowed.peer_v6.to_string();
    let port = PORT.to_string();
    let send = |headers: &str, cut: bool| {
        let mut args = vec!["udp6-chain", &src, &dst, &port, headers];
        if cut {
            args.push("cut");
        }
        Spawn::attack_script(&args).cgroup(&fx.raw).run()
    };
    let received = || fx.allowed_ns.udp6_received();

    let before = received();
    assert_eq!(send("6", false), Outcome::Ok, "six headers");
    assert!(received() > before, "A received the six-header datagram");
    for (headers, cut, what) in [("7", false, "seven headers"), ("3", true, "cut short")] {
        let before = received();
        let refused = send(headers, cut);
        assert!(refused.is_eperm(), "{what}: {refused:?}");
        assert_eq!(received(), before, "{what}: A received nothing");
    }
    let records = fx.records_for(Reason::Malformed);
    assert_eq!(records.len(), 2, "{records:#?}");
    let raw = segment_id(&fx.image, "raw");
    for dropped in &records {
        assert_eq!(
            (
                dropped.verdict,
                hook_of(dropped),
                dropped.protocol,
                dropped.src_segment,
                dropped.dst_addr
            ),
            (
                Verdict::Deny as u8,
                "skb_egress",
                UNREADABLE_CHAIN,
                raw,
                fx.allowed.peer_v6.octets()
            ),
            "{records:#?}"
        );
    }
}

#[test]
fn icmp_requests_from_a_granted_raw_socket_are_decided_by_the_rules() {
    // A segment granted raw sockets builds its own echo requests: no connect or sendmsg
    // hook sees them, so they are decided as they leave, like a ping socket's.
    let mut fx = fixture();
    fx.attach();
    let ping = |to: std::net::Ipv4Addr| {
        Spawn::attack_script(&["raw-ping", &to.to_string()])
            .cgroup(&fx.raw)
            .run()
    };
    assert_eq!(
        ping(fx.allowed.peer_v4),
        Outcome::Ok,
        "to A, which a rule allows"
    );
    let before = fx.received_by_denied(false);
    let refused = ping(fx.denied.peer_v4);
    assert!(refused.is_eperm(), "to B: {refused:?}");
    assert_eq!(fx.received_by_denied(false), before, "B received nothing");

    let recorded: Vec<(u8, u16, u8, u32)> = drain(&mut fx.events)
        .iter()
        .filter(|e| e.hook == Hook::SkbEgress as u8)
        .map(|e| (e.protocol, e.dst_port, e.verdict, e.dst_segment))
        .collect();
    assert_eq!(
        recorded,
        [
            (1, 8, Verdict::Allow as u8, segment_id(&fx.image, "allowed")),
            (1, 8, Verdict::Deny as u8, segment_id(&fx.image, "denied")),
        ]
    );
}
