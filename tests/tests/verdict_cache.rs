//! XDP's verdict cache, attacked through `BPF_PROG_TEST_RUN`: a kept decision must never
//! outlive its generation, never answer for another source, family or port, and never
//! change what is recorded. Each test runs on one CPU (the cache is per CPU) and repeats
//! frames, so that the second and later ones are answered from the cache.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{Array, Map, MapData};
use enforcer::loader::Loader;
use enforcer_common::{
    event::{FlowEvent, Reason, Verdict},
    maps::ACTIVE,
};
use enforcer_tests::{
    events::drain,
    packet::{SYN, XDP_DROP, XDP_PASS, tcp4, tcp4_from, tcp6, udp4},
    pins::PinnedHost,
    policy::{image, loaded_with},
};

/// `clients` may reach `web` on 8080/tcp and 5353/udp; 8081/tcp and 5353/tcp are
/// declared, no rule opens them.
const POLICY: &str = r#"
[segments.clients]
cidrs = ["198.18.0.0/17", "2001:db8:7::/64"]

[segments.web]
ports = ["8080/tcp", "8081/tcp", "5353/udp", "5353/tcp"]

[[allow]]
id = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["8080/tcp", "5353/udp"]
"#;

/// [`POLICY`] without its rule: everything to `web` is denied by default.
const NO_RULE: &str = r#"
[segments.clients]
cidrs = ["198.18.0.0/17", "2001:db8:7::/64"]

[segments.web]
ports = ["8080/tcp", "8081/tcp", "5353/udp", "5353/tcp"]
"#;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 5);

/// Runs the rest of the test on CPU 0: the cache is per CPU, and `BPF_PROG_TEST_RUN`
/// runs XDP on the caller's CPU, so every frame meets the same cache.
fn on_one_cpu() {
    // SAFETY: a zeroed `cpu_set_t` is an empty set; CPU_SET and sched_setaffinity get a
    // valid pointer to it and its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "pin the test to CPU 0: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn run(loader: &Loader, frame: &[u8]) -> u32 {
    loader.test_run_xdp(frame, 1).expect("test run").0
}

fn apply(loader: &mut Loader, policy: &str) -> u32 {
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    loader
        .apply(&image(policy), &root)
        .expect("apply")
        .generation
}

#[test]
fn a_kept_decision_ends_with_its_generation_both_ways() {
    on_one_cpu();
    let mut loader = loaded_with(&image(NO_RULE));
    let syn = tcp4(CLIENT, 8080, SYN);
    for attempt in 0..3 {
        assert_eq!(
            run(&loader, &syn),
            XDP_DROP,
            "attempt {attempt} under no rule"
        );
    }
    assert_eq!(apply(&mut loader, POLICY), 2);
    for attempt in 0..3 {
        assert_eq!(
            run(&loader, &syn),
            XDP_PASS,
            "attempt {attempt} once allowed"
        );
    }
    // Generation 3 lives in generation 1's slot, with generation 1's policy: a decision
    // kept under generation 2 must not answer, and neither may one of generation 1.
    assert_eq!(apply(&mut loader, NO_RULE), 3);
    assert_eq!(run(&loader, &syn), XDP_DROP, "the rule is gone again");
    assert_eq!(apply(&mut loader, POLICY), 4);
    assert_eq!(run(&loader, &syn), XDP_PASS, "and back");
}

#[test]
fn many_sources_sharing_the_cache_each_get_their_own_verdict() {
    on_one_cpu();
    let loader = loaded_with(&image(POLICY));
    // Four times as many sources as the cache has entries per CPU, so entries are
    // shared and replaced; clients (198.18.0.0/17) and world (198.18.128.0/17)
    // interleaved, to an allowed and a declared-but-closed port, twice over.
    let sources = (0u16..4096).map(|i| {
        let [high, low] = i.to_be_bytes();
        let client = i % 2 == 0;
        let third = if client { high } else { 128 | high };
        (Ipv4Addr::new(198, 18, third, low), client)
    });
    let sources: Vec<_> = sources.collect();
    for round in 0..2 {
        for &(source, client) in &sources {
            let expected = if client { XDP_PASS } else { XDP_DROP };
            assert_eq!(
                run(&loader, &tcp4(source, 8080, SYN)),
                expected,
                "round {round}: {source} to 8080"
            );
            assert_eq!(
                run(&loader, &tcp4(source, 8081, SYN)),
                XDP_DROP,
                "round {round}: {source} to 8081"
            );
        }
    }
}

#[test]
fn a_kept_decision_answers_only_for_its_family_protocol_and_port() {
    on_one_cpu();
    let loader = loaded_with(&image(POLICY));
    // The allowed client's decision is kept first.
    assert_eq!(run(&loader, &tcp4(CLIENT, 8080, SYN)), XDP_PASS);
    assert_eq!(run(&loader, &tcp4(CLIENT, 8080, SYN)), XDP_PASS);
    // An IPv6 source whose 16 bytes equal the IPv4 client's as the kernel stores it
    // (the IPv4 address, then zeros): world, not clients.
    let [a, b, c, d] = CLIENT.octets();
    let lookalike = Ipv6Addr::new(
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
        0,
        0,
        0,
        0,
        0,
    );
    assert_eq!(run(&loader, &tcp6(lookalike, 8080, SYN)), XDP_DROP);
    // The same client, another port (declared, closed).
    assert_eq!(run(&loader, &tcp4(CLIENT, 8081, SYN)), XDP_DROP);
    // The same client and port, the other protocol: allowed over UDP, closed over TCP.
    assert_eq!(run(&loader, &udp4(CLIENT, 5353)), XDP_PASS);
    assert_eq!(run(&loader, &udp4(CLIENT, 5353)), XDP_PASS);
    assert_eq!(run(&loader, &tcp4(CLIENT, 5353, SYN)), XDP_DROP);
    assert_eq!(run(&loader, &udp4(CLIENT, 5353)), XDP_PASS);
    // A kept denial does not answer for the allowed port either.
    let stranger = Ipv4Addr::new(198, 18, 200, 1);
    assert_eq!(run(&loader, &tcp4(stranger, 8081, SYN)), XDP_DROP);
    assert_eq!(run(&loader, &tcp4(stranger, 8081, SYN)), XDP_DROP);
    assert_eq!(run(&loader, &tcp4(CLIENT, 8081, SYN)), XDP_DROP);
    assert_eq!(run(&loader, &tcp4(CLIENT, 8080, SYN)), XDP_PASS);
}

/// The fields of a denial's record that the decision fills.
fn decided(event: &FlowEvent) -> (u32, u32, u32, u32, u8, u8, u16, u16, [u8; 16]) {
    (
        event.generation,
        event.rule_id,
        event.src_segment,
        event.dst_segment,
        event.verdict,
        event.reason,
        event.src_port,
        event.dst_port,
        event.src_addr,
    )
}

#[test]
fn a_denial_answered_from_the_cache_is_recorded_like_the_first() {
    on_one_cpu();
    let mut loader = loaded_with(&image(POLICY));
    loader
        .set_dedup_window(Duration::ZERO)
        .expect("de-duplication off: every attempt is a record");
    let mut events = loader.take_events().expect("events");
    let stranger = Ipv4Addr::new(198, 18, 200, 1);
    for source_port in [40_000, 40_001, 40_002] {
        assert_eq!(
            run(&loader, &tcp4_from(stranger, source_port, 8080, SYN)),
            XDP_DROP
        );
    }
    let recorded = drain(&mut events);
    assert_eq!(recorded.len(), 3, "{recorded:#?}");
    let first = decided(&recorded[0]);
    assert_eq!(first.4, Verdict::Deny as u8);
    assert_eq!(first.5, Reason::DefaultDeny as u8);
    for (event, source_port) in recorded.iter().zip([40_000, 40_001, 40_002]) {
        let mut expected = first;
        expected.6 = source_port;
        assert_eq!(decided(event), expected, "{event:#?}");
    }
}

#[test]
fn a_generation_numbering_that_starts_over_does_not_meet_the_old_cache() {
    on_one_cpu();
    let mut host = PinnedHost::new(&image(POLICY));
    let syn = tcp4(CLIENT, 8080, SYN);
    assert_eq!(host.xdp(&syn), XDP_PASS);
    assert_eq!(host.xdp(&syn), XDP_PASS);
    // The `ACTIVE` pin's number set back to 0, as if it had been made anew while the
    // cache's pin was kept: the next apply is generation 1 again.
    let active = MapData::from_pin(host.layout.map(ACTIVE)).expect("open the pinned ACTIVE");
    let mut active: Array<MapData, u32> =
        Array::try_from(Map::Array(active)).expect("ACTIVE is an array");
    active.set(0, &0, 0).expect("number 0");
    assert_eq!(apply(&mut host.loader, NO_RULE), 1);
    assert_eq!(
        host.xdp(&syn),
        XDP_DROP,
        "the first generation 1's allow answered for the second"
    );
}

#[test]
fn fail_closed_turns_a_kept_allow_into_a_denial_and_back() {
    on_one_cpu();
    let mut host = PinnedHost::new(&image(POLICY));
    let mut events = host.loader.take_events().expect("events");
    let syn = tcp4(CLIENT, 8080, SYN);
    assert_eq!(host.xdp(&syn), XDP_PASS);
    assert_eq!(host.xdp(&syn), XDP_PASS);
    host.fail_closed(true);
    assert_eq!(host.xdp(&syn), XDP_DROP, "a kept allow under fail closed");
    let recorded = drain(&mut events);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(
        (recorded[0].verdict, recorded[0].reason),
        (Verdict::Deny as u8, Reason::AuditUnavailable as u8)
    );
    host.fail_closed(false);
    assert_eq!(host.xdp(&syn), XDP_PASS, "fail closed lifted");
}
