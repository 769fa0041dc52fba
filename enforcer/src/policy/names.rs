//! The words one applied policy generation gives its numeric ids: what turns a kernel
//! event's segment, rule and failsafe numbers back into the names in the policy files.

use enforcer_common::{event::Reason, maps::SEGMENT_UNCLASSIFIED};
use serde::{Deserialize, Serialize};

use super::image::MapImage;

/// How many generations' names the agent keeps: events of a replaced generation may
/// still be in the ring when the next one is applied.
pub const GENERATIONS_KEPT: usize = 4;

/// The names one policy generation gives its numeric ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationNames {
    /// The generation number.
    pub generation: u32,
    /// SHA-256 of its policy files.
    pub source_sha256: String,
    /// Segment names by id.
    pub segments: Vec<String>,
    /// Rule ids by numeric id minus one.
    pub rules: Vec<String>,
    /// Failsafe names by number minus one.
    pub failsafes: Vec<String>,
}

impl GenerationNames {
    /// The names of `image` once applied as `generation`, compiled from policy files
    /// whose SHA-256 is `source_sha256`.
    pub fn of(image: &MapImage, generation: u32, source_sha256: &str) -> Self {
        Self {
            generation,
            source_sha256: source_sha256.to_owned(),
            segments: image.segment_names.clone(),
            rules: image.rule_names.clone(),
            failsafes: image.failsafe_names.clone(),
        }
    }

    /// The rule, failsafe or nothing an event's `rule_id` names under its reason.
    pub fn rule_name(&self, reason: Reason, id: u32) -> Option<&str> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        match reason {
            Reason::Rule => self.rules.get(index).map(String::as_str),
            Reason::Failsafe => self.failsafes.get(index).map(String::as_str),
            _ => None,
        }
    }

    /// The name of segment `id` when this generation has one, borrowed.
    pub fn segment_name(&self, id: u32) -> Option<&str> {
        if id == SEGMENT_UNCLASSIFIED {
            return None;
        }
        self.segments
            .get(usize::try_from(id).ok()?)
            .map(String::as_str)
    }

    /// The name of segment `id`; `unclassified` for the kernel's unclassified marker and
    /// `segment#N` for an id this generation does not have.
    pub fn segment(&self, id: u32) -> String {
        if id == SEGMENT_UNCLASSIFIED {
            return "unclassified".to_owned();
        }
        usize::try_from(id)
            .ok()
            .and_then(|index| self.segments.get(index))
            .cloned()
            .unwrap_or_else(|| format!("segment#{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_the_policy_words() {
        let names = GenerationNames {
            generation: 2,
            segments: vec!["*".into(), "host".into(), "world".into(), "orders".into()],
            rules: vec!["orders-out".into()],
            failsafes: vec!["ssh".into()],
            ..GenerationNames::default()
        };
        assert_eq!(names.segment(3), "orders");
        assert_eq!(names.segment(9), "segment#9");
        assert_eq!(names.segment(SEGMENT_UNCLASSIFIED), "unclassified");
        assert_eq!(names.rule_name(Reason::Rule, 1), Some("orders-out"));
        assert_eq!(names.rule_name(Reason::Failsafe, 1), Some("ssh"));
        assert_eq!(names.rule_name(Reason::Rule, 0), None);
        assert_eq!(names.rule_name(Reason::DefaultDeny, 1), None);
    }
}
