//! Red-team findings against the enforcer. Each test asserts what a secure enforcer must
//! do, so each one fails while the gap it demonstrates is open.
//!
//! Attack helpers that need no compiled probe mode live in `tests/scripts/attack.py`
//! (Python, stdlib only), started through [`Spawn::attack_script`].
//!
//! Findings (one test each):
//! - sendmsg4/6 let every datagram sent from a segment's UDP listener port through as a
//!   "reply", to any address and port the reverse rule admits, unrecorded
//!   (`a_udp_listener_port_is_not_a_licence_to_send_anywhere`), and in audit mode for any
//!   port a process binds itself (`audit_mode_records_udp_sent_from_a_bound_port`);
//! - inbound UDP to a segment's server that XDP never decides: a port in the ephemeral
//!   range (`a_udp_service_on_a_high_port_is_decided_at_xdp`), a server bound before the
//!   hooks (`a_udp_listener_bound_before_the_agent_started_is_decided`), a learnt
//!   listener erased by another process's `[::]` V6ONLY bind and close
//!   (`another_processs_v6only_bind_does_not_erase_a_learnt_listener`), which also makes
//!   refused SYNs name `host` (`a_refused_syn_names_the_segment_that_serves_the_port`);
//! - packet sockets are never seen by `sock_create`
//!   (`packet_sockets_are_refused_to_segments_without_the_grant`);
//! - a directed broadcast reaches local listeners as `world`
//!   (`a_directed_broadcast_does_not_reach_a_local_service_the_policy_denies`).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use enforcer_common::event::{FlowEvent, Hook, Verdict};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{drain, segment_id},
    netns::{Netns, Veth},
    policy::{image, loaded_with},
    probe::{Outcome, Spawn},
    unique_name,
};

const TIMEOUT_MS: &str = "1500";

/// Parses a script client's one-line outcome (the same format as the probe's).
fn outcome(client: Spawn) -> Outcome {
    client.run()
}

/// The peer (remote) end of `veth`: its name inside the namespace and its MAC address.
fn peer_mac(netns: &Netns, veth: &Veth) -> String {
    let peer_if = format!("{}p", veth.host_if().trim_end_matches('h'));
    let shown = netns.ip(&["-o", "link", "show", "dev", &peer_if]);
    shown
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {shown:?}"))
        .to_owned()
}

/// A file a `udp-sink` server appends each datagram's source to; removed on drop.
struct SinkLog(PathBuf);

impl SinkLog {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("{}-sink", unique_name())))
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    /// The sources recorded so far, after waiting up to `wait` for at least one.
    fn sources(&self, wait: Duration) -> Vec<String> {
        let since = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            if !text.is_empty() || since.elapsed() > wait {
                return text.lines().map(str::to_owned).collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SinkLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
        .filter(|e| matches!(Hook::from_code(e.hook), Some(Hook::Sendmsg4 | Hook::Sendmsg6)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Class 4/7: the UDP "reply" shortcut of sendmsg4/6 is stateless.
// ---------------------------------------------------------------------------------------

/// `dns` serves 18053/udp, which the remote `clients` may reach. No rule lets `dns` send
/// anything anywhere. A process in `dns` binds 18053 itself and `sendto`s an arbitrary
/// port (19999) of a client host: sendmsg4 treats every datagram from a listener port as
/// a reply (DESIGN principle 4 forbids exactly this: "never 'any destination from a
/// listener port'"), so it passes — unrecorded — and the client's answer comes back.
#[test]
fn a_udp_listener_port_is_not_a_licence_to_send_anywhere() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let dns = parent.child("dns.service");
    let policy = format!(
        r#"
[segments.dns]
cgroups = ["{}"]
ports = ["18053/udp"]

[segments.clients]
cidrs = ["{}/32"]

[[allow]]
id = "clients-to-dns"
from = ["clients"]
to = ["dns"]
ports = ["18053/udp"]
"#,
        dns.relative_path(),
        veth.peer_v4
    );
    let image = image(&policy);
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    // Some service of the client host on a port no rule opens to `dns`.
    let _victim = Spawn::udp_server(SocketAddr::new(veth.peer_v4.into(), 19_999))
        .netns(&netns)
        .serve();

    // Control: from an ordinary port the same datagram is refused.
    let from_ephemeral = outcome(
        Spawn::attack_script(&["udp-send-from", "0.0.0.0", "0", &veth.peer_v4.to_string(), "19999", TIMEOUT_MS])
            .cgroup(&dns),
    );
    assert!(from_ephemeral.is_eperm(), "control: {from_ephemeral:?}");

    // The attack: the same datagram from the listener port.
    let from_listener_port = outcome(
        Spawn::attack_script(&["udp-send-from", "0.0.0.0", "18053", &veth.peer_v4.to_string(), "19999", TIMEOUT_MS])
            .cgroup(&dns),
    );
    let recorded = drain(&mut events);
    let recorded_brief = brief(&recorded);
    let denied_19999: Vec<_> = sendmsg_events(&recorded)
        .into_iter()
        .filter(|e| e.dst_port == 19_999 && e.src_port == 18_053)
        .collect();
    assert!(
        from_listener_port.is_eperm(),
        "dns reached clients:19999/udp, which no rule allows, by sending from its listener \
         port 18053: {from_listener_port:?}; records of it: {:#?}",
        brief(denied_19999.iter().copied())
    );
    assert_eq!(denied_19999.len(), 1, "{recorded_brief:#?}");
}

/// A segment in audit mode must leave an `audit` record for every flow the policy would
/// deny. A process that sends from a UDP port it bound itself (any port below the
/// ephemeral range) passes the reply shortcut (`decide(dst -> src)` is `audit`, not
/// `deny`) and leaves no record at all: the rollout switch hides exactly the flows it is
/// meant to show.
#[test]
fn audit_mode_records_udp_sent_from_a_bound_port() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let trial = parent.child("trial.service");
    let policy = format!(
        r#"
[segments.trial]
cgroups = ["{}"]
mode = "audit"

[segments.peer]
cidrs = ["{}/32"]
"#,
        trial.relative_path(),
        veth.peer_v4
    );
    let image = image(&policy);
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let _victim = Spawn::udp_server(SocketAddr::new(veth.peer_v4.into(), 19_998))
        .netns(&netns)
        .serve();

    // Control: from an ephemeral port the flow is recorded as `audit`.
    let control = outcome(
        Spawn::attack_script(&["udp-send-from", "0.0.0.0", "0", &veth.peer_v4.to_string(), "19998", TIMEOUT_MS])
            .cgroup(&trial),
    );
    assert_eq!(control, Outcome::Ok);
    let control_records = drain(&mut events);
    let control_brief = brief(&control_records);
    assert_eq!(
        sendmsg_events(&control_records)
            .iter()
            .filter(|e| e.dst_port == 19_998 && e.verdict == Verdict::Audit as u8)
            .count(),
        1,
        "control: {control_brief:#?}"
    );

    // The attack: bind a port of one's own first (learnt as `trial`'s listener).
    let sent = outcome(
        Spawn::attack_script(&["udp-send-from", "0.0.0.0", "18054", &veth.peer_v4.to_string(), "19998", TIMEOUT_MS])
            .cgroup(&trial),
    );
    assert_eq!(sent, Outcome::Ok, "audit mode lets it through");
    let recorded = drain(&mut events);
    let recorded_brief = brief(&recorded);
    let audited: Vec<_> = sendmsg_events(&recorded)
        .into_iter()
        .filter(|e| e.dst_port == 19_998 && e.verdict == Verdict::Audit as u8)
        .collect();
    assert_eq!(
        audited.len(),
        1,
        "trial sent to peer:19998/udp (default-deny, audit mode) from its bound port \
         18054 and left no audit record: {recorded_brief:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Class 1/4: inbound UDP to a segment's server that XDP never decides.
// ---------------------------------------------------------------------------------------

/// Segments, remote `clients` allowed only 18090/tcp to `web`, XDP on the veth, cgroup
/// hooks on `parent`.
struct Web {
    netns: Netns,
    veth: Veth,
    web: TestCgroup,
    mallory: TestCgroup,
    parent: TestCgroup,
    image: enforcer::policy::image::MapImage,
    loader: enforcer::loader::Loader,
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
            parent,
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
        let sent = Spawn::attack_script(&["udp-fire", &self.veth.host_v4.to_string(), &port.to_string()])
            .netns(&self.netns)
            .run();
        assert_eq!(sent, Outcome::Ok, "the remote could not send");
        log.sources(Duration::from_millis(1000))
    }
}

/// `web` serves UDP on a port inside the host's ephemeral range (32768-60999 by
/// default; services do this: RTP, QUIC on high ports, ...). `post_bind` does not learn
/// it, so XDP finds no listener and passes every datagram undecided: a remote host no
/// rule admits reaches the service, and nothing is recorded.
#[test]
fn a_udp_service_on_a_high_port_is_decided_at_xdp() {
    let mut site = Web::new(true);
    let mut events = site.loader.take_events().expect("events");
    let (low_log, high_log) = (SinkLog::new(), SinkLog::new());
    // Control: the same service on a low port is refused.
    let _low = site.sink(18_094, &low_log);
    assert_eq!(site.udp_from_clients(18_094, &low_log), Vec::<String>::new(), "control");

    let _high = site.sink(40_123, &high_log);
    let high = site.udp_from_clients(40_123, &high_log);
    let recorded = drain(&mut events);
    let decided: Vec<_> = recorded
        .iter()
        .filter(|e| e.hook == Hook::XdpIngress as u8 && e.dst_port == 40_123)
        .collect();
    assert!(
        high.is_empty(),
        "clients reached web's UDP service on 40123 (it received from {high:?}), which no rule allows; XDP records: {:#?}",
        brief(decided.iter().copied())
    );
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
    assert_eq!(site.udp_from_clients(18_094, &log), Vec::<String>::new(), "before");

    let bound = outcome(Spawn::attack_script(&["bind-close", "udp", "::", "18094", "v6only"]).cgroup(&site.mallory));
    assert_eq!(bound, Outcome::Ok, "the V6ONLY bind beside web's IPv4 socket works");

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
    let bound = outcome(Spawn::attack_script(&["bind-close", "tcp", "::", "18091", "v6only"]).cgroup(&site.mallory));
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
            event.dst_segment, web_id,
            "the record names segment {} (not web, {web_id}) as the destination of a SYN \
             that web's server would have received: {:?}",
            event.dst_segment,
            brief([event])
        );
    }
}

/// A UDP server that was bound before the hooks were attached (the agent started or
/// restarted after the service, a new loader, ...) is never learnt: no seeding from the
/// existing sockets (DESIGN principle 3 asks for it). XDP passes UDP to it undecided.
#[test]
fn a_udp_listener_bound_before_the_agent_started_is_decided() {
    let mut site = Web::new(false);
    let log = SinkLog::new();
    let _server = site.sink(18_095, &log);
    site.loader.attach_cgroup(site.parent.path()).expect("attach cgroup");
    let mut events = site.loader.take_events().expect("events");
    let reached = site.udp_from_clients(18_095, &log);
    let recorded = drain(&mut events);
    let recorded_brief = brief(&recorded);
    assert!(
        reached.is_empty(),
        "clients reached web's UDP server bound before the attach (it received from \
         {reached:?}); records: {recorded_brief:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Class 5: packet sockets.
// ---------------------------------------------------------------------------------------

/// docs/datapath.md: "`sock_create` refuses raw (`SOCK_RAW`), packet (`AF_PACKET`) and
/// ICMP ping sockets to processes of a segment unless the segment has `raw_sockets =
/// true`". The cgroup `sock_create` hook only runs for AF_INET/AF_INET6 sockets
/// (`inet_create`/`inet6_create`), so a packet socket is never seen: root in `locked`
/// opens one and sends a hand-built UDP datagram to a port of a host the policy denies,
/// and gets the answer back.
#[test]
fn packet_sockets_are_refused_to_segments_without_the_grant() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let locked = parent.child("locked.service");
    let image = image(&format!(
        r#"
[segments.locked]
cgroups = ["{}"]

[segments.peer]
cidrs = ["{}/32"]
"#,
        locked.relative_path(),
        veth.peer_v4
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let _victim = Spawn::udp_server(SocketAddr::new(veth.peer_v4.into(), 19_997))
        .netns(&netns)
        .serve();
    // Control: the ordinary path is refused.
    let control = Spawn::udp_client(veth.peer_addr(19_997)).cgroup(&locked).run();
    assert!(control.is_eperm(), "control: {control:?}");

    let mac = peer_mac(&netns, &veth);
    let sent = outcome(
        Spawn::attack_script(&[
            "packet-udp",
            veth.host_if(),
            &mac,
            &veth.host_v4.to_string(),
            "18555",
            &veth.peer_v4.to_string(),
            "19997",
            TIMEOUT_MS,
        ])
        .cgroup(&locked),
    );
    let recorded = drain(&mut events);
    let recorded_brief = brief(&recorded);
    assert!(
        sent.is_eperm(),
        "a packet socket in `locked` reached peer:19997/udp and got the echo: {sent:?}; \
         records: {recorded_brief:#?}"
    );
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
