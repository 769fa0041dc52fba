//! `socket()` at the cgroup sock_create hook: a process of a segment cannot open a raw
//! socket (which would bypass the connect hooks) unless its segment is granted
//! `raw_sockets`; audit mode lets it through and records `audit`; processes in no segment
//! are not governed.

use std::net::SocketAddr;

use enforcer_common::event::{Hook, Verdict};
use enforcer_tests::{
    cgroup::TestCgroup,
    events::{decided_by, drain, segment_id},
    policy::loaded_with,
    probe::{Outcome, Spawn},
};

const EPERM: i32 = 1;

fn raw_socket(cgroup: &TestCgroup, v6: bool) -> Outcome {
    let addr: SocketAddr = if v6 {
        "[2001:db8::1]:0".parse().expect("valid")
    } else {
        "198.18.0.1:0".parse().expect("valid")
    };
    Spawn::raw_socket(addr).cgroup(cgroup).run()
}

#[test]
fn raw_sockets_are_refused_to_segments_without_the_grant() {
    let parent = TestCgroup::new();
    let locked = parent.child("locked.service");
    let tools = parent.child("tools.service");
    let trial = parent.child("trial.service");
    let unsegmented = parent.child("other.service");
    let image = enforcer_tests::policy::image(&format!(
        r#"
[segments.locked]
cgroups = ["{}"]

[segments.tools]
cgroups = ["{}"]
raw_sockets = true

[segments.trial]
cgroups = ["{}"]
mode = "audit"
"#,
        locked.relative_path(),
        tools.relative_path(),
        trial.relative_path()
    ));
    let mut loader = loaded_with(&image);
    let mut events = loader.take_events().expect("events");
    loader.attach_cgroup(parent.path()).expect("attach");

    for v6 in [false, true] {
        let refused = raw_socket(&locked, v6);
        assert!(
            matches!(refused, Outcome::Error { errno, .. } if errno == EPERM),
            "a raw socket in `locked` (v6: {v6}) should get EPERM, got {refused:?}"
        );
        assert_eq!(raw_socket(&tools, v6), Outcome::Ok, "granted (v6: {v6})");
        assert_eq!(raw_socket(&trial, v6), Outcome::Ok, "audit mode (v6: {v6})");
        assert_eq!(raw_socket(&unsegmented, v6), Outcome::Ok, "no segment");
    }

    let recorded: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|e| e.hook == Hook::SockCreate as u8)
        .collect();
    let verdicts = |segment: &str| -> Vec<u8> {
        let id = segment_id(&image, segment);
        recorded
            .iter()
            .filter(|e| e.src_segment == id)
            .map(|e| e.verdict)
            .collect()
    };
    assert_eq!(verdicts("locked"), [Verdict::Deny as u8; 2]);
    assert_eq!(verdicts("tools"), [Verdict::Allow as u8; 2]);
    assert_eq!(verdicts("trial"), [Verdict::Audit as u8; 2]);
    assert_eq!(
        recorded.len(),
        6,
        "nothing recorded for `host`: {recorded:#?}"
    );
    assert!(
        recorded
            .iter()
            .all(|e| decided_by(&image, e) == "raw-socket")
    );
}
