//! cgroup identity is host state: a cgroup created after a policy was applied (a service
//! started or restarted after the agent) is unclassified, so denied, never given the
//! rights of `host` or of an ancestor, until the table is resolved again; the agent
//! resolves it as soon as the cgroup appears, and again after a restart replaces it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use enforcer_common::event::{Reason, Verdict};
use enforcer_tests::{
    agent::AgentHost,
    cgroup::TestCgroup,
    events::{decided_by, drain},
    netns::{Netns, Veth},
    policy::{ALLOWED_PORT, DENIED_PORT, image},
    probe::{Outcome, Server, Spawn},
};

/// `host` may reach the peer on [`ALLOWED_PORT`]; segment `api` (the cgroup
/// `<parent>/api.service`) only on [`DENIED_PORT`].
fn policy(parent: &TestCgroup, veth: &Veth) -> String {
    format!(
        r#"[segments.api]
cgroups = ["{parent}/api.service"]

[segments.peer]
cidrs = ["{peer}/32"]

[[allow]]
id = "host-to-peer"
from = ["host"]
to = ["peer"]
ports = ["{ALLOWED_PORT}/tcp"]

[[allow]]
id = "api-to-peer"
from = ["api"]
to = ["peer"]
ports = ["{DENIED_PORT}/tcp"]
"#,
        parent = parent.relative_path(),
        peer = veth.peer_v4,
    )
}

fn servers(netns: &Netns, veth: &Veth) -> Vec<Server> {
    [ALLOWED_PORT, DENIED_PORT]
        .into_iter()
        .map(|port| Spawn::tcp_server(veth.peer_addr(port)).netns(netns).serve())
        .collect()
}

fn connect(cgroup: &TestCgroup, to: SocketAddr) -> Outcome {
    Spawn::tcp_client(to).cgroup(cgroup).run()
}

#[test]
fn a_cgroup_created_after_the_apply_is_unclassified_until_resolved() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _servers = servers(&netns, &veth);
    let parent = TestCgroup::new();
    let known = parent.child("known.service");
    let image = image(&policy(&parent, &veth));
    let mut loader = enforcer::loader::Loader::load().expect("load");
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let applied = loader.apply(&image, &root).expect("apply");
    assert_eq!(
        applied.cgroups.missing,
        vec![format!("{}/api.service", parent.relative_path())]
    );
    assert!(
        applied.cgroups.guards.contains(&parent.path().to_owned()),
        "the parent of a listed cgroup is guarded: {:?}",
        applied.cgroups.guards
    );
    loader.attach_cgroup(parent.path()).expect("attach");
    let mut events = loader.take_events().expect("events");

    // Known before the apply, in no segment: host, which may reach the peer.
    assert_eq!(connect(&known, veth.peer_addr(ALLOWED_PORT)), Outcome::Ok);

    // The segment's cgroup appears (the service starts, or restarts with a new id), and
    // so does an unlisted sibling: neither gets host's rights before it is resolved.
    let api = parent.child("api.service");
    let late = parent.child("late.service");
    for cgroup in [&api, &late] {
        let outcome = connect(cgroup, veth.peer_addr(ALLOWED_PORT));
        assert!(outcome.is_eperm(), "unresolved: {outcome:?}");
    }
    let refused = drain(&mut events);
    assert_eq!(refused.len(), 3, "one allowed and two refused: {refused:?}");
    for event in &refused[1..] {
        assert_eq!(Verdict::from_code(event.verdict), Some(Verdict::Deny));
        assert_eq!(Reason::from_code(event.reason), Some(Reason::Unclassified));
        assert_eq!(decided_by(&image, event), "unclassified");
    }

    // Resolved: api is the segment (its own rule, not host's), late is host.
    let table = loader
        .refresh_cgroups(&image.cgroups, &root)
        .expect("refresh");
    assert!(table.missing.is_empty(), "{:?}", table.missing);
    assert_eq!(connect(&api, veth.peer_addr(DENIED_PORT)), Outcome::Ok);
    assert!(connect(&api, veth.peer_addr(ALLOWED_PORT)).is_eperm());
    assert_eq!(connect(&late, veth.peer_addr(ALLOWED_PORT)), Outcome::Ok);
}

#[test]
fn unclassified_allow_lets_an_unresolved_cgroup_through_and_records_it() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _servers = servers(&netns, &veth);
    let parent = TestCgroup::new();
    let image = image(&format!(
        "[defaults]\nunclassified = \"allow\"\n\n{}",
        policy(&parent, &veth)
    ));
    let mut loader = enforcer::loader::Loader::load().expect("load");
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    loader.apply(&image, &root).expect("apply");
    loader.attach_cgroup(parent.path()).expect("attach");
    let mut events = loader.take_events().expect("events");

    // A service (re)started after the apply, not resolved yet: the operator chose to let
    // such flows through, to either port, rather than hold the service back.
    let late = parent.child("api.service");
    for port in [ALLOWED_PORT, DENIED_PORT] {
        assert_eq!(
            connect(&late, veth.peer_addr(port)),
            Outcome::Ok,
            "unresolved, to {port}"
        );
    }
    let passed = drain(&mut events);
    assert_eq!(passed.len(), 2, "{passed:#?}");
    for event in &passed {
        assert_eq!(Verdict::from_code(event.verdict), Some(Verdict::Allow));
        assert_eq!(decided_by(&image, event), "unclassified");
    }
}

/// Tries `to` from `cgroup` until it connects (bounded); returns how long that took.
fn connects_within(cgroup: &TestCgroup, to: SocketAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let outcome = connect(cgroup, to);
        if outcome == Outcome::Ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{to} still refused after {limit:?}: {outcome:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_agent_classifies_a_started_and_a_restarted_service() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _servers = servers(&netns, &veth);
    let parent = TestCgroup::new();
    let mut agent = AgentHost::new(&parent, &policy(&parent, &veth), "127.0.0.1:19633", "");
    let start = agent.start();
    assert!(
        agent
            .log(start)
            .contains("cgroups of the policy not on this host yet"),
        "{}",
        agent.log(start)
    );

    // The service starts after the agent: classified as api without a reload.
    let api = parent.child("api.service");
    connects_within(&api, veth.peer_addr(DENIED_PORT), Duration::from_secs(5));
    assert!(connect(&api, veth.peer_addr(ALLOWED_PORT)).is_eperm());

    // A restart removes the cgroup and creates a new one (a new id) at the same path.
    drop(api);
    let api = parent.child("api.service");
    connects_within(&api, veth.peer_addr(DENIED_PORT), Duration::from_secs(5));
    assert!(connect(&api, veth.peer_addr(ALLOWED_PORT)).is_eperm());

    // An unlisted service started later is host once resolved.
    let other = parent.child("other.service");
    connects_within(&other, veth.peer_addr(ALLOWED_PORT), Duration::from_secs(5));
    assert!(agent.terminate(), "the agent stops cleanly");
}
