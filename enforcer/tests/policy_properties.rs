//! Property tests: for random policies and random flows, the compiled image queried with
//! the kernel's lookup procedure (what `explain` reports) gives the same verdict, reason,
//! rule and classification as the reference evaluator; and `diff` reports exactly the
//! flows whose reference verdict changes.

use std::{fmt::Write as _, net::IpAddr};

use enforcer::policy::{
    Compiled, compile_sources,
    diff::diff,
    explain::explain,
    lookup::ImageIndex,
    model::{IMPLICIT, Proto},
    reference::{Endpoint, evaluate},
    source::SourceSet,
};
use enforcer_common::event::Verdict;
use proptest::prelude::*;

/// The seeded generator: one proptest seed is one policy (or one set of flows).
struct Gen(fastrand::Rng);

impl Gen {
    fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }
    fn chance(&mut self, percent: u8) -> bool {
        self.0.u8(..100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Nested prefixes, so longest-prefix matching matters.
const NETS: &[&str] = &[
    "198.18.0.0/16",
    "198.18.0.0/22",
    "198.18.1.0/24",
    "198.18.1.128/25",
    "198.18.2.0/24",
    "198.18.3.0/24",
    "198.18.3.64/26",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8:1:2::/64",
];
const ADDRS: &[&str] = &[
    "198.18.0.5",
    "198.18.1.7",
    "198.18.1.200",
    "198.18.2.9",
    "198.18.3.70",
    "198.18.3.1",
    "198.18.9.9",
    "198.19.0.1",
    "2001:db8::5",
    "2001:db8:1::9",
    "2001:db8:1:2::3",
    "2001:db9::1",
    // Classified without a CIDR: offline values only, nothing is sent.
    "127.0.0.1",
    "0.0.0.0",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "255.255.255.255",
    "::ffff:255.255.255.255",
    "224.0.0.251",
    "ff02::fb",
    "::ffff:198.18.1.130",
    "::ffff:198.18.3.65",
];
const CGROUPS: &[&str] = &[
    "a.slice",
    "a.slice/b.service",
    "a.slice/b.service/c.scope",
    "d.service",
    "d.service/e",
];
const CGROUP_PROBES: &[&str] = &[
    "a.slice",
    "a.slice/b.service",
    "a.slice/b.service/c.scope/x",
    "a.slice/z.service",
    "d.service/e/f",
    "d.service",
    "other.slice/q.service",
];

fn random_ports(g: &mut Gen) -> String {
    let proto = if g.chance(50) { "tcp" } else { "udp" };
    if g.chance(5) {
        return format!("\"*/{proto}\"");
    }
    let first = 1 + g.below(60);
    if g.chance(50) {
        format!("\"{first}/{proto}\"")
    } else {
        format!("\"{first}-{}/{proto}\"", first + g.below(40))
    }
}

/// A random valid policy over segments s0..sN: disjoint members, random modes, rules and
/// failsafes. `rules_only` keeps the segment section fixed for a given `segments_seed`.
fn random_policy(segments_seed: u64, rules_seed: u64) -> (String, usize) {
    let mut g = Gen::new(segments_seed);
    let count = 1 + g.below(5);
    let mut text = String::new();
    let mut next_port = 100;
    for i in 0..count {
        writeln!(text, "[segments.s{i}]").unwrap();
        let nets: Vec<String> = NETS
            .iter()
            .enumerate()
            .filter(|(n, _)| n % count == i && g.chance(60))
            .map(|(_, n)| format!("\"{n}\""))
            .collect();
        let cgroups: Vec<String> = CGROUPS
            .iter()
            .enumerate()
            .filter(|(n, _)| n % count == i && g.chance(60))
            .map(|(_, c)| format!("\"{c}\""))
            .collect();
        writeln!(text, "cidrs = [{}]", nets.join(", ")).unwrap();
        writeln!(text, "cgroups = [{}]", cgroups.join(", ")).unwrap();
        next_port += 1 + g.below(5);
        writeln!(text, "ports = [\"{next_port}/tcp\"]").unwrap();
        if g.chance(25) {
            writeln!(text, "mode = \"audit\"").unwrap();
        }
    }
    let mut g = Gen::new(rules_seed);
    let names: Vec<String> = (0..count)
        .map(|i| format!("s{i}"))
        .chain([
            "host".into(),
            "world".into(),
            "broadcast".into(),
            "multicast".into(),
            "*".into(),
        ])
        .collect();
    for r in 0..g.below(10) {
        let action = if g.chance(35) { "deny" } else { "allow" };
        let side = |g: &mut Gen| -> String {
            let n = 1 + g.below(2);
            (0..n)
                .map(|_| format!("\"{}\"", g.pick(&names)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let from = side(&mut g);
        let to = side(&mut g);
        let ports: Vec<String> = (0..1 + g.below(3)).map(|_| random_ports(&mut g)).collect();
        writeln!(
            text,
            "[[{action}]]\nid = \"r{r}\"\nfrom = [{from}]\nto = [{to}]\nports = [{}]",
            ports.join(", ")
        )
        .unwrap();
    }
    // Up to three failsafes, often overlapping on one port: the longest prefix names the
    // grant.
    for f in 0..g.below(4) {
        writeln!(
            text,
            "[failsafe.f{f}]\nfrom = [\"{}\"]\nport = \"{}/tcp\"",
            g.pick(NETS),
            1 + g.below(3)
        )
        .unwrap();
    }
    (text, count)
}

fn compile(text: &str) -> Compiled {
    let mut sources = SourceSet::default();
    sources.add("random.toml", text);
    match compile_sources(sources) {
        Ok(compiled) => compiled,
        Err(rejected) => panic!(
            "generated policy rejected: {:?}\n{text}",
            rejected.diagnostics
        ),
    }
}

fn random_endpoint(g: &mut Gen, segments: usize) -> (Endpoint, String) {
    match g.below(3) {
        0 => {
            let names: Vec<String> = (0..segments)
                .map(|i| format!("s{i}"))
                .chain([
                    "host".into(),
                    "world".into(),
                    "broadcast".into(),
                    "multicast".into(),
                ])
                .collect();
            let name = g.pick(&names).clone();
            (Endpoint::Segment(name.clone()), name)
        }
        1 => {
            let addr = *g.pick(ADDRS);
            (
                Endpoint::Addr(addr.parse::<IpAddr>().unwrap()),
                addr.to_owned(),
            )
        }
        _ => {
            let path = *g.pick(CGROUP_PROBES);
            (Endpoint::Cgroup(path.to_owned()), path.to_owned())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn compiled_lookups_agree_with_the_reference(segments_seed: u64, rules_seed: u64, flows_seed: u64) {
        let (text, segments) = random_policy(segments_seed, rules_seed);
        let compiled = compile(&text);
        let index = ImageIndex::new(&compiled.image);
        let mut g = Gen::new(flows_seed);
        for _ in 0..200 {
            let (from, from_text) = random_endpoint(&mut g, segments);
            let (to, to_text) = random_endpoint(&mut g, segments);
            let proto = if g.chance(50) { Proto::Tcp } else { Proto::Udp };
            let port = if g.chance(3) { 65535 } else { 1 + g.below(140) as u16 };
            let want = evaluate(&compiled.policy, &from, &to, proto, port);
            let got = explain(&index, (&from, &from_text), (&to, &to_text), proto, port);
            let context = format!("{from_text} -> {to_text} {port}/{proto}\n{text}");
            prop_assert_eq!(&got.from.segment, &want.from_segment, "{}", context);
            prop_assert_eq!(&got.to.segment, &want.to_segment, "{}", context);
            prop_assert_eq!(got.verdict, want.verdict.word(), "{}", context);
            prop_assert_eq!(got.reason, want.reason.word(), "{}", context);
            prop_assert_eq!(&got.rule, &want.rule, "{}", context);
            prop_assert_eq!(&got.failsafe, &want.failsafe, "{}", context);
        }
    }

    #[test]
    fn diff_reports_exactly_the_flows_whose_verdict_changes(segments_seed: u64, new_segments_seed: u64, old_rules: u64, new_rules: u64, flows_seed: u64) {
        // Half the cases keep the segments and change rules only; the others also add,
        // remove or change segments (their modes).
        let new_segments_seed = if new_segments_seed % 2 == 0 { segments_seed } else { new_segments_seed };
        let (old_text, old_segments) = random_policy(segments_seed, old_rules);
        let (new_text, new_segments) = random_policy(new_segments_seed, new_rules);
        let segments = old_segments.max(new_segments);
        let (old, new) = (compile(&old_text), compile(&new_text));
        let changes = diff((&old.policy, &old.image), (&new.policy, &new.image));
        let names: Vec<String> = (0..segments).map(|i| format!("s{i}")).chain(["host".into(), "world".into(), "broadcast".into(), "multicast".into()]).collect();
        let mut g = Gen::new(flows_seed);
        for _ in 0..300 {
            let from = g.pick(&names).clone();
            let to = g.pick(&names).clone();
            let proto = if g.chance(50) { Proto::Tcp } else { Proto::Udp };
            let port = if g.chance(3) { 65535 } else { 1 + g.below(140) as u16 };
            // Diff speaks of segment pairs; traffic to `host` on a port a segment declares is
            // that segment's (the reference re-classifies it), so such flows are not host's.
            let declared = |c: &Compiled| c.policy.segments.iter().any(|s| s.ports.iter().any(|p| p.contains(proto, port)));
            if to == "host" && (declared(&old) || declared(&new)) {
                continue;
            }
            let (f, t) = (Endpoint::Segment(from.clone()), Endpoint::Segment(to.clone()));
            // A pair with a segment one policy does not declare is `absent` there; diff
            // reports it when the other policy lets it pass.
            let exists = |c: &Compiled, name: &str| IMPLICIT.contains(&name) || c.policy.segment(name).is_some();
            let verdict = |c: &Compiled| (exists(c, &from) && exists(c, &to)).then(|| evaluate(&c.policy, &f, &t, proto, port).verdict);
            let (before, after) = (verdict(&old), verdict(&new));
            let word = |v: Option<Verdict>| v.map_or("absent", |v| v.word());
            let passes = |v: Option<Verdict>| matches!(v, Some(Verdict::Allow | Verdict::Audit));
            let changed = match (before, after) {
                (Some(b), Some(a)) => a != b,
                _ => passes(before) || passes(after),
            };
            let reported = changes.verdicts.iter().filter(|p| p.from == from && p.to == to).flat_map(|p| &p.changes).find(|c| c.proto == proto && c.first <= port && port <= c.last);
            match reported {
                Some(change) => {
                    prop_assert!(changed, "diff reports {}->{} {}/{} but the verdict stays", from, to, port, proto);
                    prop_assert_eq!(&change.old, word(before));
                    prop_assert_eq!(&change.new, word(after));
                }
                None => prop_assert!(!changed, "diff misses {}->{} {}/{} ({} -> {})\nOLD\n{}\nNEW\n{}", from, to, port, proto, word(before), word(after), old_text, new_text),
            }
        }
    }
}
