//! One audit record: a JSON object on one line, shaped as an OCSF event so a SIEM takes
//! it without a custom parser. Flow decisions are OCSF Network Activity (class 4001);
//! the store's own records (file opened, sealed or removed, gap, epoch seal) are OCSF
//! Event Log Activity (class 1008); the agent's and the policies' history is OCSF
//! Application Lifecycle (class 6002). Everything enforcer adds beyond OCSF lives under
//! `unmapped`, whose last two keys are the hash chain (`prev`, `hash`). The field list is
//! in `docs/audit.md`; every record validates against
//! `tests/ocsf/ocsf-1.3.0-enforcer.schema.json`, made from the OCSF schema itself: an id
//! comes with its caption, and an unknown value is left out, never written empty.

use serde::{Deserialize, Serialize};

use crate::policy::diff::DiffSummary;

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// OCSF class of flow decisions: Network Activity.
pub const CLASS_NETWORK_ACTIVITY: u32 = 4001;
/// OCSF category of Network Activity.
pub const CATEGORY_NETWORK: u32 = 4;
/// OCSF class of the store's own records: Event Log Activity.
pub const CLASS_EVENT_LOG: u32 = 1008;
/// OCSF category of Event Log Activity: System Activity.
pub const CATEGORY_SYSTEM: u32 = 1;
/// OCSF class of the agent's and the policies' history: Application Lifecycle.
pub const CLASS_APPLICATION_LIFECYCLE: u32 = 6002;
/// OCSF category of Application Lifecycle: Application Activity.
pub const CATEGORY_APPLICATION: u32 = 6;
/// OCSF `activity_id` Other, in every class.
pub const ACTIVITY_OTHER: u32 = 99;
/// OCSF Event Log Activity `activity_id` Delete: retention removed files.
pub const LOG_DELETE: u32 = 2;
/// OCSF Event Log Activity `activity_id` Archive: a file sealed.
pub const LOG_ARCHIVE: u32 = 4;
/// OCSF Event Log Activity `activity_id` Rotate: a file opened after a rotation.
pub const LOG_ROTATE: u32 = 5;
/// OCSF Event Log Activity `activity_id` Start: the store's first file opened.
pub const LOG_START: u32 = 6;
/// OCSF Event Log Activity `activity_id` Restart: a file opened at an agent restart.
pub const LOG_RESTART: u32 = 8;
/// OCSF Application Lifecycle `activity_id` Start: the agent started.
pub const APP_START: u32 = 3;
/// OCSF Application Lifecycle `activity_id` Stop: the agent is stopping.
pub const APP_STOP: u32 = 4;
/// OCSF Network Activity `activity_id` of an allowed flow: Open.
pub const ACTIVITY_OPEN: u32 = 1;
/// OCSF Network Activity `activity_id` of a refused flow: Refuse.
pub const ACTIVITY_REFUSE: u32 = 5;
/// OCSF `action_id`: Allowed.
pub const ACTION_ALLOWED: u32 = 1;
/// OCSF `action_id`: Denied.
pub const ACTION_DENIED: u32 = 2;
/// OCSF `disposition_id`: Allowed.
pub const DISPOSITION_ALLOWED: u32 = 1;
/// OCSF `disposition_id`: Blocked.
pub const DISPOSITION_BLOCKED: u32 = 2;
/// OCSF `disposition_id`: Detected (audit mode: would have been blocked).
pub const DISPOSITION_DETECTED: u32 = 15;
/// OCSF `severity_id`: Informational.
pub const SEVERITY_INFO: u32 = 1;
/// OCSF `severity_id`: Low.
pub const SEVERITY_LOW: u32 = 2;
/// OCSF `severity_id`: Medium.
pub const SEVERITY_MEDIUM: u32 = 3;
/// OCSF `severity_id`: High.
pub const SEVERITY_HIGH: u32 = 4;

/// The OCSF class of each record kind: `(class_uid, category_uid)`.
pub fn class_of(kind: Kind) -> (u32, u32) {
    match kind {
        Kind::Flow => (CLASS_NETWORK_ACTIVITY, CATEGORY_NETWORK),
        Kind::Gap | Kind::Open | Kind::Retention | Kind::Seal | Kind::Epoch => {
            (CLASS_EVENT_LOG, CATEGORY_SYSTEM)
        }
        Kind::Agent | Kind::Policy => (CLASS_APPLICATION_LIFECYCLE, CATEGORY_APPLICATION),
    }
}

/// One line of the audit store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// OCSF class: [`CLASS_NETWORK_ACTIVITY`] for flows, 0 (Base Event) otherwise.
    pub class_uid: u32,
    /// The caption of `class_uid` ([`Record::caption`] fills the captions).
    #[serde(default)]
    pub class_name: String,
    /// OCSF category: [`CATEGORY_NETWORK`] for flows, 0 otherwise.
    pub category_uid: u32,
    /// The caption of `category_uid`.
    #[serde(default)]
    pub category_name: String,
    /// OCSF activity: [`ACTIVITY_OPEN`] or [`ACTIVITY_REFUSE`] for flows, 99 (Other)
    /// otherwise.
    pub activity_id: u32,
    /// The caption of `activity_id`.
    #[serde(default)]
    pub activity_name: String,
    /// OCSF `class_uid * 100 + activity_id`.
    pub type_uid: u64,
    /// The caption of `type_uid`: `<class>: <activity>`.
    #[serde(default)]
    pub type_name: String,
    /// OCSF severity.
    pub severity_id: u32,
    /// The caption of `severity_id`.
    #[serde(default)]
    pub severity: String,
    /// When it happened, milliseconds since the Unix epoch (for a fold: its latest
    /// attempt).
    pub time: i64,
    /// OCSF `count`: how many attempts a flow record stands for (a fold's; absent on
    /// records written before folding, which stand for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// OCSF `start_time`: the earliest attempt a flow record stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    /// OCSF `end_time`: the latest attempt a flow record stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    /// A one-line description for people.
    pub message: String,
    /// OCSF metadata: product, schema version, and the record's sequence number.
    pub metadata: Metadata,
    /// The host that wrote the record.
    pub device: Device,
    /// OCSF `action_id` (flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<u32>,
    /// The caption of `action_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// OCSF `disposition_id` (flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition_id: Option<u32>,
    /// The caption of `disposition_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
    /// The flow's source (flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_endpoint: Option<Endpoint>,
    /// The flow's destination (flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_endpoint: Option<Endpoint>,
    /// Protocol and direction (flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo>,
    /// The local process that made the flow (cgroup hooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// What decided (flows): the rule, or the reason when no rule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall_rule: Option<FirewallRule>,
    /// OCSF Event Log Activity `log_provider` (the store's records): `enforcer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_provider: Option<String>,
    /// OCSF Event Log Activity `log_name` (the store's records): `audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_name: Option<String>,
    /// OCSF Application Lifecycle `app` (the agent's and the policies' history): the
    /// agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Product>,
    /// enforcer's own fields and the hash chain. Always the last key.
    pub unmapped: Unmapped,
}

/// OCSF `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The OCSF schema version ([`OCSF_VERSION`]).
    pub version: String,
    /// The OCSF profiles whose fields the record uses: `host` (`device`, `actor`) and,
    /// for flows, `security_control` (`action_id`, `disposition_id`, `firewall_rule`).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// The product that wrote the record.
    pub product: Product,
    /// Position in the store's chain, from 1, without gaps.
    pub sequence: u64,
}

/// OCSF `metadata.product`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// `enforcer`.
    pub name: String,
    /// `enforcer`.
    pub vendor_name: String,
    /// The agent's version.
    pub version: String,
}

/// OCSF `device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// OCSF device type: [`DEVICE_SERVER`].
    #[serde(default = "server")]
    pub type_id: u32,
    /// The caption of `type_id`.
    #[serde(rename = "type", default)]
    pub type_name: String,
    /// The host's name.
    pub hostname: String,
}

/// OCSF `device.type_id`: Server.
pub const DEVICE_SERVER: u32 = 1;
/// The caption of [`DEVICE_SERVER`].
pub const DEVICE_SERVER_NAME: &str = "Server";
/// `metadata.product.name` and `vendor_name`.
pub const PRODUCT: &str = "enforcer";

fn server() -> u32 {
    DEVICE_SERVER
}

/// OCSF network endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The address (empty where the hook does not know it, and then left out: a typed IP
    /// field takes no empty string).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// The port (0 where the hook does not know it, and then left out).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u16,
    /// The enforcer segment of this side.
    pub name: String,
}

fn is_zero(port: &u16) -> bool {
    *port == 0
}

impl Endpoint {
    /// The address and port as people write them: `198.18.0.1:443`, `[2001:db8::1]:443`;
    /// the address alone when the port is unknown, `:port` when the address is; empty
    /// when neither is known.
    pub fn address_and_port(ip: &str, port: u16) -> String {
        let mut out = String::new();
        Self::write_address_and_port(&mut out, ip, port);
        out
    }

    /// Appends [`Endpoint::address_and_port`] to `out`.
    pub fn write_address_and_port(out: &mut String, ip: &str, port: u16) {
        use std::fmt::Write as _;
        let _ = match (ip.is_empty(), port) {
            (true, 0) => Ok(()),
            (true, port) => write!(out, ":{port}"),
            (false, 0) => write!(out, "{ip}"),
            (false, port) if ip.contains(':') => write!(out, "[{ip}]:{port}"),
            (false, port) => write!(out, "{ip}:{port}"),
        };
    }
}

/// OCSF `connection_info`. Its ids are OCSF integers (32 bits), written at full width.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// IP protocol number (262 for MPTCP, which is TCP on the wire).
    pub protocol_num: u32,
    /// The IANA keyword in lowercase (`tcp`, `udp`, `icmp`, `icmpv6`), or `mptcp` for an
    /// MPTCP subflow (TCP on the wire, decided by the `tcp` rules); empty, and then left
    /// out, for a protocol without one here (`protocol_num` still names it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol_name: String,
    /// 4 or 6.
    pub protocol_ver_id: u32,
    /// The caption of `protocol_ver_id` ([`Record::caption`] fills it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_ver: Option<String>,
    /// 1 inbound (XDP), 2 outbound (cgroup hooks).
    pub direction_id: u32,
    /// The caption of `direction_id` ([`Record::caption`] fills it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// [`BOUNDARY_LOCALHOST`] when the flow stays on this host: an outbound flow whose
    /// destination address was this host (a local address in any form, decided against
    /// the segment serving the port), or an inbound one from a local process (decided
    /// against the sender's segment); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary_id: Option<u32>,
    /// The caption of `boundary_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<String>,
}

/// OCSF `connection_info.boundary_id` "Localhost": the flow stays on this host.
pub const BOUNDARY_LOCALHOST: u32 = 1;

impl ConnectionInfo {
    /// Whether the destination address was this host.
    pub fn to_this_host(&self) -> bool {
        self.boundary_id == Some(BOUNDARY_LOCALHOST)
    }
}

/// OCSF `actor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The process.
    pub process: Process,
}

/// OCSF `process`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id (thread group id).
    pub pid: u32,
    /// Command name (left out when the kernel gave none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// OCSF `firewall_rule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    /// The rule id from the policy, or the reason (`default-deny`, `failsafe:<name>`, …)
    /// when no rule decided.
    pub uid: String,
    /// The reason word (`rule`, `default-deny`, `unclassified`, `failsafe`, …).
    #[serde(rename = "type")]
    pub kind: String,
}

/// What kind of record a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A flow decision.
    Flow,
    /// Events that were lost, with their count.
    Gap,
    /// The first record of a file.
    Open,
    /// Older files removed by retention.
    Retention,
    /// The last record of a rotated file.
    Seal,
    /// A forward-secure seal of the chain's end under one epoch's key
    /// ([`super::seal`]).
    Epoch,
    /// The agent's life: started (after a crash or not), stopping, fail-closed on or off.
    Agent,
    /// A policy applied or refused.
    Policy,
}

impl Kind {
    /// The word records and commands use for it.
    pub fn word(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Gap => "gap",
            Self::Open => "open",
            Self::Retention => "retention",
            Self::Seal => "seal",
            Self::Epoch => "epoch",
            Self::Agent => "agent",
            Self::Policy => "policy",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [
            Self::Flow,
            Self::Gap,
            Self::Open,
            Self::Retention,
            Self::Seal,
            Self::Epoch,
            Self::Agent,
            Self::Policy,
        ]
        .into_iter()
        .find(|kind| kind.word() == text)
        .ok_or_else(|| {
            format!("`{text}` is not a record kind (flow, gap, open, retention, seal, epoch, agent, policy)")
        })
    }
}

/// enforcer's fields that OCSF has no place for, and the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmapped {
    /// What kind of record this is.
    pub kind: Kind,
    /// Flow details ([`Kind::Flow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowDetails>,
    /// Loss details ([`Kind::Gap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
    /// File details ([`Kind::Open`] and [`Kind::Seal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileDetails>,
    /// Removed files ([`Kind::Retention`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<RemovedFile>>,
    /// The seal ([`Kind::Epoch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<EpochSeal>,
    /// What happened to the agent ([`Kind::Agent`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentEvent>,
    /// What happened to a policy ([`Kind::Policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyEvent>,
    /// Hash of the previous record in the chain (64 zeros for the first record ever).
    pub prev: String,
    /// SHA-256 of this record's line without this key; written by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A moment in the agent's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// `started`, `stopping`, `fail-closed`, `fail-closed-lifted`, `xdp-attached`,
    /// `xdp-attach-failed` or `xdp-detached`.
    pub event: String,
    /// The agent's process id.
    pub pid: u32,
    /// The agent's version.
    pub version: String,
    /// `started`: the previous run ended without sealing the store (a crash, a kill).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// `xdp-attached`, `xdp-attach-failed`, `xdp-detached`: the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `xdp-attach-failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A policy applied or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEvent {
    /// `applied` or `refused`.
    pub outcome: String,
    /// What made the agent read it: `start`, `sighup`, `file-change`.
    pub trigger: String,
    /// The generation it became (`applied`), or the one that stays (`refused`).
    pub generation: u32,
    /// SHA-256 of the policy files (`applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// SHA-256 of the compiled maps (`applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// The signed bundle's version, for a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<u64>,
    /// The id of the trusted key that signed the bundle, for a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_key_id: Option<String>,
    /// The generation this one replaced, when this agent applied it too (`applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_generation: Option<u32>,
    /// What changed against `previous_generation`, as `policy diff` sums it up (`applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffSummary>,
    /// Segments it holds (`applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u64>,
    /// Rules it holds (`applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<u64>,
    /// Why it was refused, each error with its file:line:col (`refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A forward-secure seal: the epoch whose key made it, and the HMAC of the record before
/// it (see [`super::seal`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSeal {
    /// The epoch.
    pub index: u64,
    /// The HMAC, 64 hex digits.
    pub tag: String,
}

/// The decision behind a flow record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDetails {
    /// `allow`, `deny` or `audit`.
    pub verdict: String,
    /// `rule`, `default-deny`, `unclassified`, `failsafe`, `malformed`, `raw-socket`,
    /// `audit-unavailable`.
    pub reason: String,
    /// The deciding rule's id from the policy (reason `rule`) or failsafe name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The kernel hook that decided (`xdp_ingress`, `connect4`, …).
    pub hook: String,
    /// Source segment.
    pub src_segment: String,
    /// Destination segment.
    pub dst_segment: String,
    /// The policy generation that decided.
    pub generation: u32,
    /// SHA-256 of the policy files of that generation (empty when unknown, and then
    /// left out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_sha256: String,
    /// cgroup v2 id of the calling task (0 at XDP).
    pub cgroup_id: u64,
    /// The cgroup's path below the cgroup2 root (empty at XDP or when gone, and then
    /// left out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
    /// Receiving interface (XDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The kernel's boot-time clock at the decision, nanoseconds.
    pub kernel_ns: u64,
    /// What the record's `count` folds: `flow` (one flow's repeats), `source` (denials
    /// from one source to one destination, any source port) or `destination` (denials to
    /// one destination from sources past the threshold; the record names the latest).
    /// Absent for a record that stands for one attempt outside any fold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<String>,
}

/// Lost events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// How many events are missing from the store at this point.
    pub lost: u64,
    /// Why: `ring-full` (the kernel could not reserve room), `write-error` (the store
    /// could not write them), `decode-error`.
    pub cause: String,
    /// The error, for `write-error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// About one store file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDetails {
    /// The file's number (its name is `audit-<number>.jsonl`).
    pub number: u64,
    /// [`Kind::Open`]: why the file was started (`first`, `rotate`, `restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened: Option<String>,
    /// [`Kind::Seal`]: the file's records before the seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// [`Kind::Seal`]: the file's first sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sequence: Option<u64>,
    /// [`Kind::Seal`]: time of the file's first record (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_time: Option<i64>,
    /// [`Kind::Seal`]: time of the file's last record before the seal (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<i64>,
    /// [`Kind::Seal`]: flow records in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u64>,
    /// [`Kind::Seal`]: events the file's gap records count as lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// [`Kind::Seal`]: what the file's flows name, so a query skips the file when its
    /// filter names none of it (absent in seals written before summaries: such a file is
    /// read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<FileSummary>,
}

/// Most distinct values a [`FileSummary`] lists in one set; past it the set is `"many"`.
pub const SUMMARY_LIMIT: usize = 64;

/// A set of a file's values, or `"many"` when it holds more than [`SUMMARY_LIMIT`] (then
/// it rules nothing out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bounded<T> {
    /// Every value, each with its count.
    Listed(T),
    /// Too many to list.
    Many(Many),
}

/// The word `"many"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Many {
    /// `"many"`.
    #[serde(rename = "many")]
    Many,
}

/// Values and how many flows name each, bounded.
pub type Counts = Bounded<std::collections::BTreeMap<String, u64>>;

impl Default for Counts {
    fn default() -> Self {
        Self::Listed(std::collections::BTreeMap::new())
    }
}

impl Counts {
    /// Counts one more flow naming `value`.
    fn count(&mut self, value: &str) {
        let Self::Listed(counts) = self else { return };
        if let Some(count) = counts.get_mut(value) {
            *count += 1;
        } else if counts.len() < SUMMARY_LIMIT {
            counts.insert(value.to_owned(), 1);
        } else {
            *self = Self::Many(Many::Many);
        }
    }

    /// Whether a flow naming `value` may be among those counted: `false` only when the
    /// values are listed and `value` is not one of them.
    pub fn may_hold(&self, value: &str) -> bool {
        match self {
            Self::Listed(counts) => counts.contains_key(value),
            Self::Many(_) => true,
        }
    }
}

/// What a sealed file's flows name: their segments (either end), the rules that decided
/// them (the reason where no rule did), verdicts and protocols, each with its count of
/// flows. Written in the file's seal, so it is chained and sealed like any record, and
/// `enforcer audit verify` checks it against the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// Segment → flows from or to it (a flow within one segment counts once).
    pub segments: Counts,
    /// Rule id, or reason when no rule decided → flows.
    pub rules: Counts,
    /// Verdict → flows.
    pub verdicts: Counts,
    /// Protocol name (its number when it has none) → flows.
    pub protocols: Counts,
}

impl FileSummary {
    /// Adds `record` (only flows count).
    pub fn add(&mut self, record: &Record) {
        let Some(flow) = record.flow() else { return };
        self.add_flow(&FlowNames {
            src_segment: &flow.src_segment,
            dst_segment: &flow.dst_segment,
            decided_by: flow.rule.as_deref().unwrap_or(flow.reason.as_str()),
            verdict: &flow.verdict,
            protocol: record
                .connection_info
                .as_ref()
                .map(|info| (info.protocol_name.as_str(), info.protocol_num)),
        });
    }

    /// Adds a flow that names `names`.
    pub fn add_flow(&mut self, names: &FlowNames<'_>) {
        self.segments.count(names.src_segment);
        if names.dst_segment != names.src_segment {
            self.segments.count(names.dst_segment);
        }
        self.rules.count(names.decided_by);
        self.verdicts.count(names.verdict);
        match names.protocol {
            Some(("", number)) => self.protocols.count(&number.to_string()),
            Some((name, _)) => self.protocols.count(name),
            None => {}
        }
    }
}

/// What a [`FileSummary`] counts of one flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowNames<'a> {
    /// Its source segment.
    pub src_segment: &'a str,
    /// Its destination segment.
    pub dst_segment: &'a str,
    /// The rule that decided it, or the reason when no rule did.
    pub decided_by: &'a str,
    /// Its verdict.
    pub verdict: &'a str,
    /// Its protocol's name and number, when the record has them.
    pub protocol: Option<(&'a str, u32)>,
}

/// A file retention removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedFile {
    /// Its number.
    pub number: u64,
    /// Its last sequence number (the seal's).
    pub last_sequence: u64,
    /// The hash of its seal record, which the next file's first record names as `prev`.
    pub seal_hash: String,
}

/// Sets `field` to `value`, reusing its allocation.
fn set(field: &mut String, value: &str) {
    if field != value {
        field.clear();
        field.push_str(value);
    }
}

/// Sets `field` to `value` (`None` for none), reusing its allocation.
fn set_some(field: &mut Option<String>, value: Option<&str>) {
    match (field.as_mut(), value) {
        (Some(field), Some(value)) => set(field, value),
        (_, value) => *field = value.map(str::to_owned),
    }
}

/// The wall clock now, in ms since the epoch (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The last instant RFC 3339 can write (four-digit years), 9999-12-31T23:59:59.999Z, in
/// ms since the epoch.
const LAST_RFC3339_MS: u64 = 253_402_300_799_999;

/// A record time (ms since the epoch) as RFC 3339 with milliseconds (UTC), or `None` for
/// a time RFC 3339 cannot write (before the epoch, or after the year 9999: only a corrupt
/// or forged record has one).
pub fn rfc3339(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok().filter(|ms| *ms <= LAST_RFC3339_MS)?;
    // As a civil date and time of day in UTC: jiff's `Timestamp` ends a day before
    // RFC 3339 does (to leave room for any offset), its civil dates do not.
    const DAY_MS: u64 = 86_400_000;
    let days = i64::try_from(ms / DAY_MS).ok()?;
    let date = jiff::civil::date(1970, 1, 1)
        .checked_add(jiff::Span::new().try_days(days).ok()?)
        .ok()?;
    let time = jiff::civil::Time::midnight()
        .checked_add(jiff::SignedDuration::from_millis(
            i64::try_from(ms % DAY_MS).ok()?,
        ))
        .ok()?;
    Some(
        date.to_datetime(time)
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
    )
}

impl Record {
    /// A record of `kind` with the common fields filled in; the store sets the sequence
    /// number and the chain.
    pub fn new(kind: Kind, time: i64, hostname: &str, message: String) -> Self {
        let (class_uid, category_uid) = class_of(kind);
        let product = Product {
            name: PRODUCT.to_owned(),
            vendor_name: PRODUCT.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let mut record = Self {
            class_uid,
            class_name: String::new(),
            category_uid,
            category_name: String::new(),
            activity_id: ACTIVITY_OTHER,
            activity_name: String::new(),
            type_uid: u64::from(class_uid) * 100 + u64::from(ACTIVITY_OTHER),
            type_name: String::new(),
            severity_id: SEVERITY_INFO,
            severity: String::new(),
            time,
            count: None,
            start_time: None,
            end_time: None,
            message,
            metadata: Metadata {
                version: OCSF_VERSION.to_owned(),
                profiles: Vec::new(),
                product: product.clone(),
                sequence: 0,
            },
            device: Device {
                type_id: DEVICE_SERVER,
                type_name: DEVICE_SERVER_NAME.to_owned(),
                hostname: hostname.to_owned(),
            },
            action_id: None,
            action: None,
            disposition_id: None,
            disposition: None,
            src_endpoint: None,
            dst_endpoint: None,
            connection_info: None,
            actor: None,
            firewall_rule: None,
            log_provider: None,
            log_name: None,
            app: None,
            unmapped: Unmapped {
                kind,
                flow: None,
                gap: None,
                file: None,
                removed: None,
                epoch: None,
                agent: None,
                policy: None,
                prev: String::new(),
                hash: None,
            },
        };
        match class_uid {
            CLASS_EVENT_LOG => {
                record.log_provider = Some("enforcer".to_owned());
                record.log_name = Some("audit".to_owned());
            }
            CLASS_APPLICATION_LIFECYCLE => record.app = Some(product),
            _ => {}
        }
        record.caption();
        record
    }

    /// Sets what follows from the record's kind and details: the OCSF class, activity
    /// and profiles of a store or history record (a flow's activity is its verdict's,
    /// set by the agent), and the captions of every id. The store calls it as it writes
    /// the record, so details and ids changed after [`Record::new`] are named right.
    pub fn caption(&mut self) {
        let kind = self.unmapped.kind;
        if kind != Kind::Flow {
            (self.class_uid, self.category_uid) = class_of(kind);
            self.activity_id = self.history_activity();
            self.type_uid = u64::from(self.class_uid) * 100 + u64::from(self.activity_id);
        }
        let profiles: &[&str] = match kind {
            Kind::Flow => &["host", "security_control"],
            _ => &["host"],
        };
        if self.metadata.profiles != profiles {
            self.metadata.profiles = profiles.iter().map(|&p| p.to_owned()).collect();
        }
        let (class, category) = match self.class_uid {
            CLASS_NETWORK_ACTIVITY => ("Network Activity", "Network Activity"),
            CLASS_EVENT_LOG => ("Event Log Activity", "System Activity"),
            CLASS_APPLICATION_LIFECYCLE => ("Application Lifecycle", "Application Activity"),
            _ => ("Base Event", "Uncategorized"),
        };
        let activity = match (self.class_uid, self.activity_id) {
            (CLASS_NETWORK_ACTIVITY, ACTIVITY_OPEN) => "Open",
            (CLASS_NETWORK_ACTIVITY, ACTIVITY_REFUSE) => "Refuse",
            (CLASS_EVENT_LOG, LOG_DELETE) => "Delete",
            (CLASS_EVENT_LOG, LOG_ARCHIVE) => "Archive",
            (CLASS_EVENT_LOG, LOG_ROTATE) => "Rotate",
            (CLASS_EVENT_LOG, LOG_START) => "Start",
            (CLASS_EVENT_LOG, LOG_RESTART) => "Restart",
            (CLASS_APPLICATION_LIFECYCLE, APP_START) => "Start",
            (CLASS_APPLICATION_LIFECYCLE, APP_STOP) => "Stop",
            _ => "Other",
        };
        // Captions already right stay as they are: the store captions every record it
        // writes, most of them captioned when they were made.
        set(&mut self.class_name, class);
        set(&mut self.category_name, category);
        set(&mut self.activity_name, activity);
        if self
            .type_name
            .strip_prefix(class)
            .and_then(|rest| rest.strip_prefix(": "))
            != Some(activity)
        {
            self.type_name = format!("{class}: {activity}");
        }
        set(
            &mut self.severity,
            match self.severity_id {
                SEVERITY_INFO => "Informational",
                SEVERITY_LOW => "Low",
                SEVERITY_MEDIUM => "Medium",
                SEVERITY_HIGH => "High",
                _ => "Unknown",
            },
        );
        set_some(
            &mut self.action,
            self.action_id.map(|id| match id {
                ACTION_ALLOWED => "Allowed",
                ACTION_DENIED => "Denied",
                _ => "Unknown",
            }),
        );
        set_some(
            &mut self.disposition,
            self.disposition_id.map(|id| match id {
                DISPOSITION_ALLOWED => "Allowed",
                DISPOSITION_BLOCKED => "Blocked",
                DISPOSITION_DETECTED => "Detected",
                _ => "Unknown",
            }),
        );
        if let Some(info) = &mut self.connection_info {
            set_some(
                &mut info.protocol_ver,
                Some(match info.protocol_ver_id {
                    4 => "Internet Protocol version 4 (IPv4)",
                    6 => "Internet Protocol version 6 (IPv6)",
                    _ => "Unknown",
                }),
            );
            set_some(
                &mut info.direction,
                Some(match info.direction_id {
                    1 => "Inbound",
                    2 => "Outbound",
                    _ => "Unknown",
                }),
            );
            set_some(
                &mut info.boundary,
                info.boundary_id.map(|id| match id {
                    BOUNDARY_LOCALHOST => "Localhost",
                    _ => "Unknown",
                }),
            );
        }
    }

    /// The OCSF activity of a store or history record: what happened to the store (Event
    /// Log Activity) or to the agent (Application Lifecycle); Other for the rest.
    fn history_activity(&self) -> u32 {
        let unmapped = &self.unmapped;
        match unmapped.kind {
            Kind::Open => match unmapped.file.as_ref().and_then(|f| f.opened.as_deref()) {
                Some("first") => LOG_START,
                Some("rotate") => LOG_ROTATE,
                Some("restart") => LOG_RESTART,
                _ => ACTIVITY_OTHER,
            },
            Kind::Seal => LOG_ARCHIVE,
            Kind::Retention => LOG_DELETE,
            Kind::Agent => match unmapped.agent.as_ref().map(|a| a.event.as_str()) {
                Some("started") => APP_START,
                Some("stopping") => APP_STOP,
                _ => ACTIVITY_OTHER,
            },
            Kind::Flow | Kind::Gap | Kind::Epoch | Kind::Policy => ACTIVITY_OTHER,
        }
    }

    /// A flow record's message, from its fields: `<verdict> <source segment> ->
    /// <destination segment> <destination>/<protocol> (<rule or reason>)`, and `, <count>
    /// attempts` for a fold of more than one. `None` for a record without those fields.
    pub fn flow_message(&self) -> Option<String> {
        let mut message = String::new();
        self.write_flow_message(&mut message).then_some(message)
    }

    /// Appends [`Record::flow_message`] to `out`; `false` (and nothing appended) for a
    /// record without the fields it needs.
    pub fn write_flow_message(&self, out: &mut String) -> bool {
        use std::fmt::Write as _;
        let (Some(flow), Some(dst), Some(info)) = (
            self.flow(),
            self.dst_endpoint.as_ref(),
            self.connection_info.as_ref(),
        ) else {
            return false;
        };
        let _ = write!(
            out,
            "{} {} -> {} ",
            flow.verdict, flow.src_segment, flow.dst_segment
        );
        Endpoint::write_address_and_port(out, &dst.ip, dst.port);
        // A protocol without a name is named by its number.
        let _ = if info.protocol_name.is_empty() {
            write!(out, "/{}", info.protocol_num)
        } else {
            write!(out, "/{}", info.protocol_name)
        };
        let _ = write!(out, " ({})", flow.rule.as_deref().unwrap_or(&flow.reason));
        if let Some(count) = self.count.filter(|&count| count > 1) {
            let _ = write!(out, ", {count} attempts");
        }
        true
    }

    /// The flow details, for flow records.
    pub fn flow(&self) -> Option<&FlowDetails> {
        self.unmapped.flow.as_ref()
    }

    /// How many attempts a flow record stands for: its `count`, 1 for a record written
    /// before folding.
    pub fn attempts(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// The sequence number.
    pub fn sequence(&self) -> u64 {
        self.metadata.sequence
    }
}

#[cfg(test)]
impl Record {
    /// For tests: an outbound flow of `api` (cgroup `system.slice/api.service`) to
    /// 198.18.7.2:`port` given `verdict` by `default-deny`, as the agent stores it, with
    /// `protocol`'s name and number.
    pub(crate) fn example_flow(verdict: &str, protocol: (&str, u32), port: u16) -> Self {
        let mut record = Self::new(Kind::Flow, 0, "host-a", String::new());
        record.src_endpoint = Some(Endpoint {
            ip: String::new(),
            port: 40_000,
            name: "api".into(),
        });
        record.dst_endpoint = Some(Endpoint {
            ip: "198.18.7.2".into(),
            port,
            name: "db".into(),
        });
        record.connection_info = Some(ConnectionInfo {
            protocol_num: protocol.1,
            protocol_name: protocol.0.into(),
            protocol_ver_id: 4,
            protocol_ver: None,
            direction_id: 2,
            direction: None,
            boundary_id: None,
            boundary: None,
        });
        record.unmapped.flow = Some(FlowDetails {
            verdict: verdict.into(),
            reason: "default-deny".into(),
            rule: None,
            hook: "connect4".into(),
            src_segment: "api".into(),
            dst_segment: "db".into(),
            generation: 1,
            policy_sha256: String::new(),
            cgroup_id: 7,
            cgroup: "system.slice/api.service".into(),
            interface: None,
            kernel_ns: 0,
            fold: None,
        });
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_written_as_people_write_them() {
        assert_eq!(
            Endpoint::address_and_port("198.18.0.1", 443),
            "198.18.0.1:443"
        );
        assert_eq!(
            Endpoint::address_and_port("2001:db8::1", 443),
            "[2001:db8::1]:443"
        );
        assert_eq!(Endpoint::address_and_port("2001:db8::1", 0), "2001:db8::1");
        assert_eq!(Endpoint::address_and_port("", 53), ":53");
        assert_eq!(Endpoint::address_and_port("", 0), "");
    }
}
