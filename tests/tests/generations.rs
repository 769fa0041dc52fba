//! Atomic generations under load: while clients keep connecting, the agent flips between
//! two policies that both allow their flows (with different rule ids, so every map
//! changes); no attempt fails, inbound at XDP or outbound at connect. And an apply hands
//! back the retired generation's rule counts and zeroes its slot's counters.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::XdpMode,
};
use enforcer::loader::{Loader, PinLayout};
use enforcer_common::maps::{RULE_COUNTERS, RuleCounters};
use enforcer_tests::{
    cgroup::TestCgroup,
    netns::{Netns, Veth},
    packet::{SYN, XDP_DROP, tcp4},
    pins::PinDir,
    policy::{image, loaded_with},
    probe::{Outcome, Spawn},
    require_root,
};

/// Connections each client makes.
const ATTEMPTS: u32 = 3000;
/// Upper bounds on the flipping loop.
const MAX_FLIPS: u32 = 400;
const MAX_TIME: Duration = Duration::from_secs(90);
/// Flips that must have happened while the clients ran for the test to mean anything.
const MIN_FLIPS: u32 = 5;

fn policy(variant: u8, api: &TestCgroup, veth: &Veth) -> enforcer::policy::image::MapImage {
    // The variants declare an extra rule first or last, so the rule both allow the
    // clients' flows by has a different id in each.
    let extra = r#"
[[allow]]
id = "extra"
from = ["peer"]
to = ["web"]
ports = ["18099/tcp"]
"#;
    let (first, last) = if variant == 0 {
        (extra, "")
    } else {
        ("", extra)
    };
    image(&format!(
        r#"
[segments.api]
cgroups = ["{api}"]

[segments.peer]
cidrs = ["{peer4}/32"]

[segments.web]
ports = ["18080/tcp"]
{first}
[[allow]]
id = "api-to-peer"
from = ["api"]
to = ["peer"]
ports = ["5432/tcp"]

[[allow]]
id = "peer-to-web"
from = ["peer"]
to = ["web"]
ports = ["18080/tcp"]
{last}"#,
        api = api.relative_path(),
        peer4 = veth.peer_v4,
    ))
}

#[test]
fn flows_allowed_in_both_generations_never_fail_across_flips() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let parent = TestCgroup::new();
    let api = parent.child("api.service");
    let images = [policy(0, &api, &veth), policy(1, &api, &veth)];
    let mut loader = loaded_with(&images[0]);
    loader.attach_cgroup(parent.path()).expect("attach cgroup");
    loader
        .attach_xdp(veth.host_if(), veth.host_ifindex(), XdpMode::Skb)
        .expect("attach XDP");
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    let db = Spawn::tcp_server(SocketAddr::new(IpAddr::from(veth.peer_v4), 5432))
        .netns(&netns)
        .serve();
    let web = Spawn::tcp_server(SocketAddr::new(IpAddr::from(veth.host_v4), 18080)).serve();

    let mut outbound = Spawn::tcp_client_repeated(db.addr, ATTEMPTS)
        .cgroup(&api)
        .run_in_background();
    let mut inbound = Spawn::tcp_client_repeated(web.addr, ATTEMPTS)
        .netns(&netns)
        .run_in_background();
    let start = Instant::now();
    let mut flips = 0;
    while !(outbound.finished() && inbound.finished())
        && flips < MAX_FLIPS
        && start.elapsed() < MAX_TIME
    {
        flips += 1;
        let applied = loader
            .apply(&images[flips as usize % 2], &root)
            .expect("apply");
        assert_eq!(applied.generation, flips + 1);
    }

    eprintln!(
        "{flips} flips in {:?} while {ATTEMPTS} + {ATTEMPTS} connections ran",
        start.elapsed()
    );
    assert_eq!(outbound.outcome(), Outcome::Ok, "outbound, {flips} flips");
    assert_eq!(inbound.outcome(), Outcome::Ok, "inbound, {flips} flips");
    assert!(
        flips >= MIN_FLIPS,
        "only {flips} flips happened while the clients ran"
    );
}

/// The deny counts of rule id 1 in each generation slot's pinned `RULE_COUNTERS` map,
/// summed over CPUs.
fn rule_one_denied_per_slot(pins: &PinLayout) -> Vec<u64> {
    RULE_COUNTERS
        .iter()
        .map(|name| {
            let data = MapData::from_pin(pins.map(name))
                .unwrap_or_else(|err| panic!("open the pinned {name}: {err}"));
            let counters: PerCpuArray<MapData, RuleCounters> =
                PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
            counters
                .get(&1, 0)
                .expect("rule id 1's counters")
                .iter()
                .map(|per_cpu| per_cpu.deny)
                .sum()
        })
        .collect()
}

#[test]
fn an_apply_zeroes_the_retired_generations_rule_counters() {
    require_root();
    let dir = PinDir::new();
    let pins = PinLayout::new(dir.path());
    let mut loader = Loader::load_pinned(&pins).expect("load with pinned maps");
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let policy = image(
        r#"
[segments.clients]
cidrs = ["198.18.7.0/24"]

[segments.web]
ports = ["8080/tcp"]

[[deny]]
id = "clients-not-web"
from = ["clients"]
to = ["web"]
ports = ["8080/tcp"]
"#,
    );
    loader.apply(&policy, &root).expect("apply generation 1");
    let syn = tcp4(Ipv4Addr::new(198, 18, 7, 5), 8080, SYN);
    let (verdict, _) = loader.test_run_xdp(&syn, 5).expect("test run");
    // XDP counts what it drops; what it passes the socket layer decides again.
    assert_eq!(verdict, XDP_DROP, "the rule denies the SYN");
    assert_eq!(loader.counters().expect("counters").rules[0].deny, 5);
    let before = rule_one_denied_per_slot(&pins);
    let first_slot = before
        .iter()
        .position(|&denied| denied == 5)
        .unwrap_or_else(|| panic!("generation 1's slot counts 5: {before:?}"));

    let applied = loader.apply(&policy, &root).expect("apply generation 2");
    let (retired, counts) = applied.replaced.expect("generation 1 was replaced");
    assert_eq!((retired, counts[0].deny), (1, 5), "its final counts");
    assert_eq!(
        rule_one_denied_per_slot(&pins)[first_slot],
        0,
        "the retired slot's counters are zeroed"
    );
    assert_eq!(loader.counters().expect("counters").rules[0].deny, 0);
}
