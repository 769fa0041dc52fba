//! Floods are folded, every attempt counted. A running agent's own XDP program (its pin)
//! decides scripted SYN floods through `BPF_PROG_TEST_RUN`: 100,000 denied SYNs from one
//! address over 1,000 source ports, and 100,000 from 10,000 addresses. The store then
//! holds a few dozen records whose counts, with any gap records' losses, add up to
//! exactly the attempts the kernel counted. A fold that goes quiet is reported while the
//! agent runs, within a few windows.

use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use enforcer_tests::{
    agent::AgentHost,
    cgroup::TestCgroup,
    packet::{SYN, XDP_DROP, tcp4_from},
};
use serde_json::Value;

/// The port the `web` segment serves, which no rule opens to `outside`.
const WEB_PORT: u16 = 18_080;
/// The one source of the port flood.
const PORT_FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Source ports of the port flood, and SYNs from each.
const PORT_FLOOD: (u16, u32) = (1_000, 100);
/// Sources of the address flood (from 198.19.0.0), and SYNs from each.
const SOURCE_FLOOD: (u32, u32) = (10_000, 10);
/// The agent's default threshold of sources before a destination fold.
const FOLD_SOURCES: usize = 16;
/// The most the store may grow by for the two floods.
const STORE_BYTES_BOUND: u64 = 1 << 20;

const POLICY: &str = r#"
[segments.outside]
cidrs = ["198.18.0.0/15"]

[segments.web]
ports = ["18080/tcp"]
"#;

/// An agent enforcing [`POLICY`] whose fold window is `window`, started.
fn agent_with_window(cgroup: &TestCgroup, metrics: &str, window: Duration) -> AgentHost {
    let mut agent = AgentHost::new(cgroup, POLICY, metrics, "");
    agent.audit_options(&format!("dedup_window_ms = {}", window.as_millis()));
    agent.start();
    agent
}

/// The agent's XDP program, opened from its pin.
fn pinned_xdp(agent: &AgentHost) -> Xdp {
    Xdp::from_pin(
        agent.pin_dir().join("programs").join("xdp_ingress"),
        XdpAttachType::Interface,
    )
    .expect("open the agent's pinned XDP program")
}

/// Runs `frame` through `xdp` `times` times, one `BPF_PROG_TEST_RUN` each (a `repeat`
/// above 1 makes the kernel swap the XDP dispatcher twice per call, about 20 ms here);
/// every run must drop it.
fn flood(xdp: &Xdp, frame: &[u8], times: u32) {
    for _ in 0..times {
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .expect("test run");
        assert_eq!(result.return_value, XDP_DROP, "a denied SYN passed XDP");
    }
}

/// The bytes of every file in `dir`.
fn size_of_dir(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the store")
        .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
        .sum()
}

/// The attempts a flow record stands for (1 for a record without a count).
fn count(record: &Value) -> u64 {
    record["count"].as_u64().unwrap_or(1)
}

/// The kernel's count of default-deny denials (`enforcer status`).
fn default_denials(agent: &AgentHost) -> u64 {
    let status = agent.status();
    status["reasons"]
        .as_array()
        .expect("status lists decisions by reason")
        .iter()
        .filter(|d| d["reason"] == "default-deny" && d["verdict"] == "deny")
        .map(|d| d["count"].as_u64().expect("count"))
        .sum()
}

/// The losses the store's gap records account for.
fn lost(records: &[Value]) -> u64 {
    records
        .iter()
        .filter(|r| r["unmapped"]["kind"] == "gap")
        .map(|r| r["unmapped"]["gap"]["lost"].as_u64().expect("lost"))
        .sum()
}

/// The denied flow records to the web port whose source `from` accepts.
fn denied_from<'a>(records: &'a [Value], from: &dyn Fn(Ipv4Addr) -> bool) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["unmapped"]["kind"] == "flow" && r["unmapped"]["flow"]["verdict"] == "deny")
        .filter(|r| r["dst_endpoint"]["port"] == WEB_PORT)
        .filter(|r| {
            r["src_endpoint"]["ip"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .is_some_and(from)
        })
        .collect()
}

/// Sum of the counts of `records`.
fn counted(records: &[&Value]) -> u64 {
    records.iter().map(|r| count(r)).sum()
}

#[test]
fn a_denied_flood_is_folded_into_few_records_that_count_every_attempt() {
    let cgroup = TestCgroup::new();
    // One window for the whole test, however long the floods take on a loaded machine:
    // then how many records each fold writes does not depend on timing.
    let mut agent = agent_with_window(&cgroup, "127.0.0.1:19691", Duration::from_secs(3600));
    let before = size_of_dir(&agent.audit_dir());
    let xdp = pinned_xdp(&agent);

    let (ports, per_port) = PORT_FLOOD;
    for port in 0..ports {
        let frame = tcp4_from(PORT_FLOOD_SOURCE, 20_000 + port, WEB_PORT, SYN);
        flood(&xdp, &frame, per_port);
    }
    let (sources, per_source) = SOURCE_FLOOD;
    for n in 0..sources {
        let [_, _, high, low] = n.to_be_bytes();
        let frame = tcp4_from(Ipv4Addr::new(198, 19, high, low), 40_000, WEB_PORT, SYN);
        flood(&xdp, &frame, per_source);
    }
    let port_attempts = u64::from(ports) * u64::from(per_port);
    let attempts = port_attempts + u64::from(sources) * u64::from(per_source);
    assert_eq!(
        default_denials(&agent),
        attempts,
        "the kernel's decision counter"
    );

    // A clean stop has the kernel report every fold's pending attempts.
    assert!(agent.terminate(), "the agent did not stop cleanly");
    let records = agent.audit_records::<Value>();
    let lost = lost(&records);
    let port_flood = denied_from(&records, &|ip| ip == PORT_FLOOD_SOURCE);
    let source_flood = denied_from(&records, &|ip| ip.octets()[1] == 19);
    let stored = counted(&port_flood) + counted(&source_flood);
    assert_eq!(
        stored + lost,
        attempts,
        "stored counts ({stored}) and losses ({lost}) add up to the attempts"
    );
    assert_eq!(lost, 0, "the folded floods overflow no ring");

    // One address over many ports: one source fold, its first attempt and the rest.
    assert!(
        port_flood
            .iter()
            .all(|r| r["unmapped"]["flow"]["fold"] == "source"),
        "{port_flood:#?}"
    );
    assert_eq!(counted(&port_flood), port_attempts);
    assert_eq!(port_flood.len(), 2, "{port_flood:#?}");
    let rest = port_flood[1];
    assert!(
        rest["start_time"].as_i64() <= rest["end_time"].as_i64()
            && rest["end_time"].as_i64() == rest["time"].as_i64(),
        "a folded record names its first and last attempt: {rest}"
    );
    // Many addresses: the first sources have folds of their own (their first attempt,
    // then the rest of theirs), every later one is in the destination's fold. The port
    // flood's source was the destination's first.
    let own_folds = FOLD_SOURCES - 1;
    let by_source: Vec<&Value> = source_flood
        .iter()
        .copied()
        .filter(|r| r["unmapped"]["flow"]["fold"] == "source")
        .collect();
    let by_destination: Vec<&Value> = source_flood
        .iter()
        .copied()
        .filter(|r| r["unmapped"]["flow"]["fold"] == "destination")
        .collect();
    assert_eq!(by_source.len(), 2 * own_folds, "{by_source:#?}");
    assert_eq!(by_destination.len(), 2, "{by_destination:#?}");
    assert_eq!(
        counted(&by_destination),
        (u64::from(sources) - own_folds as u64) * u64::from(per_source)
    );
    let grown = size_of_dir(&agent.audit_dir()) - before;
    assert!(
        grown < STORE_BYTES_BOUND,
        "{attempts} attempts took {grown} bytes of store"
    );
}

#[test]
fn a_fold_that_goes_quiet_is_reported_while_the_agent_runs() {
    let cgroup = TestCgroup::new();
    let window = Duration::from_millis(300);
    let mut agent = agent_with_window(&cgroup, "127.0.0.1:19692", window);
    let xdp = pinned_xdp(&agent);
    let source = Ipv4Addr::new(198, 18, 2, 2);
    flood(&xdp, &tcp4_from(source, 30_000, WEB_PORT, SYN), 1_000);

    // The first attempt is written at once, the other 999 when the fold has been quiet
    // for a window: without another attempt to carry them, the agent's sweep does.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let records = agent.audit_records::<Value>();
        let stored = counted(&denied_from(&records, &|ip| ip == source));
        if stored >= 1_000 || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(window);
    };
    assert_eq!(stored, 1_000, "the quiet fold's attempts reached the store");
    assert!(agent.is_running(), "the agent reported them while running");
    assert!(agent.terminate(), "the agent did not stop cleanly");
}
