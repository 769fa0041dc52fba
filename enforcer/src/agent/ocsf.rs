//! Every kind of record the agent writes, made by the code that writes it, validated
//! against the OCSF schema in `tests/ocsf/` (generated from the OCSF schema repository;
//! `tests/ocsf/README.md` says how): flows of each direction, family, protocol and
//! verdict, and every store and history record, as they land in a real store.

use std::{collections::BTreeSet, path::PathBuf, sync::OnceLock, time::Duration};

use enforcer_common::event::{
    FLOW_FLAG_MPTCP, FLOW_FLAG_ON_THIS_HOST, FlowEvent, Hook, Reason, Verdict, family,
};

use super::{consumer, enrich::Enricher};
use crate::{
    audit::{
        chain, compact, files, history,
        record::Record,
        seal::{Sealer, VerifyKey, write_key},
        store::{Fsync, Store, StoreSettings},
    },
    policy::names::GenerationNames,
};

/// The schema file, as generated.
const SCHEMA: &str = include_str!("../../../tests/ocsf/ocsf-1.3.0-enforcer.schema.json");

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        jsonschema::draft202012::new(&schema).expect("the schema compiles")
    })
}

/// What the schema finds wrong with one stored line (empty when nothing).
fn violations(line: &str) -> Vec<String> {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(err) => return vec![format!("not JSON: {err}")],
    };
    validator()
        .iter_errors(&value)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

fn assert_valid(line: &str) {
    let found = violations(line);
    assert!(
        found.is_empty(),
        "{line}\nviolates OCSF:\n{}",
        found.join("\n")
    );
}

/// `record` as the store writes it.
fn stored(record: &Record) -> String {
    let mut record = record.clone();
    let mut line = Vec::new();
    chain::append(&mut record, &mut chain::Head::GENESIS.clone(), &mut line);
    String::from_utf8(line).unwrap().trim_end().to_owned()
}

fn names() -> GenerationNames {
    GenerationNames {
        generation: 3,
        source_sha256: "ab".repeat(32),
        segments: vec![
            "*".into(),
            "host".into(),
            "world".into(),
            "orders".into(),
            "payments".into(),
        ],
        rules: vec!["orders-to-payments".into()],
        failsafes: vec!["ssh".into()],
    }
}

fn enricher() -> Enricher {
    Enricher::new(
        "host-a".into(),
        PathBuf::from("/nonexistent"),
        vec![names()],
    )
}

/// One event for each way a flow is decided: inbound and outbound hooks, IPv4 and IPv6,
/// TCP, UDP, ICMP, ICMPv6 and a protocol without a name, allow, deny and audit, to and
/// from this host, with and without ports and addresses, a generation the agent does
/// not know.
fn flow_events() -> Vec<FlowEvent> {
    let mut events = Vec::new();
    let hooks = [
        Hook::XdpIngress,
        Hook::SkbIngress,
        Hook::Connect4,
        Hook::Connect6,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
        Hook::SockCreate,
        Hook::Setsockopt,
        Hook::SkbEgress,
        Hook::PostBind4,
    ];
    let verdicts = [
        (Verdict::Allow, Reason::Rule, 1),
        (Verdict::Deny, Reason::DefaultDeny, 0),
        (Verdict::Audit, Reason::DefaultDeny, 0),
        (Verdict::Allow, Reason::Failsafe, 1),
        (Verdict::Deny, Reason::Unclassified, 0),
        (Verdict::Deny, Reason::Malformed, 0),
        (Verdict::Deny, Reason::RawSocket, 0),
        (Verdict::Deny, Reason::AuditUnavailable, 0),
    ];
    for (i, hook) in hooks.into_iter().enumerate() {
        for (j, (verdict, reason, rule_id)) in verdicts.into_iter().enumerate() {
            for (k, protocol) in [6u8, 17, 1, 58, 132].into_iter().enumerate() {
                let v6 = (i + j + k) % 2 == 1;
                let mut event = FlowEvent::ZEROED;
                event.timestamp_ns = 1_000_000_000 * (i * 100 + j * 10 + k) as u64;
                event.generation = if j == 7 { 9 } else { 3 };
                event.hook = hook as u8;
                event.verdict = verdict as u8;
                event.reason = reason as u8;
                event.rule_id = rule_id;
                event.src_segment = 3;
                event.dst_segment = if j == 4 { 99 } else { 4 };
                event.family = if v6 { family::INET6 } else { family::INET };
                event.protocol = protocol;
                let ports = !matches!(protocol, 1 | 58);
                if ports {
                    event.dst_port = 8443;
                    // A connect's source port is not known yet.
                    if matches!(hook, Hook::XdpIngress | Hook::SkbIngress) {
                        event.src_port = 40_000;
                    }
                }
                let (src, dst): ([u8; 16], [u8; 16]) = if v6 {
                    (
                        "2001:db8::7"
                            .parse::<std::net::Ipv6Addr>()
                            .unwrap()
                            .octets(),
                        "2001:db8::2"
                            .parse::<std::net::Ipv6Addr>()
                            .unwrap()
                            .octets(),
                    )
                } else {
                    let mut src = [0; 16];
                    src[..4].copy_from_slice(&[198, 18, 0, 7]);
                    let mut dst = [0; 16];
                    dst[..4].copy_from_slice(&[198, 18, 0, 2]);
                    (src, dst)
                };
                event.dst_addr = dst;
                if matches!(hook, Hook::XdpIngress | Hook::SkbIngress) {
                    event.src_addr = src;
                    event.ifindex = 1;
                } else {
                    event.pid_tgid = (4242u64 << 32) | 4243;
                    event.cgroup_id = 77;
                    if k != 2 {
                        event.comm[..4].copy_from_slice(b"curl");
                    }
                }
                if (i + k) % 3 == 0 {
                    event.flags |= FLOW_FLAG_ON_THIS_HOST;
                }
                // Some TCP flows are MPTCP subflows the kernel flagged.
                if event.protocol == 6 && (i + k) % 2 == 0 {
                    event.flags |= FLOW_FLAG_MPTCP;
                }
                // A connect to the unspecified address reaches this host.
                if j == 3 && !v6 {
                    event.dst_addr = [0; 16];
                }
                events.push(event);
            }
        }
    }
    // An event without addresses (a raw socket refused at creation).
    let mut raw = FlowEvent::ZEROED;
    raw.hook = Hook::SockCreate as u8;
    raw.verdict = Verdict::Deny as u8;
    raw.reason = Reason::RawSocket as u8;
    raw.generation = 3;
    raw.protocol = 255;
    events.push(raw);
    events
}

#[test]
fn every_flow_record_validates_against_the_ocsf_schema() {
    let mut enricher = enricher();
    // Activity, disposition, direction, IP version, protocol, boundary.
    let mut seen: [BTreeSet<Option<u32>>; 6] = Default::default();
    for event in flow_events() {
        let record = enricher.record(&event);
        assert_valid(&stored(&record));
        let info = record.connection_info.as_ref().unwrap();
        seen[0].insert(Some(record.activity_id));
        seen[1].insert(record.disposition_id);
        seen[2].insert(Some(info.direction_id));
        seen[3].insert(Some(info.protocol_ver_id));
        seen[4].insert(Some(info.protocol_num));
        seen[5].insert(info.boundary_id);
    }
    // Open and Refuse; Allowed, Blocked, Detected; both directions; both families; five
    // protocols, MPTCP, and one without a name; to this host and not.
    assert_eq!(seen.map(|values| values.len()), [2, 3, 2, 2, 7, 2]);
}

#[test]
fn every_flow_record_reads_back_from_the_compact_format_exactly() {
    let mut enricher = enricher();
    let events = flow_events();
    let mut written: Vec<Record> = events.iter().map(|e| enricher.record(e)).collect();
    let (mut encoder, mut head) = (compact::Encoder::default(), chain::Head::GENESIS);
    let mut bytes = compact::FILE_MAGIC.to_vec();
    let mut batch = encoder.begin(&head, &mut bytes);
    for record in &mut written {
        encoder.push(&mut batch, record, &mut head, &mut bytes);
    }
    compact::Encoder::end(batch, &head, &mut bytes);
    // The agent writes events from their facts, without the record: the same bytes.
    let (mut encoder, mut from_facts) = (compact::Encoder::default(), chain::Head::GENESIS);
    let mut facts_bytes = compact::FILE_MAGIC.to_vec();
    let mut batch = encoder.begin(&from_facts, &mut facts_bytes);
    for event in &events {
        let facts = enricher.facts(event);
        encoder.push_facts(&mut batch, &facts, &mut from_facts, &mut facts_bytes);
    }
    compact::Encoder::end(batch, &from_facts, &mut facts_bytes);
    assert!(facts_bytes == bytes, "facts and records are written alike");
    let mut read = Vec::new();
    let mut binary = 0;
    compact::Decoder::default()
        .read(&bytes, 0, |entry| {
            binary += usize::from(entry.flow().is_some());
            read.push(entry.record().unwrap());
            true
        })
        .unwrap();
    // Every one of them in the binary form, none kept as JSON.
    assert_eq!(binary, written.len());
    assert_eq!(read.len(), written.len());
    for (mut read, written) in read.into_iter().zip(written) {
        read.unmapped.prev = String::new();
        read.unmapped.hash = None;
        assert_eq!(read, written);
    }
}

fn settings(dir: &std::path::Path) -> StoreSettings {
    StoreSettings {
        dir: dir.to_owned(),
        rotate_bytes: 6_000,
        rotate_age: Duration::from_secs(3600),
        retain_bytes: 20_000,
        retain_age: Duration::from_secs(86_400 * 365),
        fsync: Fsync::Never,
        format: files::Format::Compact,
    }
}

#[test]
fn every_store_and_history_record_validates_against_the_ocsf_schema() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("seal.key");
    let (_, sealing) = VerifyKey::generate().unwrap();
    write_key(&key, &sealing).unwrap();
    let store_dir = dir.path().join("audit");
    let sealer = Sealer::load(&key, Duration::from_secs(3600)).unwrap();
    let mut store = Store::open(settings(&store_dir), "host-a", 1_000, Some(sealer)).unwrap();
    let mut enricher = enricher();
    // Enough flows for rotations (open, seal, epoch) and retention.
    for (n, event) in flow_events().iter().enumerate() {
        let mut batch = vec![enricher.record(event)];
        if n % 50 == 0 {
            batch.push(consumer::gap(&enricher, 3, "ring-full", None));
            batch.push(consumer::gap(
                &enricher,
                2,
                "write-error",
                Some("No space left on device (os error 28)".into()),
            ));
            batch.push(consumer::gap(&enricher, 1, "decode-error", None));
        }
        store.write(&mut batch, 2_000 + n as i64).unwrap();
    }
    // The history after the flows, so that retention keeps it.
    store.note(history::started(false, 1_000, "host-a"));
    store.note(history::applied(
        &history::Applied {
            trigger: "start",
            generation: 3,
            source_sha256: &"ab".repeat(32),
            image_sha256: &"cd".repeat(32),
            bundle_version: Some(7),
            signer_key_id: Some("ed25519:0123456789abcdef"),
            changes: Some((
                2,
                crate::policy::diff::DiffSummary {
                    segment_pairs: 1,
                    verdict_changes: 2,
                    opened: 1,
                    closed: 1,
                    ..Default::default()
                },
            )),
            segments: 5,
            rules: 1,
        },
        1_000,
        "host-a",
    ));
    store.note(history::applied(
        &history::Applied {
            trigger: "sighup",
            generation: 4,
            source_sha256: &"ab".repeat(32),
            image_sha256: &"cd".repeat(32),
            bundle_version: None,
            signer_key_id: None,
            changes: None,
            segments: 5,
            rules: 1,
        },
        1_000,
        "host-a",
    ));
    store.note(history::refused(
        "sighup",
        3,
        "policies/a.toml:3:1: unknown segment",
        1_000,
        "host-a",
    ));
    store.note(history::xdp("eth0", true, None, 1_000, "host-a"));
    store.note(history::xdp(
        "eth1",
        false,
        Some("no such device"),
        1_000,
        "host-a",
    ));
    store.note(history::xdp("eth0", false, None, 1_000, "host-a"));
    store.note(history::fail_closed(true, 1_000, "host-a"));
    store.note(history::fail_closed(false, 1_000, "host-a"));
    store.note(history::stopping(9_000, "host-a"));
    store.close(9_000).unwrap();
    // A crash: a batch torn at the end of the newest file, then a restart.
    let newest = files::segments(&store_dir).unwrap().pop().unwrap().path;
    let mut bytes = std::fs::read(&newest).unwrap();
    let torn = bytes[compact::FILE_MAGIC.len()..][..10].to_vec();
    bytes.extend_from_slice(&torn);
    std::fs::write(&newest, bytes).unwrap();
    let sealer = Sealer::load(&key, Duration::from_secs(3600)).unwrap();
    let store = Store::open(settings(&store_dir), "host-a", 10_000, Some(sealer)).unwrap();
    store.close(10_000).unwrap();

    let mut kinds = BTreeSet::new();
    let mut activities = BTreeSet::new();
    let mut causes = BTreeSet::new();
    {
        for line in files::rendered_lines(&store_dir).unwrap() {
            assert_valid(&line);
            let record: Record = serde_json::from_str(&line).unwrap();
            kinds.insert(record.unmapped.kind.word());
            activities.insert((record.class_uid, record.activity_id));
            if let Some(gap) = &record.unmapped.gap {
                causes.insert(gap.cause.clone());
            }
        }
    }
    assert_eq!(
        kinds,
        [
            "agent",
            "epoch",
            "flow",
            "gap",
            "open",
            "policy",
            "retention",
            "seal"
        ]
        .into(),
        "every record kind was written"
    );
    assert_eq!(
        causes,
        ["decode-error", "ring-full", "torn-write", "write-error"]
            .map(str::to_owned)
            .into(),
    );
    // Event Log Activity: Delete, Archive, Rotate, Restart, Other; Application
    // Lifecycle: Start, Stop, Other. (The first file's Start was removed by retention.)
    for activity in [
        (1008, 2),
        (1008, 4),
        (1008, 5),
        (1008, 8),
        (1008, 99),
        (6002, 3),
        (6002, 4),
        (6002, 99),
    ] {
        assert!(
            activities.contains(&activity),
            "{activity:?}: {activities:?}"
        );
    }
    let first = Store::open(settings(&dir.path().join("first")), "host-a", 1, None).unwrap();
    first.close(1).unwrap();
    let first = files::rendered_lines(&dir.path().join("first")).unwrap();
    let opened = &first[0];
    assert_valid(opened);
    assert!(opened.contains(r#""activity_name":"Start""#), "{opened}");
}

#[test]
fn the_schema_names_what_a_record_gets_wrong() {
    let mut enricher = enricher();
    let mut event = flow_events()[3];
    event.flags |= FLOW_FLAG_ON_THIS_HOST;
    let line = stored(&enricher.record(&event));
    assert_valid(&line);
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    type Breaking = fn(&mut serde_json::Value);
    let broken: [(&str, Breaking); 10] = [
        ("an empty string", |v| v["message"] = "".into()),
        ("an empty string in unmapped", |v| {
            v["unmapped"]["flow"]["cgroup"] = "".into();
        }),
        ("a null", |v| {
            v["dst_endpoint"]["port"] = serde_json::Value::Null
        }),
        ("a caption left out", |v| {
            v["connection_info"]
                .as_object_mut()
                .unwrap()
                .remove("direction");
        }),
        ("a wrong caption", |v| v["activity_name"] = "Close".into()),
        ("an id OCSF does not have", |v| {
            v["connection_info"]["direction_id"] = 7.into();
        }),
        ("a protocol number as text", |v| {
            v["connection_info"]["protocol_num"] = "6".into();
        }),
        ("a field OCSF does not have", |v| {
            v["verdict"] = "allow".into()
        }),
        ("a required field left out", |v| {
            v["metadata"].as_object_mut().unwrap().remove("version");
        }),
        ("a profile not declared", |v| {
            v["metadata"]["profiles"] = serde_json::json!(["host"]);
        }),
    ];
    for (what, breaking) in broken {
        let mut value = value.clone();
        breaking(&mut value);
        let found = violations(&value.to_string());
        assert!(!found.is_empty(), "{what} passed: {value}");
    }
    let mut other_class = value;
    other_class["class_uid"] = 0.into();
    assert!(!violations(&other_class.to_string()).is_empty());
}
