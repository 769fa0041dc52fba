//! The SOC analyst's side: flow events from real connects in the audit store with the
//! right fields, nothing lost without a gap record saying so, a full disk survived, and
//! the store forwarded to real collectors (rsyslog, syslog-ng) exactly as stored.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{AgentHost, PeerSite, enforcer_bin},
    cgroup::TestCgroup,
    netns::Veth,
    policy::{ALLOWED_PORT, DENIED_PORT, api_to_peer},
    probe::{Outcome, Spawn},
    syslog::{Issued, Rsyslog, SyslogNg, SyslogNgInput},
};
use serde_json::Value;

/// A connect from `api` to the peer's allowed port, which must get the echo.
fn connect_allowed(veth: &Veth, api: &TestCgroup) {
    let outcome = Spawn::tcp_client(veth.peer_addr(ALLOWED_PORT))
        .cgroup(api)
        .run();
    assert_eq!(outcome, Outcome::Ok, "an allowed connect");
}

/// A connect from `api` to the peer's denied port, which must fail with EPERM.
fn connect_denied(veth: &Veth, api: &TestCgroup) {
    let outcome = Spawn::tcp_client(veth.peer_addr(DENIED_PORT))
        .cgroup(api)
        .run();
    assert!(outcome.is_eperm(), "a denied connect: {outcome:?}");
}

/// Default-deny denials stored and ring-full losses accounted, by `audit stats --json`.
fn denied_and_ring_lost(stats: &Value) -> (u64, u64) {
    (
        stats["denials"]["default-deny"]["deny"]
            .as_u64()
            .unwrap_or(0),
        stats["lost_by_cause"]["ring-full"].as_u64().unwrap_or(0),
    )
}

/// `enforcer audit stats --json`, parsed.
fn audit_stats(agent: &AgentHost) -> Value {
    let output = agent.command(&["audit", "stats", "--json"]);
    assert!(
        output.status.success(),
        "audit stats failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stats print JSON")
}

/// Waits (up to `limit`) until the records satisfy `check`; returns them.
fn wait_for_records(
    agent: &AgentHost,
    what: &str,
    limit: Duration,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let found: Vec<Value> = agent.audit_records();
        if check(&found) {
            return found;
        }
        assert!(
            started.elapsed() < limit,
            "no {what} in the audit store after {limit:?}; it holds {} records, the last: {:#?}",
            found.len(),
            found.iter().rev().take(3).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn flows_to(records: &[Value], port: u16, verdict: &str) -> u64 {
    records
        .iter()
        .filter(|r| {
            r["unmapped"]["kind"] == "flow"
                && r["dst_endpoint"]["port"] == port
                && r["unmapped"]["flow"]["verdict"] == verdict
        })
        .count() as u64
}

fn lost(records: &[Value], cause: &str) -> u64 {
    records
        .iter()
        .filter(|r| r["unmapped"]["kind"] == "gap" && r["unmapped"]["gap"]["cause"] == cause)
        .map(|r| r["unmapped"]["gap"]["lost"].as_u64().expect("lost"))
        .sum()
}

/// `enforcer audit verify DIR`: (exit code, stdout + stderr).
fn verify(dir: &Path) -> (i32, String) {
    verify_with(dir, &[])
}

/// `enforcer audit verify` with `args` before the directory: its exit code and everything
/// it printed.
fn verify_with(dir: &Path, args: &[&OsStr]) -> (i32, String) {
    enforcer_tests::ocsf::assert_store_is_ocsf(dir);
    let output = Command::new(enforcer_bin())
        .args(["audit", "verify"])
        .args(args)
        .arg(dir)
        .output()
        .expect("run enforcer audit verify");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn flows_from_real_connects_land_in_the_store_with_their_rule() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19621", "");
    agent.start();
    let source_sha256 = agent.status()["policy"]["source_sha256"]
        .as_str()
        .expect("the policy hash")
        .to_owned();

    connect_allowed(veth, api);
    connect_denied(veth, api);

    let found = wait_for_records(
        &agent,
        "allow and deny records",
        Duration::from_secs(10),
        |r| flows_to(r, ALLOWED_PORT, "allow") == 1 && flows_to(r, DENIED_PORT, "deny") == 1,
    );
    let allowed = found
        .iter()
        .find(|r| r["dst_endpoint"]["port"] == ALLOWED_PORT)
        .expect("the allowed flow");
    assert_eq!(allowed["class_uid"], 4001, "OCSF Network Activity");
    assert_eq!(allowed["activity_id"], 1, "Open");
    assert_eq!(allowed["action_id"], 1, "Allowed");
    assert_eq!(allowed["firewall_rule"]["uid"], "api-to-peer");
    assert_eq!(allowed["dst_endpoint"]["ip"], veth.peer_v4.to_string());
    assert_eq!(allowed["dst_endpoint"]["name"], "peer");
    assert_eq!(allowed["src_endpoint"]["name"], "api");
    assert_eq!(allowed["connection_info"]["protocol_name"], "tcp");
    assert_eq!(allowed["actor"]["process"]["name"], "enforcer-probe");
    let flow = &allowed["unmapped"]["flow"];
    assert_eq!(flow["rule"], "api-to-peer");
    assert_eq!(flow["hook"], "connect4");
    assert_eq!(flow["policy_sha256"], source_sha256.as_str());
    assert_eq!(flow["cgroup"], format!("/{}", api.relative_path()));
    assert!(
        allowed["device"]["hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );

    let denied = found
        .iter()
        .find(|r| r["dst_endpoint"]["port"] == DENIED_PORT)
        .expect("the denied flow");
    assert_eq!(denied["activity_id"], 5, "Refuse");
    assert_eq!(denied["action_id"], 2, "Denied");
    assert_eq!(denied["unmapped"]["flow"]["reason"], "default-deny");
    assert_eq!(denied["firewall_rule"]["uid"], "default-deny");

    // Stats count the flows of each policy generation.
    let stats = audit_stats(&agent);
    let generation = &stats["generations"]["1"];
    assert_eq!(generation["flows"], 2, "{stats:#}");
    assert_eq!(generation["denied"], 1, "{stats:#}");
    assert_eq!(generation["policy_sha256"], source_sha256.as_str());

    // The rule filter finds the allowed flow alone.
    let output = agent.command(&["audit", "query", "--json", "--rule", "api-to-peer"]);
    let by_rule: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(by_rule.len(), 1, "{by_rule:#?}");
    assert_eq!(by_rule[0]["dst_endpoint"]["port"], ALLOWED_PORT);

    // `tail` shows the newest flow, the denied one, for people.
    let output = agent.command(&["audit", "tail", "-n", "1"]);
    let tail = String::from_utf8_lossy(&output.stdout);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let words: Vec<&str> = tail.split_whitespace().collect();
    let destination = format!("{}:{DENIED_PORT}/tcp", veth.peer_v4);
    for word in ["deny", "api", "->", "peer", &destination, "default-deny"] {
        assert!(words.contains(&word), "no `{word}` in {tail}");
    }

    // Stopping seals the store; it verifies clean.
    assert!(
        agent.terminate(),
        "the agent stops cleanly:\n{}",
        agent.log(1)
    );
    let (code, said) = verify(&agent.audit_dir());
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("intact"), "{said}");

    // A segment name no flow has is a typo, not an empty answer.
    let typo = agent.command(&["audit", "query", "--segment", "apii"]);
    assert_eq!(typo.status.code(), Some(1));
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(
        said.contains("--segment apii: no flow in the store names it; did you mean `api`?"),
        "{said}"
    );

    // A candidate that opens the second port would change exactly the denied flow.
    let candidate = agent.audit_dir().with_file_name("candidate.toml");
    fs::write(&candidate, api_to_peer(api, veth, true)).expect("write the candidate");
    let output = Command::new(enforcer_bin())
        .args(["policy", "simulate", "--json", "--audit-dir"])
        .arg(agent.audit_dir())
        .arg(&candidate)
        .output()
        .expect("run enforcer policy simulate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replay: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(replay["replayed"], 2, "{replay:#}");
    assert_eq!(replay["unchanged"], 1, "{replay:#}");
    let changes = replay["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{replay:#}");
    let change = &changes[0]["change"];
    let text = |key: &str| change[key].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        [text("from"), text("to"), text("port")],
        [
            "api".to_owned(),
            "peer".to_owned(),
            format!("{DENIED_PORT}/tcp")
        ]
    );
    assert_eq!(text("kind"), "opened");
    assert_eq!([text("was"), text("was_by")], ["deny", "default-deny"]);
    assert_eq!(
        [text("becomes"), text("becomes_by")],
        ["allow", "api-to-peer-second"]
    );
    assert_eq!(changes[0]["flows"], 1);
}

#[test]
fn a_stopped_consumer_loses_nothing_unaccounted() {
    let site = PeerSite::new(&[]);
    let (veth, api) = (&site.veth, &site.api);
    let metrics = "127.0.0.1:19622";
    let mut agent = site.agent(metrics, "");
    // Every attempt is its own event: no duplicate suppression.
    agent.audit_options("dedup_window_ms = 0");
    agent.start();

    // More denied connects than the 16 MiB ring holds (about 150k events), while the
    // agent cannot read it.
    const BURST: u32 = 200_000;
    agent.pause();
    let burst = Spawn::tcp_denied_burst(veth.peer_addr(DENIED_PORT), BURST)
        .cgroup(api)
        .run();
    agent.resume();
    assert_eq!(
        burst,
        Outcome::Ok,
        "every attempt was denied with EPERM while the agent was stopped"
    );

    // `audit stats` counts without printing every record: the debug-build tools stay
    // quick on a store this size.
    let started = Instant::now();
    let (stored, lost) = loop {
        let stats = audit_stats(&agent);
        let (stored, lost) = denied_and_ring_lost(&stats);
        if stored + lost >= u64::from(BURST) {
            break (stored, lost);
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not every event is stored or counted after 180 s: {stats:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        stored + lost,
        u64::from(BURST),
        "events generated = records stored + losses in gap records"
    );
    assert!(
        lost > 0,
        "the ring overflowed, and the gap records say by how much"
    );
    let status = agent.status();
    assert_eq!(
        status["events"]["lost"].as_u64(),
        Some(lost),
        "the gap records account for exactly the kernel's count: {status:#}"
    );
    wait_for_metric(metrics, "enforcer_audit_flow_records_total", stored);
    wait_for_metric(
        metrics,
        "enforcer_audit_lost_events_total{cause=\"ring-full\"}",
        lost,
    );
    assert!(agent.terminate());
    let (code, said) = verify(&agent.audit_dir());
    assert_eq!(code, 0, "{said}");
}

#[test]
fn ring_full_losses_survive_an_agent_restart_neither_dropped_nor_repeated() {
    let site = PeerSite::new(&[]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19627", "");
    agent.audit_options("dedup_window_ms = 0");
    agent.start();
    // The agent stops; the kernel keeps enforcing and fills the pinned ring, then counts
    // what does not fit.
    assert!(agent.terminate());
    const BURST: u32 = 200_000;
    let burst = Spawn::tcp_denied_burst(veth.peer_addr(DENIED_PORT), BURST)
        .cgroup(api)
        .run();
    assert_eq!(burst, Outcome::Ok, "every attempt was denied with EPERM");

    // The next agent stores what waits in the ring and the kernel's loss count.
    let second = agent.start();
    let counts = |agent: &AgentHost| denied_and_ring_lost(&audit_stats(agent));
    let started = Instant::now();
    let (stored, lost) = loop {
        let (stored, lost) = counts(&agent);
        if stored + lost >= u64::from(BURST) {
            break (stored, lost);
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{stored} stored and {lost} lost of {BURST} after 180 s:\n{}",
            agent.log(second)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(stored + lost, u64::from(BURST), "nothing dropped");
    assert!(lost > 0, "the ring overflowed while no agent read it");

    // Another restart: the count is already accounted for, not recorded again.
    assert!(agent.terminate());
    agent.start();
    connect_denied(veth, api);
    let started = Instant::now();
    let after = loop {
        let after = counts(&agent);
        if after.0 > stored {
            break after;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the denied flow after the restart is not stored"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(after, (stored + 1, lost), "the loss count is not repeated");
    let status = agent.status();
    assert_eq!(status["events"]["lost"].as_u64(), Some(lost), "{status:#}");
    assert!(agent.terminate());
    let (code, said) = verify(&agent.audit_dir());
    assert_eq!(code, 0, "{said}");
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Fills the free space with a file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 4096];
        for _ in 0..1_000_000 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Every flow record plus every event the gap records count as lost.
fn accounted(records: &[Value]) -> u64 {
    let flows = records
        .iter()
        .filter(|r| r["unmapped"]["kind"] == "flow")
        .count() as u64;
    flows + lost(records, "write-error") + lost(records, "ring-full")
}

/// A client in the site's `api` cgroup that counts its attempts (each one flow event).
struct Client<'a> {
    site: &'a PeerSite,
    attempts: std::cell::Cell<u64>,
}

impl Client<'_> {
    fn connect(&self, port: u16) -> Outcome {
        self.attempts.set(self.attempts.get() + 1);
        Spawn::tcp_client(self.site.veth.peer_addr(port))
            .cgroup(&self.site.api)
            .run()
    }
}

/// Where a full-disk test stands when it runs its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskFull {
    /// The agent's writes fail; the log of this start says so.
    Failing(u32),
    /// The agent was killed while its writes failed and has not been restarted.
    AgentDown,
}

/// A full disk under `on_write_error = action`: `check` runs once a write has failed,
/// again after the agent is killed (before it restarts), and again once the restarted
/// agent has failed a write on the still full disk; then space returns, and writing must
/// resume by itself, with every event stored or counted in a gap. Returns the store's
/// records and the agent's last `status`, taken before it stopped.
fn full_disk(
    action: &str,
    metrics: &str,
    check: impl Fn(&AgentHost, &Client, DiskFull),
) -> (Vec<Value>, Value) {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    let client = Client {
        site: &site,
        attempts: std::cell::Cell::new(0),
    };
    let mut agent = site.agent(metrics, "");
    agent.audit_options(&format!(
        "dedup_window_ms = 0\non_write_error = \"{action}\""
    ));
    let tmpfs = Tmpfs::mount(&agent.audit_dir(), "1m");
    agent.start();
    let filler = tmpfs.fill();

    // Denied attempts make events until a write fails (the last page of the store file
    // may take a few more records first).
    let started = Instant::now();
    while !agent.log(1).contains("cannot write audit records") {
        assert!(client.connect(DENIED_PORT).is_eperm());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no write error logged:\n{}",
            agent.log(1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&agent, &client, DiskFull::Failing(1));
    wait_for_metric(metrics, "enforcer_audit_store_writable", 0);
    assert!(
        agent.is_running(),
        "the agent survived the full disk:\n{}",
        agent.log(1)
    );

    // A crash and a restart on the full disk: the agent starts and enforces.
    agent.kill();
    check(&agent, &client, DiskFull::AgentDown);
    let second = agent.start();
    assert!(client.connect(DENIED_PORT).is_eperm());
    let started = Instant::now();
    while !agent.log(second).contains("cannot write audit records") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            agent.log(second)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&agent, &client, DiskFull::Failing(second));
    wait_for_metric(metrics, "enforcer_audit_store_writable", 0);

    // Space returns: writing resumes by itself, and every attempt is a record or counted
    // in a gap record.
    fs::remove_file(filler).expect("remove the filler");
    let found = wait_for_records(
        &agent,
        "every event stored or counted",
        Duration::from_secs(15),
        |r| accounted(r) >= client.attempts.get(),
    );
    assert_eq!(accounted(&found), client.attempts.get(), "{found:#?}");
    assert!(lost(&found, "write-error") > 0, "a write-error gap record");
    assert!(
        agent.log(second).contains("audit store writable again"),
        "{}",
        agent.log(second)
    );
    assert_eq!(
        client.connect(ALLOWED_PORT),
        Outcome::Ok,
        "the policy decides again"
    );
    let found = wait_for_records(
        &agent,
        "the allowed flow after recovery",
        Duration::from_secs(10),
        |r| flows_to(r, ALLOWED_PORT, "allow") >= 1 && accounted(r) == client.attempts.get(),
    );
    let status = agent.status();
    audit_metrics_count_this_run(metrics, &found);
    assert!(
        agent.terminate(),
        "the agent stops cleanly:\n{}",
        agent.log(second)
    );
    let (code, said) = verify(&agent.audit_dir());
    assert_eq!(code, 0, "{said}");
    drop(tmpfs);
    (found, status)
}

#[test]
fn a_full_disk_keeps_enforcing_and_recovers_with_a_gap_record() {
    let (records, _) = full_disk("keep-enforcing", "127.0.0.1:19623", |_, client, when| {
        assert_eq!(
            client.connect(ALLOWED_PORT),
            Outcome::Ok,
            "allowed flows pass while audit records cannot be written ({when:?})"
        );
        assert!(client.connect(DENIED_PORT).is_eperm(), "{when:?}");
    });
    assert!(
        !records
            .iter()
            .any(|r| r["unmapped"]["flow"]["reason"] == "audit-unavailable"),
        "nothing was refused for want of audit"
    );
}

#[test]
fn a_full_disk_fails_closed_when_configured_and_recovers() {
    // The switch is a pinned flag: it holds while the agent is dead, and the restarted
    // agent, which clears it, sets it again once its own write fails.
    let (records, status) = full_disk("fail-closed", "127.0.0.1:19624", |agent, client, when| {
        if let DiskFull::Failing(start) = when {
            // The agent logs the switch right after the failed write it follows.
            let started = Instant::now();
            while !agent.log(start).contains("fail-closed: every new flow") {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the agent says it fails closed:\n{}",
                    agent.log(start)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let outcome = client.connect(ALLOWED_PORT);
        assert!(
            outcome.is_eperm(),
            "an allowed flow is denied while audit records cannot be written ({when:?}): {outcome:?}"
        );
        assert!(client.connect(DENIED_PORT).is_eperm(), "{when:?}");
    });
    // The refusals say why, in the counters and in the records that waited in the ring
    // until the store was writable again (those of a batch that failed are a gap's count).
    let refused = |r: &&Value| {
        r["unmapped"]["kind"] == "flow"
            && r["dst_endpoint"]["port"] == ALLOWED_PORT
            && r["unmapped"]["flow"]["verdict"] == "deny"
    };
    let reasons: Vec<&Value> = records
        .iter()
        .filter(refused)
        .map(|r| &r["unmapped"]["flow"]["reason"])
        .collect();
    assert!(!reasons.is_empty(), "a refused allowed flow is on record");
    assert!(
        reasons.iter().all(|reason| *reason == "audit-unavailable"),
        "{reasons:?}"
    );
    let counted = status["reasons"]
        .as_array()
        .expect("status lists reasons")
        .iter()
        .find(|c| c["reason"] == "audit-unavailable" && c["verdict"] == "deny")
        .and_then(|c| c["count"].as_u64());
    // One refusal in each of the three checks.
    assert!(counted.is_some_and(|n| n >= 3), "{status:#}");
}

/// The `metadata.sequence` of every flow record in `lines` (JSON records).
fn flow_sequences<'a>(lines: impl IntoIterator<Item = &'a Value>) -> BTreeSet<u64> {
    lines
        .into_iter()
        .filter(|r| r["unmapped"]["kind"] == "flow")
        .map(|r| r["metadata"]["sequence"].as_u64().expect("sequence"))
        .collect()
}

#[test]
fn rsyslog_receives_every_record_across_collector_and_agent_restarts() {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut collector = Rsyslog::start("127.0.0.1:19631".parse().expect("address"));
    let mut agent = site.agent("127.0.0.1:19625", "");
    agent.audit_options(&format!(
        "dedup_window_ms = 0\n[audit.forward]\naddress = \"{}\"",
        collector.addr
    ));
    agent.start();
    let connect = |count: usize| {
        for _ in 0..count {
            connect_allowed(veth, api);
        }
    };
    let received = |collector: &Rsyslog| -> Vec<Value> {
        collector
            .received()
            .iter()
            .map(|line| serde_json::from_str(line).expect("rsyslog wrote the record's JSON"))
            .collect()
    };
    let wait_until_received = |collector: &Rsyslog, stored: &BTreeSet<u64>| {
        let started = Instant::now();
        loop {
            let got = flow_sequences(&received(collector));
            if stored.is_subset(&got) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "rsyslog is missing records {:?}",
                stored.difference(&got).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    connect(5);
    let stored = wait_for_records(&agent, "5 flows", Duration::from_secs(10), |r| {
        flows_to(r, ALLOWED_PORT, "allow") == 5
    });
    wait_until_received(&collector, &flow_sequences(&stored));

    // The collector goes away; records keep coming, and the agent restarts meanwhile.
    collector.stop();
    connect(5);
    wait_for_records(&agent, "10 flows", Duration::from_secs(10), |r| {
        flows_to(r, ALLOWED_PORT, "allow") == 10
    });
    assert!(agent.terminate());
    agent.start();
    connect(5);
    let stored = wait_for_records(&agent, "15 flows", Duration::from_secs(10), |r| {
        flows_to(r, ALLOWED_PORT, "allow") == 15
    });
    collector.restart();
    wait_until_received(&collector, &flow_sequences(&stored));

    // The collector has the records exactly as stored: the chain verifies from them.
    let got = received(&collector);
    let first = got
        .iter()
        .find(|r| r["unmapped"]["kind"] == "flow")
        .expect("a flow");
    let same = stored
        .iter()
        .find(|r| r["metadata"]["sequence"] == first["metadata"]["sequence"])
        .expect("stored");
    assert_eq!(first, same);
}

#[test]
fn forwarding_over_tls_checks_the_collector_certificate() {
    let site = PeerSite::new(&[]);
    let (veth, api) = (&site.veth, &site.api);
    let collector = Rsyslog::start_tls("127.0.0.1:19632".parse().expect("address"));
    let mut agent = site.agent("127.0.0.1:19626", "");
    let forward = |ca_file: &Path, server_name: &str| {
        format!(
            "[audit.forward]\naddress = \"{}\"\ntls = true\nca_file = \"{}\"\nserver_name = \"{server_name}\"",
            collector.addr,
            ca_file.display()
        )
    };
    let config = fs::read_to_string(agent.config()).expect("config");
    let mut refused = 0;
    // A certificate that does not chain to `ca_file`, and one that does not name the
    // collector as configured: nothing is sent, the log says why.
    for (ca_file, server_name, why) in [
        (
            collector.untrusted_ca_file(),
            "collector.test",
            "UnknownIssuer",
        ),
        (collector.ca_file(), "someone-else.test", "certificate"),
    ] {
        fs::write(agent.config(), &config).expect("restore the config");
        agent.audit_options(&forward(&ca_file, server_name));
        let run = agent.start();
        connect_denied(veth, api);
        refused += 1;
        wait_for_records(&agent, "the denied flow", Duration::from_secs(10), |r| {
            flows_to(r, DENIED_PORT, "deny") == refused
        });
        let started = Instant::now();
        while !agent.log(run).contains("cannot reach the syslog collector") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}",
                agent.log(run)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            agent.log(run).contains(why),
            "the log names the certificate problem ({why}):\n{}",
            agent.log(run)
        );
        assert!(
            collector.received().is_empty(),
            "nothing reached the collector"
        );
        assert!(agent.terminate());
    }

    // The right CA and name: the waiting records and new ones arrive, encrypted.
    fs::write(agent.config(), &config).expect("restore the config");
    agent.audit_options(&forward(&collector.ca_file(), "collector.test"));
    let run = agent.start();
    connect_denied(veth, api);
    let stored = wait_for_records(&agent, "three denied flows", Duration::from_secs(10), |r| {
        flows_to(r, DENIED_PORT, "deny") == refused + 1
    });
    let wanted = flow_sequences(&stored);
    let started = Instant::now();
    loop {
        let got: Vec<Value> = collector
            .received()
            .iter()
            .map(|line| serde_json::from_str(line).expect("JSON"))
            .collect();
        if wanted.is_subset(&flow_sequences(&got)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the TLS collector is missing flow records {wanted:?}:\n{}",
            agent.log(run)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `metadata.sequence` of a record line.
fn sequence_of(line: &str) -> Option<u64> {
    serde_json::from_str::<Value>(line).ok()?["metadata"]["sequence"].as_u64()
}

/// Every complete record line in the store's files, by `metadata.sequence`.
fn stored_lines(dir: &Path) -> BTreeMap<u64, String> {
    let mut lines = BTreeMap::new();
    for line in enforcer::audit::files::rendered_lines(dir).expect("read the store") {
        let sequence =
            sequence_of(&line).unwrap_or_else(|| panic!("{}: not a record: {line}", dir.display()));
        lines.insert(sequence, line);
    }
    lines
}

/// Waits until `collector` has received every record in the agent's store, then checks
/// that every line it received is a stored record, byte for byte (repeats allowed: delivery
/// is at least once). `start` is the agent's running start, for its log. Returns how many
/// records the store holds.
fn wait_until_the_collector_has_the_store(
    agent: &AgentHost,
    start: u32,
    collector: &SyslogNg,
) -> usize {
    let started = Instant::now();
    loop {
        let stored = stored_lines(&agent.audit_dir());
        let received = collector.received();
        let mut arrived = BTreeSet::new();
        for line in &received {
            let sequence = sequence_of(line).unwrap_or_else(|| {
                panic!(
                    "syslog-ng wrote a message that is not a record (the framing is wrong?): {line}\n{}",
                    collector.log()
                )
            });
            if let Some(original) = stored.get(&sequence) {
                assert_eq!(line, original, "record {sequence} arrived altered");
            }
            arrived.insert(sequence);
        }
        let missing: Vec<&u64> = stored.keys().filter(|s| !arrived.contains(s)).collect();
        if missing.is_empty() && !stored.is_empty() {
            return stored.len();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "syslog-ng is missing records {missing:?} of {}:\nagent:\n{}\nsyslog-ng:\n{}",
            stored.len(),
            agent.log(start),
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample `name` (with its labels, as exposed) on the agent's `/metrics`.
fn metric(listen: &str, name: &str) -> f64 {
    let url = format!("http://{listen}/metrics");
    let text = ureq::get(&url)
        .call()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|err| panic!("GET {url}: body: {err}"));
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// Waits up to 5 s until the sample `name` on the agent's `/metrics` is `want` (the
/// agent counts right after the write the store shows).
fn wait_for_metric(listen: &str, name: &str, want: u64) {
    let started = Instant::now();
    loop {
        let value = metric(listen, name);
        if value == want as f64 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} is {value}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit metrics of the agent on `metrics` count what its current run wrote (the
/// records after its `started` record, which leads its first batch): its flow records
/// and its gap records' losses by cause; and the store is writable.
fn audit_metrics_count_this_run(metrics: &str, records: &[Value]) {
    let start = records
        .iter()
        .rposition(|r| {
            r["unmapped"]["kind"] == "agent" && r["unmapped"]["agent"]["event"] == "started"
        })
        .expect("a started record");
    let this_run = &records[start..];
    let flows = this_run
        .iter()
        .filter(|r| r["unmapped"]["kind"] == "flow")
        .count() as u64;
    wait_for_metric(metrics, "enforcer_audit_flow_records_total", flows);
    for cause in ["ring-full", "write-error"] {
        wait_for_metric(
            metrics,
            &format!("enforcer_audit_lost_events_total{{cause=\"{cause}\"}}"),
            lost(this_run, cause),
        );
    }
    wait_for_metric(metrics, "enforcer_audit_store_writable", 1);
}

/// Waits until the agent's `start`th log says the collector cannot be reached; returns
/// that log.
fn wait_until_unreachable(agent: &AgentHost, start: u32) -> String {
    let started = Instant::now();
    loop {
        let log = agent.log(start);
        if log.contains("cannot reach the syslog collector") {
            return log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent never said the collector is unreachable:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn syslog_ng_receives_every_record_as_stored_with_newline_framing() {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let collector = SyslogNg::start(
        "127.0.0.1:19761".parse().expect("address"),
        SyslogNgInput::NewlineTcp,
        &[],
    );
    let mut agent = site.agent("127.0.0.1:19764", "");
    agent.audit_options(&format!(
        "dedup_window_ms = 0\n[audit.forward]\naddress = \"{}\"\nframing = \"newline\"",
        collector.addr
    ));
    let start = agent.start();
    for _ in 0..3 {
        connect_allowed(veth, api);
        connect_denied(veth, api);
    }
    wait_for_records(&agent, "6 flows", Duration::from_secs(10), |r| {
        flows_to(r, ALLOWED_PORT, "allow") == 3 && flows_to(r, DENIED_PORT, "deny") == 3
    });
    wait_until_the_collector_has_the_store(&agent, start, &collector);
    let flows = collector
        .received()
        .iter()
        .filter(|line| line.contains(r#""kind":"flow""#))
        .count();
    assert!(flows >= 6, "{flows} flow records arrived");
}

#[test]
fn mutual_tls_to_syslog_ng_delivers_only_with_a_trusted_client_certificate() {
    let site = PeerSite::new(&[]);
    let (veth, api) = (&site.veth, &site.api);
    let collector = SyslogNg::start(
        "127.0.0.1:19762".parse().expect("address"),
        SyslogNgInput::OctetCountingTls {
            require_client_certificate: true,
        },
        &["DNS:collector.test", "IP:127.0.0.1"],
    );
    let pki = collector
        .pki
        .as_ref()
        .expect("a TLS collector's certificates");
    let trusted = pki.client("agent");
    let rogue = pki.rogue_client("rogue-agent");
    let metrics = "127.0.0.1:19765";
    let mut agent = site.agent(metrics, "");
    let config = fs::read_to_string(agent.config()).expect("config");
    let configure = |agent: &AgentHost, client: Option<&Issued>| {
        fs::write(agent.config(), &config).expect("restore the config");
        let client = client.map_or_else(String::new, |client| {
            format!(
                "\ncert_file = \"{}\"\nkey_file = \"{}\"",
                client.cert.display(),
                client.key.display()
            )
        });
        agent.audit_options(&format!(
            "dedup_window_ms = 0\n[audit.forward]\naddress = \"{}\"\ntls = true\nca_file = \"{}\"{client}",
            collector.addr,
            pki.ca_file().display()
        ));
    };
    let deny = || {
        connect_denied(veth, api);
    };

    // `config check` reads the files: a key that is not the certificate's is named.
    configure(
        &agent,
        Some(&Issued {
            cert: trusted.cert.clone(),
            key: rogue.key.clone(),
        }),
    );
    let check = Command::new(enforcer_bin())
        .args(["config", "check"])
        .arg(agent.config())
        .output()
        .expect("run enforcer config check");
    let said = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{said}");
    assert!(
        said.contains("`audit.forward.key_file`: ")
            && said.contains("does not belong to the certificate"),
        "{said}"
    );

    // No client certificate, then one from a CA the collector does not trust: the
    // collector refuses the agent, nothing is delivered, and the agent says why.
    for (denials, client, alert) in [
        (1, None, "CertificateRequired"),
        (2, Some(&rogue), "UnknownCA"),
    ] {
        configure(&agent, client);
        let start = agent.start();
        deny();
        wait_for_records(&agent, "the denied flows", Duration::from_secs(10), |r| {
            flows_to(r, DENIED_PORT, "deny") == denials
        });
        let log = wait_until_unreachable(&agent, start);
        assert!(
            log.contains("reason=\"tls\"")
                && log.contains(&format!("received fatal alert: {alert}")),
            "the log names the TLS refusal:\n{log}"
        );
        assert!(
            metric(
                metrics,
                "enforcer_audit_forward_failures_total{reason=\"tls\"}"
            ) >= 1.0
        );
        assert_eq!(
            metric(metrics, "enforcer_audit_forwarded_records_total"),
            0.0,
            "nothing counts as delivered:\n{log}"
        );
        assert!(
            collector.received().is_empty(),
            "nothing reached the collector"
        );
        assert!(agent.terminate());
    }

    // The trusted certificate: every record, those that waited included, arrives as stored.
    configure(&agent, Some(&trusted));
    let check = Command::new(enforcer_bin())
        .args(["config", "check"])
        .arg(agent.config())
        .output()
        .expect("run enforcer config check");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success()
            && shown.contains(&format!(
                "client certificate {} with key {}",
                trusted.cert.display(),
                trusted.key.display()
            )),
        "{shown}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let start = agent.start();
    deny();
    wait_for_records(&agent, "three denied flows", Duration::from_secs(10), |r| {
        flows_to(r, DENIED_PORT, "deny") == 3
    });
    let stored = wait_until_the_collector_has_the_store(&agent, start, &collector);
    assert!(metric(metrics, "enforcer_audit_forwarded_records_total") >= stored as f64);
}

#[test]
fn a_collector_named_by_host_name_is_resolved_at_every_attempt() {
    let site = PeerSite::new(&[]);
    let (veth, api) = (&site.veth, &site.api);
    // The certificate names the collector only by its host name: TLS succeeds only if the
    // server name defaults to it.
    let collector = SyslogNg::start(
        "127.0.0.1:19763".parse().expect("address"),
        SyslogNgInput::OctetCountingTls {
            require_client_certificate: false,
        },
        &["DNS:fwd-collector.test"],
    );
    let pki = collector
        .pki
        .as_ref()
        .expect("a TLS collector's certificates");
    // The agent's own view of /etc/hosts (its mount namespace), files only: the host's
    // /etc/hosts is never touched.
    let hosts = collector.dir().join("hosts");
    let nsswitch = collector.dir().join("nsswitch.conf");
    fs::write(&hosts, "127.0.0.1 localhost\n").expect("write the hosts file");
    fs::write(&nsswitch, "hosts: files\n").expect("write nsswitch.conf");
    let host_hosts = fs::read("/etc/hosts").expect("read /etc/hosts");
    let metrics = "127.0.0.1:19766";
    let mut agent = site.agent(metrics, "").with_files_over(&[
        (&hosts, Path::new("/etc/hosts")),
        (&nsswitch, Path::new("/etc/nsswitch.conf")),
    ]);
    agent.audit_options(&format!(
        "dedup_window_ms = 0\n[audit.forward]\naddress = \"fwd-collector.test:{}\"\ntls = true\nca_file = \"{}\"",
        collector.addr.port(),
        pki.ca_file().display()
    ));

    // The name does not resolve yet: logged and counted, the agent keeps running.
    let start = agent.start();
    connect_denied(veth, api);
    let log = wait_until_unreachable(&agent, start);
    assert!(
        log.contains("cannot resolve fwd-collector.test"),
        "the log names the name:\n{log}"
    );
    assert!(
        metric(
            metrics,
            "enforcer_audit_forward_failures_total{reason=\"resolve\"}"
        ) >= 1.0
    );
    assert!(agent.is_running(), "{log}");
    assert!(collector.received().is_empty());

    // The name appears: a later attempt resolves it, without a restart.
    fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.1 fwd-collector.test\n",
    )
    .expect("write the hosts file");
    connect_denied(veth, api);
    wait_for_records(&agent, "two denied flows", Duration::from_secs(10), |r| {
        flows_to(r, DENIED_PORT, "deny") == 2
    });
    wait_until_the_collector_has_the_store(&agent, start, &collector);
    assert!(
        agent
            .log(start)
            .contains("syslog collector reachable again"),
        "{}",
        agent.log(start)
    );
    assert_eq!(
        fs::read("/etc/hosts").expect("read /etc/hosts"),
        host_hosts,
        "the host's /etc/hosts is unchanged"
    );
}

/// The epoch the host's sealing key file is at.
fn key_epoch(key_file: &Path) -> u64 {
    let key: Value =
        serde_json::from_slice(&fs::read(key_file).expect("read the key file")).expect("JSON");
    key["index"].as_u64().expect("an epoch")
}

/// Waits (10 s at most) until the agent has sealed `seals` more epochs.
fn wait_for_seals(key_file: &Path, seals: u64) {
    let target = key_epoch(key_file) + seals;
    let since = Instant::now();
    while key_epoch(key_file) < target {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the agent did not seal {seals} epochs within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `enforcer audit verify` with the verification key and the host's key file.
fn verify_sealed(dir: &Path, verify_key: &str, key_file: &Path) -> (i32, String) {
    verify_with(
        dir,
        &[
            "--verify-key".as_ref(),
            verify_key.as_ref(),
            "--key-file".as_ref(),
            key_file.as_os_str(),
        ],
    )
}

#[test]
fn a_sealed_store_is_proven_across_a_crash_and_a_root_rewrite_is_caught() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19628", "");
    let key_file = agent.audit_dir().with_file_name("seal.key");
    let setup = Command::new(enforcer_bin())
        .args(["audit", "setup-keys", "--json", "--key-file"])
        .arg(&key_file)
        .output()
        .expect("run enforcer audit setup-keys");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let shown: Value = serde_json::from_slice(&setup.stdout).expect("JSON");
    let verify_key = shown["verify_key"].as_str().expect("the key").to_owned();
    // The key is never replaced by accident.
    let again = Command::new(enforcer_bin())
        .args(["audit", "setup-keys", "--key-file"])
        .arg(&key_file)
        .output()
        .expect("run enforcer audit setup-keys");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force replaces it"));

    agent.audit_options(&format!(
        "seal_key = \"{}\"\nseal_interval_seconds = 1",
        key_file.display()
    ));
    agent.start();
    let denied = || {
        connect_denied(veth, api);
    };
    denied();
    wait_for_records(&agent, "the denied flow", Duration::from_secs(10), |r| {
        flows_to(r, DENIED_PORT, "deny") == 1
    });
    wait_for_seals(&key_file, 2);
    // A crash and a restart: the chain and the epochs go on.
    agent.kill();
    agent.start();
    denied();
    wait_for_seals(&key_file, 2);
    assert!(agent.terminate(), "the agent stops cleanly");
    let (code, said) = verify_sealed(&agent.audit_dir(), &verify_key, &key_file);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("proven with the verification key"), "{said}");

    // Root rewrites the first denial as allowed and recomputes every hash, link, file
    // seal summary and HEAD: the chain alone cannot tell. (The forger writes the files
    // back as JSON Lines, which the store reads as well as its compact files.)
    let dir = agent.audit_dir();
    let mut head = enforcer::audit::chain::Head::GENESIS;
    let mut last_file = 0;
    let mut rewritten = false;
    for segment in enforcer::audit::files::segments(&dir).expect("the files") {
        let mut records = Vec::new();
        enforcer::audit::files::read_records(&segment, |stored| {
            records.push(stored.expect("a record").record);
            true
        })
        .expect("read");
        let mut out = Vec::new();
        let mut summary = enforcer::audit::record::FileSummary::default();
        for mut record in records {
            if let Some(flow) = &mut record.unmapped.flow
                && flow.verdict == "deny"
                && !rewritten
            {
                flow.verdict = "allow".to_owned();
                rewritten = true;
            }
            if let Some(file) = &mut record.unmapped.file
                && file.summary.is_some()
            {
                file.summary = Some(summary.clone());
            }
            summary.add(&record);
            enforcer::audit::chain::append(&mut record, &mut head, &mut out);
        }
        fs::remove_file(&segment.path).expect("remove");
        let lines =
            enforcer::audit::files::name_in(segment.number, enforcer::audit::files::Format::Lines);
        fs::write(dir.join(lines), out).expect("write");
        last_file = segment.number;
    }
    enforcer::audit::files::write_head(&dir, last_file, &head, 0).expect("write HEAD");
    assert!(rewritten);
    let (code, said) = verify(&dir);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("NOT proven"), "{said}");
    // The verification key names the epoch whose seal no longer holds (the first one
    // written after the denial).
    let (code, said) = verify_sealed(&dir, &verify_key, &key_file);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("broken: "), "{said}");
    assert!(said.contains(": the seal of epoch "), "{said}");
    assert!(
        said.contains(" does not prove the chain up to record "),
        "{said}"
    );
}

/// `enforcer audit query --kind KIND --json`, parsed.
fn records_of_kind(agent: &AgentHost, kind: &str) -> Vec<Value> {
    let output = agent.command(&["audit", "query", "--json", "--kind", kind]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect()
}

#[test]
fn the_agents_and_the_policies_history_is_in_the_store() {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    let mut agent = site.agent("127.0.0.1:19630", "");
    agent.start();
    let applied_first = agent.status()["policy"]["source_sha256"]
        .as_str()
        .expect("the policy hash")
        .to_owned();
    // A policy that names a segment nobody declared is refused, naming the place.
    let good = fs::read_to_string(agent.policy_file()).expect("read the policy");
    agent.write_policy(&format!(
        "{good}\n[[allow]]\nid = \"broken\"\nfrom = [\"nowhere\"]\nto = [\"api\"]\nports = [\"1/tcp\"]\n"
    ));
    agent.wait_for_status("the refused policy", |status| {
        status["last_reload"]["outcome"] == "failed"
    });
    // The second port opened, then closed again: each generation's record says what
    // changed against the one before.
    for (text, generation) in [
        (api_to_peer(&site.api, &site.veth, true), 2),
        (good.clone(), 3),
    ] {
        agent.write_policy(&text);
        // The agent's own state names the generation once its record is written.
        agent.wait_for_status("the changed policy", |status| {
            status["policy"]["generation"].as_u64() == Some(generation)
        });
    }
    // A crash, a restart, a clean stop.
    agent.kill();
    agent.start();
    assert!(agent.terminate(), "the agent stops cleanly");

    let policies = records_of_kind(&agent, "policy");
    let outcomes: Vec<(&str, &str)> = policies
        .iter()
        .map(|r| {
            let policy = &r["unmapped"]["policy"];
            (
                policy["outcome"].as_str().unwrap_or_default(),
                policy["trigger"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("applied", "start"),
            ("refused", "file-change"),
            ("applied", "file-change"),
            ("applied", "file-change"),
            ("applied", "start")
        ],
        "{policies:#?}"
    );
    let opened = &policies[2]["unmapped"]["policy"];
    assert_eq!(opened["previous_generation"], 1, "{opened}");
    assert_eq!(
        opened["diff"],
        serde_json::json!({
            "segment_pairs": 1, "verdict_changes": 1, "opened": 1, "closed": 0,
            "rules": {"added": 1, "removed": 0, "changed": 0},
            "segments": {"added": 0, "removed": 0, "changed": 0},
            "failsafes": {"added": 0, "removed": 0, "changed": 0},
        })
    );
    let closed = &policies[3]["unmapped"]["policy"];
    assert_eq!(closed["previous_generation"], 2);
    assert_eq!(closed["diff"]["closed"], 1);
    assert_eq!(closed["diff"]["rules"]["removed"], 1);
    let message = policies[3]["message"].as_str().expect("message");
    assert!(
        message.contains("against generation 2, 1 verdict changes in 1 segment pairs (0 opened, 1 closed); rules +0 -1 ~0"),
        "{message}"
    );
    // After the restart there is no compiled copy of the earlier generation to compare.
    let restarted = &policies[4]["unmapped"]["policy"];
    assert!(restarted.get("diff").is_none(), "{restarted}");
    assert!(policies[0]["unmapped"]["policy"].get("diff").is_none());
    let first = &policies[0]["unmapped"]["policy"];
    assert_eq!(first["source_sha256"], applied_first.as_str());
    assert_eq!(first["generation"], 1);
    assert!(
        first["image_sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );
    let refused = &policies[1]["unmapped"]["policy"];
    assert_eq!(refused["generation"], 1, "generation 1 stays in force");
    let error = refused["error"].as_str().expect("why");
    assert!(
        error.contains(".toml:") && error.contains("nowhere"),
        "{error}"
    );

    let lives: Vec<(String, bool)> = records_of_kind(&agent, "agent")
        .iter()
        .filter(|r| {
            ["started", "stopping"]
                .contains(&r["unmapped"]["agent"]["event"].as_str().unwrap_or(""))
        })
        .map(|r| {
            let event = &r["unmapped"]["agent"];
            (
                event["event"].as_str().unwrap_or_default().to_owned(),
                event["recovered"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        lives,
        [
            ("started".to_owned(), false),
            ("started".to_owned(), true),
            ("stopping".to_owned(), false),
        ]
    );
    // The history is part of the chain like every flow.
    let (code, said) = verify(&agent.audit_dir());
    assert_eq!(code, 0, "{said}");
}

/// `enforcer ARGS`, which must succeed; its standard output.
fn enforcer_ok(args: &[&OsStr]) -> String {
    let output = Command::new(enforcer_bin())
        .args(args)
        .output()
        .expect("run enforcer");
    assert!(
        output.status.success(),
        "enforcer {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn signed_bundles_are_on_record_with_their_signer_and_a_rollback_is_refused_even_after_a_reboot() {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    // The keys and bundles live in the agent's directory, which goes with the agent.
    let name = enforcer_tests::unique_name();
    let keys = std::env::temp_dir().join(&name);
    fs::create_dir_all(&keys).expect("create the agent's directory");
    let key = keys.join("signing");
    let said = enforcer_ok(&[OsStr::new("keygen"), key.as_os_str()]);
    let untrusted = keys.join("untrusted");
    enforcer_ok(&[OsStr::new("keygen"), untrusted.as_os_str()]);
    let key_id = said
        .rsplit("key id ")
        .next()
        .expect("the key id")
        .trim()
        .to_owned();
    let bundle = keys.join("policy.bundle");
    let sign = |key: &Path, open_second: bool, version: &str| {
        let source = keys.join(format!("policy-{version}.toml"));
        fs::write(&source, api_to_peer(&site.api, &site.veth, open_second)).expect("write");
        let staged = keys.join("staged.bundle");
        enforcer_ok(&[
            OsStr::new("policy"),
            OsStr::new("sign"),
            source.as_os_str(),
            OsStr::new("--key"),
            key.as_os_str(),
            OsStr::new("--bundle-version"),
            OsStr::new(version),
            OsStr::new("-o"),
            staged.as_os_str(),
        ]);
        // In one step, as a deployment tool would put it in place.
        fs::rename(&staged, &bundle).expect("install the bundle");
    };
    sign(&key, false, "5");
    let mut agent = AgentHost::configured(&name, &site.parent, &bundle, "127.0.0.1:19631", "");
    let config = fs::read_to_string(agent.config()).expect("read the config");
    let path_line = format!("path = \"{}\"\n", bundle.display());
    let public = format!("{}.pub", key.display());
    let config = config.replacen(
        &path_line,
        &format!("{path_line}trusted_keys = [\"{public}\"]\n"),
        1,
    );
    fs::write(agent.config(), config).expect("write the config");
    agent.start();
    let refused = |what: &str, said: &str| {
        agent.wait_for_status(what, |status| {
            status["last_reload"]["outcome"] == "failed"
                && status["last_reload"]["message"]
                    .as_str()
                    .is_some_and(|message| message.contains(said))
        })
    };
    // A bundle signed by a key the agent does not trust; then one altered after it was
    // signed (the second port opened in its sources): both refused.
    sign(&untrusted, true, "6");
    refused("the untrusted signer refused", "signed by another key");
    sign(&key, true, "6");
    let signed = fs::read_to_string(&bundle).expect("read the bundle");
    let staged = keys.join("altered.bundle");
    fs::write(
        &staged,
        signed.replace(&format!("{ALLOWED_PORT}/tcp"), "1-65535/tcp"),
    )
    .expect("alter the bundle");
    fs::rename(&staged, &bundle).expect("install the altered bundle");
    let status = refused("the altered bundle refused", "altered");
    assert_eq!(status["policy"]["bundle_version"], 5, "{status:#}");
    let denied = Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
        .cgroup(&site.api)
        .run();
    assert!(
        denied.is_eperm(),
        "a refused bundle is in force: {denied:?}"
    );
    // An older bundle, validly signed: a rollback, refused.
    sign(&key, true, "4");
    refused("the refused rollback", "older");
    sign(&key, true, "6");
    agent.wait_for_status("the newer bundle", |status| {
        status["policy"]["bundle_version"].as_u64() == Some(6)
    });
    assert!(agent.terminate(), "the agent stops cleanly");

    let policies = records_of_kind(&agent, "policy");
    let events: Vec<&Value> = policies.iter().map(|r| &r["unmapped"]["policy"]).collect();
    let summary: Vec<(&str, Option<u64>)> = events
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap_or(""),
                e["bundle_version"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("applied", Some(5)),
            ("refused", None),
            ("refused", None),
            ("refused", None),
            ("applied", Some(6))
        ],
        "{policies:#?}"
    );
    for applied in [events[0], events[4]] {
        assert_eq!(applied["signer_key_id"], key_id.as_str(), "{applied}");
    }
    for (event, why) in events[1..4].iter().zip([
        "signed by another key",
        "altered",
        "version 4 is older than version 5",
    ]) {
        let error = event["error"].as_str().expect("why");
        assert!(error.contains(why), "{error}");
    }
    assert_eq!(events[4]["diff"]["opened"], 1, "{}", events[4]);
    let message = policies[4]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("signed by {key_id}")),
        "{message}"
    );

    // A reboot: the pins and the runtime state in /run are gone; the floor in the data
    // directory is not. The older bundle is refused and nothing is attached.
    let uninstalled = agent.command(&["uninstall"]);
    assert!(uninstalled.status.success(), "{uninstalled:?}");
    let _ = fs::remove_dir_all(agent.state_dir());
    sign(&key, false, "5");
    let run = Command::new("timeout")
        .arg("20")
        .arg(enforcer_bin())
        .args(["run", "--config"])
        .arg(agent.config())
        .output()
        .expect("run the agent");
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && said.contains("version 5 is older than version 6"),
        "{:?}: {said}",
        run.status
    );
    // A newer one is taken.
    sign(&key, false, "7");
    agent.start();
    assert_eq!(agent.status()["policy"]["bundle_version"], 7);
}

#[test]
fn events_a_restarted_agent_finds_in_the_ring_are_stored_named_by_their_generation() {
    let site = PeerSite::new(&[ALLOWED_PORT]);
    let (veth, api) = (&site.veth, &site.api);
    let mut agent = site.agent("127.0.0.1:19776", "");
    agent.start();
    let first_sha256 = agent.status()["policy"]["source_sha256"]
        .as_str()
        .expect("the policy hash")
        .to_owned();
    // A stopped agent drains nothing: the flows wait in the ring across the kill, with
    // those made while it is down.
    agent.pause();
    for _ in 0..3 {
        connect_allowed(veth, api);
    }
    agent.kill();
    // Down, the kernel goes on deciding and writing events.
    for _ in 0..2 {
        connect_allowed(veth, api);
    }
    // The restart applies a generation whose rule 1 has another name.
    agent.write_policy(&api_to_peer(api, veth, false).replace("\"api-to-peer\"", "\"renamed\""));
    agent.start();
    let found = wait_for_records(
        &agent,
        "the flows left in the ring",
        Duration::from_secs(10),
        |r| flows_to(r, ALLOWED_PORT, "allow") == 5,
    );
    for record in found.iter().filter(|r| r["unmapped"]["kind"] == "flow") {
        assert_eq!(
            record["firewall_rule"]["uid"], "api-to-peer",
            "a flow of generation 1 named by another generation: {record:#}"
        );
        assert_eq!(record["src_endpoint"]["name"], "api", "{record:#}");
        let flow = &record["unmapped"]["flow"];
        assert_eq!(flow["generation"], 1, "{record:#}");
        assert_eq!(flow["policy_sha256"], first_sha256.as_str(), "{record:#}");
    }
    // Stored once each, none lost.
    let gaps: Vec<&Value> = found
        .iter()
        .filter(|r| r["unmapped"]["kind"] == "gap")
        .collect();
    assert!(gaps.is_empty(), "{gaps:#?}");
}
