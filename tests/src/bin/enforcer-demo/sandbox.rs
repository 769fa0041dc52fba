//! The demo enclave's sandbox: an application host and three remote hosts as network
//! namespaces joined by veth pairs, the host's API services as cgroups running HTTP
//! servers, and the real agent enforcing `policies/demo/` inside it.
//!
//! Nothing outside the sandbox is touched: every interface lives in a namespace of its
//! own (the host's real interfaces never see a packet), the agent's cgroup hooks attach
//! to the sandbox cgroup only, and its pins, state and audit store have their own
//! directories. Every object carries a fixed name starting with [`NAME`], so a run that
//! was killed outright is cleaned up by the next one
//! ([`enforcer_tests::leftovers::sweep`]).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use enforcer_tests::{
    agent::AgentHost,
    cgroup::TestCgroup,
    netns::{Netns, add_veth, address_up},
    probe::{Server, Spawn},
};

/// The prefix of every object the demo creates, and the name of its sandbox cgroup (the
/// one the agent's cgroup hooks attach to), its pin directory and its files directory.
pub const NAME: &str = enforcer_tests::DEMO_PREFIX;

/// Where the agent's metrics listen, inside the host namespace.
const METRICS: &str = "127.0.0.1:9464";

/// A local API service: a cgroup under the sandbox cgroup, serving HTTP on `port` (none
/// for a batch job that only makes requests).
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// The segment's name in `policies/demo/`; the cgroup is `<name>.service`.
    pub name: &'static str,
    /// The port its HTTP server listens on (every address of the host).
    pub port: Option<u16>,
}

/// The application host's services, as `policies/demo/10-segments.toml` declares them.
pub const SERVICES: [ServiceSpec; 6] = [
    ServiceSpec {
        name: "gateway",
        port: Some(8080),
    },
    ServiceSpec {
        name: "orders",
        port: Some(8081),
    },
    ServiceSpec {
        name: "inventory",
        port: Some(8082),
    },
    ServiceSpec {
        name: "payments",
        port: Some(8443),
    },
    ServiceSpec {
        name: "admin",
        port: Some(9000),
    },
    ServiceSpec {
        name: "reports",
        port: None,
    },
];

/// A remote host: a namespace on the `n`th link, `198.18.<n>.2` and `2001:db8:<n>::2`,
/// whose host side is `.1` / `::1`; `serves` is the port of its own HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct RemoteSpec {
    /// Its name (the namespace is `enforcer-demo-<name>`, the host's interface `to-<name>`).
    pub name: &'static str,
    /// The link's number: the third byte of its IPv4 network, the third group of its IPv6.
    pub link: u8,
    /// What it stands for, for the introduction.
    pub role: &'static str,
    /// The port of the HTTP server it runs.
    pub serves: Option<u16>,
}

/// The remote hosts; `policies/demo/` puts `ops` under the failsafe and `ledger` in a segment.
pub const REMOTES: [RemoteSpec; 3] = [
    RemoteSpec {
        name: "client",
        link: 1,
        role: "a client outside the enclave's segments (world)",
        serves: None,
    },
    RemoteSpec {
        name: "ops",
        link: 2,
        role: "the operators' jump host (failsafe to the admin console)",
        serves: None,
    },
    RemoteSpec {
        name: "ledger",
        link: 3,
        role: "the payment ledger's host (segment ledger)",
        serves: Some(8443),
    },
];

impl RemoteSpec {
    /// The remote end's address.
    pub fn addr(&self, ipv6: bool) -> IpAddr {
        self.end(ipv6, 2)
    }

    /// The application host's address on this link.
    pub fn host_addr(&self, ipv6: bool) -> IpAddr {
        self.end(ipv6, 1)
    }

    fn end(&self, ipv6: bool, host: u8) -> IpAddr {
        if ipv6 {
            Ipv6Addr::new(0x2001, 0xdb8, u16::from(self.link), 0, 0, 0, 0, host.into()).into()
        } else {
            Ipv4Addr::new(198, 18, self.link, host).into()
        }
    }

    /// The host's interface on this link, where XDP decides inbound flows.
    pub fn host_if(&self) -> String {
        format!("to-{}", self.name)
    }
}

/// The running sandbox. Fields drop in order: servers, the agent (stopped, its pins
/// removed with `enforcer uninstall`), the service cgroups, the sandbox cgroup, the remote
/// hosts' cgroup, the remote namespaces, the host namespace.
#[derive(Debug)]
pub struct Enclave {
    servers: Vec<Server>,
    /// The real agent, running inside the host namespace.
    pub agent: AgentHost,
    services: Vec<(ServiceSpec, TestCgroup)>,
    sandbox: TestCgroup,
    /// The remote hosts' servers: outside the sandbox cgroup (no hook governs a remote
    /// host), named like every demo object so that a killed run's are swept.
    remote_servers: TestCgroup,
    remotes: Vec<(RemoteSpec, Netns)>,
    host: Netns,
}

impl Enclave {
    /// Builds the sandbox, starts every server and the agent with the policy directory
    /// `policy`, and returns once the agent enforces.
    pub fn start(policy: &Path) -> Self {
        let host = Netns::named(&format!("{NAME}-host"));
        let remotes: Vec<(RemoteSpec, Netns)> = REMOTES
            .iter()
            .map(|remote| (*remote, connect(&host, remote)))
            .collect();
        let sandbox = TestCgroup::named(NAME);
        let services: Vec<(ServiceSpec, TestCgroup)> = SERVICES
            .iter()
            .map(|service| {
                (
                    *service,
                    sandbox.child(&format!("{}.service", service.name)),
                )
            })
            .collect();
        let interfaces: String = REMOTES
            .iter()
            .map(|remote| {
                format!(
                    "\n[[interfaces]]\nname = \"{}\"\nxdp_mode = \"skb\"\n",
                    remote.host_if()
                )
            })
            .collect();
        let agent =
            AgentHost::configured(NAME, &sandbox, policy, METRICS, &interfaces).in_netns(&host);
        let mut enclave = Self {
            servers: Vec::new(),
            agent,
            services,
            sandbox,
            remote_servers: TestCgroup::named(&format!("{NAME}-remotes")),
            remotes,
            host,
        };
        enclave.serve();
        enclave.agent.start();
        enclave
    }

    /// Starts the HTTP servers: each service's in its cgroup on every address of the
    /// host, each serving remote's on its own address.
    fn serve(&mut self) {
        for (service, cgroup) in &self.services {
            if let Some(port) = service.port {
                let any = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
                let server = Spawn::http_server(any)
                    .netns(&self.host)
                    .cgroup(cgroup)
                    .serve();
                self.servers.push(server);
            }
        }
        for (remote, netns) in &self.remotes {
            if let Some(port) = remote.serves {
                let addr = SocketAddr::new(remote.addr(false), port);
                self.servers.push(
                    Spawn::http_server(addr)
                        .netns(netns)
                        .cgroup(&self.remote_servers)
                        .serve(),
                );
            }
        }
    }

    /// The cgroup the remote hosts' processes run in (outside the sandbox cgroup).
    pub fn remote_hosts_cgroup(&self) -> &TestCgroup {
        &self.remote_servers
    }

    /// The host namespace (where the services and their clients run).
    pub fn host(&self) -> &Netns {
        &self.host
    }

    /// The cgroup of the service `name`.
    pub fn service(&self, name: &str) -> &TestCgroup {
        self.services
            .iter()
            .find(|(service, _)| service.name == name)
            .map(|(_, cgroup)| cgroup)
            .unwrap_or_else(|| panic!("no service {name} in the demo"))
    }

    /// The remote host `name` and its namespace.
    pub fn remote(&self, name: &str) -> (&RemoteSpec, &Netns) {
        self.remotes
            .iter()
            .find(|(remote, _)| remote.name == name)
            .map(|(remote, netns)| (remote, netns))
            .unwrap_or_else(|| panic!("no remote host {name} in the demo"))
    }

    /// How many namespaces, cgroups and processes the sandbox holds, for the goodbye line.
    pub fn size(&self) -> (usize, usize, usize) {
        (
            self.remotes.len() + 1,
            self.services.len() + 1,
            self.servers.len() + 1,
        )
    }

    /// The sandbox cgroup's path relative to the cgroup2 root.
    pub fn sandbox_cgroup(&self) -> String {
        self.sandbox.relative_path()
    }
}

/// Creates the remote host's namespace and its veth pair to `host` (`to-<name>` on the
/// host, `eth0` on the remote), addressed and up.
fn connect(host: &Netns, remote: &RemoteSpec) -> Netns {
    let netns = Netns::named(&format!("{NAME}-{}", remote.name));
    let host_if = remote.host_if();
    add_veth(Some(host), &host_if, &netns, "eth0");
    address_up(
        Some(host),
        &host_if,
        &[(remote.host_addr(false), 24), (remote.host_addr(true), 64)],
    );
    address_up(
        Some(&netns),
        "eth0",
        &[(remote.addr(false), 24), (remote.addr(true), 64)],
    );
    netns
}
