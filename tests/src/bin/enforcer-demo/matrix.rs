//! The traffic matrix: which flows the demo tries, what `policies/demo/` says about each,
//! what the client saw, and what the kernel recorded as the deciding rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use enforcer::audit::record::{Endpoint, Record};
use enforcer_tests::probe::{Client, Outcome, Spawn};

use crate::sandbox::{Enclave, REMOTES};

/// The verdict a flow gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passes, allowed by a rule or a failsafe.
    Allow,
    /// Refused: dropped at XDP, or EPERM from a cgroup hook.
    Deny,
    /// Would be denied, passes because a segment is in audit mode; recorded as `audit`.
    Audit,
}

impl Verdict {
    /// The word audit records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }
}

/// What a flow tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// `GET /` over TCP to this port, over IPv6 when set.
    Http {
        /// The destination port.
        port: u16,
        /// Over IPv6 instead of IPv4.
        ipv6: bool,
    },
    /// Opening a raw ICMP socket (a way around the connect hooks).
    RawSocket,
}

/// One row of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// Where the client runs: a local service or a remote host.
    pub from: &'static str,
    /// What it reaches: a local service, a remote host, or `-` for a raw socket.
    pub to: &'static str,
    /// What it tries.
    pub attempt: Attempt,
    /// The verdict `policies/demo/` gives it.
    pub expect: Verdict,
    /// What decides it: a rule id, a failsafe's name, or a reason (`default-deny`,
    /// `raw-socket`).
    pub decided_by: &'static str,
}

const fn http(port: u16) -> Attempt {
    Attempt::Http { port, ipv6: false }
}

/// The matrix the demo runs, in the order it prints it.
pub const MATRIX: [Flow; 15] = [
    Flow {
        from: "client",
        to: "gateway",
        attempt: http(8080),
        expect: Verdict::Allow,
        decided_by: "world-to-gateway",
    },
    Flow {
        from: "client",
        to: "gateway",
        attempt: Attempt::Http {
            port: 8080,
            ipv6: true,
        },
        expect: Verdict::Allow,
        decided_by: "world-to-gateway",
    },
    Flow {
        from: "client",
        to: "orders",
        attempt: http(8081),
        expect: Verdict::Deny,
        decided_by: "default-deny",
    },
    Flow {
        from: "client",
        to: "payments",
        attempt: http(8443),
        expect: Verdict::Deny,
        decided_by: "world-never-reaches-payments",
    },
    Flow {
        from: "client",
        to: "admin",
        attempt: http(9000),
        expect: Verdict::Deny,
        decided_by: "default-deny",
    },
    Flow {
        from: "ops",
        to: "admin",
        attempt: http(9000),
        expect: Verdict::Allow,
        decided_by: "ops-console",
    },
    Flow {
        from: "ops",
        to: "payments",
        attempt: http(8443),
        expect: Verdict::Deny,
        decided_by: "world-never-reaches-payments",
    },
    Flow {
        from: "gateway",
        to: "orders",
        attempt: http(8081),
        expect: Verdict::Allow,
        decided_by: "gateway-to-orders",
    },
    Flow {
        from: "gateway",
        to: "payments",
        attempt: http(8443),
        expect: Verdict::Deny,
        decided_by: "default-deny",
    },
    Flow {
        from: "orders",
        to: "payments",
        attempt: http(8443),
        expect: Verdict::Allow,
        decided_by: "orders-to-payments",
    },
    Flow {
        from: "orders",
        to: "inventory",
        attempt: http(8082),
        expect: Verdict::Allow,
        decided_by: "orders-to-inventory",
    },
    Flow {
        from: "payments",
        to: "ledger",
        attempt: http(8443),
        expect: Verdict::Allow,
        decided_by: "payments-to-ledger",
    },
    Flow {
        from: "orders",
        to: "ledger",
        attempt: http(8443),
        expect: Verdict::Deny,
        decided_by: "default-deny",
    },
    Flow {
        from: "reports",
        to: "payments",
        attempt: http(8443),
        expect: Verdict::Audit,
        decided_by: "default-deny",
    },
    Flow {
        from: "inventory",
        to: "-",
        attempt: Attempt::RawSocket,
        expect: Verdict::Deny,
        decided_by: "raw-socket",
    },
];

/// A flow as tried in the sandbox: where its client ran and what it saw.
#[derive(Debug)]
pub struct Tried {
    /// The row.
    pub flow: Flow,
    /// The remote host's address when the client ran there (XDP decides those flows).
    pub remote_src: Option<IpAddr>,
    /// The address and port the client reached (`None` for a raw socket).
    pub target: Option<SocketAddr>,
    /// What the client saw.
    pub outcome: Outcome,
    /// The body of the HTTP answer, if any: the server names its cgroup.
    pub answer: String,
}

/// A flow whose client is running.
struct Running {
    flow: Flow,
    remote_src: Option<IpAddr>,
    target: Option<SocketAddr>,
    client: Client,
}

impl Flow {
    /// Starts this flow's client in the sandbox.
    fn spawn(&self, enclave: &Enclave) -> Running {
        let (port, ipv6) = match self.attempt {
            Attempt::Http { port, ipv6 } => (port, ipv6),
            Attempt::RawSocket => {
                let client = Spawn::raw_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                    .netns(enclave.host())
                    .cgroup(enclave.service(self.from))
                    .run_in_background();
                return Running {
                    flow: *self,
                    remote_src: None,
                    target: None,
                    client,
                };
            }
        };
        let target_ip = match (is_remote(self.from), is_remote(self.to)) {
            // Remote to this host: the host's address on the client's link.
            (true, false) => enclave.remote(self.from).0.host_addr(ipv6),
            // This host to a remote host: the remote's address.
            (false, true) => enclave.remote(self.to).0.addr(ipv6),
            // Service to service on this host: over loopback.
            (false, false) if ipv6 => Ipv6Addr::LOCALHOST.into(),
            (false, false) => Ipv4Addr::LOCALHOST.into(),
            (true, true) => panic!("the demo has no remote-to-remote flows"),
        };
        let target = SocketAddr::new(target_ip, port);
        let spawn = Spawn::http_client(target);
        let (spawn, remote_src) = if is_remote(self.from) {
            let (remote, netns) = enclave.remote(self.from);
            let spawn = spawn.netns(netns).cgroup(enclave.remote_hosts_cgroup());
            (spawn, Some(remote.addr(ipv6)))
        } else {
            let cgroup = enclave.service(self.from);
            (spawn.netns(enclave.host()).cgroup(cgroup), None)
        };
        Running {
            flow: *self,
            remote_src,
            target: Some(target),
            client: spawn.run_in_background(),
        }
    }

    /// Whether the client saw what this row's verdict leads to: an answer when the flow
    /// passes, else EPERM from a cgroup hook on this host, or silence when XDP dropped a
    /// remote host's SYN.
    fn outcome_matches(&self, outcome: &Outcome) -> bool {
        match self.expect {
            Verdict::Allow | Verdict::Audit => *outcome == Outcome::Ok,
            Verdict::Deny if is_remote(self.from) => *outcome == Outcome::Timeout,
            Verdict::Deny => outcome.is_eperm(),
        }
    }
}

/// Whether `name` is one of the remote hosts (else it is a local service).
fn is_remote(name: &str) -> bool {
    REMOTES.iter().any(|remote| remote.name == name)
}

/// Runs every flow of `flows` at once (a dropped SYN costs the client's whole timeout)
/// and returns what each client saw, in order.
pub fn try_all(enclave: &Enclave, flows: &[Flow]) -> Vec<Tried> {
    let running: Vec<Running> = flows.iter().map(|flow| flow.spawn(enclave)).collect();
    running
        .into_iter()
        .map(|running| {
            let (outcome, answer) = running.client.outcome_and_answer();
            Tried {
                flow: running.flow,
                remote_src: running.remote_src,
                target: running.target,
                outcome,
                answer,
            }
        })
        .collect()
}

impl Tried {
    /// Whether the client saw what the row's verdict leads to and, when a service of this
    /// host answered, that it was the row's destination (its answer names its cgroup).
    pub fn as_expected_by_client(&self) -> bool {
        let right_server = self.outcome != Outcome::Ok
            || is_remote(self.flow.to)
            || self
                .answer
                .trim_end()
                .ends_with(&format!("/{}.service", self.flow.to));
        self.flow.outcome_matches(&self.outcome) && right_server
    }

    /// Whether `record` is the audit record of this flow: the same client (remote
    /// address, or service cgroup) and destination, or the service's raw socket.
    pub fn is_recorded_by(&self, record: &Record) -> bool {
        let Some(details) = &record.unmapped.flow else {
            return false;
        };
        let endpoint = |end: &Option<Endpoint>| end.as_ref().map(|end| (end.ip.clone(), end.port));
        let src_ip = endpoint(&record.src_endpoint).map(|(ip, _)| ip);
        let dst = endpoint(&record.dst_endpoint);
        match (self.remote_src, self.target) {
            (Some(src), Some(target)) => {
                // Refused at XDP, or decided at the receiving socket (what XDP lets
                // through is recorded there).
                matches!(details.hook.as_str(), "xdp_ingress" | "skb_ingress")
                    && src_ip == Some(src.to_string())
                    && dst == Some((target.ip().to_string(), target.port()))
            }
            (None, Some(target)) => {
                details
                    .cgroup
                    .ends_with(&format!("/{}.service", self.flow.from))
                    && dst == Some((target.ip().to_string(), target.port()))
            }
            (_, None) => {
                details.hook == "sock_create"
                    && details
                        .cgroup
                        .ends_with(&format!("/{}.service", self.flow.from))
            }
        }
    }
}
