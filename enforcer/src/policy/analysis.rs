//! Warnings about rules that can never decide a flow: an allow or deny fully covered by
//! earlier rules of the same action (shadowed), and an allow fully covered by denies
//! (dead, since an explicit deny always wins).

use std::collections::BTreeSet;

use rustc_hash::FxHashMap as HashMap;

use super::{
    diagnostic::Diagnostic,
    model::{Action, Policy, Proto, Rule, SegmentRef},
};

/// Rules indexed by each `(from, to)` reference pair they name.
struct PairIndex<'p> {
    by_pair: HashMap<(&'p SegmentRef, &'p SegmentRef), Vec<usize>>,
}

impl<'p> PairIndex<'p> {
    fn new(rules: &'p [Rule]) -> Self {
        let mut by_pair: HashMap<_, Vec<usize>> = HashMap::default();
        for (index, rule) in rules.iter().enumerate() {
            for from in &rule.from {
                for to in &rule.to {
                    by_pair.entry((from, to)).or_default().push(index);
                }
            }
        }
        Self { by_pair }
    }

    /// Rules that match every flow `from -> to` could stand for: those naming the same
    /// segments or `*`. (A `*` side is only covered by `*`.)
    fn covering(
        &self,
        from: &'p SegmentRef,
        to: &'p SegmentRef,
    ) -> impl Iterator<Item = usize> + '_ {
        let any = &SegmentRef::Any;
        let froms: &[&SegmentRef] = if *from == SegmentRef::Any {
            &[any]
        } else {
            &[from, any]
        };
        let tos: &[&SegmentRef] = if *to == SegmentRef::Any {
            &[any]
        } else {
            &[to, any]
        };
        let mut keys = Vec::new();
        for f in froms {
            for t in tos {
                keys.push((*f, *t));
            }
        }
        keys.into_iter()
            .filter_map(|key| self.by_pair.get(&key))
            .flatten()
            .copied()
    }
}

/// Whether the union of `cover` contains every port of `want` (all for one protocol).
fn covers(mut cover: Vec<(u16, u16)>, want: &[(u16, u16)]) -> bool {
    cover.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (first, last) in cover {
        let (first, last) = (u32::from(first), u32::from(last));
        match merged.last_mut() {
            Some(top) if first <= top.1 + 1 => top.1 = top.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    want.iter().all(|(first, last)| {
        merged
            .iter()
            .any(|(a, b)| *a <= u32::from(*first) && u32::from(*last) <= *b)
    })
}

/// Whether every flow rule `index` matches is matched by some rule accepted by `eligible`;
/// returns the ids of the rules that cover it.
fn covered_by(
    rules: &[Rule],
    index: &PairIndex<'_>,
    target: usize,
    eligible: impl Fn(usize) -> bool,
) -> Option<BTreeSet<usize>> {
    let rule = &rules[target];
    let mut used = BTreeSet::new();
    for from in &rule.from {
        for to in &rule.to {
            let candidates: Vec<usize> =
                index.covering(from, to).filter(|i| eligible(*i)).collect();
            for proto in Proto::ALL {
                let want: Vec<(u16, u16)> = rule
                    .ports
                    .iter()
                    .filter(|p| p.proto == proto)
                    .map(|p| (p.first, p.last))
                    .collect();
                if want.is_empty() {
                    continue;
                }
                let cover: Vec<(u16, u16)> = candidates
                    .iter()
                    .flat_map(|i| rules[*i].ports.iter().map(move |p| (*i, p)))
                    .filter(|(_, p)| p.proto == proto)
                    .map(|(i, p)| {
                        used.insert(i);
                        (p.first, p.last)
                    })
                    .collect();
                if !covers(cover, &want) {
                    return None;
                }
            }
        }
    }
    Some(used)
}

fn names(rules: &[Rule], used: &BTreeSet<usize>) -> String {
    let mut names: Vec<String> = used
        .iter()
        .take(5)
        .map(|i| format!("`{}`", rules[*i].id))
        .collect();
    if used.len() > 5 {
        names.push(format!("and {} more", used.len() - 5));
    }
    names.join(", ")
}

/// The shadowed-rule and dead-allow warnings for a valid policy.
pub fn warnings(policy: &Policy) -> Vec<Diagnostic> {
    let rules = &policy.rules;
    let index = PairIndex::new(rules);
    let mut found = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.action == Action::Allow
            && let Some(used) = covered_by(rules, &index, i, |j| rules[j].action == Action::Deny)
        {
            found.push(
                Diagnostic::warning(
                    "dead-allow",
                    rule.span.clone(),
                    format!(
                        "allow `{}` never allows anything: deny rules match every flow it matches",
                        rule.id
                    ),
                )
                .with_note(format!("covered by {}", names(rules, &used))),
            );
            continue;
        }
        if let Some(used) = covered_by(rules, &index, i, |j| {
            j < i && rules[j].action == rule.action
        }) {
            found.push(
                Diagnostic::warning(
                    "shadowed-rule",
                    rule.span.clone(),
                    format!(
                        "rule `{}` never decides a flow: earlier rules match every flow it matches",
                        rule.id
                    ),
                )
                .with_note(format!("shadowed by {}", names(rules, &used))),
            );
        }
    }
    found
}
