//! The README's main command: the demo enclave (`enforcer-demo policies/demo`) shows
//! every row of its matrix as expected, verifies its audit store, leaves nothing behind,
//! runs again, and cleans up after a run that was killed outright.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{DEMO_PREFIX, require_root};

fn demo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_enforcer-demo")
}

fn demo_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/demo")
}

fn run_demo() -> Output {
    run_demo_with(&[])
}

/// The demo with `options` before its policy directory.
fn run_demo_with(options: &[&std::ffi::OsStr]) -> Output {
    Command::new(demo_bin())
        .args(options)
        .arg(demo_policy())
        .output()
        .expect("run enforcer-demo")
}

/// Everything of the demo that exists on the host now, found independently of the demo's
/// own check.
fn demo_objects() -> Vec<String> {
    let mut found: Vec<String> = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with(DEMO_PREFIX))
        .map(str::to_owned)
        .collect();
    let cgroup2 = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    for dir in [
        cgroup2.join(DEMO_PREFIX),
        Path::new(enforcer::host::DEFAULT_BPFFS).join(DEMO_PREFIX),
        std::env::temp_dir().join(DEMO_PREFIX),
    ] {
        if dir.exists() {
            found.push(dir.display().to_string());
        }
    }
    let probes = Command::new("pgrep")
        .args(["-f", "enforcer-probe http-serve"])
        .output()
        .expect("run pgrep");
    found.extend(
        String::from_utf8_lossy(&probes.stdout)
            .lines()
            .map(|pid| format!("http server process {pid}")),
    );
    found
}

fn assert_passed(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("15 of 15 flows as expected."),
        "the matrix: {stdout}"
    );
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    assert!(stdout.contains("intact: "), "verify ran: {stdout}");
    assert!(
        stdout.contains("nothing of the demo is left on this machine."),
        "{stdout}"
    );
    stdout
}

#[test]
fn the_demo_passes_twice_and_leaves_nothing() {
    require_root();
    // The second run keeps a copy of its audit store, which verifies and answers queries
    // once the sandbox is gone.
    let kept = std::env::temp_dir().join(format!("{}-kept-store", enforcer_tests::unique_name()));
    for run in 1..=2 {
        let output = if run == 1 {
            run_demo()
        } else {
            run_demo_with(&["--keep".as_ref(), kept.as_os_str()])
        };
        let stdout = assert_passed(&output);
        assert!(
            !stdout.contains("interrupted earlier run"),
            "run {run} found leftovers of an earlier one: {stdout}"
        );
        let left = demo_objects();
        assert!(left.is_empty(), "run {run} left {left:?}");
    }
    let enforcer = |args: &[&std::ffi::OsStr]| {
        Command::new(enforcer_tests::agent::enforcer_bin())
            .args(args)
            .output()
            .expect("run enforcer")
    };
    let verified = enforcer(&["audit".as_ref(), "verify".as_ref(), kept.as_os_str()]);
    let queried = enforcer(&[
        "audit".as_ref(),
        "query".as_ref(),
        "--json".as_ref(),
        "--dir".as_ref(),
        kept.as_os_str(),
    ]);
    let _ = std::fs::remove_dir_all(&kept);
    assert!(verified.status.success(), "{verified:?}");
    let flows = String::from_utf8_lossy(&queried.stdout)
        .lines()
        .filter(|line| line.contains("\"class_uid\":4001"))
        .count();
    assert!(
        flows >= 15,
        "the kept store holds the matrix's flows: {flows}"
    );
}

#[test]
fn a_killed_demo_is_cleaned_up_by_the_next_run() {
    require_root();
    let mut child = Command::new(demo_bin())
        .arg(demo_policy())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start enforcer-demo");
    // Killed outright once the agent enforces and the matrix starts: nothing of its own
    // cleanup runs.
    // The pipe stays open until the demo is dead: closing it first would make the demo's
    // next print fail and unwind through its own cleanup, which is not what is tested.
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let started = Instant::now();
    for line in lines.by_ref() {
        let line = line.expect("read the demo's output");
        if line.contains("the traffic matrix") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the demo did not reach its matrix"
        );
    }
    child.kill().expect("kill the demo");
    child.wait().expect("reap the demo");
    drop(lines);
    let left = demo_objects();
    assert!(
        !left.is_empty(),
        "a killed demo leaves its sandbox (this test needs something to clean up)"
    );

    let stdout = assert_passed(&run_demo());
    assert!(
        stdout.contains("removed what an interrupted earlier run left:"),
        "{stdout}"
    );
    let left = demo_objects();
    assert!(left.is_empty(), "left {left:?}");
}
