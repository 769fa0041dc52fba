//! The decision procedure the kernel programs run once the maps have been looked up,
//! kept pure so the compiler's property tests drive exactly this code.

use crate::{
    event::{Reason, Verdict},
    maps::{ACTION_DENY, RuleValue, SEGMENT_ANY, SEGMENT_FLAG_AUDIT, only_named},
};

/// The four rule-trie lookups for a flow from segment `src` to `dst`: exact, any
/// destination, any source, any to any. Their number is fixed, so the cost of a decision
/// does not depend on how many rules the policy has. For a destination a `*` does not
/// cover ([`only_named`]: broadcast, multicast) the two any-destination lookups repeat
/// the named ones instead.
pub const fn rule_lookups(src: u32, dst: u32) -> [(u32, u32); 4] {
    let any_dst = if only_named(dst) { dst } else { SEGMENT_ANY };
    [
        (src, dst),
        (src, any_dst),
        (SEGMENT_ANY, dst),
        (SEGMENT_ANY, any_dst),
    ]
}

/// Which of the four [`rule_lookups`] a rule-trie key serves: bit 0 exact, bit 1 any
/// destination, bit 2 any source, bit 3 any to any. The compiler ORs these over every
/// entry into `PolicyConfig::rule_lookups`, so the kernel skips lookups that cannot
/// find anything (most policies have few wildcard rules).
pub const fn lookup_bit(src: u32, dst: u32) -> u8 {
    let index = (src == SEGMENT_ANY) as u8 * 2 + (dst == SEGMENT_ANY) as u8;
    1 << index
}

/// A rule's precedence, lower first: an explicit deny beats an allow, and between rules
/// of the same action the one declared first (lower id) wins.
pub fn precedence(rule: &RuleValue) -> (u8, u32) {
    (u8::from(rule.action != ACTION_DENY), rule.rule_id)
}

/// Whether `a` takes precedence over `b` (see [`precedence`]).
pub fn outranks(a: &RuleValue, b: &RuleValue) -> bool {
    precedence(a) < precedence(b)
}

/// What a rule-trie lookup that found nothing stands for: rule 0, action 0.
pub const NO_RULE: RuleValue = RuleValue::new(0, 0);

/// The winning rule among the results of the [`rule_lookups`] ([`NO_RULE`] where a lookup
/// found nothing, and as the result when all did).
///
/// Verifier note: results are plain values with a sentinel, not `Option`s, and the loop
/// indexes the array. An `Option::None` leaves its payload undefined, and LLVM filled
/// such payloads from registers a helper call had just clobbered; the verifier refuses
/// reading those.
pub fn best_rule(found: [RuleValue; 4]) -> RuleValue {
    let mut best = NO_RULE;
    let mut i = 0;
    while i < found.len() {
        let candidate = found[i];
        if candidate.action != NO_RULE.action
            && (best.action == NO_RULE.action || outranks(&candidate, &best))
        {
            best = candidate;
        }
        i += 1;
    }
    best
}

/// A decided flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allow, deny, or audit (a denial let through because a segment is in audit mode).
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding rule's numeric id, 0 unless `reason` is [`Reason::Rule`].
    pub rule_id: u32,
}

/// Turns the winning rule ([`NO_RULE`] if none) and the two segments' flags into a
/// decision: no rule means the default deny; a denial becomes [`Verdict::Audit`] when
/// either segment is in audit mode.
pub fn decide(best: RuleValue, src_flags: u32, dst_flags: u32) -> Decision {
    let audit_mode = (src_flags | dst_flags) & SEGMENT_FLAG_AUDIT != 0;
    let (denied, reason, rule_id) = if best.action == NO_RULE.action {
        (true, Reason::DefaultDeny, 0)
    } else {
        (best.action == ACTION_DENY, Reason::Rule, best.rule_id)
    };
    let verdict = match (denied, audit_mode) {
        (false, _) => Verdict::Allow,
        (true, false) => Verdict::Deny,
        (true, true) => Verdict::Audit,
    };
    Decision {
        verdict,
        reason,
        rule_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::ACTION_ALLOW;

    #[test]
    fn each_of_the_four_lookups_has_its_own_bit() {
        let bits = rule_lookups(30, 40).map(|(src, dst)| lookup_bit(src, dst));
        assert_eq!(bits, [0b0001, 0b0010, 0b0100, 0b1000]);
    }

    #[test]
    fn deny_beats_allow_beats_default() {
        let allow = RuleValue::new(1, ACTION_ALLOW);
        let deny = RuleValue::new(7, ACTION_DENY);
        assert_eq!(best_rule([allow, NO_RULE, deny, NO_RULE]), deny);
        assert_eq!(best_rule([NO_RULE, allow, NO_RULE, NO_RULE]), allow);
        assert_eq!(best_rule([NO_RULE; 4]), NO_RULE);
        let d = decide(NO_RULE, 0, 0);
        assert_eq!(
            (d.verdict, d.reason, d.rule_id),
            (Verdict::Deny, Reason::DefaultDeny, 0)
        );
    }

    #[test]
    fn first_declared_rule_wins_within_an_action() {
        let early = RuleValue::new(2, ACTION_ALLOW);
        let late = RuleValue::new(5, ACTION_ALLOW);
        assert_eq!(best_rule([late, early, NO_RULE, NO_RULE]), early);
    }

    #[test]
    fn audit_mode_turns_denials_into_audit() {
        let deny = RuleValue::new(3, ACTION_DENY);
        assert_eq!(decide(deny, 0, SEGMENT_FLAG_AUDIT).verdict, Verdict::Audit);
        assert_eq!(
            decide(NO_RULE, SEGMENT_FLAG_AUDIT, 0).verdict,
            Verdict::Audit
        );
        let allow = RuleValue::new(3, ACTION_ALLOW);
        assert_eq!(decide(allow, SEGMENT_FLAG_AUDIT, 0).verdict, Verdict::Allow);
    }
}
