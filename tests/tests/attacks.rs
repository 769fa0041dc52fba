//! Red-team findings against the enforcer, kept as regression tests once closed. Each
//! test reproduces an attack that worked and asserts what the enforcer must do.
//!
//! Attack helpers that need no compiled probe mode live in `tests/scripts/attack.py`
//! (Python, stdlib only), started through [`Spawn::attack_script`].
//!
//! - A learnt listener erased by another process's `[::]` IPv6-only bind and close, which
//!   let inbound UDP to the segment's server pass undecided
//!   (`another_processs_v6only_bind_does_not_erase_a_learnt_listener`) and made refused
//!   SYNs name `host` (`a_refused_syn_names_the_segment_that_serves_the_port`): IPv4 and
//!   IPv6 unspecified bindings are now different keys.
//! - A process of one segment that binds another segment's declared port while that
//!   service is down got the declaring segment's inbound rights on loopback
//!   (`a_process_on_another_segments_declared_port_is_its_own_segment`): the socket
//!   decides before the declaration now.
//! - A directed broadcast reached local listeners as `world`
//!   (`a_directed_broadcast_does_not_reach_a_local_service_the_policy_denies`): it is the
//!   `broadcast` class now.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::programs::XdpMode;
use enforcer_common::event::{FlowEvent, Hook};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{drain, segment_id},
    netns::{Netns, Veth},
    policy::{image, loaded_with},
    probe::{Outcome, SinkLog, Spawn},
};

/// Parses a script client's one-line outcome (the same format as the probe's).
fn outcome(client: Spawn) -> Outcome {
    client.run()
}

/// One line per event: hook, verdict, reason, segments, addresses and ports.
fn brief<'a>(events: impl IntoIterator<Item = &'a FlowEvent>) -> Vec<String> {
    events
        .into_iter()
        .map(|e| {
            let addr = |a: &[u8; 16]| -> String {
                if e.family == 2 {
                    Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
                } else {
                    Ipv6Addr::from(*a).to_string()
                }
            };
            format!(
                "hook={:?} verdict={} reason={} segs={}->{} {}:{} -> {}:{} proto={}",
                Hook::from_code(e.hook),
                e.verdict,
                e.reason,
                e.src_segment,
                e.dst_segment,
                addr(&e.src_addr),
                e.src_port,
                addr(&e.dst_addr),
                e.dst_port,
                e.protocol
            )
        })
        .collect()
}

fn sendmsg_events(events: &[FlowEvent]) -> Vec<&FlowEvent> {
    events
        .iter()
        .filter(|e| {
            matches!(
                Hook::from_code(e.hook),
                Some(Hook::Sendmsg4 | Hook::Sendmsg6)
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Class 1/4: inbound UDP to a segment's server that XDP never decides.
// ---------------------------------------------------------------------------------------

/// Segments, remote `clients` allowed only 18090/tcp to `web`, XDP on the veth, cgroup
/// hooks on `parent`.
struct Web {
    // Field order is drop order: the loader (and its links) first, the veth before its
    // namespace (deleting the namespace deletes the pair), child cgroups before the parent.
    loader: enforcer::loader::Loader,
    image: enforcer::policy::image::MapImage,
    veth: Veth,
    netns: Netns,
    web: TestCgroup,
    mallory: TestCgroup,
    _parent: TestCgroup,
}

impl Web {
    fn new(attach_cgroup_now: bool) -> Self {
        let netns = Netns::new();
        let veth = Veth::new(&netns);
        let parent = TestCgroup::new();
        let web = parent.child("web.service");
        let mallory = parent.child("mallory.service");
        let image = image(&format!(
            r#"
[segments.clients]
cidrs = ["{}/32", "{}/128"]

[segments.web]
cgroups = ["{}"]

[segments.mallory]
cgroups = ["{}"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["18090/tcp"]
"#,
            veth.peer_v4,
            veth.peer_v6,
            web.relative_path(),
            mallory.relative_path()
        ));
        let mut loader = loaded_with(&image);
        if attach_cgroup_now {
            loader.attach_cgroup(parent.path()).expect("attach cgroup");
        }
        loader
            .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
            .expect("attach XDP");
        Self {
            netns,
            veth,
            web,
            mallory,
            _parent: parent,
            image,
            loader,
        }
    }

    /// A UDP server of `web` on `0.0.0.0:port` that logs every datagram it receives
    /// (its echo may be refused by the sendmsg hook, so the echo proves nothing).
    fn sink(&self, port: u16, log: &SinkLog) -> enforcer_tests::probe::Server {
        Spawn::attack_script(&["udp-sink", "0.0.0.0", &port.to_string(), log.path()])
            .cgroup(&self.web)
            .serve()
    }

    /// One datagram from the remote `clients` host to this host's `port`; returns the
    /// sources `log` recorded (empty: the datagram never reached the server).
    fn udp_from_clients(&self, port: u16, log: &SinkLog) -> Vec<String> {
        let sent = Spawn::attack_script(&[
            "udp-fire",
            &self.veth.host_v4.to_string(),
            &port.to_string(),
        ])
        .netns(&self.netns)
        .run();
        assert_eq!(sent, Outcome::Ok, "the remote could not send");
        log.sources(Duration::from_millis(1000))
    }
}

/// `web` serves UDP on `0.0.0.0:18094` (learnt as `web`'s, so remote `clients` are
/// refused). `mallory`, in another segment (any process under the attached cgroup will
/// do), binds `[::]:18094` with `IPV6_V6ONLY` — a different socket, which the kernel
/// allows — and closes it. The learnt-listener key of `::` and of `0.0.0.0` is the same
/// (`bound_address` maps both to zero), so the bind overwrote `web`'s entry and the
/// close deleted it: the port is nobody's, XDP passes UDP to it undecided.
#[test]
fn another_processs_v6only_bind_does_not_erase_a_learnt_listener() {
    let mut site = Web::new(true);
    let mut events = site.loader.take_events().expect("events");
    let log = SinkLog::new();
    let _server = site.sink(18_094, &log);
    assert_eq!(
        site.udp_from_clients(18_094, &log),
        Vec::<String>::new(),
        "before"
    );

    let bound = outcome(
        Spawn::attack_script(&["bind-close", "udp", "::", "18094", "v6only"]).cgroup(&site.mallory),
    );
    assert_eq!(
        bound,
        Outcome::Ok,
        "the V6ONLY bind beside web's IPv4 socket works"
    );

    let after = site.udp_from_clients(18_094, &log);
    let recorded = drain(&mut events);
    assert!(
        after.is_empty(),
        "after mallory's bind+close of [::]:18094 (V6ONLY), clients reach web's UDP \
         service (it received from {after:?}); records: {:#?}",
        brief(recorded.iter().filter(|e| e.dst_port == 18_094))
    );
}

/// The same key collision for TCP, seen in the audit trail: after `mallory` binds and
/// closes `[::]:18091` (V6ONLY), a refused SYN to `web`'s IPv4 server on 18091 is
/// recorded with `host`, not `web`, as its destination segment.
#[test]
fn a_refused_syn_names_the_segment_that_serves_the_port() {
    let mut site = Web::new(true);
    let mut events = site.loader.take_events().expect("events");
    let _server = Spawn::tcp_server(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 18_091))
        .cgroup(&site.web)
        .serve();
    let bound = outcome(
        Spawn::attack_script(&["bind-close", "tcp", "::", "18091", "v6only"]).cgroup(&site.mallory),
    );
    assert_eq!(bound, Outcome::Ok);
    let connect = Spawn::tcp_client(SocketAddr::new(site.veth.host_v4.into(), 18_091))
        .netns(&site.netns)
        .run();
    assert_eq!(connect, Outcome::Timeout, "the SYN is still refused");
    let web_id = segment_id(&site.image, "web");
    let recorded = drain(&mut events);
    let recorded_brief = brief(&recorded);
    let refused: Vec<_> = recorded
        .iter()
        .filter(|e| e.hook == Hook::XdpIngress as u8 && e.dst_port == 18_091)
        .collect();
    assert!(!refused.is_empty(), "{recorded_brief:#?}");
    for event in refused {
        assert_eq!(
            event.dst_segment,
            web_id,
            "the record names segment {} (not web, {web_id}) as the destination of a SYN \
             that web's server would have received: {:?}",
            event.dst_segment,
            brief([event])
        );
    }
}

// ---------------------------------------------------------------------------------------
// Class 3: local destinations through a directed broadcast.
// ---------------------------------------------------------------------------------------

/// `client` may send to `world` on 18097/udp; `payments` serves 18097/udp on this host
/// and no rule lets `client` reach it. A datagram to the veth's directed broadcast
/// address (`198.18.x.y+3` of its /30) with SO_BROADCAST is looped back by the kernel to
/// every local socket bound to `0.0.0.0:18097`: the sendmsg hook classifies the
/// broadcast address as `world` (it is not in LOCAL_ADDRESSES), allows it, and records
/// `world` as the destination, while `payments` receives it.
#[test]
fn a_directed_broadcast_does_not_reach_a_local_service_the_policy_denies() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let client = parent.child("client.service");
    let payments = parent.child("payments.service");
    let image = image(&format!(
        r#"
[segments.client]
cgroups = ["{}"]

[segments.payments]
cgroups = ["{}"]
ports = ["18097/udp"]

[[allow]]
id = "client-out"
from = ["client"]
to = ["world"]
ports = ["18097/udp"]
"#,
        client.relative_path(),
        payments.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    let local = enforcer::host::interfaces::addresses().expect("addresses");
    loader.set_local_addresses(&local).expect("local addresses");
    loader.attach_cgroup(parent.path()).expect("attach");
    let log = SinkLog::new();
    let _payments = Spawn::attack_script(&["udp-sink", "0.0.0.0", "18097", log.path()])
        .cgroup(&payments)
        .serve();
    // Control: unicast to this host's address is decided as `payments` and refused.
    let control = outcome(
        Spawn::attack_script(&["udp-fire", &veth.host_v4.to_string(), "18097"]).cgroup(&client),
    );
    assert!(control.is_eperm(), "control: {control:?}");

    let octets = veth.host_v4.octets();
    let broadcast = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3] + 2);
    let sent = outcome(
        Spawn::attack_script(&["udp-fire", &broadcast.to_string(), "18097", "broadcast"])
            .cgroup(&client),
    );
    let received = log.sources(Duration::from_millis(1000));
    let recorded = drain(&mut events);
    assert!(
        sent.is_eperm() && received.is_empty(),
        "client's datagram to {broadcast}:18097 ({sent:?}) reached payments' local socket \
         (from {received:?}); records: {:#?}",
        brief(sendmsg_events(&recorded))
    );
}

#[test]
fn a_process_on_another_segments_declared_port_is_its_own_segment() {
    let parent = TestCgroup::new();
    let payments = parent.child("payments.service");
    let intruder = parent.child("intruder.service");
    let orders = parent.child("orders.service");
    const PORT: u16 = 18_443;
    let policy = image(&format!(
        r#"
[segments.payments]
cgroups = ["{}"]
ports = ["{PORT}/tcp"]

[segments.intruder]
cgroups = ["{}"]

[segments.orders]
cgroups = ["{}"]

[[allow]]
id = "orders-to-payments"
from = ["orders"]
to = ["payments"]
ports = ["{PORT}/tcp"]
"#,
        payments.relative_path(),
        intruder.relative_path(),
        orders.relative_path()
    ));
    let mut loader = loaded_with(&policy);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));

    // The payments service is down; a process of `intruder` takes its port.
    let impostor = Spawn::tcp_server(loopback).cgroup(&intruder).serve();
    let fooled = outcome(Spawn::tcp_client(loopback).cgroup(&orders));
    assert!(
        fooled.is_eperm(),
        "orders reached intruder's socket on payments' port: {fooled:?}"
    );
    drop(impostor);
    // The real service is reached as before.
    let _payments = Spawn::tcp_server(loopback).cgroup(&payments).serve();
    assert_eq!(
        outcome(Spawn::tcp_client(loopback).cgroup(&orders)),
        Outcome::Ok
    );

    let recorded = drain(&mut events);
    let connects: Vec<_> = recorded
        .iter()
        .filter(|e| e.hook == Hook::Connect4 as u8 && e.dst_port == PORT)
        .collect();
    assert_eq!(connects.len(), 2, "{:#?}", brief(recorded.iter()));
    assert_eq!(connects[0].dst_segment, segment_id(&policy, "intruder"));
    assert_eq!(connects[1].dst_segment, segment_id(&policy, "payments"));
}
