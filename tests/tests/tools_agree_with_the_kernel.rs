//! The tools agree with the kernel: for random policies and random outbound flows, every
//! form of a local address included, what `explain`, `simulate` and both reference
//! evaluators say about a `connect()` is what the kernel did with it, sampled through
//! real sockets.
//!
//! Each policy is a small one from the differential generator
//! (`enforcer_tests::differential::spec`), with two or three of its segments given real
//! cgroups (children of one test cgroup, the cgroup the hooks are attached to), and in
//! about half the policies the veth peer's addresses (as a /32 and a /128, or a wider
//! prefix) in one segment's `cidrs`, so that a remote destination is not always `world`.
//! A process in one of those cgroups, in a child of one (which inherits the segment),
//! in an unlisted child (`host`), or in a listed-path cgroup the policy left out,
//! `connect()`s over TCP to one of: `127.0.0.1`, `::1`, `0.0.0.0`, `::`,
//! `::ffff:127.0.0.1`, `::ffff:0.0.0.0`, the host end of a veth (IPv4, IPv6, IPv4-mapped),
//! an address of an AnyIP `local` route on loopback (IPv4, IPv6, IPv4-mapped), and the
//! veth's peer in its network namespace (IPv4, IPv6, IPv4-mapped); on ports drawn from
//! the policy's listener, rule and failsafe ports and their neighbours. Nothing listens
//! on any of them (ports this host listens on are left out), so an allowed connect is
//! refused by the peer or the local stack, a denied one fails with EPERM.
//!
//! Each flow is decided five ways and every answer is held against the kernel's, which
//! is the `connect()`'s outcome (EPERM or not) and the one record the hook wrote
//! (verdict, source and destination segment, rule or reason; also its hook, addresses,
//! port, cgroup, generation and "this host" flag), with the de-duplication window off:
//! 1. `reference::decide_outbound`, written from policies/README.md and
//!    docs/datapath.md over the generator's plain data; it is told the host's addresses
//!    this test made (the veth's host end, the AnyIP prefixes);
//! 2. `enforcer::policy::explain::explain`, the destination marked by `LocalAddresses`
//!    built from the host's addresses as `explain --on-this-host` reads them;
//! 3. `enforcer::policy::reference::evaluate`, the same endpoints;
//! 4. `simulate`: the record, enriched as the agent does (`Enricher`, with the
//!    generation's names), replayed by `Simulator` under the same compiled policy with no
//!    local addresses given: it must change nothing (the record's "Localhost" boundary
//!    says the destination was this host).
//!
//! Reproduce: the seed is printed at the start and with a failure;
//! `ENFORCER_TOOLS_SEED=<seed>` replays a run, `ENFORCER_TOOLS_POLICY=<n>` only its
//! policy `n`, `ENFORCER_TOOLS_POLICIES` and `ENFORCER_TOOLS_FLOWS` change how many
//! policies and flows per policy (defaults 16 and 96), `ENFORCER_TOOLS_BUDGET_SECS` the
//! time bound (default 600 s). The files of a policy with divergences are written under
//! `target/<profile>/tools-agree/`. `ENFORCER_TOOLS_OPEN_GAPS=1` also draws the directed
//! broadcast address of the veth's network, where the tools are known to disagree with
//! the kernel (docs/threat-model.md, "One truth for every tool": open), so the run fails.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    env, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use enforcer::{
    agent::{enrich::Enricher, policy::source_sha256},
    audit::replay::Simulator,
    loader::Loader,
    policy::{
        explain::{LocalAddresses, explain},
        lookup::ImageIndex,
        model::Proto as PolicyProto,
        names::GenerationNames,
        reference::{Endpoint, evaluate},
    },
};
use enforcer_common::event::{FLOW_FLAG_ON_THIS_HOST, FlowEvent, Hook, Reason, Verdict, family};
use enforcer_tests::{
    cgroup::TestCgroup,
    cmd::run,
    differential::{
        Rng, compile, keep_policy,
        net::{Addr, Net},
        policy_seed,
        reference::{self, Decision, HostState},
        spec::{Proto, Size, Spec},
    },
    events::drain,
    netns::{Netns, Route, Veth},
    probe::{Outcome, Spawn},
    profile_dir, require_root,
};

/// Policies a run generates.
const DEFAULT_POLICIES: u64 = 16;
/// Flows per policy.
const DEFAULT_FLOWS: usize = 96;
/// The time bound of a run: far above what it takes (about 20 s here), so only a hang or
/// a machine many times slower reaches it.
const DEFAULT_BUDGET: Duration = Duration::from_secs(600);
/// How long a client waits for its connection: only a refusal (EPERM, at once) matters,
/// and nothing answers at the subnet-router anycast address (the kernel sends no reset
/// from there), so a connect there that is not refused would wait the whole time.
const CONNECT_WAIT_MS: u64 = 300;
/// Divergences shown in a failure message.
const SHOWN: usize = 12;

/// This process's AnyIP prefixes (an IPv4 /29 in 198.19.252.0/24 and an IPv6 /64, both
/// chosen by pid) and one address in each.
fn anyip_prefixes() -> [(Net, IpAddr); 2] {
    let pid = std::process::id();
    let v4 = Ipv4Addr::new(198, 19, 252, u8::try_from(pid % 32 * 8).expect("below 256"));
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0xfe, (pid % 65_536) as u16, 0, 0, 0, 0);
    [
        (
            Net::new(Addr::from_ip(v4.into()), 29),
            IpAddr::from(Ipv4Addr::from_bits(v4.to_bits() + 3)),
        ),
        (
            Net::new(Addr::from_ip(v6.into()), 64),
            IpAddr::from(Ipv6Addr::from_bits(v6.to_bits() + 3)),
        ),
    ]
}

/// Where a destination is, known by construction (no tool is asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// This host: the kernel records it as such.
    ThisHost,
    /// The veth's peer.
    Remote,
    /// A broadcast or multicast address: a TCP connect there fails after the hook
    /// decided it (ENETUNREACH), so nothing is sent.
    Group,
}

/// One destination form.
struct Destination {
    /// What it is, for the failure table.
    label: &'static str,
    addr: IpAddr,
    place: Place,
}

/// The host's own addresses this test made (besides loopback): the veth's host end, its
/// link-local address and its subnet-router anycast address, and one address of each
/// AnyIP prefix.
struct HostAddresses {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    link_local: Ipv6Addr,
    anycast: Ipv6Addr,
    anyip: [(Net, IpAddr); 2],
    /// The broadcast address of the veth's IPv4 network (a /30).
    broadcast: Ipv4Addr,
}

impl HostAddresses {
    /// What the reference is told about the host: the addresses above, and the veth's
    /// IPv4 network's broadcast address.
    fn state(&self) -> HostState {
        HostState {
            nets: self.nets(),
            broadcasts: vec![Addr::from_ip(self.broadcast.into())],
        }
    }

    fn nets(&self) -> Vec<Net> {
        [
            IpAddr::from(self.v4),
            self.v6.into(),
            self.link_local.into(),
            self.anycast.into(),
        ]
        .into_iter()
        .map(|addr| {
            let addr = Addr::from_ip(addr);
            Net::new(addr, addr.family.width())
        })
        .chain(self.anyip.iter().map(|(net, _)| *net))
        .collect()
    }
}

fn destinations(veth: &Veth, host: &HostAddresses, open_gaps: bool) -> Vec<Destination> {
    let mapped = |v4: Ipv4Addr| IpAddr::V6(v4.to_ipv6_mapped());
    let IpAddr::V4(anyip_v4) = host.anyip[0].1 else {
        unreachable!("the first AnyIP prefix is IPv4")
    };
    let at = |place| move |label, addr| Destination { label, addr, place };
    let (local, remote, group) = (at(Place::ThisHost), at(Place::Remote), at(Place::Group));
    let other_loopback = Ipv4Addr::new(127, 3, 2, 1);
    let broadcast = Ipv4Addr::BROADCAST;
    let all_hosts = Ipv4Addr::new(224, 0, 0, 1);
    let mut destinations = vec![
        local("loopback-v4", Ipv4Addr::LOCALHOST.into()),
        local("loopback-v6", Ipv6Addr::LOCALHOST.into()),
        local("loopback-mapped", mapped(Ipv4Addr::LOCALHOST)),
        local("loopback-127/8", other_loopback.into()),
        local("loopback-127/8-mapped", mapped(other_loopback)),
        local("unspecified-v4", Ipv4Addr::UNSPECIFIED.into()),
        local("unspecified-v6", Ipv6Addr::UNSPECIFIED.into()),
        local("unspecified-mapped", mapped(Ipv4Addr::UNSPECIFIED)),
        local("host-if-v4", host.v4.into()),
        local("host-if-v6", host.v6.into()),
        local("host-if-mapped", mapped(host.v4)),
        local("host-if-link-local", host.link_local.into()),
        local("host-if-anycast", host.anycast.into()),
        local("anyip-v4", host.anyip[0].1),
        local("anyip-v6", host.anyip[1].1),
        local("anyip-mapped", mapped(anyip_v4)),
        remote("peer-v4", veth.peer_v4.into()),
        remote("peer-v6", veth.peer_v6.into()),
        remote("peer-mapped", mapped(veth.peer_v4)),
        group("broadcast", broadcast.into()),
        group("broadcast-mapped", mapped(broadcast)),
        group("multicast-v4", all_hosts.into()),
        group("multicast-mapped", mapped(all_hosts)),
        group(
            "multicast-v6",
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).into(),
        ),
    ];
    if open_gaps {
        // docs/threat-model.md, "One truth for every tool", open: the kernel decides a
        // directed broadcast address of the host's networks as `broadcast`, explain and
        // simulate by its CIDR.
        destinations.push(group("host-if-broadcast", host.broadcast.into()));
        destinations.push(group("host-if-broadcast-mapped", mapped(host.broadcast)));
    }
    destinations
}

/// The link-local address of interface `name` (waits up to 3 s for the kernel to make it).
fn link_local(name: &str) -> Ipv6Addr {
    let since = Instant::now();
    loop {
        let shown = run(
            "ip",
            &["-6", "-o", "addr", "show", "dev", name, "scope", "link"],
        );
        let found = shown.split_whitespace().find_map(|word| {
            word.split_once('/')
                .and_then(|(addr, _)| addr.parse::<Ipv6Addr>().ok())
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            since.elapsed() < Duration::from_secs(3),
            "{name} has no link-local address: {shown:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cgroup the flows come from.
struct Source {
    label: &'static str,
    cgroup: TestCgroup,
    /// Relative to the cgroup2 root, as policies name it.
    path: String,
}

impl Source {
    fn new(label: &'static str, cgroup: TestCgroup) -> Self {
        let path = cgroup.relative_path();
        Self {
            label,
            cgroup,
            path,
        }
    }
}

/// What one side said about a flow, in the words records use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    src: String,
    dst: String,
    verdict: String,
    /// The rule's id, else the reason.
    by: String,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {} by {}",
            self.verdict, self.src, self.dst, self.by
        )
    }
}

impl Answer {
    fn of_reference(decision: &Decision) -> Self {
        Self {
            src: decision.src.clone(),
            dst: decision.dst.clone(),
            verdict: decision.verdict.to_owned(),
            by: decision
                .rule
                .clone()
                .unwrap_or_else(|| decision.reason.to_owned()),
        }
    }
}

/// What the kernel did with one `connect()`.
struct Seen {
    outcome: Outcome,
    /// The record's answer, if it wrote one.
    record: Option<Answer>,
    /// Its records, as they came.
    events: Vec<FlowEvent>,
    /// What is wrong with the records themselves (their count, hook, addresses, ...).
    problems: Vec<String>,
}

impl Seen {
    fn describe(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::Ok => "connected".to_owned(),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::Error { errno, .. } if *errno == libc::EPERM => "EPERM".to_owned(),
            Outcome::Error { errno, .. } if *errno == libc::ECONNREFUSED => "refused".to_owned(),
            Outcome::Error { errno, message } => format!("errno {errno} {message}"),
        };
        match &self.record {
            Some(answer) => format!("{outcome}; record {answer}"),
            None => format!("{outcome}; {} record(s)", self.events.len()),
        }
    }
}

/// Whether an answer agrees with what the kernel did: denied exactly when the
/// `connect()` failed with EPERM, and the record's very words; with no record, an allow
/// under `audit = "deny"` (which records only denials and audit-mode passes).
fn agrees(seen: &Seen, answer: &Answer, denials_only: bool) -> Result<(), String> {
    let denied = answer.verdict == "deny";
    if seen.outcome.is_eperm() != denied {
        return Err(format!(
            "says {answer}, but the connect {}",
            if seen.outcome.is_eperm() {
                "failed with EPERM"
            } else {
                "was not refused"
            }
        ));
    }
    match &seen.record {
        Some(record) if record == answer => Ok(()),
        Some(record) => Err(format!("says {answer}, the record {record}")),
        None if denials_only && answer.verdict == "allow" => Ok(()),
        None => Err(format!("says {answer}, and the kernel recorded nothing")),
    }
}

fn word<T: Copy>(code: u8, from: fn(u8) -> Option<T>, word: fn(T) -> &'static str) -> String {
    from(code).map_or_else(|| format!("<code {code}>"), |v| word(v).to_owned())
}

/// What the kernel did, from the client's outcome and the records drained after it.
fn seen(
    names: &GenerationNames,
    source: &Source,
    to: &Destination,
    port: u16,
    outcome: Outcome,
    events: Vec<FlowEvent>,
) -> Seen {
    let mut problems = Vec::new();
    if events.len() > 1 {
        problems.push(format!("{} records for one connect", events.len()));
    }
    let record = events.first().map(|event| {
        let reason = Reason::from_code(event.reason);
        let by = match reason {
            Some(reason) => names
                .rule_name(reason, event.rule_id)
                .unwrap_or(reason.word())
                .to_owned(),
            None => format!("<reason {}>", event.reason),
        };
        let (hook, want_family) = if to.addr.is_ipv4() {
            (Hook::Connect4, family::INET)
        } else {
            (Hook::Connect6, family::INET6)
        };
        let recorded_dst = if event.family == family::INET {
            let [a, b, c, d, ..] = event.dst_addr;
            IpAddr::from([a, b, c, d])
        } else {
            IpAddr::from(event.dst_addr)
        };
        let to_this_host = event.flags & FLOW_FLAG_ON_THIS_HOST != 0;
        let fields = [
            (
                "hook",
                word(event.hook, Hook::from_code, Hook::program_name),
                hook.program_name().to_owned(),
            ),
            ("family", event.family.to_string(), want_family.to_string()),
            ("protocol", event.protocol.to_string(), "6".to_owned()),
            ("destination", recorded_dst.to_string(), to.addr.to_string()),
            ("port", event.dst_port.to_string(), port.to_string()),
            (
                "cgroup id",
                event.cgroup_id.to_string(),
                source.cgroup.id().to_string(),
            ),
            (
                "generation",
                event.generation.to_string(),
                names.generation.to_string(),
            ),
            (
                "to this host",
                to_this_host.to_string(),
                (to.place == Place::ThisHost).to_string(),
            ),
        ];
        for (field, got, want) in fields {
            if got != want {
                problems.push(format!("the record's {field} is {got}, want {want}"));
            }
        }
        Answer {
            src: names.segment(event.src_segment),
            dst: names.segment(event.dst_segment),
            verdict: word(event.verdict, Verdict::from_code, Verdict::word),
            by,
        }
    });
    Seen {
        outcome,
        record,
        events,
        problems,
    }
}

/// One flow on which some side disagreed with the kernel.
struct Divergence {
    policy: u64,
    flow: usize,
    from: String,
    to: String,
    port: u16,
    kernel: String,
    reference: String,
    explain: String,
    evaluate: String,
    simulate: String,
    problems: Vec<String>,
}

/// The divergences as a table, one row per flow and its problems under it.
fn table(divergences: &[Divergence]) -> String {
    let header = [
        "policy",
        "flow",
        "from",
        "to",
        "port",
        "kernel",
        "reference",
        "explain",
        "evaluate",
        "simulate",
    ];
    let rows: Vec<[String; 10]> = divergences
        .iter()
        .map(|d| {
            [
                d.policy.to_string(),
                d.flow.to_string(),
                d.from.clone(),
                d.to.clone(),
                d.port.to_string(),
                d.kernel.clone(),
                d.reference.clone(),
                d.explain.clone(),
                d.evaluate.clone(),
                d.simulate.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(&header.map(str::to_owned));
    for (row, divergence) in rows.iter().zip(divergences) {
        out.push('\n');
        out.push_str(&line(row));
        for problem in &divergence.problems {
            out.push_str("\n    ! ");
            out.push_str(problem);
        }
    }
    out
}

fn env_number(name: &str) -> Option<u64> {
    env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// TCP ports something on this host listens on (in this network namespace): left out,
/// so that no flow reaches another program's server.
fn listening_tcp_ports() -> HashSet<u16> {
    let mut ports = HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(file).unwrap_or_else(|err| panic!("read {file}: {err}"));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `st` 0A is LISTEN; the local address ends in `:PORT` in hex.
            if fields.get(3) == Some(&"0A")
                && let Some(port) = fields
                    .get(1)
                    .and_then(|local| local.rsplit(':').next())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

/// The ports a policy's flows go to: its listener, rule and failsafe ports, the ends of
/// their ranges and their neighbours, and two others; none this host listens on.
fn port_pool(spec: &Spec, rng: &mut Rng, listening: &HashSet<u16>) -> Vec<u16> {
    let mut candidates: Vec<u32> = Vec::new();
    let specs = spec
        .segments
        .iter()
        .flat_map(|s| s.ports.iter())
        .chain(spec.rules.iter().flat_map(|r| r.ports.iter()))
        .chain(spec.failsafes.iter().map(|f| &f.port));
    for ports in specs {
        let (first, last) = (u32::from(ports.first), u32::from(ports.last));
        candidates.extend([first, last, first.saturating_sub(1), last + 1]);
        if last > first + 1 {
            candidates.push(first + 1 + rng.u32() % (last - first - 1));
        }
    }
    candidates.extend([u32::from(rng.port()), u32::from(rng.port())]);
    let mut pool: Vec<u16> = Vec::new();
    for port in candidates {
        if let Ok(port) = u16::try_from(port)
            && port != 0
            && !listening.contains(&port)
            && !pool.contains(&port)
        {
            pool.push(port);
        }
    }
    assert!(!pool.is_empty(), "no port to try");
    pool
}

/// How often each outcome came up, to show the run was not vacuous.
#[derive(Debug, Default)]
struct Tally {
    flows: usize,
    eperm: usize,
    passed: usize,
    /// Passed connects that got no answer, by destination.
    timeouts: BTreeMap<&'static str, usize>,
    audit: usize,
    allowed_by_rule: usize,
    denied_by_rule: usize,
    default_denied: usize,
    unrecorded_allows: usize,
    to_this_host: usize,
    to_a_declared_listener: usize,
    to_a_remote_segment: usize,
    to_world: usize,
    to_a_group: usize,
    from_host: usize,
    from_a_child_cgroup: usize,
    records_replayed: u64,
}

impl Tally {
    fn count(&mut self, source: &Source, to: &Destination, want: &Decision, seen: &Seen) {
        self.flows += 1;
        if seen.outcome.is_eperm() {
            self.eperm += 1;
        } else {
            self.passed += 1;
        }
        if seen.outcome == Outcome::Timeout {
            *self.timeouts.entry(to.label).or_default() += 1;
        }
        match (want.verdict, want.reason) {
            ("audit", _) => self.audit += 1,
            ("allow", _) => self.allowed_by_rule += 1,
            (_, "rule") => self.denied_by_rule += 1,
            _ => self.default_denied += 1,
        }
        if seen.record.is_none() && want.verdict == "allow" {
            self.unrecorded_allows += 1;
        }
        match to.place {
            Place::ThisHost => {
                self.to_this_host += 1;
                if want.dst != "host" {
                    self.to_a_declared_listener += 1;
                }
            }
            Place::Group => self.to_a_group += 1,
            Place::Remote if want.dst == "world" => self.to_world += 1,
            Place::Remote => self.to_a_remote_segment += 1,
        }
        if want.src == "host" {
            self.from_host += 1;
        }
        if source.label.contains('/') {
            self.from_a_child_cgroup += 1;
        }
    }
}

/// Adds the peer's addresses (or prefixes around them) to one segment, unless a segment
/// lists that prefix already.
fn add_peer_prefixes(spec: &mut Spec, rng: &mut Rng, veth: &Veth) {
    let v4_len = [32, 32, 30, 24][rng.below(4)];
    let v6_len = [128, 128, 64][rng.below(3)];
    let nets = [
        Net::new(Addr::from_ip(veth.peer_v4.into()), v4_len),
        Net::new(Addr::from_ip(veth.peer_v6.into()), v6_len),
    ];
    let owner = rng.below(spec.segments.len());
    for net in nets {
        let listed = spec
            .segments
            .iter()
            .any(|s| s.cidrs.iter().any(|c| c.key() == net.key()));
        if !listed {
            spec.segments[owner].cidrs.push(net);
        }
    }
}

#[test]
fn explain_simulate_and_the_references_decide_outbound_flows_as_the_kernel_does() {
    require_root();
    let seed = env_number("ENFORCER_TOOLS_SEED").unwrap_or_else(|| fastrand::u64(..));
    let only = env_number("ENFORCER_TOOLS_POLICY");
    let policies = env_number("ENFORCER_TOOLS_POLICIES").unwrap_or(DEFAULT_POLICIES);
    let flows_per_policy = env_number("ENFORCER_TOOLS_FLOWS").map_or(DEFAULT_FLOWS, |n| n as usize);
    let budget =
        env_number("ENFORCER_TOOLS_BUDGET_SECS").map_or(DEFAULT_BUDGET, Duration::from_secs);
    let open_gaps = env_number("ENFORCER_TOOLS_OPEN_GAPS").is_some_and(|n| n != 0);
    let reproduce = format!(
        "ENFORCER_TOOLS_SEED={seed} cargo test -p enforcer-tests --test tools_agree_with_the_kernel -- --test-threads=1"
    );
    eprintln!("tools agree: seed {seed} (reproduce with {reproduce})");

    // A remote peer; the host's own addresses on its end of the veth (forwarding there
    // makes its /64's subnet-router anycast address this host's too); an AnyIP prefix of
    // each family.
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    run(
        "sysctl",
        &[
            "-q",
            "-w",
            &format!("net.ipv6.conf.{}.forwarding=1", veth.host_if()),
        ],
    );
    let host = HostAddresses {
        v4: veth.host_v4,
        v6: veth.host_v6,
        link_local: link_local(veth.host_if()),
        anycast: Ipv6Addr::from_bits(veth.host_v6.to_bits() & !0xffff_ffff_ffff_ffff),
        anyip: anyip_prefixes(),
        broadcast: Ipv4Addr::from_bits(veth.host_v4.to_bits() | 0b11),
    };
    let _routes = host
        .anyip
        .iter()
        .map(|(net, _)| Route::local(&format!("{}/{}", net.addr, net.len)))
        .collect::<Vec<_>>();
    let destinations = destinations(&veth, &host, open_gaps);
    let host_state = host.state();

    // The segments' cgroups, one that inherits from the first, and one in no segment;
    // all made before the first policy, so that none is unclassified.
    let parent = TestCgroup::new();
    let listed = [
        Source::new("a", parent.child("a.service")),
        Source::new("b", parent.child("b.service")),
        Source::new("c", parent.child("c.service")),
    ];
    let worker = Source::new("a/worker", listed[0].cgroup.child("worker.scope"));
    let loose = Source::new("loose", parent.child("loose.service"));
    let sources: Vec<&Source> = listed.iter().chain([&worker, &loose]).collect();

    let mut loader = Loader::load().unwrap_or_else(|err| panic!("loading failed: {err}"));
    loader
        .set_dedup_window(Duration::ZERO)
        .expect("turn de-duplication off");
    let mut reader = loader.take_events().expect("the event ring");
    let here = enforcer::host::interfaces::addresses().expect("this host's addresses");
    for addr in [host.link_local, host.anycast] {
        assert!(
            here.local.contains(&addr.into()),
            "{addr} is not among {here:?}"
        );
    }
    assert!(
        here.broadcast.contains(&host.broadcast.into()),
        "{} is not among {here:?}",
        host.broadcast
    );
    for (net, at) in &host.anyip {
        assert!(
            here.prefixes
                .iter()
                .any(|p| p.to_string() == format!("{}/{}", net.addr.to_ip(), net.len)),
            "the AnyIP route {} for {at} is not among this host's local routes: {here:?}",
            net.render()
        );
    }
    loader
        .set_local_addresses(&here)
        .expect("local addresses into the kernel");
    // `explain --on-this-host`: the host's addresses and local routes.
    let local = LocalAddresses::new(
        here.local
            .iter()
            .copied()
            .map(ipnet::IpNet::from)
            .chain(here.prefixes.iter().copied())
            .collect(),
    );
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let mut enricher = Enricher::new("tools-agree".to_owned(), root.clone(), Vec::new());
    let mut attached = None;

    let started = Instant::now();
    let mut tally = Tally::default();
    let mut divergences: Vec<Divergence> = Vec::new();
    let mut divergent_policies: BTreeSet<u64> = BTreeSet::new();
    let indices = match only {
        Some(index) => index..index + 1,
        None => 0..policies,
    };
    for index in indices {
        let mut rng = Rng::new(policy_seed(seed, index));
        let mut spec = Spec::random(&mut rng, Size::Small);
        let wanted = (2 + rng.below(2)).min(spec.segments.len());
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < wanted {
            let pick = rng.below(spec.segments.len());
            if !chosen.contains(&pick) {
                chosen.push(pick);
            }
        }
        for (source, &segment) in listed.iter().zip(&chosen) {
            spec.segments[segment].cgroups = vec![source.path.clone()];
        }
        if rng.chance(50) {
            add_peer_prefixes(&mut spec, &mut rng, &veth);
        }
        let files = spec.render(&mut rng);
        let compiled = compile(&files).unwrap_or_else(|errors| {
            let dir = keep_policy("tools-agree", seed, index, &files);
            panic!(
                "seed {seed}, policy {index}: the generated policy was rejected ({dir}):\n{errors}"
            )
        });
        let applied = loader
            .apply(&compiled.image, &root)
            .unwrap_or_else(|err| panic!("seed {seed}, policy {index}: apply failed: {err}"));
        for source in &sources {
            assert!(
                !applied.cgroups.missing.contains(&source.path),
                "{} is missing: {:?}",
                source.path,
                applied.cgroups.missing
            );
        }
        if attached.is_none() {
            attached = Some(loader.attach_cgroup(parent.path()).expect("attach"));
        }
        let stale = drain(&mut reader);
        assert!(stale.is_empty(), "records before any connect: {stale:?}");
        let names = GenerationNames::of(
            &compiled.image,
            applied.generation,
            &source_sha256(&compiled.sources),
        );
        enricher.learn(names.clone());
        let index_image = ImageIndex::new(&compiled.image);
        let mut simulator =
            Simulator::new(ImageIndex::new(&compiled.image), LocalAddresses::default());
        let pool = port_pool(&spec, &mut rng, &listening_tcp_ports());
        let offset = rng.below(destinations.len());

        for flow in 0..flows_per_policy {
            assert!(
                started.elapsed() < budget,
                "seed {seed}: the time bound of {budget:?} ran out at policy {index}; \
                 reproduce with {reproduce}"
            );
            let to = &destinations[(offset + flow) % destinations.len()];
            let source = *rng.pick(&sources);
            let port = *rng.pick(&pool);
            let at = SocketAddr::new(to.addr, port);
            let outcome = Spawn::tcp_client_within(at, CONNECT_WAIT_MS)
                .cgroup(&source.cgroup)
                .run();
            let seen = seen(&names, source, to, port, outcome, drain(&mut reader));

            let (want, this_host) = reference::decide_outbound(
                &spec,
                &source.path,
                Addr::from_ip(to.addr),
                &host_state,
                Proto::Tcp,
                port,
            );
            let from = Endpoint::Cgroup(source.path.clone());
            let to_endpoint = local.mark(Endpoint::Addr(to.addr));
            let explained = explain(
                &index_image,
                (&from, &source.path),
                (&to_endpoint, &to.addr.to_string()),
                PolicyProto::Tcp,
                port,
            );
            let explained = Answer {
                src: explained.from.segment,
                dst: explained.to.segment,
                verdict: explained.verdict.to_owned(),
                by: explained
                    .rule
                    .unwrap_or_else(|| explained.reason.to_owned()),
            };
            let evaluated = evaluate(
                &compiled.policy,
                &from,
                &to_endpoint,
                PolicyProto::Tcp,
                port,
            );
            let evaluated = Answer {
                src: evaluated.from_segment,
                dst: evaluated.to_segment,
                verdict: evaluated.verdict.word().to_owned(),
                by: evaluated
                    .rule
                    .unwrap_or_else(|| evaluated.reason.word().to_owned()),
            };
            let referenced = Answer::of_reference(&want);

            let mut problems = seen.problems.clone();
            if this_host != (to.place == Place::ThisHost) {
                problems.push(format!(
                    "reference: takes {} for {}this host",
                    to.addr,
                    if this_host { "" } else { "not " }
                ));
            }
            for (tool, answer) in [
                ("reference", &referenced),
                ("explain", &explained),
                ("evaluate", &evaluated),
            ] {
                if let Err(problem) = agrees(&seen, answer, spec.audit_denials_only) {
                    problems.push(format!("{tool}: {problem}"));
                }
            }
            let simulated = match seen.events.first() {
                None => "no record".to_owned(),
                Some(event) => {
                    let record = enricher.record(event);
                    let before = simulator.replay.changes.clone();
                    let (replayed, skipped) = (simulator.replay.replayed, simulator.replay.skipped);
                    simulator.replay(&record);
                    if simulator.replay.skipped != skipped || simulator.replay.replayed == replayed
                    {
                        problems.push(format!("simulate: skipped the record {record:?}"));
                        "skipped".to_owned()
                    } else if simulator.replay.changes == before {
                        "unchanged".to_owned()
                    } else {
                        let change = simulator
                            .replay
                            .changes
                            .iter()
                            .find(|(change, count)| before.get(*change) != Some(count))
                            .map(|(change, _)| change.clone())
                            .expect("a change");
                        let said = format!(
                            "{} {} -> {} by {}",
                            change.becomes, change.from, change.to, change.becomes_by
                        );
                        problems.push(format!(
                            "simulate: the replay changes the recorded {} by {} into {said}",
                            change.was, change.was_by
                        ));
                        format!("changes to {said}")
                    }
                }
            };
            tally.count(source, to, &want, &seen);
            if !problems.is_empty() {
                if divergent_policies.insert(index) {
                    keep_policy("tools-agree", seed, index, &files);
                }
                divergences.push(Divergence {
                    policy: index,
                    flow,
                    from: format!("{} ({})", source.label, want.src),
                    to: format!("{} {}", to.label, to.addr),
                    port,
                    kernel: seen.describe(),
                    reference: referenced.to_string(),
                    explain: explained.to_string(),
                    evaluate: evaluated.to_string(),
                    simulate: simulated,
                    problems,
                });
            }
        }
        tally.records_replayed += simulator.replay.replayed;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "tools agree: seed {seed}: {} flows over {} policies in {elapsed:.1?}; {tally:?}",
        tally.flows,
        only.map_or(policies, |_| 1),
    );
    if !divergences.is_empty() {
        let shown = &divergences[..divergences.len().min(SHOWN)];
        let indices = divergent_policies
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let dir = profile_dir().join("tools-agree");
        panic!(
            "seed {seed}: {} of {} flows diverge, in policies {indices} (their files are in {}/seed-{seed}-policy-<n>/; \
             replay one with ENFORCER_TOOLS_POLICY=<n> {reproduce}); the first {}:\n\n{}",
            divergences.len(),
            tally.flows,
            dir.display(),
            shown.len(),
            table(shown)
        );
    }
    if only.is_none() && policies >= DEFAULT_POLICIES {
        // A run that never reached an outcome would prove nothing about it.
        for (what, count) in [
            ("EPERM", tally.eperm),
            ("connect that passed", tally.passed),
            ("default denial", tally.default_denied),
            ("rule denial", tally.denied_by_rule),
            ("rule allow", tally.allowed_by_rule),
            ("audit-mode pass", tally.audit),
            ("flow to broadcast or multicast", tally.to_a_group),
            ("flow to this host", tally.to_this_host),
            (
                "flow to this host's declared listener",
                tally.to_a_declared_listener,
            ),
            ("flow to a remote segment", tally.to_a_remote_segment),
            ("flow to world", tally.to_world),
            ("flow from host", tally.from_host),
            ("flow from a child cgroup", tally.from_a_child_cgroup),
        ] {
            assert!(count > 0, "seed {seed}: no {what} in the run: {tally:?}");
        }
    }
}
