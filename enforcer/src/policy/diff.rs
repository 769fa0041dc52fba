//! `diff`: every (from, to, port/proto) whose verdict changes between two policies,
//! grouped by segment pair, plus the rule, segment and failsafe changes behind them.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::event::Verdict;
use serde::Serialize;

use super::{
    image::MapImage,
    lookup::ImageIndex,
    model::{IMPLICIT, Policy, Proto, Rule},
};

/// A run of ports between two segments whose verdict changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerdictChange {
    /// `PORT/PROTO` or `FIRST-LAST/PROTO`.
    pub ports: String,
    /// The protocol.
    pub proto: Proto,
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
    /// Verdict under the old policy (`absent` when a segment is new).
    pub old: String,
    /// Verdict under the new policy (`absent` when a segment was removed).
    pub new: String,
}

/// Changes between one ordered pair of segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairChanges {
    /// Source segment.
    pub from: String,
    /// Destination segment.
    pub to: String,
    /// The port runs that change.
    pub changes: Vec<VerdictChange>,
}

/// A change to a named item (rule, segment, failsafe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemChange {
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// The rule id, segment or failsafe name.
    pub name: String,
}

/// The whole difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// Verdict changes, by segment pair.
    pub verdicts: Vec<PairChanges>,
    /// Rule changes.
    pub rules: Vec<ItemChange>,
    /// Segment changes (members, mode, raw sockets).
    pub segments: Vec<ItemChange>,
    /// Failsafe changes.
    pub failsafes: Vec<ItemChange>,
}

impl PolicyDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.verdicts.is_empty()
            && self.rules.is_empty()
            && self.segments.is_empty()
            && self.failsafes.is_empty()
    }
}

/// Port boundaries per protocol: every rule range start and end+1, in both policies.
fn boundaries(policies: [&Policy; 2], proto: Proto) -> Vec<u32> {
    let mut points = BTreeSet::from([
        u32::from(proto.first_port()),
        u32::from(proto.last_port()) + 1,
    ]);
    for policy in policies {
        for range in policy
            .rules
            .iter()
            .flat_map(|r| &r.ports)
            .filter(|p| p.proto == proto)
        {
            points.insert(u32::from(range.first));
            points.insert(u32::from(range.last) + 1);
        }
    }
    points.into_iter().collect()
}

fn verdict_of(
    index: &ImageIndex<'_>,
    from: &str,
    to: &str,
    proto: Proto,
    port: u16,
) -> Option<Verdict> {
    let image = index.image();
    let (src, dst) = (image.segment_id(from)?, image.segment_id(to)?);
    Some(index.decide(src, dst, proto.number(), port).verdict)
}

fn word(verdict: Option<Verdict>) -> String {
    verdict.map_or_else(|| "absent".to_owned(), |v| v.word().to_owned())
}

/// Whether a verdict lets traffic through (allow or audit).
fn passes(verdict: Option<Verdict>) -> bool {
    matches!(verdict, Some(Verdict::Allow | Verdict::Audit))
}

fn items<'a, T: PartialEq + 'a>(
    old: impl Iterator<Item = (&'a str, T)>,
    new: impl Iterator<Item = (&'a str, T)>,
) -> Vec<ItemChange> {
    let old: BTreeMap<&str, T> = old.collect();
    let new: BTreeMap<&str, T> = new.collect();
    let mut changes = Vec::new();
    for (name, item) in &old {
        match new.get(name) {
            None => changes.push(ItemChange {
                change: "removed",
                name: (*name).to_owned(),
            }),
            Some(other) if other != item => changes.push(ItemChange {
                change: "changed",
                name: (*name).to_owned(),
            }),
            Some(_) => {}
        }
    }
    for name in new.keys().filter(|n| !old.contains_key(*n)) {
        changes.push(ItemChange {
            change: "added",
            name: (*name).to_owned(),
        });
    }
    changes
}

/// What a rule means, without its place in the file.
fn rule_meaning(rule: &Rule) -> impl PartialEq + '_ {
    (rule.action, &rule.from, &rule.to, &rule.ports)
}

/// Compares two compiled policies.
pub fn diff(old: (&Policy, &MapImage), new: (&Policy, &MapImage)) -> PolicyDiff {
    let (old_index, new_index) = (ImageIndex::new(old.1), ImageIndex::new(new.1));
    let mut names: BTreeSet<&str> = IMPLICIT.into_iter().collect();
    names.extend(old.0.segments.iter().map(|s| s.name.as_str()));
    names.extend(new.0.segments.iter().map(|s| s.name.as_str()));
    let mut verdicts = Vec::new();
    for from in &names {
        for to in &names {
            let mut changes: Vec<VerdictChange> = Vec::new();
            for proto in Proto::ALL {
                let points = boundaries([old.0, new.0], proto);
                for pair in points.windows(2) {
                    let (first, last) = (pair[0] as u16, (pair[1] - 1) as u16);
                    let before = verdict_of(&old_index, from, to, proto, first);
                    let after = verdict_of(&new_index, from, to, proto, first);
                    let counts = match (before, after) {
                        (Some(b), Some(a)) => a != b,
                        // A segment that exists on one side only: show what it may do.
                        _ => passes(before) || passes(after),
                    };
                    if !counts {
                        continue;
                    }
                    let (old_word, new_word) = (word(before), word(after));
                    match changes.last_mut() {
                        Some(run)
                            if run.proto == proto
                                && u32::from(run.last) + 1 == u32::from(first)
                                && run.old == old_word
                                && run.new == new_word =>
                        {
                            run.last = last;
                        }
                        _ => changes.push(VerdictChange {
                            ports: String::new(),
                            proto,
                            first,
                            last,
                            old: old_word,
                            new: new_word,
                        }),
                    }
                }
            }
            for change in &mut changes {
                change.ports = super::model::PortRange {
                    proto: change.proto,
                    first: change.first,
                    last: change.last,
                }
                .to_string();
            }
            if !changes.is_empty() {
                verdicts.push(PairChanges {
                    from: (*from).to_owned(),
                    to: (*to).to_owned(),
                    changes,
                });
            }
        }
    }
    PolicyDiff {
        verdicts,
        rules: items(
            old.0.rules.iter().map(|r| (r.id.as_str(), rule_meaning(r))),
            new.0.rules.iter().map(|r| (r.id.as_str(), rule_meaning(r))),
        ),
        segments: items(
            old.0.segments.iter().map(|s| {
                (
                    s.name.as_str(),
                    (
                        &s.cgroups,
                        &s.cidrs,
                        &s.ports,
                        s.mode,
                        s.raw_sockets,
                        s.icmp_errors,
                    ),
                )
            }),
            new.0.segments.iter().map(|s| {
                (
                    s.name.as_str(),
                    (
                        &s.cgroups,
                        &s.cidrs,
                        &s.ports,
                        s.mode,
                        s.raw_sockets,
                        s.icmp_errors,
                    ),
                )
            }),
        ),
        failsafes: items(
            old.0
                .failsafes
                .iter()
                .map(|f| (f.name.as_str(), (&f.from, f.ports))),
            new.0
                .failsafes
                .iter()
                .map(|f| (f.name.as_str(), (&f.from, f.ports))),
        ),
    }
}
