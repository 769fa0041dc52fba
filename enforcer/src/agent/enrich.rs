//! Turning a kernel [`FlowEvent`] into a flow [`Record`]: segment, rule and failsafe names
//! of the generation that decided, that generation's policy hash, the cgroup's path, the
//! interface's name, wall-clock time and the host's name.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use enforcer_common::event::{
    FLOW_FLAG_MPTCP, FLOW_FLAG_ON_THIS_HOST, FOLD_DESTINATION, FOLD_FLOW, FOLD_SOURCE, FlowEvent,
    Hook, IPPROTO_MPTCP, Reason, Verdict, family,
};

use crate::{
    audit::{
        compact::{Address, Connection, Details, End, FlowFacts},
        record::{
            ACTION_ALLOWED, ACTION_DENIED, ACTIVITY_OPEN, ACTIVITY_REFUSE, BOUNDARY_LOCALHOST,
            DISPOSITION_ALLOWED, DISPOSITION_BLOCKED, DISPOSITION_DETECTED, Record, SEVERITY_INFO,
            SEVERITY_LOW, SEVERITY_MEDIUM,
        },
    },
    host,
    policy::names::{GENERATIONS_KEPT, GenerationNames},
};

/// cgroup ids to paths, rescanned at most once a second when an unknown id shows up.
struct CgroupPaths {
    root: PathBuf,
    paths: HashMap<u64, String>,
    scanned: Option<Instant>,
}

impl CgroupPaths {
    fn path(&mut self, id: u64) -> &str {
        if id == 0 {
            return "";
        }
        if !self.paths.contains_key(&id)
            && self
                .scanned
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.scanned = Some(Instant::now());
            self.paths = host::cgroups::paths_by_id(&self.root);
        }
        self.paths.get(&id).map_or("", String::as_str)
    }
}

/// Converts kernel events into flow records.
pub struct Enricher {
    hostname: String,
    generations: Vec<Arc<GenerationNames>>,
    cgroups: CgroupPaths,
    interfaces: HashMap<u32, String>,
    /// Wall clock minus the kernel's boot-time clock, in nanoseconds.
    clock_offset_ns: i128,
    scratch: Scratch,
}

impl Enricher {
    /// An enricher for this host, its cgroup2 root and the generations known so far.
    pub fn new(hostname: String, cgroup_root: PathBuf, generations: Vec<GenerationNames>) -> Self {
        Self {
            hostname,
            generations: generations.into_iter().map(Arc::new).collect(),
            cgroups: CgroupPaths {
                root: cgroup_root,
                paths: HashMap::new(),
                scanned: None,
            },
            interfaces: HashMap::new(),
            clock_offset_ns: clock_offset_ns(),
            scratch: Scratch::default(),
        }
    }

    /// The host's name.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Learns a new generation's names (the oldest known one is forgotten past
    /// [`GENERATIONS_KEPT`]).
    pub fn learn(&mut self, names: GenerationNames) {
        self.generations
            .retain(|known| known.generation != names.generation);
        self.generations.push(Arc::new(names));
        if self.generations.len() > GENERATIONS_KEPT {
            self.generations.remove(0);
        }
        // Re-read the clocks now and then: the wall clock may have been stepped.
        self.clock_offset_ns = clock_offset_ns();
    }

    /// The wall-clock time (ms since the epoch) of a kernel boot-time timestamp.
    fn wall_ms(&self, boot_ns: u64) -> i64 {
        i64::try_from((i128::from(boot_ns) + self.clock_offset_ns) / 1_000_000).unwrap_or(0)
    }

    /// The record of one event.
    pub fn record(&mut self, event: &FlowEvent) -> Record {
        self.facts(event).record()
    }

    /// The facts of one event's record, its names borrowed from what the enricher knows:
    /// the store writes them without building the record ([`FlowFacts::record`] is the
    /// record).
    pub fn facts(&mut self, event: &FlowEvent) -> FlowFacts<'_> {
        let time = self.wall_ms(event.timestamp_ns);
        let first = self.wall_ms(event.first_ns.min(event.timestamp_ns));
        // What fills a cache comes first; everything after borrows.
        let cgroup = self.cgroups.path(event.cgroup_id);
        let interface =
            (event.ifindex != 0).then(|| interface_name(&mut self.interfaces, event.ifindex));
        let scratch = &mut self.scratch;
        let comm_end = event
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(event.comm.len());
        scratch.comm.clear();
        scratch
            .comm
            .push_str(&String::from_utf8_lossy(&event.comm[..comm_end]));
        let names = self
            .generations
            .iter()
            .rev()
            .find(|known| known.generation == event.generation)
            .map(|known| &**known);
        let verdict = Verdict::from_code(event.verdict);
        let reason = Reason::from_code(event.reason);
        let hook = Hook::from_code(event.hook);
        let verdict_word = verdict.map_or("unknown", Verdict::word);
        let reason_word = reason.map_or("unknown", Reason::word);
        let rule = names.and_then(|names| names.rule_name(reason?, event.rule_id));
        let src_segment = segment_name(names, event.src_segment, &mut scratch.src_segment);
        let dst_segment = segment_name(names, event.dst_segment, &mut scratch.dst_segment);
        let v4 = event.family == family::INET;
        // Decided on the way in: at XDP, or at the receiving socket (whose cgroup the
        // record names; no process is known there).
        let inbound = matches!(hook, Some(Hook::XdpIngress | Hook::SkbIngress));
        let local = event.flags & FLOW_FLAG_ON_THIS_HOST != 0;
        // An MPTCP subflow is TCP on the wire and decided as TCP; the kernel flags it, and
        // the record carries the socket's protocol, which the event's byte cannot hold.
        let mptcp = event.protocol == 6 && event.flags & FLOW_FLAG_MPTCP != 0;
        let protocol_num = if mptcp {
            u32::from(IPPROTO_MPTCP)
        } else {
            u32::from(event.protocol)
        };
        let protocol_name = match (event.protocol, mptcp) {
            (6, true) => "mptcp",
            (1, _) => "icmp",
            (6, _) => "tcp",
            (17, _) => "udp",
            (58, _) => "icmpv6",
            // No name rather than a made-up one: `protocol_num` names it.
            _ => "",
        };
        let (activity, action, disposition, severity) = match verdict {
            Some(Verdict::Deny) => (
                ACTIVITY_REFUSE,
                ACTION_DENIED,
                DISPOSITION_BLOCKED,
                SEVERITY_MEDIUM,
            ),
            Some(Verdict::Audit) => (
                ACTIVITY_OPEN,
                ACTION_ALLOWED,
                DISPOSITION_DETECTED,
                SEVERITY_LOW,
            ),
            _ => (
                ACTIVITY_OPEN,
                ACTION_ALLOWED,
                DISPOSITION_ALLOWED,
                SEVERITY_INFO,
            ),
        };
        let folded = event.count > 1;
        FlowFacts {
            names: Vec::new(),
            time,
            count: Some(u64::from(event.count.max(1))),
            start_time: folded.then_some(first),
            end_time: folded.then_some(time),
            message: None,
            hostname: &self.hostname,
            severity_id: severity,
            activity_id: activity,
            action_id: Some(action),
            disposition_id: Some(disposition),
            src: Some(End {
                ip: address(&event.src_addr, event.family, false),
                port: event.src_port,
                name: src_segment,
            }),
            // A destination of `0.0.0.0` or `::` is real: a connect there reaches this
            // host.
            dst: Some(End {
                ip: address(&event.dst_addr, event.family, true),
                port: event.dst_port,
                name: dst_segment,
            }),
            connection: Some(Connection {
                protocol_num,
                protocol_name,
                protocol_ver_id: if v4 { 4 } else { 6 },
                direction_id: if inbound { 1 } else { 2 },
                boundary_id: local.then_some(BOUNDARY_LOCALHOST),
            }),
            actor: (!inbound).then_some((
                u32::try_from(event.pid_tgid >> 32).unwrap_or(0),
                scratch.comm.as_str(),
            )),
            firewall_rule: Some((rule.unwrap_or(reason_word), reason_word)),
            details: Some(Details {
                verdict: verdict_word,
                reason: reason_word,
                rule,
                hook: hook.map_or("unknown", Hook::program_name),
                src_segment,
                dst_segment,
                generation: event.generation,
                policy_sha256: names.map_or("", |names| names.source_sha256.as_str()),
                cgroup_id: event.cgroup_id,
                cgroup,
                interface,
                kernel_ns: event.timestamp_ns,
                fold: fold_word(event.fold),
            }),
        }
    }
}

/// Buffers for the names an event's facts make up rather than borrow.
#[derive(Default)]
struct Scratch {
    comm: String,
    src_segment: String,
    dst_segment: String,
}

/// Segment `id`'s name in `names`, borrowed, or (for an id it does not have, or a
/// generation the agent does not know) the name [`GenerationNames::segment`] makes up,
/// in `buffer`.
fn segment_name<'a>(
    names: Option<&'a GenerationNames>,
    id: u32,
    buffer: &'a mut String,
) -> &'a str {
    if let Some(name) = names.and_then(|names| names.segment_name(id)) {
        return name;
    }
    *buffer = names.map_or_else(
        || GenerationNames::default().segment(id),
        |names| names.segment(id),
    );
    buffer
}

/// Interface `index`'s name, looked up once.
fn interface_name(interfaces: &mut HashMap<u32, String>, index: u32) -> &str {
    interfaces
        .entry(index)
        .or_insert_with(|| host::interfaces::name(index).unwrap_or_else(|| format!("if#{index}")))
}

/// The record's word for an event's `FOLD_*` code; `None` for an attempt outside folds.
fn fold_word(code: u8) -> Option<&'static str> {
    match code {
        FOLD_FLOW => Some("flow"),
        FOLD_SOURCE => Some("source"),
        FOLD_DESTINATION => Some("destination"),
        _ => None,
    }
}

/// An event's address; none for an event without addresses, and for an unspecified
/// (all-zero) one unless `unspecified_is_real` (a source address the cgroup hooks do not
/// know is zero).
fn address(bytes: &[u8; 16], address_family: u8, unspecified_is_real: bool) -> Address {
    let (ip, address) = if address_family == family::INET {
        let v4 = [bytes[0], bytes[1], bytes[2], bytes[3]];
        (IpAddr::V4(Ipv4Addr::from(v4)), Address::V4(v4))
    } else if address_family == family::INET6 {
        (IpAddr::V6(Ipv6Addr::from(*bytes)), Address::V6(*bytes))
    } else {
        return Address::None;
    };
    if ip.is_unspecified() && !unspecified_is_real {
        Address::None
    } else {
        address
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to.
    unsafe { libc::clock_gettime(clock, &raw mut now) };
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

/// `CLOCK_REALTIME - CLOCK_BOOTTIME`: adds to a `bpf_ktime_get_boot_ns` stamp to give
/// wall-clock time.
fn clock_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An enricher that knows generation 1, whose segments are only the built-in ones.
    fn generation_one() -> Enricher {
        let names = GenerationNames {
            generation: 1,
            source_sha256: String::new(),
            segments: vec!["*".into(), "host".into(), "world".into()],
            rules: vec![],
            failsafes: vec![],
        };
        Enricher::new("host-a".into(), PathBuf::from("/nonexistent"), vec![names])
    }

    /// Each verdict's OCSF action, disposition and severity, as stored: allowed 1/1/1,
    /// audit mode 1/15 (Detected)/2, denied 2/2/3, each id with its caption.
    #[test]
    fn each_verdict_has_its_disposition_and_severity() {
        let mut enricher = generation_one();
        let mut event = FlowEvent::ZEROED;
        event.generation = 1;
        event.hook = Hook::Connect4 as u8;
        event.reason = Reason::DefaultDeny as u8;
        event.family = family::INET;
        event.protocol = 6;
        event.dst_port = 8443;
        let mut stored = Vec::new();
        for verdict in [Verdict::Allow, Verdict::Audit, Verdict::Deny] {
            event.verdict = verdict as u8;
            let mut record = enricher.record(&event);
            let (mut head, mut line) = (crate::audit::chain::Head::GENESIS, Vec::new());
            crate::audit::chain::append(&mut record, &mut head, &mut line);
            let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
            stored.push(
                [
                    "action_id",
                    "action",
                    "disposition_id",
                    "disposition",
                    "severity_id",
                    "severity",
                ]
                .map(|key| json[key].to_string())
                .join(" "),
            );
        }
        assert_eq!(
            stored,
            [
                r#"1 "Allowed" 1 "Allowed" 1 "Informational""#,
                r#"1 "Allowed" 15 "Detected" 2 "Low""#,
                r#"2 "Denied" 2 "Blocked" 3 "Medium""#,
            ]
        );
    }

    #[test]
    fn an_event_becomes_an_ocsf_network_activity_record() {
        let names = GenerationNames {
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
            failsafes: vec![],
        };
        let mut enricher =
            Enricher::new("host-a".into(), PathBuf::from("/nonexistent"), vec![names]);
        let mut event = FlowEvent::ZEROED;
        event.generation = 3;
        event.hook = Hook::Connect4 as u8;
        event.verdict = Verdict::Allow as u8;
        event.reason = Reason::Rule as u8;
        event.rule_id = 1;
        event.src_segment = 3;
        event.dst_segment = 4;
        event.family = family::INET;
        event.protocol = 6;
        event.src_port = 40_000;
        event.dst_port = 8443;
        event.dst_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
        event.pid_tgid = (4242u64 << 32) | 4243;
        event.comm[..4].copy_from_slice(b"curl");
        let record = enricher.record(&event);
        assert_eq!(record.class_uid, 4001);
        assert_eq!(record.type_uid, 400_101);
        assert_eq!(record.action_id, Some(ACTION_ALLOWED));
        assert_eq!(
            record.firewall_rule.as_ref().unwrap().uid,
            "orders-to-payments"
        );
        assert_eq!(record.dst_endpoint.as_ref().unwrap().ip, "198.18.0.2");
        assert_eq!(record.dst_endpoint.as_ref().unwrap().name, "payments");
        assert_eq!(record.actor.as_ref().unwrap().process.pid, 4242);
        assert_eq!(record.actor.as_ref().unwrap().process.name, "curl");
        let flow = record.flow().unwrap();
        assert_eq!(flow.rule.as_deref(), Some("orders-to-payments"));
        assert_eq!(flow.src_segment, "orders");
        assert_eq!(flow.policy_sha256, "ab".repeat(32));

        event.verdict = Verdict::Deny as u8;
        event.reason = Reason::DefaultDeny as u8;
        event.rule_id = 0;
        let record = enricher.record(&event);
        assert_eq!(record.activity_id, ACTIVITY_REFUSE);
        assert_eq!(record.firewall_rule.as_ref().unwrap().uid, "default-deny");
        assert_eq!(record.flow().unwrap().rule, None);

        // A connect to `0.0.0.0` names that address; the unknown source stays empty.
        event.dst_addr = [0; 16];
        let record = enricher.record(&event);
        assert_eq!(record.dst_endpoint.as_ref().unwrap().ip, "0.0.0.0");
        assert_eq!(record.src_endpoint.as_ref().unwrap().ip, "");

        // An IPv6 destination is bracketed in the message, so its port stays readable.
        event.family = family::INET6;
        event.dst_addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let record = enricher.record(&event);
        assert_eq!(
            record.message,
            "deny orders -> payments [2001:db8::1]:8443/tcp (default-deny)"
        );

        // As stored: OCSF captions named from the ids, the profiles declared, the device
        // typed, and an unknown source address left out rather than written empty.
        let mut stored = record.clone();
        let mut head = crate::audit::chain::Head::GENESIS;
        let mut line = Vec::new();
        crate::audit::chain::append(&mut stored, &mut head, &mut line);
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["class_name"], "Network Activity");
        assert_eq!(json["category_name"], "Network Activity");
        assert_eq!(json["activity_name"], "Refuse");
        assert_eq!(json["type_name"], "Network Activity: Refuse");
        assert_eq!(json["severity"], "Medium");
        assert_eq!(json["device"]["type_id"], 1);
        assert_eq!(json["device"]["type"], "Server");
        assert_eq!(
            json["metadata"]["profiles"],
            serde_json::json!(["host", "security_control"])
        );
        assert!(json["src_endpoint"].get("ip").is_none(), "{json}");
        assert!(json["src_endpoint"].get("port").is_some(), "{json}");
        assert_eq!(json["dst_endpoint"]["ip"], "2001:db8::1");

        // An MPTCP subflow (TCP, flagged) is recorded as protocol 262.
        event.flags = FLOW_FLAG_MPTCP;
        let record = enricher.record(&event);
        let info = record.connection_info.as_ref().unwrap();
        assert_eq!(
            (info.protocol_num, info.protocol_name.as_str()),
            (262, "mptcp")
        );
        assert_eq!(
            record.message,
            "deny orders -> payments [2001:db8::1]:8443/mptcp (default-deny)"
        );
    }

    /// A folded event's record stands for its attempts: `count`, the first and last
    /// attempt's times, what was folded, and the count in the message; an event of one
    /// attempt has count 1 and no range.
    #[test]
    fn a_folded_event_is_one_record_counting_its_attempts() {
        let mut enricher = generation_one();
        let mut event = FlowEvent::ZEROED;
        event.generation = 1;
        event.hook = Hook::XdpIngress as u8;
        event.verdict = Verdict::Deny as u8;
        event.reason = Reason::DefaultDeny as u8;
        event.family = family::INET;
        event.protocol = 6;
        event.dst_port = 443;
        event.timestamp_ns = 5_000_000_000;

        let single = enricher.record(&event);
        assert_eq!(single.count, Some(1));
        assert_eq!((single.start_time, single.end_time), (None, None));
        assert_eq!(single.flow().unwrap().fold, None);

        event.fold = FOLD_SOURCE;
        event.count = 40;
        event.first_ns = 2_000_000_000;
        let folded = enricher.record(&event);
        assert_eq!(folded.count, Some(40));
        assert_eq!(folded.attempts(), 40);
        assert_eq!(folded.end_time, Some(folded.time));
        assert_eq!(folded.start_time, Some(folded.time - 3_000));
        assert_eq!(folded.flow().unwrap().fold.as_deref(), Some("source"));
        assert!(
            folded.message.ends_with(", 40 attempts"),
            "{}",
            folded.message
        );
        for (code, word) in [(FOLD_FLOW, "flow"), (FOLD_DESTINATION, "destination")] {
            event.fold = code;
            assert_eq!(
                enricher.record(&event).flow().unwrap().fold.as_deref(),
                Some(word)
            );
        }
    }
}
