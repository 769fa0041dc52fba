//! The harness cleans up after itself: every netns, veth, cgroup and pin directory it
//! creates is gone after its guard drops, also when the test panics.

use std::{panic, path::PathBuf};

use enforcer_tests::{
    cgroup::TestCgroup,
    cmd::run,
    netns::{Netns, Veth},
    pins::PinDir,
    probe::{Outcome, Spawn},
};

struct Made {
    netns: String,
    link: String,
    cgroup: PathBuf,
    pins: PathBuf,
}

fn make_everything(then_panic: bool) -> Made {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let cgroup = TestCgroup::new();
    let pins = PinDir::new();
    // A process still running inside the cgroup must not keep it from being removed:
    // leak it on purpose, the cgroup guard has to kill it.
    let server = Spawn::tcp_server(std::net::SocketAddr::new(veth.peer_v4.into(), 0))
        .netns(&netns)
        .cgroup(&cgroup)
        .serve();
    std::mem::forget(server);
    let made = Made {
        netns: netns.name().to_owned(),
        link: veth.host_if().to_owned(),
        cgroup: cgroup.path().to_owned(),
        pins: pins.path().to_owned(),
    };
    assert!(run("ip", &["netns", "list"]).contains(&made.netns));
    assert!(run("ip", &["link", "show"]).contains(&made.link));
    assert!(made.cgroup.is_dir() && made.pins.is_dir());
    assert!(!then_panic, "deliberate panic with everything alive");
    made
}

fn assert_gone(made: &Made) {
    assert!(
        !run("ip", &["netns", "list"]).contains(&made.netns),
        "netns {} left",
        made.netns
    );
    assert!(
        !run("ip", &["link", "show"]).contains(&made.link),
        "veth {} left",
        made.link
    );
    assert!(
        !made.cgroup.exists(),
        "cgroup {} left",
        made.cgroup.display()
    );
    assert!(
        !made.pins.exists(),
        "pin directory {} left",
        made.pins.display()
    );
}

/// Every netns, interface, top-level cgroup and pin directory on the host.
fn snapshot() -> (String, String, Vec<PathBuf>, Vec<PathBuf>) {
    let list = |dir: PathBuf| -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        entries
    };
    (
        run("ip", &["netns", "list"]),
        run("ip", &["-brief", "link", "show"]),
        list(enforcer::host::cgroup2_mount().expect("cgroup2")),
        list(PathBuf::from(enforcer::host::DEFAULT_BPFFS)),
    )
}

#[test]
fn objects_are_removed_on_drop() {
    let made = make_everything(false);
    assert_gone(&made);
}

#[test]
fn objects_are_removed_when_a_test_panics() {
    // The panicking run's names are not returned, so compare what exists before and after.
    let before = snapshot();
    let result = panic::catch_unwind(|| make_everything(true));
    assert!(result.is_err(), "the deliberate panic happened");
    assert_eq!(snapshot(), before);
}

#[test]
fn a_process_in_a_cgroup_and_netns_runs_there() {
    let netns = Netns::new();
    let veth = Veth::new(&netns);
    let cgroup = TestCgroup::new();
    let server = Spawn::tcp_server(std::net::SocketAddr::new(veth.peer_v4.into(), 0))
        .netns(&netns)
        .cgroup(&cgroup)
        .serve();
    assert_eq!(
        cgroup.pids(),
        vec![server.pid()],
        "the server runs in the test cgroup"
    );
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    assert_ne!(
        ns_of(server.pid()),
        ns_of(std::process::id()),
        "the server runs in the netns"
    );
    assert_eq!(Spawn::tcp_client(server.addr).run(), Outcome::Ok);
}
