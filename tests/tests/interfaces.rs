//! XDP ingress on every interface: with `interfaces = "all"` the agent attaches to every
//! interface of its network namespace but loopback, and to each one that appears while
//! it runs; `status` shows what each interface has. A remote host behind an interface
//! added after the start, or inside a tunnel, cannot open a connection the policy denies.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Instant,
};

use enforcer_tests::{
    LINK_PREFIX,
    agent::AgentHost,
    cgroup::TestCgroup,
    netns::{Netns, add_veth, address_up},
    next_serial,
    probe::{Outcome, Server, Spawn},
};

const DENIED: u16 = 18_081;
const ALLOWED: u16 = 18_080;

/// A remote host joined to `host` by a new veth pair: this host's end is called
/// `<prefix><pid>-<serial>h` and gets `198.18.<third>.1/30`, the remote's `.2`.
struct Remote {
    netns: Netns,
    host_if: String,
    host_addr: Ipv4Addr,
    remote_addr: Ipv4Addr,
}

impl Remote {
    fn new(host: &Netns) -> Self {
        let serial = next_serial();
        let pid = std::process::id();
        Self::named(host, format!("{LINK_PREFIX}{pid}-{serial}h"), serial)
    }

    /// As [`Remote::new`], with this host's end called `host_if` and `serial` choosing
    /// the addresses.
    fn named(host: &Netns, host_if: String, serial: u32) -> Self {
        let netns = Netns::new();
        add_veth(Some(host), &host_if, &netns, "eth0");
        let third = 200 + u8::try_from(serial % 50).expect("below 50");
        let host_addr = Ipv4Addr::new(198, 18, third, 1);
        let remote_addr = Ipv4Addr::new(198, 18, third, 2);
        address_up(Some(host), &host_if, &[(host_addr.into(), 30)]);
        address_up(Some(&netns), "eth0", &[(remote_addr.into(), 30)]);
        Self {
            netns,
            host_if,
            host_addr,
            remote_addr,
        }
    }

    /// Deletes the veth pair and makes it again under the same names and addresses (the
    /// host's end gets a new index), as a network restart or a re-provisioned link would.
    fn recreate(&self, host: &Netns) {
        host.ip(&["link", "del", &self.host_if]);
        add_veth(Some(host), &self.host_if, &self.netns, "eth0");
        address_up(Some(host), &self.host_if, &[(self.host_addr.into(), 30)]);
        address_up(Some(&self.netns), "eth0", &[(self.remote_addr.into(), 30)]);
    }

    /// A TCP connect from the remote host to `port` on this host.
    fn connect(&self, port: u16) -> Outcome {
        self.connect_to(self.host_addr, port)
    }

    /// A TCP connect from the remote host to `addr:port`.
    fn connect_to(&self, addr: Ipv4Addr, port: u16) -> Outcome {
        Spawn::tcp_client(SocketAddr::new(IpAddr::V4(addr), port))
            .netns(&self.netns)
            .run()
    }

    /// A VXLAN tunnel `name` between this host and the remote over the pair, with
    /// `198.19.240.1/30` inside on this host's end and `.2` on the remote's; returns this
    /// host's inner address.
    fn tunnel(&self, host: &Netns, name: &str) -> Ipv4Addr {
        for (netns, local, remote) in [
            (host, self.host_addr, self.remote_addr),
            (&self.netns, self.remote_addr, self.host_addr),
        ] {
            netns.ip(&[
                "link",
                "add",
                name,
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                &local.to_string(),
                "remote",
                &remote.to_string(),
                "dstport",
                "4789",
            ]);
        }
        let inner_host = Ipv4Addr::new(198, 19, 240, 1);
        address_up(Some(host), name, &[(inner_host.into(), 30)]);
        address_up(
            Some(&self.netns),
            name,
            &[(Ipv4Addr::new(198, 19, 240, 2).into(), 30)],
        );
        inner_host
    }
}

fn xdp_of<'a>(status: &'a serde_json::Value, interface: &str) -> Option<&'a serde_json::Value> {
    status["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|i| i["name"] == interface)
}

/// A `web` segment (a cgroup under `parent`) serving [`ALLOWED`] and [`DENIED`] on every
/// address of `host`, where an agent with XDP on every interface but loopback (`skb`
/// mode, metrics on `metrics`) lets only [`ALLOWED`] in from the world. The servers go
/// with the returned guards.
fn web_behind_xdp(
    host: &Netns,
    parent: &TestCgroup,
    metrics: &str,
) -> (AgentHost, Vec<Server>, TestCgroup) {
    let web = parent.child("web.service");
    let policy = format!(
        r#"
[segments.web]
cgroups = ["{}"]
ports = ["{ALLOWED}/tcp", "{DENIED}/tcp"]

[[allow]]
id = "world-to-web"
from = ["world"]
to = ["web"]
ports = ["{ALLOWED}/tcp"]
"#,
        web.relative_path()
    );
    let agent = AgentHost::new(parent, &policy, metrics, "").in_netns(host);
    agent.set_interfaces("interfaces = \"all\"\nxdp_mode = \"skb\"");
    let servers = [ALLOWED, DENIED]
        .map(|port| {
            Spawn::tcp_server(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
                .netns(host)
                .cgroup(&web)
                .serve()
        })
        .into();
    (agent, servers, web)
}

#[test]
fn every_interface_gets_xdp_also_one_added_while_the_agent_runs() {
    let host = Netns::new();
    let first = Remote::new(&host);
    let parent = TestCgroup::new();
    let (mut agent, _servers, _web) = web_behind_xdp(&host, &parent, "127.0.0.1:19641");
    agent.start();

    // The interface that existed at the start has XDP; loopback has none.
    let status = agent.status();
    let attached = xdp_of(&status, &first.host_if).expect("listed");
    assert_eq!(attached["xdp"], "attached", "{status:#}");
    assert_eq!(attached["mode"], "skb", "{status:#}");
    assert_eq!(xdp_of(&status, "lo").expect("listed")["xdp"], "none");
    assert_eq!(first.connect(ALLOWED), Outcome::Ok);
    assert_eq!(first.connect(DENIED), Outcome::Timeout, "dropped at XDP");

    // A new interface, to a new remote host, while the agent runs.
    let added = Instant::now();
    let second = Remote::new(&host);
    let status = agent.wait_for_status("XDP on the added interface", |status| {
        xdp_of(status, &second.host_if).is_some_and(|i| i["xdp"] == "attached")
    });
    eprintln!(
        "XDP on {} within {:?} of creating it",
        second.host_if,
        added.elapsed()
    );
    assert_eq!(
        xdp_of(&status, &second.host_if).expect("listed")["mode"],
        "skb"
    );
    assert_eq!(second.connect(ALLOWED), Outcome::Ok);
    assert_eq!(second.connect(DENIED), Outcome::Timeout, "dropped at XDP");

    // A tunnel device is an interface too: the inner SYN, decapsulated, meets the XDP of
    // the tunnel device, which "all" attached when it appeared.
    let tunnel = format!("vx{}", next_serial());
    let inner = first.tunnel(&host, &tunnel);
    agent.wait_for_status("XDP on the tunnel device", |status| {
        xdp_of(status, &tunnel).is_some_and(|i| i["xdp"] == "attached")
    });
    assert_eq!(
        first.connect_to(inner, ALLOWED),
        Outcome::Ok,
        "through the tunnel"
    );
    assert_eq!(
        first.connect_to(inner, DENIED),
        Outcome::Timeout,
        "dropped at the tunnel device's XDP"
    );

    // A TUN device carries bare IP packets, which XDP's parser does not read: "all" leaves
    // it to the per-socket layer. A veth added after it shows the agent has seen both.
    let tun = format!("{LINK_PREFIX}t{}", next_serial());
    host.ip(&["tuntap", "add", &tun, "mode", "tun"]);
    let third = Remote::new(&host);
    agent.wait_for_status("XDP on the veth added after the TUN device", |status| {
        xdp_of(status, &third.host_if).is_some_and(|i| i["xdp"] == "attached")
    });
    let status = agent.status();
    assert_eq!(
        xdp_of(&status, &tun).expect("listed")["xdp"],
        "none",
        "{status:#}"
    );

    // The refused SYNs are on record, with the interface they came in on.
    let records: Vec<serde_json::Value> = agent.audit_records();
    let refused_on = |interface: &str| {
        records.iter().any(|r| {
            r["unmapped"]["flow"]["hook"] == "xdp_ingress"
                && r["unmapped"]["flow"]["verdict"] == "deny"
                && r["unmapped"]["flow"]["interface"] == interface
                && r["dst_endpoint"]["port"] == DENIED
        })
    };
    assert!(refused_on(&first.host_if), "{records:#?}");
    assert!(refused_on(&second.host_if), "{records:#?}");
    assert!(refused_on(&tunnel), "{records:#?}");
    // So is every interface XDP went on, in the agent's history.
    let output = agent.command(&["audit", "query", "--json", "--kind", "agent"]);
    let history = String::from_utf8_lossy(&output.stdout);
    let attached: Vec<String> = history
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON"))
        .filter(|r| r["unmapped"]["agent"]["event"] == "xdp-attached")
        .filter_map(|r| {
            r["unmapped"]["agent"]["interface"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    for interface in [&first.host_if, &second.host_if, &tunnel, &third.host_if] {
        assert!(attached.contains(interface), "{interface}: {attached:?}");
    }
    assert!(!attached.contains(&tun), "{attached:?}");
}

#[test]
fn an_interface_made_again_gets_xdp_again_at_its_new_index() {
    let host = Netns::new();
    let remote = Remote::new(&host);
    let parent = TestCgroup::new();
    let (mut agent, _servers, _web) = web_behind_xdp(&host, &parent, "127.0.0.1:19642");
    agent.start();
    let status = agent.status();
    let before = xdp_of(&status, &remote.host_if).expect("listed");
    assert_eq!(before["xdp"], "attached", "{status:#}");
    let old_index = before["index"].as_u64().expect("index");
    assert_eq!(remote.connect(DENIED), Outcome::Timeout, "dropped at XDP");
    let xdp_denials = |agent: &AgentHost| {
        agent
            .audit_records::<serde_json::Value>()
            .iter()
            .filter(|r| {
                r["unmapped"]["flow"]["hook"] == "xdp_ingress"
                    && r["unmapped"]["flow"]["verdict"] == "deny"
                    && r["dst_endpoint"]["port"] == DENIED
            })
            .count()
    };
    let denied_before = wait_for(|| Some(xdp_denials(&agent)).filter(|&n| n > 0));

    // Paused, the agent sees the removal and the new interface in one pass: only the index
    // tells them apart.
    agent.pause();
    remote.recreate(&host);
    agent.resume();
    let status = agent.wait_for_status("XDP on the interface made again", |status| {
        xdp_of(status, &remote.host_if).is_some_and(|i| {
            i["xdp"] == "attached" && i["index"].as_u64().is_some_and(|index| index != old_index)
        })
    });
    assert_eq!(
        xdp_of(&status, &remote.host_if).expect("listed")["mode"],
        "skb"
    );
    assert_eq!(remote.connect(ALLOWED), Outcome::Ok);
    assert_eq!(
        remote.connect(DENIED),
        Outcome::Timeout,
        "dropped at the new interface's XDP"
    );
    // The XDP program of the new interface decided it (the per-socket layer would drop it
    // too, without an `xdp_ingress` record).
    wait_for(|| Some(xdp_denials(&agent)).filter(|&n| n > denied_before));
}

/// Polls `found` (at most 10 s) until it gives a value.
fn wait_for<T>(found: impl Fn() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "not within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
