//! Atomic generations under load: while clients keep connecting, the agent flips between
//! two policies that both allow their flows (with different rule ids, so every map
//! changes); no attempt fails, inbound at XDP or outbound at connect. A generation's rule
//! counters start from zero, never with the counts of the generation that last used its
//! slot.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use enforcer_tests::{
    cgroup::TestCgroup,
    events::rule_counters,
    netns::{Netns, Veth},
    packet::{SYN, XDP_DROP, tcp4},
    policy::{image, loaded_with},
    probe::{Outcome, Spawn},
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

#[test]
fn a_rule_counts_from_zero_in_every_generation() {
    let image = image(
        r#"
[segments.clients]
cidrs = ["198.18.7.0/24"]

[segments.web]
ports = ["8081/tcp"]

[[deny]]
id = "clients-not-web-admin"
from = ["clients"]
to = ["web"]
ports = ["8081/tcp"]
"#,
    );
    let mut loader = loaded_with(&image);
    let root = enforcer::host::cgroup2_mount().expect("cgroup2");
    let denied = tcp4(std::net::Ipv4Addr::new(198, 18, 7, 5), 8081, SYN);
    let deny = |loader: &mut enforcer::loader::Loader, times: u64| {
        for _ in 0..times {
            let action = loader.test_run_xdp(&denied, 1).expect("test run").0;
            assert_eq!(action, XDP_DROP);
        }
        rule_counters(loader, &image, "clients-not-web-admin").deny
    };
    assert_eq!(deny(&mut loader, 3), 3, "generation 1");
    // Generation 3 reuses generation 1's slot: its counts are its own.
    for generation in [2, 3] {
        let applied = loader.apply(&image, &root).expect("apply");
        assert_eq!(applied.generation, generation);
        assert_eq!(
            deny(&mut loader, 0),
            0,
            "generation {generation} before any flow"
        );
    }
    assert_eq!(deny(&mut loader, 1), 1, "generation 3");
}
