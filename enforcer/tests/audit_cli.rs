//! `enforcer audit query`, `stats`, `tail -f` and `policy simulate` over stores written
//! through the library: each filter keeps what matches and drops what does not, the
//! statistics count a known store exactly, `tail -f` follows the writer across rotations,
//! and decisions a replay cannot redo are counted as not replayable.

mod support;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use enforcer::audit::{
    record::{Gap, Kind, Record, now_ms},
    store::Store,
};
use serde_json::Value;
use support::{End, enforcer, flow, settings, write_store};

/// The known store: seven flows, told apart by their source ports 40000..=40006, and a
/// `ring-full` gap of 3 events. A segment named `audit` puts a verdict's word in a flow
/// that does not have that verdict.
///
/// | port  | verdict | from (address)     | to (address:port)         | by           |
/// |-------|---------|--------------------|---------------------------|--------------|
/// | 40000 | allow   | api 198.18.0.7     | db 198.18.7.2:5432        | api-to-db    |
/// | 40001 | allow   | api 198.18.0.7     | db 198.18.7.2:5432        | api-to-db    |
/// | 40002 | deny    | api 198.18.0.8     | payments 198.18.20.7:8443 | default-deny |
/// | 40003 | audit   | web 198.18.0.9     | db 198.18.7.2:5433        | default-deny |
/// | 40004 | deny    | web 198.18.0.9     | payments 198.18.20.7:8443 | default-deny |
/// | 40005 | allow   | api (no address)   | db 198.18.7.2:5432        | api-to-db    |
/// | 40006 | allow   | api 198.18.0.7     | audit 198.18.30.1:6514    | api-to-audit |
fn known_store(dir: &Path) {
    let now = now_ms();
    let end = |segment, ip, port| End { segment, ip, port };
    let db = end("db", "198.18.7.2", 5432);
    let payments = end("payments", "198.18.20.7", 8443);
    let mut gap = Record::new(Kind::Gap, now, "host-a", "3 events lost (ring-full)".into());
    gap.unmapped.gap = Some(Gap {
        lost: 3,
        cause: "ring-full".into(),
        error: None,
    });
    write_store(
        dir,
        vec![
            flow(
                "allow",
                "api-to-db",
                &end("api", "198.18.0.7", 40_000),
                &db,
                now,
            ),
            flow(
                "allow",
                "api-to-db",
                &end("api", "198.18.0.7", 40_001),
                &db,
                now,
            ),
            // A fold of four denied attempts.
            {
                let mut folded = flow(
                    "deny",
                    "default-deny",
                    &end("api", "198.18.0.8", 40_002),
                    &payments,
                    now,
                );
                folded.count = Some(4);
                folded
            },
            flow(
                "audit",
                "default-deny",
                &end("web", "198.18.0.9", 40_003),
                &end("db", "198.18.7.2", 5433),
                now,
            ),
            flow(
                "deny",
                "default-deny",
                &end("web", "198.18.0.9", 40_004),
                &payments,
                now,
            ),
            flow("allow", "api-to-db", &end("api", "", 40_005), &db, now),
            flow(
                "allow",
                "api-to-audit",
                &end("api", "198.18.0.7", 40_006),
                &end("audit", "198.18.30.1", 6514),
                now,
            ),
            gap,
        ],
    );
}

/// `enforcer audit query --dir DIR --json FILTERS...`: the source ports of the flows it
/// prints (panics on a gap or any other record: no flow filter lets those through).
fn query(dir: &Path, filters: &[&str]) -> BTreeSet<u16> {
    let mut args = vec!["audit", "query", "--dir", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(filters);
    let output = enforcer(&args);
    assert!(
        output.status.success(),
        "enforcer {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("a JSON record");
            assert_eq!(
                record["unmapped"]["kind"], "flow",
                "{filters:?} let through {line}"
            );
            u16::try_from(record["src_endpoint"]["port"].as_u64().unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn each_query_filter_keeps_the_flows_that_match_and_only_those() {
    let dir = tempfile::tempdir().expect("tempdir");
    known_store(dir.path());
    let ports = |list: &[u16]| list.iter().copied().collect::<BTreeSet<u16>>();
    let cases: &[(&[&str], &[u16])] = &[
        // A segment matches either end.
        (&["--segment", "payments"], &[40_002, 40_004]),
        (&["--segment", "web"], &[40_003, 40_004]),
        (&["--segment", "audit"], &[40_006]),
        (&["--verdict", "deny"], &[40_002, 40_004]),
        (&["--verdict", "audit"], &[40_003]),
        (&["--verdict", "allow"], &[40_000, 40_001, 40_005, 40_006]),
        // An address matches either end.
        (&["--addr", "198.18.0.9"], &[40_003, 40_004]),
        (&["--addr", "198.18.20.7"], &[40_002, 40_004]),
        (&["--addr", "198.18.0.70"], &[]),
        // A port matches either end.
        (&["--port", "5432"], &[40_000, 40_001, 40_005]),
        (&["--port", "40002"], &[40_002]),
        (&["--port", "543"], &[]),
        // Filters combine: every one must match.
        (
            &[
                "--segment",
                "payments",
                "--verdict",
                "deny",
                "--addr",
                "198.18.0.9",
            ],
            &[40_004],
        ),
        (&["--rule", "default-deny", "--port", "5433"], &[40_003]),
        (&["--segment", "web", "--verdict", "allow"], &[]),
    ];
    let mut wrong = Vec::new();
    for (filters, want) in cases {
        let got = query(dir.path(), filters);
        if got != ports(want) {
            wrong.push(format!("{filters:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn stats_count_top_talkers_and_the_segment_matrix_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    known_store(dir.path());
    let stats = |top: &str| -> Value {
        let output = enforcer(&[
            "audit",
            "stats",
            "--dir",
            dir.path().to_str().unwrap(),
            "--top",
            top,
            "--json",
        ]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("JSON")
    };
    let all = stats("10");
    // Attempts: the folded record counts four.
    assert_eq!(all["flows"], 10);
    assert_eq!(all["lost_by_cause"], serde_json::json!({"ring-full": 3}));
    // Most flows first, then by source; a flow without a source address is its process
    // and cgroup.
    let talkers: Vec<(String, String, String, u64, u64)> = all["talkers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|talker| {
            (
                talker["source"].as_str().unwrap().to_owned(),
                talker["from"].as_str().unwrap().to_owned(),
                talker["to"].as_str().unwrap().to_owned(),
                talker["flows"].as_u64().unwrap(),
                talker["denied"].as_u64().unwrap(),
            )
        })
        .collect();
    let talker = |source: &str, from: &str, to: &str, flows, denied| {
        (
            source.to_owned(),
            from.to_owned(),
            to.to_owned(),
            flows,
            denied,
        )
    };
    assert_eq!(
        talkers,
        vec![
            talker("198.18.0.8", "api", "payments", 4, 4),
            talker("198.18.0.7", "api", "db", 2, 0),
            talker("198.18.0.7", "api", "audit", 1, 0),
            talker("198.18.0.9", "web", "db", 1, 0),
            talker("198.18.0.9", "web", "payments", 1, 1),
            talker("client (system.slice/api.service)", "api", "db", 1, 0),
        ]
    );
    assert_eq!(
        all["matrix"],
        serde_json::json!({
            "api": {"audit": 1, "db": 3, "payments": 4},
            "web": {"db": 1, "payments": 1},
        })
    );
    assert_eq!(
        all["denials"],
        serde_json::json!({"default-deny": {"deny": 5, "audit": 1}})
    );
    // `--top` keeps the busiest.
    let top = stats("1");
    assert_eq!(top["talkers"].as_array().unwrap().len(), 1);
    assert_eq!(top["talkers"][0]["source"], "198.18.0.8");
}

#[test]
fn simulate_counts_raw_socket_malformed_and_audit_unavailable_as_not_replayable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("audit");
    let now = now_ms();
    let api = End {
        segment: "api",
        ip: "198.18.0.7",
        port: 40_000,
    };
    let db = End {
        segment: "db",
        ip: "198.18.7.2",
        port: 5432,
    };
    write_store(
        &store,
        vec![
            flow("allow", "api-to-db", &api, &db, now),
            flow("deny", "raw-socket", &api, &db, now),
            flow("deny", "malformed", &api, &db, now),
            flow("deny", "audit-unavailable", &api, &db, now),
        ],
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[segments.api]\ncgroups = [\"system.slice/api.service\"]\n\n[segments.db]\ncidrs = [\"198.18.7.0/24\"]\n\n[[allow]]\nid = \"api-to-db\"\nfrom = [\"api\"]\nto = [\"db\"]\nports = [\"5432/tcp\"]\n",
    )
    .expect("write the policy");
    let simulate = |json: bool| {
        let mut args = vec![
            "policy",
            "simulate",
            policy.to_str().unwrap(),
            "--audit-dir",
            store.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        let output = enforcer(&args);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // The three denials would pass by the rule if they were replayed: they are not.
    let result: Value = serde_json::from_str(&simulate(true)).expect("JSON");
    assert_eq!(
        (
            &result["replayed"],
            &result["unchanged"],
            &result["skipped"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(3)),
        "{result:#}"
    );
    assert_eq!(result["changes"], serde_json::json!([]));
    let text = simulate(false);
    assert!(text.contains("(3 records not replayable)"), "{text}");
}

/// Reads `tail -f`'s lines on a thread of their own, so the test can wait with a bound.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() {
                return;
            }
        }
    });
    receive
}

#[test]
fn tail_follows_new_records_across_rotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = |port| End {
        segment: "api",
        ip: "198.18.0.7",
        port,
    };
    let db = End {
        segment: "db",
        ip: "198.18.7.2",
        port: 5432,
    };
    // Small files: a new one every few records.
    let mut store =
        Store::open(settings(dir.path(), 500), "host-a", now_ms(), None).expect("open the store");
    store
        .write(
            &mut [flow("allow", "api-to-db", &api(40_000), &db, now_ms())],
            now_ms(),
        )
        .expect("write");
    let mut tail = Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(["audit", "tail", "-f", "-n", "1", "--json", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tail -f");
    let lines = lines_of(tail.stdout.take().unwrap());
    let port_of = |line: &str| -> u64 {
        let record: Value = serde_json::from_str(line).expect("a JSON record");
        record["src_endpoint"]["port"].as_u64().unwrap()
    };
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("tail prints the newest record");
    assert_eq!(port_of(&first), 40_000);
    // Written in batches with pauses, so tail sees files sealed and new ones opened
    // between its looks.
    let files_before = enforcer::audit::read::segments(dir.path()).unwrap().len();
    for batch in 0..10u16 {
        let mut records: Vec<Record> = (0..3)
            .map(|i| {
                flow(
                    "allow",
                    "api-to-db",
                    &api(40_001 + batch * 3 + i),
                    &db,
                    now_ms(),
                )
            })
            .collect();
        store.write(&mut records, now_ms()).expect("write");
        std::thread::sleep(Duration::from_millis(150));
    }
    let files_after = enforcer::audit::read::segments(dir.path()).unwrap().len();
    assert!(
        files_after >= files_before + 3,
        "the store rotated ({files_before} files, then {files_after})"
    );
    let mut ports = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ports.len() < 30 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            ports.push(port_of(&line));
        }
    }
    tail.kill().expect("stop tail");
    tail.wait().expect("reap tail");
    store.close(now_ms()).expect("seal");
    // Each new flow once, in order, none missed at a file boundary.
    assert_eq!(ports, (40_001..40_031).collect::<Vec<u64>>());
}
