//! `audit.fsync` (docs/audit.md, Durability): `batch` forces every batch of records to
//! disk, `never` forces none, `interval` forces them at most `fsync_interval_ms` after a
//! write. strace counts the agent's `fsync`/`fdatasync` calls on its store's segment files
//! while denied flows are written one batch at a time; the agent is then killed, so no
//! seal at a clean stop adds its own.

use std::time::{Duration, Instant};

use enforcer_tests::{
    agent::PeerSite,
    policy::{ALLOWED_PORT, DENIED_PORT},
    probe::Spawn,
    trace::TracedAgent,
};

/// Denied flows made one at a time, each its own batch.
const FLOWS: usize = 4;

/// The agent's forced writes of a segment file (`audit-NNNNNNNN.bin`) in `trace`
/// (`strace -y` names each descriptor's file).
fn segment_syncs(trace: &str) -> usize {
    trace
        .lines()
        .filter(|line| {
            (line.contains("fdatasync(") || line.contains("fsync("))
                && line.contains("/audit-")
                && line.contains(".bin>")
        })
        .count()
}

/// Runs the agent with `settings` in `[audit]` under strace, makes [`FLOWS`] denied
/// connects (each stored before the next), waits `linger`, kills the agent and returns
/// the segment syncs it made after its start.
fn syncs_with(metrics: &str, settings: &str, linger: Duration) -> usize {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let agent = site.agent(metrics, "");
    agent.audit_options(&format!("dedup_window_ms = 0\n{settings}"));
    let traced = TracedAgent::start(&agent, "fsync,fdatasync");
    for flow in 1..=FLOWS {
        let outcome = Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
            .cgroup(&site.api)
            .run();
        assert!(outcome.is_eperm(), "a denied connect: {outcome:?}");
        let started = Instant::now();
        while agent
            .audit_records::<serde_json::Value>()
            .iter()
            .filter(|r| r["unmapped"]["flow"]["verdict"] == "deny")
            .count()
            < flow
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "flow {flow} not stored"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(linger);
    segment_syncs(&traced.stop(libc::SIGKILL))
}

#[test]
fn batch_forces_every_batch_never_none_and_interval_some() {
    let batch = syncs_with("127.0.0.1:19682", "fsync = \"batch\"", Duration::ZERO);
    assert!(
        batch >= FLOWS,
        "fsync = batch: {batch} syncs for {FLOWS} batches"
    );
    let never = syncs_with(
        "127.0.0.1:19683",
        "fsync = \"never\"",
        Duration::from_secs(1),
    );
    assert_eq!(never, 0, "fsync = never");
    // Past the interval after the last write, the records are on disk.
    let interval = syncs_with(
        "127.0.0.1:19684",
        "fsync = \"interval\"\nfsync_interval_ms = 300",
        Duration::from_secs(1),
    );
    assert!(interval >= 1, "fsync = interval: no sync 1 s after a write");
    // And a long interval has not come round within the test.
    let long = syncs_with(
        "127.0.0.1:19685",
        "fsync = \"interval\"\nfsync_interval_ms = 600000",
        Duration::from_secs(1),
    );
    assert_eq!(long, 0, "fsync = interval of 10 min: synced early");
}
