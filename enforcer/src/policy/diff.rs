//! `diff`: every (from, to, port/proto) whose verdict changes between two policies,
//! grouped by segment pair, plus the rule, segment and failsafe changes behind them.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::event::Verdict;
use serde::{Deserialize, Serialize};

use super::{
    image::MapImage,
    lookup::ImageIndex,
    model::{IMPLICIT, Policy, Proto, Rule, Segment, SegmentRef},
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

/// How many named items (rules, segments or failsafes) a difference adds, removes and
/// changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCounts {
    /// Added.
    pub added: u64,
    /// Removed.
    pub removed: u64,
    /// Changed.
    pub changed: u64,
}

impl ItemCounts {
    fn of(changes: &[ItemChange]) -> Self {
        let count = |kind: &str| changes.iter().filter(|c| c.change == kind).count() as u64;
        Self {
            added: count("added"),
            removed: count("removed"),
            changed: count("changed"),
        }
    }
}

/// The size of a difference: what `policy diff` ends with, and what the agent's record of
/// an applied generation says about the generation before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    /// Segment pairs with at least one verdict change.
    pub segment_pairs: u64,
    /// Port runs whose verdict changes.
    pub verdict_changes: u64,
    /// Of those, runs that pass now (allow or audit) and did not.
    pub opened: u64,
    /// Runs that passed and no longer do.
    pub closed: u64,
    /// Rules.
    pub rules: ItemCounts,
    /// Segments.
    pub segments: ItemCounts,
    /// Failsafes.
    pub failsafes: ItemCounts,
}

impl std::fmt::Display for DiffSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.verdict_changes == 0 {
            f.write_str("no verdict changes")?;
        } else {
            write!(
                f,
                "{} verdict changes in {} segment pairs ({} opened, {} closed)",
                self.verdict_changes, self.segment_pairs, self.opened, self.closed
            )?;
        }
        for (title, counts) in [
            ("rules", self.rules),
            ("segments", self.segments),
            ("failsafes", self.failsafes),
        ] {
            if counts != ItemCounts::default() {
                write!(
                    f,
                    "; {title} +{} -{} ~{}",
                    counts.added, counts.removed, counts.changed
                )?;
            }
        }
        Ok(())
    }
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
    /// Their size.
    pub summary: DiffSummary,
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

/// Port boundaries of `proto` for the flows `rules` decide: the protocol's first port and
/// last port + 1, and every rule range's start and end + 1. Between two boundaries the
/// verdict of a segment pair these rules cover cannot change.
fn boundaries<'a>(rules: impl Iterator<Item = &'a Rule>, proto: Proto) -> Vec<u32> {
    let mut points = BTreeSet::from([
        u32::from(proto.first_port()),
        u32::from(proto.last_port()) + 1,
    ]);
    for range in rules.flat_map(|r| &r.ports).filter(|p| p.proto == proto) {
        points.insert(u32::from(range.first));
        points.insert(u32::from(range.last) + 1);
    }
    points.into_iter().collect()
}

/// Which rules of one policy can decide a flow from or to each segment name, as rule
/// indices in ascending order.
struct Coverage<'p> {
    /// The policy's rules.
    rules: &'p [Rule],
    /// Rule id → its index.
    by_id: BTreeMap<&'p str, usize>,
    /// Segment name → the rules whose `from` covers it.
    from: BTreeMap<&'p str, Vec<usize>>,
    /// Segment name → the rules whose `to` covers it.
    to: BTreeMap<&'p str, Vec<usize>>,
}

impl<'p> Coverage<'p> {
    fn new(policy: &'p Policy, names: &BTreeSet<&'p str>) -> Self {
        let mut coverage = Self {
            rules: &policy.rules,
            by_id: BTreeMap::new(),
            from: BTreeMap::new(),
            to: BTreeMap::new(),
        };
        for (index, rule) in policy.rules.iter().enumerate() {
            coverage.by_id.insert(&rule.id, index);
            for name in covered(names, &rule.from, SegmentRef::covers) {
                coverage.from.entry(name).or_default().push(index);
            }
            for name in covered(names, &rule.to, SegmentRef::covers_destination) {
                coverage.to.entry(name).or_default().push(index);
            }
        }
        coverage
    }

    /// The rules that can decide a flow from `from` to `to`.
    fn between(&self, from: &str, to: &str) -> impl Iterator<Item = &'p Rule> {
        let sources = self.from.get(from).map_or(&[][..], Vec::as_slice);
        let destinations = self.to.get(to).map_or(&[][..], Vec::as_slice);
        let rules = self.rules;
        sources
            .iter()
            .filter(move |index| destinations.binary_search(index).is_ok())
            .map(move |&index| &rules[index])
    }

    /// The segment pairs rule `id` can decide (none when the policy has no such rule).
    fn pairs_of(&self, id: &str, names: &BTreeSet<&'p str>) -> Vec<(&'p str, &'p str)> {
        let Some(rule) = self.by_id.get(id).map(|&index| &self.rules[index]) else {
            return Vec::new();
        };
        let destinations: Vec<&str> =
            covered(names, &rule.to, SegmentRef::covers_destination).collect();
        covered(names, &rule.from, SegmentRef::covers)
            .flat_map(|from| destinations.iter().map(move |&to| (from, to)))
            .collect()
    }
}

/// The names among `names` that `refs` cover by `covers`: a named reference is looked up,
/// only `*` walks every name (a large policy names each segment in a few rules).
fn covered<'p, 'r>(
    names: &'r BTreeSet<&'p str>,
    refs: &'r [SegmentRef],
    covers: fn(&SegmentRef, &str) -> bool,
) -> impl Iterator<Item = &'p str> + 'r {
    let mut found: BTreeSet<&'p str> = BTreeSet::new();
    for reference in refs {
        match reference {
            SegmentRef::Named(name) => found.extend(names.get(name.as_str()).copied()),
            SegmentRef::Any => found.extend(names.iter().copied().filter(|n| covers(reference, n))),
        }
    }
    found.into_iter()
}

/// The segment pairs whose verdicts can differ between the two policies: every pair a
/// changed rule decides (under its old or its new meaning) and every pair with a changed
/// segment on either side (its mode). The verdict of any other pair comes from the same
/// rules between the same segments with the same modes, so it stays (the policy's
/// defaults only say what is recorded and how unclassified flows go, never a pair's
/// verdict).
fn touched_pairs<'p>(
    names: &BTreeSet<&'p str>,
    coverage: [&Coverage<'p>; 2],
    rules: &[ItemChange],
    segments: &[ItemChange],
) -> BTreeSet<(&'p str, &'p str)> {
    let mut pairs = BTreeSet::new();
    for segment in segments {
        let Some(&changed) = names.get(segment.name.as_str()) else {
            continue;
        };
        for &other in names {
            pairs.insert((changed, other));
            pairs.insert((other, changed));
        }
    }
    for rule in rules {
        for side in coverage {
            pairs.extend(side.pairs_of(&rule.name, names));
        }
    }
    pairs
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

/// What a segment is: its members, listeners, mode and grants.
fn segment_meaning(segment: &Segment) -> impl PartialEq + '_ {
    (
        &segment.cgroups,
        &segment.cidrs,
        &segment.ports,
        segment.mode,
        segment.raw_sockets,
        segment.icmp_errors,
    )
}

/// Compares two compiled policies. Only the segment pairs a changed rule or segment
/// touches are evaluated ([`touched_pairs`]), each at the port boundaries of its own rules,
/// so a small change to a large policy is compared in milliseconds.
pub fn diff(old: (&Policy, &MapImage), new: (&Policy, &MapImage)) -> PolicyDiff {
    let (old_index, new_index) = (ImageIndex::new(old.1), ImageIndex::new(new.1));
    let mut names: BTreeSet<&str> = IMPLICIT.into_iter().collect();
    names.extend(old.0.segments.iter().map(|s| s.name.as_str()));
    names.extend(new.0.segments.iter().map(|s| s.name.as_str()));
    let rules = items(
        old.0.rules.iter().map(|r| (r.id.as_str(), rule_meaning(r))),
        new.0.rules.iter().map(|r| (r.id.as_str(), rule_meaning(r))),
    );
    let segments = items(
        old.0
            .segments
            .iter()
            .map(|s| (s.name.as_str(), segment_meaning(s))),
        new.0
            .segments
            .iter()
            .map(|s| (s.name.as_str(), segment_meaning(s))),
    );
    let coverage = [Coverage::new(old.0, &names), Coverage::new(new.0, &names)];
    let pairs = touched_pairs(&names, [&coverage[0], &coverage[1]], &rules, &segments);
    let mut verdicts = Vec::new();
    for (from, to) in pairs {
        let mut changes: Vec<VerdictChange> = Vec::new();
        for proto in Proto::ALL {
            let deciding = coverage[0]
                .between(from, to)
                .chain(coverage[1].between(from, to));
            let points = boundaries(deciding, proto);
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
                from: from.to_owned(),
                to: to.to_owned(),
                changes,
            });
        }
    }
    let failsafes = items(
        old.0
            .failsafes
            .iter()
            .map(|f| (f.name.as_str(), (&f.from, f.ports))),
        new.0
            .failsafes
            .iter()
            .map(|f| (f.name.as_str(), (&f.from, f.ports))),
    );
    let runs = || verdicts.iter().flat_map(|pair| &pair.changes);
    let summary = DiffSummary {
        segment_pairs: verdicts.len() as u64,
        verdict_changes: runs().count() as u64,
        opened: runs()
            .filter(|c| !passes_word(&c.old) && passes_word(&c.new))
            .count() as u64,
        closed: runs()
            .filter(|c| passes_word(&c.old) && !passes_word(&c.new))
            .count() as u64,
        rules: ItemCounts::of(&rules),
        segments: ItemCounts::of(&segments),
        failsafes: ItemCounts::of(&failsafes),
    };
    PolicyDiff {
        verdicts,
        rules,
        segments,
        failsafes,
        summary,
    }
}

/// Whether a verdict word of a [`VerdictChange`] lets traffic through.
fn passes_word(word: &str) -> bool {
    [Verdict::Allow, Verdict::Audit]
        .iter()
        .any(|verdict| verdict.word() == word)
}
