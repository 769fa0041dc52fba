//! What the kernel recorded about decisions: events drained from the ring buffer, and
//! the names behind their numeric ids.

use enforcer::{loader::EventReader, policy::image::MapImage};
use enforcer_common::{
    event::{FlowEvent, Reason},
    maps::RuleCounters,
};

/// Every event waiting in the ring buffer. The hooks write their event before the call
/// they decide returns (or the packet moves on), so a finished client's events are there.
pub fn drain(reader: &mut EventReader) -> Vec<FlowEvent> {
    std::iter::from_fn(|| reader.next_event())
        .map(|event| event.unwrap_or_else(|err| panic!("bad event record: {err}")))
        .collect()
}

/// The position of `name` in `names`, as a map id.
fn id_of(names: &[String], name: &str, what: &str) -> u32 {
    let index = names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no {what} {name:?} in the test policy"));
    u32::try_from(index).expect("few names")
}

/// The id of rule `name` in `image` (rule ids start at 1).
pub fn rule_id(image: &MapImage, name: &str) -> u32 {
    id_of(&image.rule_names, name, "rule") + 1
}

/// The id of segment `name` in `image`.
pub fn segment_id(image: &MapImage, name: &str) -> u32 {
    id_of(&image.segment_names, name, "segment")
}

/// What decided an event, as a user reads it: the rule's name, or the reason's word.
pub fn decided_by(image: &MapImage, event: &FlowEvent) -> String {
    match Reason::from_code(event.reason) {
        Some(Reason::Rule) => image
            .rule_names
            .get(event.rule_id as usize - 1)
            .cloned()
            .unwrap_or_else(|| panic!("event names unknown rule id {}", event.rule_id)),
        Some(reason) => reason.word().to_owned(),
        None => panic!("event has unknown reason code {}", event.reason),
    }
}

/// The counters of rule `name` from a loader's counters.
pub fn rule_counters(
    loader: &mut enforcer::loader::Loader,
    image: &MapImage,
    name: &str,
) -> RuleCounters {
    let counters = loader.counters().expect("read counters");
    counters.rules[rule_id(image, name) as usize - 1]
}
