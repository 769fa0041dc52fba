//! Real clients against real servers, as an operator runs them: nginx, PostgreSQL and Redis
//! from Debian's packages, each inside its segment's cgroup, asked by curl, psql and
//! redis-cli running as `nobody` inside a client segment's cgroup, under the real agent.
//! Every address that names this host is tried: loopback of both families, an address of
//! one of its interfaces of both families, and the unspecified addresses `0.0.0.0` and
//! `::` (a connect there lands on this host). An allowed client gets the server's real
//! answer; a denied one fails at `connect()` with EPERM. The audit store holds the client's
//! runs, naming the server's segment, never `world` or `host`, and the rule or
//! `default-deny`, every connect counted: an allowed run is one record, a refused run's
//! retry of its connect is folded into the run's fold and stored with its count.
//!
//! The expected verdicts are [`MATRIX`], worked out by hand from [`policy`]; nothing here
//! asks the policy code what it would decide.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::AgentHost,
    cgroup::TestCgroup,
    netns::{Netns, Veth},
    services::{Account, Answer, RealServer, require_programs},
};
use serde_json::Value;

/// nginx's port (segment `web`, declared in the policy).
const WEB_PORT: u16 = 18_480;
/// PostgreSQL's port (segment `db`, declared in the policy).
const DB_PORT: u16 = 15_532;
/// Redis's port (segment `cache`, not declared: the segment serves it because Redis, in
/// `cache`'s cgroup, bound it).
const CACHE_PORT: u16 = 16_479;

/// What a client of a segment gets from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The server's answer; the audit record names this rule.
    Allowed(&'static str),
    /// EPERM at `connect()`; the audit record says `default-deny`.
    Denied,
}

use Expect::{Allowed, Denied};

/// Who reaches what, read off [`policy`] by hand, the same at every address of this host:
///
/// | client     | web (nginx, 18480)       | db (PostgreSQL, 15532)  | cache (Redis, 16479)       |
/// |------------|--------------------------|-------------------------|----------------------------|
/// | `frontend` | allowed, frontend-to-web | **denied**              | allowed, frontend-to-cache |
/// | `backend`  | **denied**               | allowed, backend-to-db  | allowed, backend-to-cache  |
/// | `reports`  | **denied**               | allowed, reports-to-db  | **denied**                 |
///
/// Every denial is a default denial although the policy opens each of those ports towards
/// `world` (`*-to-partner-*`) and towards `host` (`anyone-to-host-services`): a local
/// server is its segment's, whatever address names it, and `cache` is Redis's segment
/// without declaring its port.
const MATRIX: [(&str, &str, Expect); 9] = [
    ("frontend", "web", Allowed("frontend-to-web")),
    ("frontend", "db", Denied),
    ("frontend", "cache", Allowed("frontend-to-cache")),
    ("backend", "web", Denied),
    ("backend", "db", Allowed("backend-to-db")),
    ("backend", "cache", Allowed("backend-to-cache")),
    ("reports", "web", Denied),
    ("reports", "db", Allowed("reports-to-db")),
    ("reports", "cache", Denied),
];

/// The client segments.
const CLIENTS: [&str; 3] = ["frontend", "backend", "reports"];

/// The cgroups of the three client segments and the three server segments, under the
/// parent the agent attaches to.
struct Site {
    frontend: TestCgroup,
    backend: TestCgroup,
    reports: TestCgroup,
    web: TestCgroup,
    db: TestCgroup,
    cache: TestCgroup,
    parent: TestCgroup,
}

impl Site {
    fn new() -> Self {
        let parent = TestCgroup::new();
        Self {
            frontend: parent.child("rc-frontend.service"),
            backend: parent.child("rc-backend.service"),
            reports: parent.child("rc-reports.service"),
            web: parent.child("rc-web.service"),
            db: parent.child("rc-db.service"),
            cache: parent.child("rc-cache.service"),
            parent,
        }
    }

    fn client(&self, segment: &str) -> &TestCgroup {
        match segment {
            "frontend" => &self.frontend,
            "backend" => &self.backend,
            "reports" => &self.reports,
            _ => panic!("no client segment {segment}"),
        }
    }
}

/// The policy under test. `web` and `db` declare their ports; `cache` does not.
fn policy(site: &Site) -> String {
    format!(
        r#"
[segments.frontend]
cgroups = ["{frontend}"]

[segments.backend]
cgroups = ["{backend}"]

[segments.reports]
cgroups = ["{reports}"]

[segments.web]
cgroups = ["{web}"]
ports = ["{WEB_PORT}/tcp"]

[segments.db]
cgroups = ["{db}"]
ports = ["{DB_PORT}/tcp"]

[segments.cache]
cgroups = ["{cache}"]

[[allow]]
id = "frontend-to-web"
from = ["frontend"]
to = ["web"]
ports = ["{WEB_PORT}/tcp"]

[[allow]]
id = "frontend-to-cache"
from = ["frontend"]
to = ["cache"]
ports = ["{CACHE_PORT}/tcp"]

[[allow]]
id = "backend-to-db"
from = ["backend"]
to = ["db"]
ports = ["{DB_PORT}/tcp"]

[[allow]]
id = "backend-to-cache"
from = ["backend"]
to = ["cache"]
ports = ["{CACHE_PORT}/tcp"]

[[allow]]
id = "reports-to-db"
from = ["reports"]
to = ["db"]
ports = ["{DB_PORT}/tcp"]

# Traps: were an address of this host taken for `world` or `host`, these would let the
# denied pairs through.
[[allow]]
id = "frontend-to-partner-db"
from = ["frontend"]
to = ["world"]
ports = ["{DB_PORT}/tcp"]

[[allow]]
id = "backend-to-partner-web"
from = ["backend"]
to = ["world"]
ports = ["{WEB_PORT}/tcp"]

[[allow]]
id = "reports-to-partner-apis"
from = ["reports"]
to = ["world"]
ports = ["{WEB_PORT}/tcp", "{CACHE_PORT}/tcp"]

[[allow]]
id = "anyone-to-host-services"
from = ["*"]
to = ["host"]
ports = ["{WEB_PORT}/tcp", "{DB_PORT}/tcp", "{CACHE_PORT}/tcp"]
"#,
        frontend = site.frontend.relative_path(),
        backend = site.backend.relative_path(),
        reports = site.reports.relative_path(),
        web = site.web.relative_path(),
        db = site.db.relative_path(),
        cache = site.cache.relative_path(),
    )
}

/// Why `answer` is not what `expect` says a user sees from `server`, if it is not.
fn mismatch(server: &RealServer, expect: Expect, answer: &Answer) -> Option<String> {
    let seen = format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        answer.status,
        answer.stdout,
        answer.stderr.trim()
    );
    match expect {
        Allowed(_) if answer.succeeded() && answer.stdout == server.answer => None,
        Allowed(_) => Some(format!("expected the answer {:?}; {seen}", server.answer)),
        Denied
            if answer.status.is_some_and(|status| !status.success())
                && answer.stdout.is_empty()
                && answer.stderr.contains("Operation not permitted") =>
        {
            None
        }
        Denied => Some(format!(
            "expected a failed connect (Operation not permitted); {seen}"
        )),
    }
}

/// The flow records of the audit store.
fn flows(agent: &AgentHost) -> Vec<Value> {
    agent
        .audit_records::<Value>()
        .into_iter()
        .filter(|r| r["unmapped"]["kind"] == "flow")
        .collect()
}

/// The attempts a flow record stands for: its `count` (1 without one).
fn attempts(record: &Value) -> usize {
    record["count"]
        .as_u64()
        .map_or(1, |count| usize::try_from(count).expect("few"))
}

fn is_client_flow(record: &Value, verdict: &str) -> bool {
    let flow = &record["unmapped"]["flow"];
    flow["verdict"] == verdict && CLIENTS.iter().any(|s| flow["src_segment"] == *s)
}

#[test]
fn real_clients_reach_exactly_the_servers_the_policy_allows_at_every_address_of_this_host() {
    enforcer_tests::require_root();
    require_programs();
    // The veth gives this host an interface address of each family besides loopback.
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let site = Site::new();
    let mut agent = AgentHost::new(&site.parent, &policy(&site), "127.0.0.1:19671", "");
    agent.start();

    let listen = [
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(Ipv6Addr::LOCALHOST),
        IpAddr::from(veth.host_v4),
        IpAddr::from(veth.host_v6),
    ];
    let started = Instant::now();
    let servers: BTreeMap<&str, RealServer> = BTreeMap::from([
        ("web", RealServer::nginx(&site.web, &listen, WEB_PORT)),
        ("db", RealServer::postgres(&site.db, &listen, DB_PORT)),
        ("cache", RealServer::redis(&site.cache, &listen, CACHE_PORT)),
    ]);
    eprintln!("the three servers listened after {:?}", started.elapsed());

    let destinations = [
        IpAddr::from(Ipv4Addr::LOCALHOST),
        IpAddr::from(Ipv6Addr::LOCALHOST),
        IpAddr::from(veth.host_v4),
        IpAddr::from(veth.host_v6),
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        IpAddr::from(Ipv6Addr::UNSPECIFIED),
    ];
    let nobody = Account::nobody();
    let started = Instant::now();
    let mut wrong = Vec::new();
    for to in destinations {
        for (client, segment, expect) in MATRIX {
            let server = &servers[segment];
            let answer = server.ask(to, site.client(client), &nobody);
            if let Some(why) = mismatch(server, expect, &answer) {
                wrong.push(format!(
                    "{client} -> {segment} ({} to {to} port {}): {why}",
                    server.kind.client_name(),
                    server.port
                ));
            }
        }
    }
    eprintln!(
        "{} client runs took {:?}",
        destinations.len() * MATRIX.len(),
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} client runs saw what the policy does not say:\n{}",
        wrong.len(),
        destinations.len() * MATRIX.len(),
        wrong.join("\n")
    );

    // The audit store: every client connect, in records naming the server's segment and,
    // for an allowed run, its rule. redis-cli calls `connect()` twice before it gives up;
    // the second refusal is the same fold within the window: its first attempt is a record
    // at once, the retry is counted into the fold and stored when the fold goes quiet, so
    // the counts of a run's records are its connects. Nothing else from the clients: no
    // record of `world` or `host`.
    let runs = |denied: bool| {
        MATRIX
            .iter()
            .filter(|(_, _, expect)| (*expect == Denied) == denied)
            .count()
            * destinations.len()
    };
    let (denied_runs, allowed_runs) = (runs(true), runs(false));
    let refused_connects: usize = MATRIX
        .iter()
        .filter(|(_, _, expect)| *expect == Denied)
        .map(|(_, segment, _)| servers[segment].kind.connects_when_refused())
        .sum::<usize>()
        * destinations.len();
    // Attempts: the records' counts.
    let count = |records: &[Value], verdict: &str| {
        records
            .iter()
            .filter(|r| is_client_flow(r, verdict))
            .map(attempts)
            .sum::<usize>()
    };
    let waited = Instant::now();
    let mut records = flows(&agent);
    while count(&records, "deny") < refused_connects || count(&records, "allow") < allowed_runs {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "after 10 s the audit store counts {} of {refused_connects} refused and {} of \
             {allowed_runs} allowed connects of the clients: {records:#?}",
            count(&records, "deny"),
            count(&records, "allow"),
        );
        std::thread::sleep(Duration::from_millis(100));
        records = flows(&agent);
    }
    // Records written after the expected ones would be extra: give them a moment.
    std::thread::sleep(Duration::from_millis(500));
    let records = flows(&agent);

    let mut wrong = Vec::new();
    for to in destinations {
        for (client, segment, expect) in MATRIX {
            let server = &servers[segment];
            let (verdict, rule, connects) = match expect {
                Allowed(rule) => ("allow", rule, 1),
                Denied => ("deny", "default-deny", server.kind.connects_when_refused()),
            };
            let found: Vec<&Value> = records
                .iter()
                .filter(|r| {
                    r["unmapped"]["flow"]["src_segment"] == client
                        && r["dst_endpoint"]["ip"] == to.to_string()
                        && r["dst_endpoint"]["port"] == server.port
                })
                .collect();
            let right = |r: &&Value| {
                let flow = &r["unmapped"]["flow"];
                flow["verdict"] == verdict
                    && flow["dst_segment"] == segment
                    && r["firewall_rule"]["uid"] == rule
                    && r["actor"]["process"]["name"] == server.kind.client_name()
            };
            let counted: usize = found.iter().map(|r| attempts(r)).sum();
            if counted != connects || !found.iter().all(right) {
                wrong.push(format!(
                    "{client} -> {segment} at {to} port {}: expected {connects} {verdict} \
                     connects counted in records naming `{segment}` and `{rule}`, found \
                     {counted}: {found:#?}",
                    server.port,
                ));
            }
        }
    }
    assert!(
        wrong.is_empty() && count(&records, "deny") == refused_connects,
        "the audit store disagrees with what the clients saw ({} denied connects counted, \
         {refused_connects} refused):\n{}",
        count(&records, "deny"),
        wrong.join("\n")
    );
    // The servers refused nothing of their own either.
    let other: Vec<&Value> = records
        .iter()
        .filter(|r| r["unmapped"]["flow"]["verdict"] == "deny" && !is_client_flow(r, "deny"))
        .collect();
    assert!(
        other.is_empty(),
        "deny records of no client run: {other:#?}"
    );
    // Every refused connect was counted, and each one beyond a run's first was folded
    // (suppressed as an event of its own), not lost.
    let status = agent.status();
    let default_denials: u64 = status["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter(|r| r["reason"] == "default-deny" && r["verdict"] == "deny")
        .map(|r| r["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(
        default_denials,
        u64::try_from(refused_connects).expect("few"),
        "{status:#}"
    );
    assert_eq!(
        status["events"]["suppressed"],
        refused_connects - denied_runs,
        "{status:#}"
    );
    assert_eq!(status["events"]["lost"], 0, "{status:#}");
    drop(servers);
}
