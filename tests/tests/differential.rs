//! Differential test of the real XDP program: random policies from a wide generator,
//! compiled and applied like the agent does, and random inbound frames run through the
//! program with `BPF_PROG_TEST_RUN`; every action and every recorded event is compared
//! with `enforcer_tests::differential::reference`, written from the documented semantics
//! alone. `explain` and `enforcer::policy::reference` (the userspace copies the CLI
//! answers with) are held against the same reference on the same flows.
//!
//! What is compared: the action (pass or drop) of every frame; for a drop, its one
//! record in full (verdict, reason, rule, segments, addresses, ports); for a pass, that
//! XDP recorded nothing (it records only what it drops: what passes is recorded by the
//! per-socket layer, which `BPF_PROG_TEST_RUN` does not reach). The de-duplication window
//! is off, so each frame's record is its own.
//!
//! Reproduce: the seed is printed at the start and with every failure;
//! `ENFORCER_DIFF_SEED=<seed>` replays the run, `ENFORCER_DIFF_POLICY=<n>` only its policy
//! `n`, `ENFORCER_DIFF_FLOWS=<count>` changes how many flows the run needs (default
//! 100,000), `ENFORCER_DIFF_BUDGET_SECS` the time bound (default 900 s). The files of a
//! policy with divergences are written under `target/<profile>/differential/`.

use std::{
    env,
    net::IpAddr,
    time::{Duration, Instant},
};

use enforcer::{
    loader::Loader,
    policy::{
        Compiled,
        explain::explain,
        image::MapImage,
        lookup::ImageIndex,
        model::Proto as PolicyProto,
        reference::{Endpoint, evaluate},
    },
};
use enforcer_common::event::{FlowEvent, Hook, Reason, Verdict, family};
use enforcer_tests::{
    differential::{
        Rng, compile,
        flow::{Kind, Probe, Targets},
        keep_policy,
        net::Family,
        policy_seed,
        reference::{self, Decision},
        spec::{Proto, Size, Spec},
    },
    events::drain,
    packet::{XDP_DROP, XDP_PASS},
    require_root,
};

/// Flows a run needs at least.
const DEFAULT_FLOWS: usize = 100_000;
/// The time bound of a run: far above what it takes (under 30 s here), so only a
/// hang or a machine many times slower reaches it.
const DEFAULT_BUDGET: Duration = Duration::from_secs(900);
/// Flows per small policy.
const FLOWS_PER_SMALL_POLICY: usize = 2_000;
/// Flows per large policy.
const FLOWS_PER_LARGE_POLICY: usize = 4_000;
/// Every this many policies, one is large (thousands of rules and prefixes).
const LARGE_EVERY: u64 = 8;
/// The most policies a run generates, whatever the flow count asks.
const MAX_POLICIES: u64 = 1_000;
/// Divergences listed in a failure message.
const SHOWN: usize = 12;

/// What the program is to do with one frame.
#[derive(Debug)]
enum Expect {
    /// Pass, unrecorded: not a new flow, or UDP to a port nobody serves.
    Unrecorded,
    /// Drop, recorded as malformed.
    Malformed,
    /// The policy's decision.
    Decided(Decision),
}

fn expect(spec: &Spec, probe: &Probe) -> Expect {
    match probe.kind() {
        Kind::Malformed => Expect::Malformed,
        Kind::NotNew => Expect::Unrecorded,
        Kind::New => match reference::decide(spec, probe.src, probe.proto, probe.dport) {
            Some(decision) => Expect::Decided(decision),
            None => Expect::Unrecorded,
        },
    }
}

fn word<T: Copy>(code: u8, from: fn(u8) -> Option<T>, word: fn(T) -> &'static str) -> String {
    from(code).map_or_else(|| format!("<code {code}>"), |v| word(v).to_owned())
}

fn name_of(names: &[String], id: u32) -> String {
    names
        .get(id as usize)
        .cloned()
        .unwrap_or_else(|| format!("<id {id}>"))
}

/// The address bytes a record carries: IPv4 in the first four.
fn record_addr(addr: enforcer_tests::differential::net::Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    let octets = addr.octets();
    out[..octets.len()].copy_from_slice(&octets);
    out
}

/// Compares one record with the decision it should carry.
fn check_event(
    image: &MapImage,
    generation: u32,
    probe: &Probe,
    want: &Decision,
    event: &FlowEvent,
) -> Result<(), String> {
    let verdict = word(event.verdict, Verdict::from_code, Verdict::word);
    let reason = word(event.reason, Reason::from_code, Reason::word);
    let src = name_of(&image.segment_names, event.src_segment);
    let dst = name_of(&image.segment_names, event.dst_segment);
    let decided_by = match reason.as_str() {
        "rule" => event
            .rule_id
            .checked_sub(1)
            .map(|i| name_of(&image.rule_names, i)),
        "failsafe" => event
            .rule_id
            .checked_sub(1)
            .map(|i| name_of(&image.failsafe_names, i)),
        _ => (event.rule_id != 0).then(|| format!("<id {} with reason {reason}>", event.rule_id)),
    };
    let decided_ok = match want.reason {
        "rule" => decided_by == want.rule,
        "failsafe" => decided_by
            .as_ref()
            .is_some_and(|f| want.failsafes.contains(f)),
        _ => decided_by.is_none(),
    };
    let mut problems = Vec::new();
    if verdict != want.verdict || reason != want.reason || !decided_ok {
        problems.push(format!(
            "record says {verdict}/{reason} by {decided_by:?}, want {}/{} by {:?}{:?}",
            want.verdict, want.reason, want.rule, want.failsafes
        ));
    }
    if src != want.src || dst != want.dst {
        problems.push(format!(
            "record says {src} -> {dst}, want {} -> {}",
            want.src, want.dst
        ));
    }
    let want_family = match probe.family() {
        Family::V4 => family::INET,
        Family::V6 => family::INET6,
    };
    let fields = (
        event.hook,
        event.generation,
        event.family,
        event.protocol,
        event.src_addr,
        event.dst_addr,
        event.src_port,
        event.dst_port,
    );
    let want_fields = (
        Hook::XdpIngress as u8,
        generation,
        want_family,
        probe.proto.number(),
        record_addr(probe.src),
        record_addr(probe.dst),
        probe.sport,
        probe.dport,
    );
    if fields != want_fields {
        problems.push(format!(
            "record fields (hook, generation, family, protocol, src, dst, sport, dport) {fields:?}, want {want_fields:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Compares the program's action and records with a decision.
fn check_decided(
    image: &MapImage,
    generation: u32,
    probe: &Probe,
    want: &Decision,
    action: u32,
    events: &[FlowEvent],
) -> Result<(), String> {
    let want_action = if want.passes() { XDP_PASS } else { XDP_DROP };
    if action != want_action {
        return Err(format!(
            "action {action}, want {want_action} ({want:?}); {} record(s): {:?}",
            events.len(),
            events
                .iter()
                .map(|e| check_event(image, generation, probe, want, e))
                .collect::<Vec<_>>()
        ));
    }
    match events {
        [] if want.passes() => Ok(()),
        [] => Err(format!("a drop without a record, want {want:?}")),
        [event] if want.passes() => Err(format!(
            "XDP recorded a pass ({:?}); the per-socket layer records what passes",
            check_event(image, generation, probe, want, event)
        )),
        [event] => check_event(image, generation, probe, want, event),
        more => Err(format!("{} records for one frame", more.len())),
    }
}

/// Compares the kernel's answer for one frame with what is expected of it.
fn check_expected(
    expected: &Expect,
    image: &MapImage,
    generation: u32,
    probe: &Probe,
    action: u32,
    events: &[FlowEvent],
) -> Result<(), String> {
    match expected {
        Expect::Unrecorded => {
            if action != XDP_PASS || !events.is_empty() {
                return Err(format!(
                    "action {action} with {} record(s) {events:?}, want a pass without a record",
                    events.len()
                ));
            }
            Ok(())
        }
        Expect::Malformed => {
            let recorded = match events {
                [event] => (
                    event.hook,
                    word(event.verdict, Verdict::from_code, Verdict::word),
                    word(event.reason, Reason::from_code, Reason::word),
                ),
                _ => return Err(format!("malformed: {} record(s), want one", events.len())),
            };
            let want = (Hook::XdpIngress as u8, "deny".into(), "malformed".into());
            if action != XDP_DROP || recorded != want {
                return Err(format!(
                    "malformed: action {action}, record {recorded:?}, want a drop recorded {want:?}"
                ));
            }
            Ok(())
        }
        Expect::Decided(want) => check_decided(image, generation, probe, want, action, events),
    }
}

/// Compares the kernel's answer for one frame with the reference.
fn check_kernel(
    spec: &Spec,
    image: &MapImage,
    generation: u32,
    probe: &Probe,
    action: u32,
    events: &[FlowEvent],
) -> Result<(), String> {
    check_expected(
        &expect(spec, probe),
        image,
        generation,
        probe,
        action,
        events,
    )
}

/// Holds `explain` and the userspace reference against the reference, for a new flow the
/// policy decides.
fn check_userspace(
    compiled: &Compiled,
    index: &ImageIndex<'_>,
    probe: &Probe,
    want: &Decision,
) -> Result<(), String> {
    let src: IpAddr = probe.src.to_ip();
    let from = Endpoint::Addr(src);
    let to = Endpoint::Segment("host".to_owned());
    let proto = match probe.proto {
        Proto::Tcp => PolicyProto::Tcp,
        Proto::Udp => PolicyProto::Udp,
    };
    let failsafe_ok = |name: &Option<String>| match want.reason {
        "failsafe" => name.as_ref().is_some_and(|n| want.failsafes.contains(n)),
        _ => name.is_none(),
    };
    let explained = explain(
        index,
        (&from, &src.to_string()),
        (&to, "host"),
        proto,
        probe.dport,
    );
    let mut problems = Vec::new();
    if explained.from.segment != want.src
        || explained.to.segment != want.dst
        || explained.verdict != want.verdict
        || explained.reason != want.reason
        || explained.rule != want.rule
        || !failsafe_ok(&explained.failsafe)
    {
        problems.push(format!(
            "explain says {} -> {}: {}/{} rule {:?} failsafe {:?}",
            explained.from.segment,
            explained.to.segment,
            explained.verdict,
            explained.reason,
            explained.rule,
            explained.failsafe
        ));
    }
    let evaluated = evaluate(&compiled.policy, &from, &to, proto, probe.dport);
    if evaluated.from_segment != want.src
        || evaluated.to_segment != want.dst
        || evaluated.verdict.word() != want.verdict
        || evaluated.reason.word() != want.reason
        || evaluated.rule != want.rule
        || !failsafe_ok(&evaluated.failsafe)
    {
        problems.push(format!(
            "policy::reference says {} -> {}: {}/{} rule {:?} failsafe {:?}",
            evaluated.from_segment,
            evaluated.to_segment,
            evaluated.verdict.word(),
            evaluated.reason.word(),
            evaluated.rule,
            evaluated.failsafe
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}; want {want:?}", problems.join("; ")))
    }
}

fn env_number(name: &str) -> Option<u64> {
    env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// How often each kind of outcome came up, to show the run was not vacuous.
#[derive(Debug, Default)]
struct Tally {
    denied_by_rule: usize,
    denied_by_default: usize,
    audit: usize,
    allowed_by_rule: usize,
    failsafe: usize,
    ungoverned_udp: usize,
    not_new: usize,
    malformed: usize,
    mapped_sources: usize,
    ipv6: usize,
    records_checked: usize,
    large_policies: usize,
    split_files: usize,
}

impl Tally {
    fn count(&mut self, probe: &Probe, expect: &Expect, events: usize) {
        self.records_checked += events;
        if probe.src.is_mapped() {
            self.mapped_sources += 1;
        }
        if probe.family() == Family::V6 {
            self.ipv6 += 1;
        }
        match (expect, probe.kind()) {
            (Expect::Malformed, _) => self.malformed += 1,
            (Expect::Unrecorded, Kind::NotNew) => self.not_new += 1,
            (Expect::Unrecorded, _) => self.ungoverned_udp += 1,
            (Expect::Decided(d), _) => match (d.verdict, d.reason) {
                (_, "failsafe") => self.failsafe += 1,
                ("deny", "rule") => self.denied_by_rule += 1,
                ("deny", _) => self.denied_by_default += 1,
                ("audit", _) => self.audit += 1,
                _ => self.allowed_by_rule += 1,
            },
        }
    }
}

#[test]
fn the_xdp_program_decides_random_flows_as_the_documented_semantics_say() {
    require_root();
    let seed = env_number("ENFORCER_DIFF_SEED").unwrap_or_else(|| fastrand::u64(..));
    let only = env_number("ENFORCER_DIFF_POLICY");
    let want_flows = env_number("ENFORCER_DIFF_FLOWS").map_or(DEFAULT_FLOWS, |n| n as usize);
    let budget =
        env_number("ENFORCER_DIFF_BUDGET_SECS").map_or(DEFAULT_BUDGET, Duration::from_secs);
    let reproduce = format!(
        "ENFORCER_DIFF_SEED={seed} cargo test -p enforcer-tests --test differential -- --test-threads=1"
    );
    eprintln!("differential: seed {seed} (reproduce with {reproduce})");

    let mut loader = Loader::load().unwrap_or_else(|err| panic!("loading failed: {err}"));
    loader
        .set_dedup_window(Duration::ZERO)
        .expect("turn de-duplication off");
    let mut reader = loader.take_events().expect("the event ring");
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");

    let started = Instant::now();
    let mut flows = 0usize;
    let mut tally = Tally::default();
    let (first, last) = match only {
        Some(index) => (index, index + 1),
        None => (0, MAX_POLICIES),
    };
    let mut policies = 0;
    for index in first..last {
        if only.is_none() && flows >= want_flows {
            break;
        }
        let mut rng = Rng::new(policy_seed(seed, index));
        let size = if index % LARGE_EVERY == LARGE_EVERY - 1 {
            Size::Large
        } else {
            Size::Small
        };
        let spec = Spec::random(&mut rng, size);
        let files = spec.render(&mut rng);
        let compiled = compile(&files).unwrap_or_else(|errors| {
            let dir = keep_policy("differential", seed, index, &files);
            panic!(
                "seed {seed}, policy {index}: the generated policy was rejected ({dir}):\n{errors}"
            )
        });
        let applied = loader
            .apply(&compiled.image, &root)
            .unwrap_or_else(|err| panic!("seed {seed}, policy {index}: apply failed: {err}"));
        let stale = drain(&mut reader);
        assert!(stale.is_empty(), "records before any frame: {stale:?}");
        policies += 1;
        if size == Size::Large {
            tally.large_policies += 1;
        }
        if files.iter().any(|(_, text)| text.len() > 64 * 1024) {
            tally.split_files += 1;
        }

        let index_image = ImageIndex::new(&compiled.image);
        let targets = Targets::new(&spec);
        let count = match size {
            Size::Small => FLOWS_PER_SMALL_POLICY,
            Size::Large => FLOWS_PER_LARGE_POLICY,
        };
        let mut divergences = Vec::new();
        for flow in 0..count {
            assert!(
                started.elapsed() < budget,
                "seed {seed}: the time bound of {budget:?} ran out after {flows} flows \
                 ({policies} policies); reproduce with {reproduce}"
            );
            let probe = targets.probe(&mut rng);
            let (frame, _) = probe.frame();
            let (action, _) = loader
                .test_run_xdp(&frame, 1)
                .unwrap_or_else(|err| panic!("seed {seed}, policy {index}: test run: {err}"));
            let events = drain(&mut reader);
            let expected = expect(&spec, &probe);
            tally.count(&probe, &expected, events.len());
            flows += 1;
            let kernel = check_kernel(
                &spec,
                &compiled.image,
                applied.generation,
                &probe,
                action,
                &events,
            );
            let userspace = match &expected {
                Expect::Decided(want) if probe.kind() == Kind::New => {
                    check_userspace(&compiled, &index_image, &probe, want)
                }
                _ => Ok(()),
            };
            for (side, result) in [("kernel", kernel), ("userspace", userspace)] {
                if let Err(problem) = result {
                    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
                    divergences.push(format!(
                        "[{side}] flow {flow}: {} {} -> port {}/{}: {problem}\n    probe {probe:?}\n    frame {hex}",
                        probe.src,
                        probe.src.as_classified(),
                        probe.dport,
                        probe.proto.word(),
                    ));
                }
            }
        }
        if !divergences.is_empty() {
            let dir = keep_policy("differential", seed, index, &files);
            let shown = divergences
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "seed {seed}, policy {index}: {} of {count} flows diverge from the reference \
                 (policy files in {dir}; reproduce with ENFORCER_DIFF_POLICY={index} {reproduce}):\n{shown}",
                divergences.len()
            );
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "differential: seed {seed}: {flows} flows over {policies} policies in {elapsed:.1?}; \
         {tally:?}"
    );
    if only.is_none() {
        assert!(
            flows >= want_flows,
            "seed {seed}: only {flows} flows in {MAX_POLICIES} policies"
        );
    }
    if only.is_none() && want_flows >= DEFAULT_FLOWS {
        // A run that never reached an outcome would prove nothing about it.
        for (what, count) in [
            ("rule denials", tally.denied_by_rule),
            ("default denials", tally.denied_by_default),
            ("audit-mode passes", tally.audit),
            ("rule allows", tally.allowed_by_rule),
            ("failsafe passes", tally.failsafe),
            ("ungoverned UDP", tally.ungoverned_udp),
            ("frames that are not new flows", tally.not_new),
            ("malformed frames", tally.malformed),
            ("IPv4-mapped sources", tally.mapped_sources),
            ("large policies", tally.large_policies),
            ("policy files split by the parser", tally.split_files),
        ] {
            assert!(count > 0, "seed {seed}: no {what} in the run");
        }
    }
}
