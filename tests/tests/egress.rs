//! Outbound enforcement at the cgroup connect and sendmsg hooks: a process in a segment's
//! cgroup reaches what the policy allows, gets EPERM for what it denies, over TCP and UDP,
//! IPv4 and IPv6; child cgroups inherit; audit mode lets denials through. Every decision
//! is recorded with the rule that made it and counted.

use std::net::{IpAddr, SocketAddr};

use enforcer_common::event::{FlowEvent, Hook, Verdict, family};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{decided_by, drain, rule_counters, segment_id},
    netns::{Netns, Veth},
    policy::loaded_with,
    probe::{Outcome, Server, Spawn},
};

fn policy(api_cgroup: &str, veth: &Veth, api_mode: &str) -> enforcer::policy::image::MapImage {
    policy_with(api_cgroup, veth, api_mode, "all")
}

fn policy_with(
    api_cgroup: &str,
    veth: &Veth,
    api_mode: &str,
    audit: &str,
) -> enforcer::policy::image::MapImage {
    let text = format!(
        r#"
[defaults]
audit = "{audit}"

[segments.api]
cgroups = ["{api_cgroup}"]
mode = "{api_mode}"

[segments.db]
cidrs = ["{}/32", "{}/128"]

[[allow]]
id = "api-to-db"
from = ["api"]
to = ["db"]
ports = ["5432/tcp", "5353/udp"]

[[deny]]
id = "api-not-db-admin"
from = ["api"]
to = ["db"]
ports = ["5434/tcp"]
"#,
        veth.peer_v4, veth.peer_v6
    );
    enforcer_tests::policy::image(&text)
}

/// Echo servers on the test host: TCP 5432 (allowed) and 5433 (denied), UDP 5353
/// (allowed) and 5354 (denied), on both address families.
/// The servers stop when the returned guards drop.
fn remote(netns: &Netns, veth: &Veth) -> Vec<Server> {
    let mut servers = Vec::new();
    for ip in [IpAddr::from(veth.peer_v4), IpAddr::from(veth.peer_v6)] {
        for port in [5432, 5433] {
            servers.push(
                Spawn::tcp_server(SocketAddr::new(ip, port))
                    .netns(netns)
                    .serve(),
            );
        }
        for port in [5353, 5354] {
            servers.push(
                Spawn::udp_server(SocketAddr::new(ip, port))
                    .netns(netns)
                    .serve(),
            );
        }
    }
    servers
}

fn tcp(cgroup: &TestCgroup, ip: IpAddr, port: u16) -> Outcome {
    Spawn::tcp_client(SocketAddr::new(ip, port))
        .cgroup(cgroup)
        .run()
}

fn udp(cgroup: &TestCgroup, ip: IpAddr, port: u16) -> Outcome {
    Spawn::udp_client(SocketAddr::new(ip, port))
        .cgroup(cgroup)
        .run()
}

#[test]
fn segment_egress_is_allowed_or_refused_with_eperm() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _remote = remote(&netns, &veth);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let worker = api.child("worker.scope");
    let unsegmented = parent.child("other.service");
    let mut loader = loaded_with(&policy(&api.relative_path(), &veth, "enforce"));
    loader.attach_cgroup(parent.path()).expect("attach");

    for ip in [IpAddr::from(veth.peer_v4), IpAddr::from(veth.peer_v6)] {
        for cgroup in [&api, &worker] {
            assert_eq!(tcp(cgroup, ip, 5432), Outcome::Ok, "allowed TCP to {ip}");
            assert_eq!(udp(cgroup, ip, 5353), Outcome::Ok, "allowed UDP to {ip}");
            let denied = tcp(cgroup, ip, 5433);
            assert!(
                denied.is_eperm(),
                "TCP to {ip}:5433 should get EPERM, got {denied:?}"
            );
            let denied = udp(cgroup, ip, 5354);
            assert!(
                denied.is_eperm(),
                "UDP to {ip}:5354 should get EPERM, got {denied:?}"
            );
        }
        // A process in no segment is `host`: no rule lets it reach db.
        let denied = tcp(&unsegmented, ip, 5432);
        assert!(
            denied.is_eperm(),
            "host to {ip}:5432 should get EPERM, got {denied:?}"
        );
    }
    // IPv4-mapped IPv6 destinations are decided as IPv4: the peer's mapped address is db,
    // so what the rules allow to db passes (a wrong class, `world`, would be refused) and
    // what they do not is refused.
    let mapped: IpAddr = veth.peer_v4.to_ipv6_mapped().into();
    assert_eq!(
        tcp(&api, mapped, 5432),
        Outcome::Ok,
        "allowed TCP to {mapped}"
    );
    assert_eq!(
        udp(&api, mapped, 5353),
        Outcome::Ok,
        "allowed UDP to {mapped}"
    );
    assert!(tcp(&api, mapped, 5433).is_eperm());
    assert!(udp(&api, mapped, 5354).is_eperm());
}

#[test]
fn audit_mode_lets_denials_through_and_a_new_generation_takes_over() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _remote = remote(&netns, &veth);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let mut loader = loaded_with(&policy(&api.relative_path(), &veth, "enforce"));
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    loader.attach_cgroup(parent.path()).expect("attach");
    let ip = IpAddr::from(veth.peer_v4);
    assert!(tcp(&api, ip, 5433).is_eperm());

    let applied = loader
        .apply(&policy(&api.relative_path(), &veth, "audit"), &root)
        .expect("apply audit");
    assert_eq!(applied.generation, 2);
    assert_eq!(
        tcp(&api, ip, 5433),
        Outcome::Ok,
        "audit mode lets the would-be denial through"
    );
    assert_eq!(udp(&api, ip, 5354), Outcome::Ok);

    let applied = loader
        .apply(&policy(&api.relative_path(), &veth, "enforce"), &root)
        .expect("apply enforce");
    assert_eq!(applied.generation, 3);
    assert!(tcp(&api, ip, 5433).is_eperm(), "enforcing again");
    assert_eq!(tcp(&api, ip, 5432), Outcome::Ok);
}

/// The entries the active generation's rule map holds.
fn rule_entries(loader: &mut enforcer::loader::Loader) -> u32 {
    let fill = loader.map_fill().expect("map fill");
    fill.iter()
        .find(|map| map.map == "rules")
        .expect("a rules map")
        .entries
}

#[test]
fn a_rule_dropped_from_the_policy_stops_deciding_in_every_later_generation() {
    // Generations alternate between two sets of maps: generation 3 reuses generation 1's,
    // which must have been emptied after the flip to 2, not merely written over.
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _remote = remote(&netns, &veth);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let with_5433 = enforcer_tests::policy::image(&format!(
        r#"
[segments.api]
cgroups = ["{}"]

[segments.db]
cidrs = ["{}/32"]

[[allow]]
id = "api-to-db-5433"
from = ["api"]
to = ["db"]
ports = ["5433/tcp"]
"#,
        api.relative_path(),
        veth.peer_v4
    ));
    let without = policy(&api.relative_path(), &veth, "enforce");
    let mut loader = loaded_with(&with_5433);
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    loader.attach_cgroup(parent.path()).expect("attach");
    let ip = IpAddr::from(veth.peer_v4);
    assert_eq!(tcp(&api, ip, 5433), Outcome::Ok, "generation 1 allows 5433");

    for generation in [2, 3] {
        let applied = loader.apply(&without, &root).expect("apply");
        assert_eq!(applied.generation, generation);
        assert!(
            tcp(&api, ip, 5433).is_eperm(),
            "generation {generation} no longer allows 5433"
        );
        assert_eq!(tcp(&api, ip, 5432), Outcome::Ok);
        assert_eq!(
            rule_entries(&mut loader),
            u32::try_from(without.rules.len()).expect("small"),
            "generation {generation}'s rule map holds its own entries only"
        );
    }
}

/// The single event of `hook` to `port` among `events`.
fn the_event(events: &[FlowEvent], hook: Hook, port: u16) -> FlowEvent {
    let matching: Vec<_> = events
        .iter()
        .filter(|e| e.hook == hook as u8 && e.dst_port == port)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one {hook:?} event to port {port}, got {matching:#?}"
    );
    *matching[0]
}

#[test]
fn every_egress_decision_is_recorded_with_the_rule_that_made_it() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _remote = remote(&netns, &veth);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let image = policy(&api.relative_path(), &veth, "enforce");
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let v4 = IpAddr::from(veth.peer_v4);
    let v6 = IpAddr::from(veth.peer_v6);

    assert_eq!(tcp(&api, v4, 5432), Outcome::Ok);
    assert_eq!(udp(&api, v4, 5353), Outcome::Ok);
    assert!(tcp(&api, v4, 5433).is_eperm());
    assert!(tcp(&api, v4, 5434).is_eperm());
    assert!(tcp(&api, v6, 5434).is_eperm());
    let recorded = drain(&mut events);

    let allowed = the_event(&recorded, Hook::Connect4, 5432);
    assert_eq!(allowed.verdict, Verdict::Allow as u8);
    assert_eq!(decided_by(&image, &allowed), "api-to-db");
    assert_eq!(allowed.src_segment, segment_id(&image, "api"));
    assert_eq!(allowed.dst_segment, segment_id(&image, "db"));
    assert_eq!(allowed.cgroup_id, api.id());
    assert_eq!(allowed.family, family::INET);
    assert_eq!(allowed.protocol, 6);
    assert_eq!(allowed.dst_addr[..4], veth.peer_v4.octets());
    assert_eq!(allowed.generation, 1);
    assert!(allowed.comm.starts_with(b"enforcer-probe"), "{allowed:?}");
    assert_ne!(allowed.pid_tgid >> 32, 0);
    assert_ne!(allowed.timestamp_ns, 0);

    let sent = the_event(&recorded, Hook::Sendmsg4, 5353);
    assert_eq!(
        (
            sent.verdict,
            decided_by(&image, &sent).as_str(),
            sent.protocol
        ),
        (Verdict::Allow as u8, "api-to-db", 17)
    );
    let unlisted = the_event(&recorded, Hook::Connect4, 5433);
    assert_eq!(
        (unlisted.verdict, decided_by(&image, &unlisted).as_str()),
        (Verdict::Deny as u8, "default-deny")
    );
    assert_eq!(unlisted.rule_id, 0);
    let denied = the_event(&recorded, Hook::Connect4, 5434);
    assert_eq!(
        (denied.verdict, decided_by(&image, &denied).as_str()),
        (Verdict::Deny as u8, "api-not-db-admin")
    );
    let denied6 = the_event(&recorded, Hook::Connect6, 5434);
    assert_eq!(denied6.family, family::INET6);
    assert_eq!(denied6.dst_addr, veth.peer_v6.octets());
    assert_eq!(decided_by(&image, &denied6), "api-not-db-admin");

    let allow_rule = rule_counters(&mut loader, &image, "api-to-db");
    assert_eq!((allow_rule.allow, allow_rule.deny), (2, 0));
    let deny_rule = rule_counters(&mut loader, &image, "api-not-db-admin");
    assert_eq!((deny_rule.allow, deny_rule.deny), (0, 2));

    // An IPv4-mapped destination is db's address, so db's rule decides it and the record
    // names db, not `world` and `default-deny`.
    let mapped = veth.peer_v4.to_ipv6_mapped();
    assert!(tcp(&api, IpAddr::from(mapped), 5434).is_eperm());
    let recorded = drain(&mut events);
    let denied_mapped = the_event(&recorded, Hook::Connect6, 5434);
    assert_eq!(
        (
            denied_mapped.verdict,
            decided_by(&image, &denied_mapped).as_str()
        ),
        (Verdict::Deny as u8, "api-not-db-admin")
    );
    assert_eq!(denied_mapped.dst_segment, segment_id(&image, "db"));
    assert_eq!(
        denied_mapped.dst_addr,
        mapped.octets(),
        "the record names the address connected to"
    );

    // Audit mode: the would-be denial passes and is recorded as `audit`, by the same rule.
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    let audit_image = policy(&api.relative_path(), &veth, "audit");
    loader.apply(&audit_image, &root).expect("apply audit");
    assert_eq!(tcp(&api, v4, 5433), Outcome::Ok);
    let recorded = drain(&mut events);
    let audited = the_event(&recorded, Hook::Connect4, 5433);
    assert_eq!(
        (
            audited.verdict,
            decided_by(&audit_image, &audited).as_str(),
            audited.generation
        ),
        (Verdict::Audit as u8, "default-deny", 2)
    );
}

#[test]
fn audit_level_deny_records_only_denials_but_counts_everything() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let _remote = remote(&netns, &veth);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let image = policy_with(&api.relative_path(), &veth, "enforce", "deny");
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");
    let v4 = IpAddr::from(veth.peer_v4);

    assert_eq!(tcp(&api, v4, 5432), Outcome::Ok);
    assert!(tcp(&api, v4, 5434).is_eperm());
    let recorded = drain(&mut events);
    assert_eq!(recorded.len(), 1, "only the denial: {recorded:#?}");
    assert_eq!(decided_by(&image, &recorded[0]), "api-not-db-admin");
    assert_eq!(rule_counters(&mut loader, &image, "api-to-db").allow, 1);
}
