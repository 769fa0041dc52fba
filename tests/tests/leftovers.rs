//! Run last: nothing the privileged tests (and the demo they run) made is left on the
//! host: no process, namespace, interface, cgroup, pin directory or file.

use enforcer_tests::{
    leftovers::{DEMO, TESTS, find},
    require_root,
};

#[test]
fn nothing_made_by_the_tests_is_left_on_the_host() {
    require_root();
    let left: Vec<String> = find(TESTS)
        .into_iter()
        .chain(find(DEMO))
        .map(|leftover| leftover.to_string())
        .collect();
    assert!(left.is_empty(), "left behind: {left:#?}");
}
