//! A destination on this host is decided against the segment that listens there, however
//! the address names this host: loopback, the unspecified address (`0.0.0.0`, `::`,
//! `::ffff:0.0.0.0`, where a connect lands on this host), an IPv4-mapped form, or an
//! address of one of the host's own interfaces, also one added while the agent runs (and
//! one removed is no longer this host's). A
//! segment allowed out to `world` on a port must not reach a local service on that port
//! that the policy denies it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use enforcer_common::event::{FLOW_FLAG_ON_THIS_HOST, Hook, Verdict};
use enforcer_tests::{
    agent::{AgentHost, enforcer_bin},
    cgroup::TestCgroup,
    cmd::run,
    events::{decided_by, drain, segment_id},
    netns::{Netns, Route, Veth},
    policy::loaded_with,
    probe::{Outcome, Server, Spawn},
};

const PORT: u16 = 18_443;

/// `client` may reach `world` on [`PORT`]; `gateway` may reach `payments`, which serves
/// [`PORT`]; all three under one parent cgroup.
struct Site {
    client: TestCgroup,
    gateway: TestCgroup,
    payments: TestCgroup,
    parent: TestCgroup,
    policy: String,
}

impl Site {
    fn new() -> Self {
        let parent = TestCgroup::new();
        let client = parent.child("client.service");
        let gateway = parent.child("gateway.service");
        let payments = parent.child("payments.service");
        let policy = format!(
            r#"
[segments.client]
cgroups = ["{}"]

[segments.gateway]
cgroups = ["{}"]

[segments.payments]
cgroups = ["{}"]
ports = ["{PORT}/tcp"]

[[allow]]
id = "client-out"
from = ["client"]
to = ["world"]
ports = ["{PORT}/tcp"]

[[allow]]
id = "gateway-to-payments"
from = ["gateway"]
to = ["payments"]
ports = ["{PORT}/tcp"]
"#,
            client.relative_path(),
            gateway.relative_path(),
            payments.relative_path()
        );
        Self {
            client,
            gateway,
            payments,
            parent,
            policy,
        }
    }

    /// The payments service, listening on every address of both families (IPv4 clients
    /// reach it through IPv4-mapped addresses).
    fn serve(&self) -> Server {
        Spawn::tcp_server(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT))
            .cgroup(&self.payments)
            .serve()
    }
}

#[test]
fn every_address_of_this_host_is_decided_as_the_listening_segment() {
    // The veth gives this host an address of its own besides loopback.
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let site = Site::new();
    let image = enforcer_tests::policy::image(&site.policy);
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    let local = enforcer::host::interfaces::addresses().expect("this host's addresses");
    assert!(
        local.local.contains(&IpAddr::from(veth.host_v4)),
        "{local:?}"
    );
    loader
        .set_local_addresses(&local)
        .expect("local addresses into the kernel");
    loader.attach_cgroup(site.parent.path()).expect("attach");
    let _server = site.serve();

    let mapped = |v4: Ipv4Addr| IpAddr::V6(v4.to_ipv6_mapped());
    let destinations = [
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        IpAddr::from(Ipv6Addr::LOCALHOST),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
        mapped(Ipv4Addr::UNSPECIFIED),
        mapped(Ipv4Addr::LOCALHOST),
        IpAddr::from(veth.host_v4),
        IpAddr::from(veth.host_v6),
        mapped(veth.host_v4),
    ];
    for to in destinations {
        let at = SocketAddr::new(to, PORT);
        // The allowed segment connects: the destination is `payments`, not `world`
        // (gateway has no rule to `world`).
        assert_eq!(
            Spawn::tcp_client(at).cgroup(&site.gateway).run(),
            Outcome::Ok,
            "gateway to {at}"
        );
        // The segment allowed only to `world` on this port is refused.
        let refused = Spawn::tcp_client(at).cgroup(&site.client).run();
        assert!(refused.is_eperm(), "client to {at}: {refused:?}");
    }

    // One record per refused attempt, naming the local service's segment.
    let client_id = segment_id(&image, "client");
    let payments_id = segment_id(&image, "payments");
    let refused: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|e| {
            matches!(
                Hook::from_code(e.hook),
                Some(Hook::Connect4 | Hook::Connect6)
            ) && e.src_segment == client_id
        })
        .collect();
    assert_eq!(refused.len(), destinations.len(), "{refused:#?}");
    for event in &refused {
        assert_eq!(event.verdict, Verdict::Deny as u8, "{event:?}");
        assert_eq!(event.dst_segment, payments_id, "{event:?}");
        assert_eq!(decided_by(&image, event), "default-deny");
        assert_eq!(
            event.flags & FLOW_FLAG_ON_THIS_HOST,
            FLOW_FLAG_ON_THIS_HOST,
            "the record says the destination was this host: {event:?}"
        );
    }
}

/// This process's AnyIP prefixes: an IPv4 /28 and an IPv6 /64, with one address in each.
fn anyip_prefixes() -> [(String, IpAddr); 2] {
    let pid = std::process::id();
    let v4 = Ipv4Addr::new(
        198,
        19,
        252,
        u8::try_from(pid % 16 * 16).expect("below 256"),
    );
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0xfd, (pid % 65_536) as u16, 0, 0, 0, 0);
    [
        (
            format!("{v4}/28"),
            IpAddr::from(Ipv4Addr::from_bits(v4.to_bits() + 5)),
        ),
        (
            format!("{v6}/64"),
            IpAddr::from(Ipv6Addr::from_bits(v6.to_bits() + 5)),
        ),
    ]
}

#[test]
fn addresses_the_local_routing_table_delivers_here_are_the_listening_segment() {
    // Attack: an address no interface holds, that the kernel still delivers to this
    // host (an AnyIP `local` route, the subnet-router anycast address of a forwarding
    // interface), was decided as `world` and reached a local service the policy denies.
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let routes = anyip_prefixes().map(|(prefix, _)| Route::local(&prefix));
    // Forwarding on the host's veth end makes its /64's subnet-router anycast address
    // (the prefix with an all-zero interface id) an address of this host.
    run(
        "sysctl",
        &[
            "-q",
            "-w",
            &format!("net.ipv6.conf.{}.forwarding=1", veth.host_if()),
        ],
    );
    let anycast = Ipv6Addr::from_bits(veth.host_v6.to_bits() & !0xffff_ffff_ffff_ffff);
    let site = Site::new();
    let image = enforcer_tests::policy::image(&site.policy);
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    let local = enforcer::host::interfaces::addresses().expect("this host's addresses");
    assert!(local.local.contains(&IpAddr::from(anycast)), "{local:?}");
    loader
        .set_local_addresses(&local)
        .expect("local addresses into the kernel");
    loader.attach_cgroup(site.parent.path()).expect("attach");
    let _server = site.serve();

    let mut destinations: Vec<IpAddr> = anyip_prefixes().map(|(_, at)| at).to_vec();
    let IpAddr::V4(anyip_v4) = destinations[0] else {
        unreachable!("the first prefix is IPv4")
    };
    destinations.push(IpAddr::V6(anyip_v4.to_ipv6_mapped()));
    destinations.push(IpAddr::from(anycast));
    for to in &destinations {
        let at = SocketAddr::new(*to, PORT);
        let refused = Spawn::tcp_client(at).cgroup(&site.client).run();
        assert!(refused.is_eperm(), "client to {at}: {refused:?}");
    }
    // The AnyIP addresses reach the service for the segment allowed to it.
    for (_, to) in anyip_prefixes() {
        let at = SocketAddr::new(to, PORT);
        assert_eq!(
            Spawn::tcp_client(at).cgroup(&site.gateway).run(),
            Outcome::Ok,
            "gateway to {at}"
        );
    }
    drop(routes);

    let client_id = segment_id(&image, "client");
    let payments_id = segment_id(&image, "payments");
    let refused: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|e| e.src_segment == client_id)
        .collect();
    assert_eq!(refused.len(), destinations.len(), "{refused:#?}");
    for event in &refused {
        assert_eq!(event.verdict, Verdict::Deny as u8, "{event:?}");
        assert_eq!(event.dst_segment, payments_id, "{event:?}");
    }
}

#[test]
fn an_address_or_local_route_added_while_the_agent_runs_is_local_within_moments() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let site = Site::new();
    let mut agent = AgentHost::new(&site.parent, &site.policy, "127.0.0.1:19631", "");
    agent.start();
    let _server = site.serve();

    // A new address on this host's end of the veth, unique to this test process.
    let octet = u8::try_from(std::process::id() % 200).expect("below 200") + 1;
    let added = Ipv4Addr::new(198, 19, 251, octet);
    run(
        "ip",
        &["addr", "add", &format!("{added}/32"), "dev", veth.host_if()],
    );
    refused_within_moments(&site, SocketAddr::new(added.into(), PORT));
    // The same for a `local` route added while the agent runs (rtnetlink's route groups).
    let [(prefix, anyip), _] = anyip_prefixes();
    let _route = Route::local(&prefix);
    refused_within_moments(&site, SocketAddr::new(anyip, PORT));
    assert!(
        agent.log(1).contains("this host's addresses changed"),
        "{}",
        agent.log(1)
    );

    // The records say which destinations were this host, so replaying the store under
    // the very policy that wrote it changes nothing: the flows to the new addresses
    // decided as `world` before the agent had them, and as `payments` after.
    assert!(agent.terminate(), "the agent stops:\n{}", agent.log(1));
    enforcer_tests::ocsf::assert_store_is_ocsf(&agent.audit_dir());
    let output = std::process::Command::new(enforcer_bin())
        .args(["policy", "simulate", "--json", "--audit-dir"])
        .arg(agent.audit_dir())
        .arg(agent.policy_file())
        .output()
        .expect("run enforcer policy simulate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replay: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(replay["changes"], serde_json::json!([]), "{replay:#}");
    assert!(replay["replayed"].as_u64() >= Some(4), "{replay:#}");
}

#[test]
fn an_address_removed_while_the_agent_runs_stops_being_local() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let site = Site::new();
    let mut agent = AgentHost::new(&site.parent, &site.policy, "127.0.0.1:19634", "");
    agent.start();
    let _server = site.serve();
    let octet = u8::try_from(std::process::id() % 200).expect("below 200") + 1;
    let moved = Ipv4Addr::new(198, 19, 249, octet);
    let at = SocketAddr::new(moved.into(), PORT);
    let on_host_end = format!("{moved}/32");
    run("ip", &["addr", "add", &on_host_end, "dev", veth.host_if()]);
    refused_within_moments(&site, at);

    // The address moves to the peer host, which serves the port there. Were it still
    // this host's, `gateway` would be let through as to `payments` (and its SYN dropped
    // on the way out, see `local-elsewhere`), and `client` refused.
    run("ip", &["addr", "del", &on_host_end, "dev", veth.host_if()]);
    netns.ip(&["addr", "add", &on_host_end, "dev", "lo"]);
    let _route = Route::add(&[&on_host_end, "via", &veth.peer_v4.to_string()]);
    let _holder = Spawn::tcp_server(at).netns(&netns).serve();
    let since = Instant::now();
    while Spawn::tcp_client(at).cgroup(&site.client).run() != Outcome::Ok {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{at} still decided as this host's 10 s after it left"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = Spawn::tcp_client(at).cgroup(&site.gateway).run();
    assert!(
        refused.is_eperm(),
        "gateway to {at}, now `world`: {refused:?}"
    );
    assert!(agent.terminate(), "the agent stops:\n{}", agent.log(1));
}

/// Waits (10 s at most) until `client`'s connects to `at`, a destination just made this
/// host's, are refused at `connect()`. Until the agent has the address, the connect is
/// decided as one to `world` and allowed, but the service is never reached: the
/// per-socket layer decides the SYN again where it arrives, against the receiving
/// socket's segment, and drops it. `gateway` still reaches the service there.
fn refused_within_moments(site: &Site, at: SocketAddr) {
    let since = Instant::now();
    loop {
        let outcome = Spawn::tcp_client(at).cgroup(&site.client).run();
        if outcome.is_eperm() {
            break;
        }
        assert_eq!(outcome, Outcome::Timeout, "client to {at}");
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{at} still decided as `world` at connect 10 s after it became this host's"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("{at} was local after {:?}", since.elapsed());
    assert_eq!(
        Spawn::tcp_client(at).cgroup(&site.gateway).run(),
        Outcome::Ok,
        "gateway to {at}"
    );
}
