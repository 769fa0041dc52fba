//! The names the loader uses for the kernel object's maps and programs are the ones the
//! object declares. Each is written twice, once in `enforcer-ebpf` (a `#[map]` static, a
//! program function) and once in `enforcer-common` (a string the loader looks up): these
//! tests parse the embedded object and hold the two together.

use std::collections::BTreeSet;

use aya_obj::Object;
use enforcer_common::{
    event::Hook,
    maps::{FOLD_REPORT_PROGRAM, MAP_NAMES},
};

/// The kernel object embedded in the agent.
fn object() -> Object {
    Object::parse(enforcer::object::BYTES).expect("the embedded kernel object parses")
}

#[test]
fn the_loader_knows_every_map_of_the_kernel_object_and_no_other() {
    let in_object: BTreeSet<String> = object().maps.into_keys().collect();
    let in_loader: BTreeSet<String> = MAP_NAMES.iter().map(|&name| name.to_owned()).collect();
    assert_eq!(
        in_loader.len(),
        MAP_NAMES.len(),
        "MAP_NAMES lists a name twice"
    );
    assert_eq!(in_object, in_loader);
}

#[test]
fn every_hook_names_a_program_of_the_kernel_object_and_no_program_is_left_over() {
    let in_object: BTreeSet<String> = object().programs.into_keys().collect();
    let in_loader: BTreeSet<String> = Hook::ALL
        .iter()
        .map(|hook| hook.program_name().to_owned())
        .chain([FOLD_REPORT_PROGRAM.to_owned()])
        .collect();
    assert_eq!(
        in_loader.len(),
        Hook::ALL.len() + 1,
        "two programs share a name"
    );
    assert_eq!(in_object, in_loader);
}
