//! A random policy as plain data, and the TOML files that say it.
//!
//! The generator is wide on purpose: prefixes of every length (`/0` to `/32`, `/0` to
//! `/128`) nested around a few anchors, IPv4-mapped and IPv4-compatible prefixes written
//! with dotted quads, bare addresses, listener ports and port ranges that start, end or
//! sit on them, several failsafes over TCP and UDP, segments in audit mode, allow and deny
//! rules that overlap, rules naming `*`, `host`, `world`, `broadcast` and `multicast`, and
//! sometimes thousands of rules and prefixes, so that the piecewise parser (`chunk.rs`) and
//! the compiler's port-run merging see large inputs. The reference evaluator reads this
//! data, never the parsed policy.

use std::{collections::HashSet, fmt::Write as _};

use super::{
    Rng,
    net::{Addr, Form, Net},
};

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// The word a port spec uses.
    pub const fn word(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    fn random(rng: &mut Rng) -> Self {
        if rng.chance(50) { Self::Tcp } else { Self::Udp }
    }
}

/// A port spec: a protocol and an inclusive range (`*` is 1-65535).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// The protocol.
    pub proto: Proto,
    /// First port (at least 1).
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl Ports {
    /// Whether the spec covers `port`/`proto`.
    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.first <= port && port <= self.last
    }

    /// The spec as written: `*/P` for the whole range, `N/P` or `A-B/P`.
    pub fn render(&self) -> String {
        let proto = self.proto.word();
        match (self.first, self.last) {
            (1, u16::MAX) => format!("*/{proto}"),
            (a, b) if a == b => format!("{a}/{proto}"),
            (a, b) => format!("{a}-{b}/{proto}"),
        }
    }
}

/// A segment.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Its name.
    pub name: String,
    /// Its prefixes.
    pub cidrs: Vec<Net>,
    /// The local listener ports it serves.
    pub ports: Vec<Ports>,
    /// cgroup paths (none exists: they only matter to the cgroup hooks).
    pub cgroups: Vec<String>,
    /// `mode = "audit"`.
    pub audit: bool,
}

/// An `[[allow]]` or `[[deny]]` rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its id.
    pub id: String,
    /// A deny rule (else allow).
    pub deny: bool,
    /// Source segment names (`*` for any).
    pub from: Vec<String>,
    /// Destination segment names (`*` for any but `broadcast` and `multicast`).
    pub to: Vec<String>,
    /// Port specs.
    pub ports: Vec<Ports>,
}

/// A `[failsafe.NAME]`.
#[derive(Clone, Debug)]
pub struct Failsafe {
    /// Its name.
    pub name: String,
    /// Source prefixes.
    pub from: Vec<Net>,
    /// Its port spec.
    pub port: Ports,
}

/// A whole policy.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `[defaults] audit = "deny"` (else every decision is recorded).
    pub audit_denials_only: bool,
    /// `[defaults] unclassified = "allow"`.
    pub unclassified_allow: bool,
    /// Write a `[defaults]` table at all.
    pub write_defaults: bool,
    /// Segments, in the order written.
    pub segments: Vec<Segment>,
    /// Rules in declaration order (files in load order, then position).
    pub rules: Vec<Rule>,
    /// Failsafes.
    pub failsafes: Vec<Failsafe>,
}

/// How big a policy to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// A handful of segments, rules and failsafes.
    Small,
    /// Hundreds of segments, thousands of prefixes and rules.
    Large,
}

/// The per-policy pools that make generated prefixes and ports collide.
struct Pools {
    v4_anchors: Vec<u32>,
    v6_anchors: Vec<u128>,
    port_anchors: Vec<u16>,
}

impl Pools {
    fn new(rng: &mut Rng) -> Self {
        // Mostly inside the documentation ranges (198.18.0.0/15, 2001:db8::/32), one
        // anchor anywhere: nothing is sent, these are only keys of the policy's tries.
        let v4_anchors = (0..4)
            .map(|i| {
                if i == 3 {
                    rng.u32()
                } else {
                    0xc612_0000 | (rng.u32() & 0x1_ffff)
                }
            })
            .collect();
        let v6_anchors = (0..3)
            .map(|i| {
                if i == 2 {
                    rng.u128()
                } else {
                    (0x2001_0db8_u128 << 96) | (rng.u128() >> 32)
                }
            })
            .collect();
        let mut port_anchors: Vec<u16> = (0..5).map(|_| rng.port()).collect();
        if rng.chance(30) {
            port_anchors.push(1);
        }
        if rng.chance(30) {
            port_anchors.push(u16::MAX);
        }
        Self {
            v4_anchors,
            v6_anchors,
            port_anchors,
        }
    }

    /// A random IPv4 address near an anchor: some of its low bits flipped.
    fn v4_near(&self, rng: &mut Rng) -> u32 {
        let anchor = *rng.pick(&self.v4_anchors);
        let flip = rng.below(33) as u32;
        let noise = if flip == 0 {
            0
        } else {
            rng.u32() >> (32 - flip)
        };
        anchor ^ noise
    }

    fn v6_near(&self, rng: &mut Rng) -> u128 {
        let anchor = *rng.pick(&self.v6_anchors);
        let flip = rng.below(129) as u32;
        let noise = if flip == 0 {
            0
        } else {
            rng.u128() >> (128 - flip)
        };
        anchor ^ noise
    }

    /// A random prefix in any of the written forms.
    fn net(&self, rng: &mut Rng) -> Net {
        let roll = rng.below(100);
        let mut net = if roll < 45 {
            Net::new(Addr::v4(self.v4_near(rng)), rng.below(33) as u8)
        } else if roll < 80 {
            Net::new(Addr::v6(self.v6_near(rng)), rng.below(129) as u8)
        } else if roll < 92 {
            let len = 96 + rng.below(33) as u8;
            Net {
                form: Form::MappedDotted,
                ..Net::new(Addr::mapped(self.v4_near(rng)), len)
            }
        } else {
            let len = 96 + rng.below(33) as u8;
            Net {
                form: Form::CompatibleDotted,
                ..Net::new(Addr::compatible(self.v4_near(rng)), len)
            }
        };
        if net.form == Form::Cidr && net.len == net.addr.family.width() && rng.chance(50) {
            net.form = Form::Bare;
        }
        net
    }

    /// A port near an anchor.
    fn port(&self, rng: &mut Rng) -> u16 {
        let anchor = i32::from(*rng.pick(&self.port_anchors));
        let delta = match rng.below(4) {
            0 => 0,
            1 => rng.below(3) as i32 - 1,
            2 => rng.below(41) as i32 - 20,
            _ => rng.below(2001) as i32 - 1000,
        };
        (anchor + delta).clamp(1, 65535) as u16
    }
}

/// Listener ports already served, per protocol: a port may be served by one segment only.
#[derive(Default)]
struct Served(HashSet<(Proto, u16)>);

impl Served {
    /// Claims every port of `ports` unless one is taken.
    fn claim(&mut self, ports: Ports) -> bool {
        let range = ports.first..=ports.last;
        if range.clone().any(|p| self.0.contains(&(ports.proto, p))) {
            return false;
        }
        self.0.extend(range.map(|p| (ports.proto, p)));
        true
    }
}

/// Legal segment names of varied shape.
fn segment_name(rng: &mut Rng, index: usize) -> String {
    match rng.below(4) {
        0 => format!("s{index}"),
        1 => format!("seg-{index}.api"),
        2 => format!("{index}_Zone"),
        _ => format!("S.{index}-x_y"),
    }
}

impl Spec {
    /// A random valid policy.
    pub fn random(rng: &mut Rng, size: Size) -> Self {
        let pools = Pools::new(rng);
        let (segment_count, rule_count, failsafe_count, cidrs_each) = match size {
            Size::Small => (1 + rng.below(7), rng.below(15), rng.below(5), 5),
            Size::Large => (
                150 + rng.below(250),
                1500 + rng.below(3000),
                4 + rng.below(8),
                40,
            ),
        };
        let mut used_nets = HashSet::new();
        let mut served = Served::default();
        let mut segments = Vec::with_capacity(segment_count);
        for index in 0..segment_count {
            let mut cidrs = Vec::new();
            for _ in 0..rng.below(cidrs_each) {
                let net = pools.net(rng);
                if used_nets.insert(net.key()) {
                    cidrs.push(net);
                }
            }
            let mut ports = Vec::new();
            for _ in 0..rng.below(3) {
                let first = pools.port(rng);
                let last = if rng.chance(70) {
                    first
                } else {
                    first.saturating_add(rng.below(8) as u16)
                };
                let spec = Ports {
                    proto: Proto::random(rng),
                    first,
                    last,
                };
                if served.claim(spec) {
                    ports.push(spec);
                }
            }
            let mut cgroups = Vec::new();
            if rng.chance(15) || (cidrs.is_empty() && ports.is_empty()) {
                cgroups.push(format!("enforcer-diff-absent.slice/unit-{index}.service"));
            }
            segments.push(Segment {
                name: segment_name(rng, index),
                cidrs,
                ports,
                cgroups,
                audit: rng.chance(20),
            });
        }

        let mut failsafes = Vec::with_capacity(failsafe_count);
        for index in 0..failsafe_count {
            let mut from: Vec<Net> = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let net = match segments.iter().flat_map(|s| &s.cidrs).count() {
                    n if n > 0 && rng.chance(30) => {
                        // A segment's own prefix, or one a few bits longer or shorter.
                        let near = *segments
                            .iter()
                            .flat_map(|s| &s.cidrs)
                            .nth(rng.below(n))
                            .expect("counted");
                        let width = near.addr.family.width();
                        let len = (i32::from(near.len) + rng.below(9) as i32 - 4)
                            .clamp(0, i32::from(width)) as u8;
                        Net {
                            form: near.form,
                            ..Net::new(near.at(rng.u128()), len)
                        }
                    }
                    _ => pools.net(rng),
                };
                if from.iter().all(|n| n.key() != net.key()) {
                    from.push(net);
                }
            }
            let listener = segments
                .iter()
                .flat_map(|s| &s.ports)
                .copied()
                .collect::<Vec<_>>();
            let port = if !listener.is_empty() && rng.chance(50) {
                let on = *rng.pick(&listener);
                Ports {
                    first: on.first,
                    last: on.first,
                    ..on
                }
            } else {
                let first = pools.port(rng);
                Ports {
                    proto: Proto::random(rng),
                    first,
                    last: if rng.chance(80) {
                        first
                    } else {
                        first.saturating_add(rng.below(4) as u16)
                    },
                }
            };
            failsafes.push(Failsafe {
                name: format!("fs{index}-{}", ["a", "b", "c"][rng.below(3)]),
                from,
                port,
            });
        }

        let rules = random_rules(rng, &pools, &segments, &failsafes, rule_count, size);
        Self {
            audit_denials_only: rng.chance(30),
            unclassified_allow: rng.chance(20),
            write_defaults: rng.chance(70),
            segments,
            rules,
            failsafes,
        }
    }

    /// The policy files that say this policy, in load order: one file, or the defaults and
    /// failsafes, the segments and the rules in files of their own (rules split in two).
    pub fn render(&self, rng: &mut Rng) -> Vec<(String, String)> {
        let mut head = String::new();
        if self.write_defaults {
            let audit = if self.audit_denials_only {
                "deny"
            } else {
                "all"
            };
            let unclassified = if self.unclassified_allow {
                "allow"
            } else {
                "deny"
            };
            writeln!(
                head,
                "[defaults]\naudit = \"{audit}\"\nunclassified = \"{unclassified}\"\n"
            )
            .expect("string");
        }
        for failsafe in &self.failsafes {
            writeln!(
                head,
                "[failsafe.{}]\nfrom = {}\nport = \"{}\"\n",
                failsafe.name,
                list(rng, failsafe.from.iter().map(Net::render)),
                failsafe.port.render()
            )
            .expect("string");
        }
        let mut segments = String::new();
        for segment in &self.segments {
            // A quoted key hides the header from the piecewise splitter: it must cope.
            // A name with a dot must be quoted in a table header. A quoted key hides the
            // header from the piecewise splitter (it skips lines with quotes): it must cope.
            let key = if segment.name.contains('.') || rng.chance(10) {
                format!("\"{}\"", segment.name)
            } else {
                segment.name.clone()
            };
            if rng.chance(10) {
                writeln!(segments, "  [segments.{key}]   # [a comment]").expect("string");
            } else {
                writeln!(segments, "[segments.{key}]").expect("string");
            }
            if !segment.cidrs.is_empty() {
                let cidrs = list(rng, segment.cidrs.iter().map(Net::render));
                writeln!(segments, "cidrs = {cidrs}").expect("string");
            }
            if !segment.ports.is_empty() {
                let ports = list(rng, segment.ports.iter().map(Ports::render));
                writeln!(segments, "ports = {ports}").expect("string");
            }
            if !segment.cgroups.is_empty() {
                let cgroups = list(rng, segment.cgroups.iter().cloned());
                writeln!(segments, "cgroups = {cgroups}").expect("string");
            }
            if segment.audit {
                writeln!(segments, "mode = \"audit\"").expect("string");
            } else if rng.chance(20) {
                writeln!(segments, "mode = \"enforce\"").expect("string");
            }
            segments.push('\n');
        }
        let mut rules = vec![String::new(), String::new()];
        let split = if self.rules.is_empty() {
            0
        } else {
            rng.below(self.rules.len() + 1)
        };
        for (index, rule) in self.rules.iter().enumerate() {
            let text = &mut rules[usize::from(index >= split)];
            let kind = if rule.deny { "deny" } else { "allow" };
            writeln!(
                text,
                "[[{kind}]]\nid = \"{}\"\nfrom = {}\nto = {}\nports = {}\n",
                rule.id,
                list(rng, rule.from.iter().cloned()),
                list(rng, rule.to.iter().cloned()),
                list(rng, rule.ports.iter().map(Ports::render)),
            )
            .expect("string");
        }
        if rng.chance(50) {
            let [first, second] = <[String; 2]>::try_from(rules).expect("two");
            vec![(
                "policy.toml".to_owned(),
                format!("{head}{segments}{first}{second}"),
            )]
        } else {
            let [first, second] = <[String; 2]>::try_from(rules).expect("two");
            vec![
                ("00-base.toml".to_owned(), head),
                ("10-segments.toml".to_owned(), segments),
                ("20-rules.toml".to_owned(), first),
                ("30-rules.toml".to_owned(), second),
            ]
        }
    }
}

/// A TOML array of strings, on one line or one item per line.
fn list(rng: &mut Rng, items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.map(|item| format!("\"{item}\"")).collect();
    if rng.chance(15) {
        format!("[\n    {},\n]", items.join(",\n    "))
    } else {
        format!("[{}]", items.join(", "))
    }
}

/// Rules whose ports sit on, start at, end at or straddle listener and failsafe ports.
fn random_rules(
    rng: &mut Rng,
    pools: &Pools,
    segments: &[Segment],
    failsafes: &[Failsafe],
    count: usize,
    size: Size,
) -> Vec<Rule> {
    let listeners: Vec<Ports> = segments.iter().flat_map(|s| &s.ports).copied().collect();
    let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
    let pick_side = |rng: &mut Rng, destination: bool| -> Vec<String> {
        let most = if size == Size::Large { 2 } else { 3 };
        let mut side: Vec<String> = Vec::new();
        for _ in 0..1 + rng.below(most) {
            let roll = rng.below(100);
            let name = if roll < 15 {
                "*"
            } else if roll < 22 {
                if destination { "host" } else { "world" }
            } else if roll < 25 {
                if destination { "world" } else { "host" }
            } else if roll < 27 {
                ["broadcast", "multicast"][rng.below(2)]
            } else if names.is_empty() {
                "*"
            } else {
                names[rng.below(names.len())]
            };
            if !side.iter().any(|s| s == name) {
                side.push(name.to_owned());
            }
        }
        side
    };
    let mut rules = Vec::with_capacity(count);
    for index in 0..count {
        let mut ports = Vec::new();
        let most = if size == Size::Large { 2 } else { 3 };
        for _ in 0..1 + rng.below(most) {
            let roll = rng.below(100);
            let spec = if roll < 35 && !listeners.is_empty() {
                let on = *rng.pick(&listeners);
                let proto = if rng.chance(85) {
                    on.proto
                } else {
                    Proto::random(rng)
                };
                let port = on.first + rng.below(usize::from(on.last - on.first) + 1) as u16;
                Ports {
                    proto,
                    first: port,
                    last: port,
                }
            } else if roll < 55 && !listeners.is_empty() {
                // A range that starts, ends or sits around a listener.
                let on = *rng.pick(&listeners);
                let reach = |rng: &mut Rng| -> u16 {
                    match rng.below(4) {
                        0 => 0,
                        1 => 1,
                        2 => rng.below(100) as u16,
                        _ => rng.below(5000) as u16,
                    }
                };
                Ports {
                    proto: on.proto,
                    first: on.first.saturating_sub(reach(rng)).max(1),
                    last: on.last.saturating_add(reach(rng)),
                }
            } else if roll < 63 {
                Ports {
                    proto: Proto::random(rng),
                    first: 1,
                    last: u16::MAX,
                }
            } else if roll < 73 && !failsafes.is_empty() {
                let failsafe = rng.pick(failsafes).port;
                Ports {
                    first: failsafe.first,
                    last: failsafe.first,
                    ..failsafe
                }
            } else if roll < 80 {
                let (first, last) = match rng.below(3) {
                    0 => (1, 1 + rng.below(3) as u16),
                    1 => (u16::MAX - rng.below(3) as u16, u16::MAX),
                    _ => (1 + rng.below(2) as u16, u16::MAX - rng.below(2) as u16),
                };
                Ports {
                    proto: Proto::random(rng),
                    first,
                    last,
                }
            } else {
                let first = pools.port(rng);
                let last = if rng.chance(50) {
                    first
                } else {
                    first.saturating_add(rng.below(300) as u16)
                };
                Ports {
                    proto: Proto::random(rng),
                    first,
                    last,
                }
            };
            ports.push(spec);
        }
        rules.push(Rule {
            id: format!("{}{index}", ["r", "rule-", "R_", "x.r"][rng.below(4)]),
            deny: rng.chance(35),
            from: pick_side(rng, false),
            to: pick_side(rng, true),
            ports,
        });
    }
    rules
}

/// Every prefix the policy writes: the segments' and the failsafes'.
pub fn all_nets(spec: &Spec) -> Vec<Net> {
    spec.segments
        .iter()
        .flat_map(|s| s.cidrs.iter().copied())
        .chain(spec.failsafes.iter().flat_map(|f| f.from.iter().copied()))
        .collect()
}
