//! Red team: Multipath TCP (`IPPROTO_MPTCP`, 262). A segment's MPTCP connection is one
//! `connect()`, decided as TCP; the kernel then opens more subflows on its own: the
//! in-kernel path manager joins addresses (and ports) the peer announces (`ADD_ADDR`,
//! accepted when the host's `ip mptcp limits` set `add_addr_accepted` above 0) and adds
//! subflows from the host's `subflow` endpoints. Those `connect()`s run in a kernel
//! worker, not in the segment's process, on sockets of the segment's cgroup; sockets
//! handed to a process of another cgroup (`SCM_RIGHTS`) are connected by a task that is
//! not their owner either. Each test asserts what the enforcer must do: decide every such
//! flow against the segment whose socket carries it, and record it once, as MPTCP.
//!
//! Objects these tests create carry the harness's prefixes with `mp` in the name;
//! addresses are in 198.19.236.0/24 and 2001:db8:3c7::/64, inside namespaces only.
//! Helpers: `tests/scripts/mptcp_attack.py`.

use std::{
    io::{BufReader, Lines},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ChildStdout,
    time::{Duration, Instant},
};

use enforcer_common::event::{FLOW_FLAG_MPTCP, FlowEvent, Hook, Verdict, family};
use enforcer_tests::{
    LINK_PREFIX, PREFIX,
    agent::AgentHost,
    cgroup::TestCgroup,
    cmd::{run, run_quietly},
    events::{decided_by, drain, segment_id},
    netns::{Netns, address_up},
    policy::{image, loaded_with, orders_to_inventory},
    probe::{Outcome, Spawn},
    script::{Guard, Script},
};
use serde_json::Value;

/// The port `api` serves and `app` may reach.
const PORT: u16 = 17_000;
/// `api`'s admin port: `host` may reach it, `app` may not.
const ADMIN_PORT: u16 = 17_001;
/// How long a test waits for a subflow the path manager should (or must not) open.
const SUBFLOW_WAIT: Duration = Duration::from_millis(2500);

fn script(args: &[&str]) -> Script {
    Script::new("mptcp_attack.py", args)
}

fn mp_netns(tag: &str) -> Netns {
    Netns::named(&format!("{PREFIX}mp-{}-{tag}", std::process::id()))
}

fn mp_cgroup(tag: &str) -> TestCgroup {
    TestCgroup::named(&format!("{PREFIX}mp-{}-{tag}", std::process::id()))
}

/// The addresses of one family: `client` (the segment's host), `client2` (a second
/// address of it, for a `subflow` endpoint), `api` and `vault` (two addresses of the
/// server's host, in two segments).
#[derive(Clone, Copy)]
struct Addresses {
    client: IpAddr,
    client2: IpAddr,
    api: IpAddr,
    vault: IpAddr,
    prefix: u8,
}

const V4: Addresses = Addresses {
    client: IpAddr::V4(Ipv4Addr::new(198, 19, 236, 1)),
    client2: IpAddr::V4(Ipv4Addr::new(198, 19, 236, 5)),
    api: IpAddr::V4(Ipv4Addr::new(198, 19, 236, 2)),
    vault: IpAddr::V4(Ipv4Addr::new(198, 19, 236, 3)),
    prefix: 24,
};

const V6: Addresses = Addresses {
    client: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x3c7, 0, 0, 0, 0, 1)),
    client2: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x3c7, 0, 0, 0, 0, 5)),
    api: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x3c7, 0, 0, 0, 0, 2)),
    vault: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x3c7, 0, 0, 0, 0, 3)),
    prefix: 64,
};

/// `ADDR:PORT` as `ss` and the helpers print it.
fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A client namespace (the segment's host: `app`'s processes run there) and a server
/// namespace (`api` and `vault`), joined by a veth carrying both families. The client's
/// path manager accepts no announcements (the kernel's default) until told to.
struct Site {
    client: Netns,
    server: Netns,
    client_if: String,
    server_if: String,
    app: TestCgroup,
    other: TestCgroup,
    parent: TestCgroup,
}

impl Site {
    fn new(tag: &str) -> Self {
        let client = mp_netns(&format!("{tag}c"));
        let server = mp_netns(&format!("{tag}s"));
        let pid = std::process::id() % 10_000;
        let client_if = format!("{LINK_PREFIX}mp{pid:04}{tag}c");
        let server_if = format!("{LINK_PREFIX}mp{pid:04}{tag}s");
        assert!(client_if.len() <= 15, "{client_if}");
        // The pair lives in the two namespaces; deleting a namespace deletes its end.
        run(
            "ip",
            &[
                "-n",
                client.name(),
                "link",
                "add",
                &client_if,
                "type",
                "veth",
                "peer",
                "name",
                &server_if,
                "netns",
                server.name(),
            ],
        );
        let pairs = |f: fn(&Addresses) -> [IpAddr; 2]| {
            [V4, V6]
                .iter()
                .flat_map(|a| f(a).map(|ip| (ip, a.prefix)))
                .collect::<Vec<_>>()
        };
        address_up(Some(&client), &client_if, &pairs(|a| [a.client, a.client2]));
        address_up(Some(&server), &server_if, &pairs(|a| [a.api, a.vault]));
        // Both ends take joins; the client takes no announcement yet.
        client.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "4",
            "add_addr_accepted",
            "0",
        ]);
        server.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "4",
            "add_addr_accepted",
            "4",
        ]);
        let parent = mp_cgroup(tag);
        let app = parent.child("app.service");
        let other = parent.child("helper.service");
        Self {
            client,
            server,
            client_if,
            server_if,
            app,
            other,
            parent,
        }
    }

    /// A policy where `app` may reach `api` on [`PORT`] and nothing else. With `host_may`,
    /// the host's own tools (a backup agent, an admin console) may reach `vault` on
    /// [`PORT`] and `api` on [`ADMIN_PORT`]: nothing `app` is granted.
    fn policy(&self, host_may: bool) -> String {
        let host = if host_may {
            format!(
                r#"
[[allow]]
id = "host-to-vault"
from = ["host"]
to = ["vault"]
ports = ["{PORT}/tcp"]

[[allow]]
id = "host-to-api-admin"
from = ["host"]
to = ["api"]
ports = ["{ADMIN_PORT}/tcp"]
"#
            )
        } else {
            String::new()
        };
        format!(
            r#"
[segments.app]
cgroups = ["{app}"]

[segments.api]
cidrs = ["{a4}/32", "{a6}/128"]

[segments.vault]
cidrs = ["{v4}/32", "{v6}/128"]

[[allow]]
id = "app-to-api"
from = ["app"]
to = ["api"]
ports = ["{PORT}/tcp"]
{host}"#,
            app = self.app.relative_path(),
            a4 = V4.api,
            a6 = V6.api,
            v4 = V4.vault,
            v6 = V6.vault,
        )
    }

    /// The host administrator lets the client's path manager take announced addresses
    /// (`ip mptcp limits set add_addr_accepted 4`).
    fn accept_announcements(&self) {
        self.client.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "4",
            "add_addr_accepted",
            "4",
        ]);
    }

    /// The server announces `addr` (and `port`, else the connection's) to its peers.
    fn announce(&self, addr: IpAddr, port: Option<u16>) {
        let addr = addr.to_string();
        let port = port.map(|p| p.to_string());
        let mut args = vec!["mptcp", "endpoint", "add", &addr, "dev", &self.server_if];
        if let Some(port) = &port {
            args.extend(["port", port.as_str()]);
        }
        args.push("signal");
        self.server.ip(&args);
    }

    /// The client's host adds a subflow from `addr` to every MPTCP connection
    /// (`ip mptcp endpoint add ADDR subflow`).
    fn subflow_endpoint(&self, addr: IpAddr) {
        self.client.ip(&[
            "mptcp",
            "endpoint",
            "add",
            &addr.to_string(),
            "dev",
            &self.client_if,
            "subflow",
        ]);
    }

    /// An MPTCP server on every address of the server's host, port [`PORT`].
    fn serve(&self, any: &str, wait_ms: u64) -> Guard {
        script(&["serve", any, &PORT.to_string(), &wait_ms.to_string(), "api"])
            .netns(&self.server)
            .serve()
    }

    /// A client in `app` (in the client's namespace): connects with `kind` (`mptcp`,
    /// `tcp`) to `dst`:`port` and holds the connection `hold_ms`; returns it and its first
    /// line (`ok <answer>` or `error ...`).
    fn connect(&self, kind: &str, dst: IpAddr, port: u16, hold_ms: u64) -> (Guard, String) {
        let (guard, mut lines) = script(&[
            "connect",
            kind,
            &dst.to_string(),
            &port.to_string(),
            &hold_ms.to_string(),
        ])
        .netns(&self.client)
        .cgroup(&self.app)
        .start();
        let first = first_line(&mut lines);
        (guard, first)
    }

    /// The established TCP connections (MPTCP subflows included) of the server's host, as
    /// `LOCAL PEER` pairs.
    fn server_connections(&self) -> Vec<(String, String)> {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                self.server.name(),
                "ss",
                "-tnH",
                "state",
                "established",
            ],
        );
        out.lines()
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // Recv-Q Send-Q Local Peer (the state column is left out with `state`).
                (cols.len() >= 4).then(|| (cols[2].to_owned(), cols[3].to_owned()))
            })
            .collect()
    }

    /// Whether a connection (subflow) reached the server's host at `local`, within `wait`.
    fn reached(&self, local: &str, wait: Duration) -> bool {
        let since = Instant::now();
        loop {
            if self.server_connections().iter().any(|(l, _)| l == local) {
                return true;
            }
            if since.elapsed() > wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        // The namespaces go with their ends of the pair; this is only for a failed build.
        let _ = run_quietly(
            "ip",
            &["-n", self.client.name(), "link", "del", &self.client_if],
        );
    }
}

fn first_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    lines.next().and_then(Result::ok).unwrap_or_default()
}

/// Whether `event` is a flow to `addr`.
fn to_addr(event: &FlowEvent, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => event.family == family::INET && event.dst_addr[..4] == a.octets(),
        IpAddr::V6(a) => event.family == family::INET6 && event.dst_addr == a.octets(),
    }
}

fn show(events: &[FlowEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let dst = if e.family == family::INET {
                IpAddr::from([e.dst_addr[0], e.dst_addr[1], e.dst_addr[2], e.dst_addr[3]])
            } else {
                IpAddr::from(e.dst_addr)
            };
            let comm = String::from_utf8_lossy(&e.comm);
            format!(
                "{:?} {:?} src_seg {} dst_seg {} -> {} proto {} flags {} reason {} rule {} \
                 cgroup {} comm {}",
                Hook::from_code(e.hook),
                Verdict::from_code(e.verdict),
                e.src_segment,
                e.dst_segment,
                endpoint(dst, e.dst_port),
                e.protocol,
                e.flags,
                e.reason,
                e.rule_id,
                e.cgroup_id,
                comm.trim_end_matches('\0'),
            )
        })
        .collect()
}

// =======================================================================================
// A. What an MPTCP flow is recorded as.
// =======================================================================================

/// `app` connects over MPTCP: to `api` on [`PORT`] (allowed by a `tcp` rule), to `api` on
/// [`ADMIN_PORT`] and to `vault` (denied, `EPERM`), over IPv4 and IPv6, and once over plain
/// TCP. Every MPTCP connect is decided as TCP and recorded by its hook with the MPTCP
/// flag, the process named; the plain TCP one is not flagged.
#[test]
fn mptcp_connects_are_decided_as_tcp_and_recorded_as_mptcp() {
    let site = Site::new("a");
    let image = image(&site.policy(false));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");
    let _v4 = site.serve("0.0.0.0", 8000);
    let _v6 = site.serve("::", 8000);
    let app = segment_id(&image, "app");

    for (addrs, hook) in [(V4, Hook::Connect4), (V6, Hook::Connect6)] {
        let (_c, allowed) = site.connect("mptcp", addrs.api, PORT, 0);
        assert_eq!(
            allowed, "ok api",
            "MPTCP to api:{PORT} is allowed by a tcp rule"
        );
        let (_c, plain) = site.connect("tcp", addrs.api, PORT, 0);
        assert_eq!(plain, "ok api");
        for (dst, port) in [(addrs.api, ADMIN_PORT), (addrs.vault, PORT)] {
            let (_c, denied) = site.connect("mptcp", dst, port, 0);
            assert!(
                denied.starts_with("error 1 EPERM"),
                "MPTCP to {}: {denied}",
                endpoint(dst, port)
            );
        }
        let recorded = drain(&mut events);
        let outbound: Vec<&FlowEvent> = recorded.iter().filter(|e| e.hook == hook as u8).collect();
        let mut seen: Vec<(String, u8, bool, String)> = outbound
            .iter()
            .map(|e| {
                let dst = if to_addr(e, addrs.api) {
                    "api"
                } else {
                    "vault"
                };
                (
                    format!("{dst}:{}", e.dst_port),
                    e.verdict,
                    e.flags & FLOW_FLAG_MPTCP != 0,
                    decided_by(&image, e),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (
                    format!("api:{PORT}"),
                    Verdict::Allow as u8,
                    false,
                    "app-to-api".to_owned()
                ),
                (
                    format!("api:{PORT}"),
                    Verdict::Allow as u8,
                    true,
                    "app-to-api".to_owned()
                ),
                (
                    format!("api:{ADMIN_PORT}"),
                    Verdict::Deny as u8,
                    true,
                    "default-deny".to_owned()
                ),
                (
                    format!("vault:{PORT}"),
                    Verdict::Deny as u8,
                    true,
                    "default-deny".to_owned()
                ),
            ],
            "{:#?}",
            show(&recorded)
        );
        for e in outbound {
            assert_eq!(e.protocol, 6, "decided as TCP: {:#?}", show(&recorded));
            assert_eq!(e.src_segment, app);
            assert!(e.pid_tgid != 0, "the process is named");
        }
    }
}

/// The real agent stores an MPTCP flow as protocol 262, `mptcp`; `policy simulate` replays
/// it as the TCP flow it was decided as.
#[test]
fn mptcp_flows_are_stored_as_protocol_262_and_replayed_as_tcp() {
    let site = Site::new("q");
    let mut agent = AgentHost::new(&site.parent, &site.policy(false), "127.0.0.1:19641", "");
    agent.start();
    let _v4 = site.serve("0.0.0.0", 8000);
    let (_c, allowed) = site.connect("mptcp", V4.api, PORT, 0);
    assert_eq!(allowed, "ok api");
    let (_c, denied) = site.connect("mptcp", V4.api, ADMIN_PORT, 0);
    assert!(denied.starts_with("error 1 EPERM"), "{denied}");

    let since = Instant::now();
    let records: Vec<Value> = loop {
        let output = agent.command(&["audit", "query", "--json"]);
        let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|r: &Value| r["class_uid"] == 4001)
            .collect();
        if records.len() >= 2 || since.elapsed() > Duration::from_secs(10) {
            break records;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(records.len(), 2, "{records:#?}");
    for record in &records {
        let info = &record["connection_info"];
        assert_eq!(info["protocol_num"], 262, "{record:#}");
        assert_eq!(info["protocol_name"], "mptcp", "{record:#}");
        assert_eq!(record["src_endpoint"]["name"], "app");
    }
    let output = agent.command(&["audit", "tail", "-n", "1"]);
    let tail = String::from_utf8_lossy(&output.stdout);
    assert!(
        tail.contains(&format!("{}:{ADMIN_PORT}/mptcp", V4.api)),
        "{tail}"
    );
    assert!(agent.terminate(), "{}", agent.log(1));

    // A candidate that opens the admin port to `app` changes exactly the denied flow.
    let candidate = agent.audit_dir().with_file_name("candidate.toml");
    let opened = format!(
        "{}\n[[allow]]\nid = \"app-to-api-admin\"\nfrom = [\"app\"]\nto = [\"api\"]\nports = [\"{ADMIN_PORT}/tcp\"]\n",
        site.policy(false)
    );
    std::fs::write(&candidate, opened).expect("write the candidate");
    let output = std::process::Command::new(enforcer_tests::agent::enforcer_bin())
        .args(["policy", "simulate", "--json", "--audit-dir"])
        .arg(agent.audit_dir())
        .arg(&candidate)
        .output()
        .expect("run enforcer policy simulate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replay: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(replay["replayed"], 2, "{replay:#}");
    assert_eq!(replay["unchanged"], 1, "{replay:#}");
    let change = &replay["changes"][0]["change"];
    assert_eq!(change["becomes"], "allow", "{replay:#}");
    assert_eq!(change["becomes_by"], "app-to-api-admin", "{replay:#}");
}

// =======================================================================================
// B. Subflows the kernel opens for a segment's connection.
// =======================================================================================

/// What one announcement scenario saw.
struct Seen {
    /// Whether a subflow reached the server's host at the announced address and port.
    reached: bool,
    /// Every record of a flow to the announced address.
    records: Vec<FlowEvent>,
    all: Vec<FlowEvent>,
}

/// `app` connects over MPTCP to `api` (allowed); the server announces `announced` (and
/// `port`, else the connection's). With `accept`, the client's host takes announcements
/// (`add_addr_accepted 4`, a plain host setting); with `host_may`, the policy lets `host`
/// reach what is announced (not `app`).
fn announcement(
    tag: &str,
    addrs: Addresses,
    announced: IpAddr,
    port: Option<u16>,
    accept: bool,
    host_may: bool,
) -> (Seen, enforcer::policy::image::MapImage) {
    let site = Site::new(tag);
    if accept {
        site.accept_announcements();
    }
    site.announce(announced, port);
    let image = image(&site.policy(host_may));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");
    let any = if announced.is_ipv4() { "0.0.0.0" } else { "::" };
    let _server = site.serve(any, 10_000);
    let (_client, first) = site.connect("mptcp", addrs.api, PORT, 4000);
    assert_eq!(
        first, "ok api",
        "the first subflow, to api:{PORT}, is allowed"
    );
    let target = endpoint(announced, port.unwrap_or(PORT));
    let reached = site.reached(&target, SUBFLOW_WAIT);
    let all = drain(&mut events);
    let records = all
        .iter()
        .filter(|e| to_addr(e, announced) && e.dst_port == port.unwrap_or(PORT))
        .copied()
        .collect();
    eprintln!(
        "subflow to {target}: {}\nrecords: {:#?}\nserver's connections: {:?}",
        if reached { "ESTABLISHED" } else { "none" },
        show(&all),
        site.server_connections()
    );
    (
        Seen {
            reached,
            records,
            all,
        },
        image,
    )
}

/// The denial `app` must get for the subflow in `seen`, recorded once with `app` as the
/// source and no allow beside it.
fn denied_once_as_app(seen: &Seen, image: &enforcer::policy::image::MapImage, dst: &str) {
    let app = segment_id(image, "app");
    let dst = segment_id(image, dst);
    let allowed: Vec<&FlowEvent> = seen
        .records
        .iter()
        .filter(|e| e.verdict != Verdict::Deny as u8)
        .collect();
    assert!(
        allowed.is_empty(),
        "the subflow was allowed as someone else's: {:#?}",
        show(&seen.all)
    );
    let denials: Vec<&FlowEvent> = seen
        .records
        .iter()
        .filter(|e| e.verdict == Verdict::Deny as u8)
        .collect();
    assert_eq!(
        denials.len(),
        1,
        "one denial, recorded once: {:#?}",
        show(&seen.all)
    );
    let denial = denials[0];
    assert_eq!(
        (denial.src_segment, denial.dst_segment),
        (app, dst),
        "the denial names app, whose connection the subflow belongs to: {:#?}",
        show(&seen.all)
    );
    assert_eq!(decided_by(image, denial), "default-deny");
    assert_ne!(
        denial.flags & FLOW_FLAG_MPTCP,
        0,
        "recorded as MPTCP: {:#?}",
        show(&seen.all)
    );
    assert_eq!(denial.protocol, 6);
}

/// The attack: `app` may reach `api` only. It connects over MPTCP to `api`, which it
/// controls (or which an attacker there controls), and `api` announces `vault`'s address
/// with `ADD_ADDR`. With `add_addr_accepted` above 0 on `app`'s host, the kernel's path
/// manager joins `vault` from a worker thread; the join's `connect()` was decided against
/// the worker's cgroup, `host`, which the policy lets reach `vault`. `app` then talks to
/// `vault` through its one socket. The enforcer must refuse the subflow, recorded as
/// `app`'s.
#[test]
fn an_announced_address_the_policy_denies_gets_no_subflow() {
    for (tag, addrs) in [("b", V4), ("c", V6)] {
        let (seen, image) = announcement(tag, addrs, addrs.vault, None, true, true);
        assert!(
            !seen.reached,
            "BYPASS: app reached vault ({}) through a subflow its path manager joined",
            endpoint(addrs.vault, PORT)
        );
        denied_once_as_app(&seen, &image, "vault");
    }
}

/// As above with an announced port: `api` announces its own address with
/// [`ADMIN_PORT`] (`MP_JOIN` to a port `app` may not reach; `host` may).
#[test]
fn an_announced_port_the_policy_denies_gets_no_subflow() {
    let (seen, image) = announcement("d", V4, V4.api, Some(ADMIN_PORT), true, true);
    assert!(
        !seen.reached,
        "BYPASS: app reached api's admin port {ADMIN_PORT} through a joined subflow"
    );
    denied_once_as_app(&seen, &image, "api");
}

/// Where `host` may not reach `vault` either, the subflow was already refused, but the
/// refusal named `host` and a kernel worker: the record must name `app`.
#[test]
fn a_refused_subflow_is_recorded_as_the_segments() {
    let (seen, image) = announcement("e", V4, V4.vault, None, true, false);
    assert!(!seen.reached, "app reached vault through a joined subflow");
    denied_once_as_app(&seen, &image, "vault");
}

/// With the kernel's default limits (`add_addr_accepted 0`) the client's path manager
/// ignores announcements: no subflow, nothing to decide.
#[test]
fn with_the_default_limits_an_announcement_opens_nothing() {
    let (seen, _image) = announcement("f", V4, V4.vault, None, false, true);
    assert!(!seen.reached, "a subflow to vault with the default limits");
    assert!(
        seen.records.is_empty(),
        "no flow to vault was even tried: {:#?}",
        show(&seen.all)
    );
}

/// The path manager's own work for `app` is `app`'s: a `subflow` endpoint on the client's
/// host adds a subflow from a second address to `api`, which `app` may reach; it is
/// allowed and recorded as `app`'s (it was refused as `host`'s). The worker binds the
/// subflow's socket to that address before it connects: that is no listener of anyone's,
/// and is not learnt (it was, as `host`'s, and never forgotten: the release hook does not
/// run for the kernel's sockets, so every subflow left an entry in the learnt listeners'
/// LRU, which a segment could fill to push real listeners out). The kernel object is
/// loaded from the client's namespace here, so that bindings there are the ones learnt.
#[test]
fn a_subflow_the_path_manager_adds_is_the_segments_own() {
    let site = Site::new("g");
    site.subflow_endpoint(V4.client2);
    let image = image(&site.policy(false));
    let mut loader = {
        let own = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        enforcer_tests::netns::setns_net(&site.client.open()).expect("into the client's netns");
        let loader = loaded_with(&image);
        enforcer_tests::netns::setns_net(&own).expect("back to the test's netns");
        loader
    };
    let mut events = loader.take_events().expect("events");
    loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");
    let _server = site.serve("0.0.0.0", 10_000);
    let (_client, first) = site.connect("mptcp", V4.api, PORT, 4000);
    assert_eq!(first, "ok api");
    let from = endpoint(V4.client2, 0);
    let from = from.trim_end_matches(":0").to_owned() + ":";
    let since = Instant::now();
    let joined = loop {
        let joined = site
            .server_connections()
            .iter()
            .any(|(l, p)| *l == endpoint(V4.api, PORT) && p.starts_with(&from));
        if joined || since.elapsed() > SUBFLOW_WAIT {
            break joined;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let all = drain(&mut events);
    eprintln!("records: {:#?}", show(&all));
    assert!(
        joined,
        "the second subflow (from {}) to api, which app may reach, was not let through",
        V4.client2
    );
    let app = segment_id(&image, "app");
    let to_api: Vec<&FlowEvent> = all.iter().filter(|e| to_addr(e, V4.api)).collect();
    assert!(
        to_api
            .iter()
            .all(|e| e.src_segment == app && e.verdict == Verdict::Allow as u8),
        "every flow to api is app's, allowed: {:#?}",
        show(&all)
    );
    assert_eq!(
        to_api.len(),
        2,
        "the connect and the subflow: {:#?}",
        show(&all)
    );
    let learnt = loader
        .map_fill()
        .expect("map fill")
        .into_iter()
        .find(|fill| fill.map == "learnt_listeners")
        .expect("learnt listeners")
        .entries;
    assert_eq!(
        learnt, 0,
        "the path manager's binding of a subflow was learnt"
    );
}

/// A socket of `app` handed over `SCM_RIGHTS` to a process of another cgroup (here one
/// of no segment: `host`, which may reach `vault`) and connected there to `vault`: the
/// connection would be `app`'s (the process can hand the connected socket back), so it
/// is held to `app`'s rules too, over TCP and MPTCP.
#[test]
fn a_segments_socket_connected_elsewhere_is_held_to_the_segments_rules() {
    let site = Site::new("h");
    let image = image(&site.policy(true));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");
    let _server = site.serve("0.0.0.0", 12_000);
    let procs = site.other.procs_file();
    let procs = procs.to_str().expect("utf-8");
    let app = segment_id(&image, "app");
    for kind in ["tcp", "mptcp"] {
        let said = script(&[
            "pass-and-connect",
            kind,
            procs,
            &V4.vault.to_string(),
            &PORT.to_string(),
        ])
        .netns(&site.client)
        .cgroup(&site.app)
        .run();
        let all = drain(&mut events);
        eprintln!("{kind}: {said}records: {:#?}", show(&all));
        assert!(
            !said.starts_with("ok"),
            "BYPASS: app's {kind} socket, connected by a process of another cgroup, reached \
             vault: {said}"
        );
        let seen = Seen {
            reached: false,
            records: all
                .iter()
                .filter(|e| to_addr(e, V4.vault) && e.hook == Hook::SkbEgress as u8)
                .copied()
                .collect(),
            all: all.clone(),
        };
        let denials = seen
            .records
            .iter()
            .filter(|e| e.verdict == Verdict::Deny as u8)
            .count();
        assert_eq!(denials, 1, "one denial as app: {:#?}", show(&all));
        assert!(
            seen.records.iter().all(|e| e.src_segment == app),
            "{:#?}",
            show(&all)
        );
    }

    // Handed to a worker of its own segment (a child cgroup of app's) and connected to
    // api, which app may reach: one decision, at the connect, recorded once.
    let worker = site.app.child("worker.scope");
    let procs = worker.procs_file();
    let said = script(&[
        "pass-and-connect",
        "tcp",
        procs.to_str().expect("utf-8"),
        &V4.api.to_string(),
        &PORT.to_string(),
    ])
    .netns(&site.client)
    .cgroup(&site.app)
    .run();
    let all = drain(&mut events);
    assert!(said.starts_with("ok api"), "{said}");
    let to_api: Vec<&FlowEvent> = all.iter().filter(|e| to_addr(e, V4.api)).collect();
    assert_eq!(to_api.len(), 1, "{:#?}", show(&all));
    assert_eq!(to_api[0].hook, Hook::Connect4 as u8);
    assert_eq!(to_api[0].src_segment, app);
}

/// Inbound: `api`'s host connects to `app`'s MPTCP server (allowed) and its path manager
/// adds a subflow from `vault`'s address (an `MP_JOIN` from a host the policy denies).
/// The join is a new inbound flow to `app`'s socket: refused at the per-socket layer.
#[test]
fn a_join_from_a_denied_host_is_refused_at_the_segments_socket() {
    let site = Site::new("i");
    // Here the server's namespace is the remote side: it adds a subflow from vault.
    site.server.ip(&[
        "mptcp",
        "endpoint",
        "add",
        &V4.vault.to_string(),
        "dev",
        &site.server_if,
        "subflow",
    ]);
    site.client.ip(&[
        "mptcp",
        "limits",
        "set",
        "subflows",
        "4",
        "add_addr_accepted",
        "4",
    ]);
    let policy = format!(
        "{}\n[[allow]]\nid = \"api-to-app\"\nfrom = [\"api\"]\nto = [\"app\"]\nports = [\"{PORT}/tcp\"]\n",
        site.policy(false)
    );
    let image = image(&policy);
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader
        .attach_cgroup(site.parent.path())
        .expect("attach cgroup");
    let _app_server = script(&["serve", "0.0.0.0", &PORT.to_string(), "10000", "app"])
        .netns(&site.client)
        .cgroup(&site.app)
        .serve();
    let (_remote, mut lines) = script(&[
        "connect",
        "mptcp",
        &V4.client.to_string(),
        &PORT.to_string(),
        "4000",
    ])
    .netns(&site.server)
    .start();
    assert_eq!(first_line(&mut lines), "ok app");
    std::thread::sleep(SUBFLOW_WAIT);
    let joined = run(
        "ip",
        &[
            "netns",
            "exec",
            site.client.name(),
            "ss",
            "-tnH",
            "state",
            "established",
        ],
    );
    let all = drain(&mut events);
    eprintln!("app's host: {joined}records: {:#?}", show(&all));
    assert!(
        !joined.contains(&format!("{}:", V4.vault)),
        "BYPASS: vault joined app's connection"
    );
    let vault = segment_id(&image, "vault");
    assert!(
        all.iter().any(|e| e.hook == Hook::SkbIngress as u8
            && e.verdict == Verdict::Deny as u8
            && e.src_segment == vault),
        "the join from vault is refused and recorded: {:#?}",
        show(&all)
    );
}

// =======================================================================================
// C. Bindings the kernel makes for an MPTCP socket.
// =======================================================================================

/// An MPTCP socket binds through its first subflow, a socket of the kernel's: the
/// binding is learnt from the subflow, while the release hook runs for the MPTCP socket.
/// A compromised `gateway` binds `inventory`'s port on 127.0.0.1 over MPTCP and exits:
/// its binding must go with it, or `orders`' connects to 127.0.0.1, which reach
/// `inventory`'s server on `0.0.0.0`, are decided as connects to `gateway` and refused
/// (and recorded so). Loopback of this host, where bindings are learnt.
#[test]
fn an_mptcp_listeners_binding_goes_with_it() {
    const SERVICE_PORT: u16 = 17_080;
    let parent = mp_cgroup("l");
    let inventory = parent.child("inventory.service");
    let gateway = parent.child("gateway.service");
    let orders = parent.child("orders.service");
    let image = image(&orders_to_inventory(
        &inventory,
        &gateway,
        &orders,
        SERVICE_PORT,
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    {
        let _ghost = script(&["serve", "127.0.0.1", &SERVICE_PORT.to_string(), "100", "gw"])
            .cgroup(&gateway)
            .serve();
    }
    let _rightful = Spawn::tcp_server(SocketAddr::from(([0, 0, 0, 0], SERVICE_PORT)))
        .cgroup(&inventory)
        .serve();
    let outcome = Spawn::tcp_client(SocketAddr::from(([127, 0, 0, 1], SERVICE_PORT)))
        .cgroup(&orders)
        .run();
    let all = drain(&mut events);
    eprintln!("records: {:#?}", show(&all));
    assert_eq!(
        outcome,
        Outcome::Ok,
        "orders' connect to inventory was decided against gateway's MPTCP binding, gone"
    );
    let orders_id = segment_id(&image, "orders");
    let inventory_id = segment_id(&image, "inventory");
    assert!(
        all.iter()
            .filter(|e| e.src_segment == orders_id && e.hook == Hook::Connect4 as u8)
            .all(|e| e.dst_segment == inventory_id),
        "{:#?}",
        show(&all)
    );
}
