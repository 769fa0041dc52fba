//! What the tests of the command line share: the `enforcer` binary, and audit stores
//! written through the library with each flow described in one line.

use std::{ffi::OsStr, path::Path, process::Output, time::Duration};

use enforcer::audit::{
    files::Format,
    record::{Actor, ConnectionInfo, Endpoint, FlowDetails, Kind, Process, Record},
    store::{Fsync, Store, StoreSettings},
};

/// The reasons a flow is decided by when no rule decided it.
const REASONS: [&str; 6] = [
    "default-deny",
    "unclassified",
    "failsafe",
    "malformed",
    "raw-socket",
    "audit-unavailable",
];

/// Runs the `enforcer` binary with `args`.
pub fn enforcer<S: AsRef<OsStr>>(args: &[S]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .output()
        .expect("run enforcer")
}

/// One end of a flow: its segment, address (empty when the hook did not know it) and port.
pub struct End<'a> {
    /// The segment.
    pub segment: &'a str,
    /// The address.
    pub ip: &'a str,
    /// The port.
    pub port: u16,
}

/// An outbound TCP flow from `from` (process `client`, cgroup
/// `system.slice/<segment>.service`) to `to`, with `verdict`, decided by `by`: a rule id,
/// or a reason word (`default-deny`, `raw-socket`, ...).
pub fn flow(verdict: &str, by: &str, from: &End<'_>, to: &End<'_>, time: i64) -> Record {
    let mut flow = Record::new(
        Kind::Flow,
        time,
        "host-a",
        format!("{verdict} {} -> {} ({by})", from.segment, to.segment),
    );
    for (end, side) in [(from, &mut flow.src_endpoint), (to, &mut flow.dst_endpoint)] {
        *side = Some(Endpoint {
            ip: end.ip.into(),
            port: end.port,
            name: end.segment.into(),
        });
    }
    flow.connection_info = Some(ConnectionInfo {
        protocol_num: 6,
        protocol_name: "tcp".into(),
        protocol_ver_id: 4,
        protocol_ver: None,
        direction_id: 2,
        direction: None,
        boundary_id: None,
        boundary: None,
    });
    flow.actor = Some(Actor {
        process: Process {
            pid: 4242,
            name: "client".into(),
        },
    });
    let is_reason = REASONS.contains(&by);
    flow.unmapped.flow = Some(FlowDetails {
        verdict: verdict.into(),
        reason: if is_reason { by } else { "rule" }.into(),
        rule: (!is_reason).then(|| by.into()),
        hook: "connect4".into(),
        src_segment: from.segment.into(),
        dst_segment: to.segment.into(),
        generation: 1,
        policy_sha256: String::new(),
        cgroup_id: 7,
        cgroup: format!("system.slice/{}.service", from.segment),
        interface: None,
        kernel_ns: 0,
        fold: None,
    });
    flow
}

/// Store settings for `dir`: a new file past `rotate_bytes`, nothing removed, no fsync.
pub fn settings(dir: &Path, rotate_bytes: u64) -> StoreSettings {
    StoreSettings {
        dir: dir.to_owned(),
        rotate_bytes,
        rotate_age: Duration::from_secs(3600),
        retain_bytes: u64::MAX,
        retain_age: Duration::from_secs(86_400 * 365),
        fsync: Fsync::Never,
        format: Format::Compact,
    }
}

/// A store in `dir` holding `records` (one batch), sealed.
pub fn write_store(dir: &Path, mut records: Vec<Record>) {
    let now = enforcer::audit::record::now_ms();
    let mut store =
        Store::open(settings(dir, 1 << 20), "host-a", now, None).expect("open the store");
    store.write(&mut records, now).expect("write");
    store.close(now).expect("seal");
}
