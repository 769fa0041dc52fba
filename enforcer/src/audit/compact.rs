//! The compact store format (`audit-<number>.bin`): records as the agent produced them,
//! in binary, with the names they repeat (segments, rules, hooks, cgroup paths,
//! interfaces, hosts) written once per file; OCSF JSON is rendered from it on read.
//!
//! A file starts with [`FILE_MAGIC`], then holds batches, each written whole by one
//! `write`:
//!
//! ```text
//! u32 body length | u64 first sequence | u32 records | [32] prev
//! records × (varint entry length | entry | [8] tag)
//! [32] hash of the last record | u32 body length
//! ```
//!
//! The body length counts the bytes between the two length fields, so the file can be
//! walked backwards from its end (a seal is the last record of its file). An entry is a
//! kind byte and its payload: [`ENTRY_JSON`], the record as JSON (store and history
//! records, and any flow the binary form cannot hold exactly), or [`ENTRY_FLOW`], a flow
//! in the binary form of [`Flow`], which first defines the new names it uses.
//!
//! The chain is the JSON store's, over these bytes: a record's hash is SHA-256 of the
//! previous record's hash, its sequence number (8 bytes, little-endian) and its entry.
//! Each record keeps the first 8 bytes of its hash (its tag), so `verify` names the first
//! record whose bytes changed; the batch keeps the whole hash of its last record, which
//! is what `HEAD`, seals and retention records name. A name is defined inside the record
//! that first uses it, so a changed name breaks that record's hash.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};

use super::{
    chain::{Hash, Head},
    record::{
        Actor, CATEGORY_NETWORK, CLASS_NETWORK_ACTIVITY, ConnectionInfo, DEVICE_SERVER,
        DEVICE_SERVER_NAME, Endpoint, FirewallRule, FlowDetails, Kind, OCSF_VERSION, PRODUCT,
        Process, Record,
    },
};
use crate::digest::{finish, hasher};

/// The first bytes of a compact segment file.
pub const FILE_MAGIC: &[u8; 8] = b"ENFAUD1\n";
/// An entry holding a record as JSON.
pub const ENTRY_JSON: u8 = 0;
/// An entry holding a flow in the binary form.
pub const ENTRY_FLOW: u8 = 1;
/// The bytes of a record's tag: the start of its hash.
pub const TAG_LEN: usize = 8;
/// A batch's fixed header: body length, first sequence, record count, prev.
const HEADER_LEN: usize = 4 + 8 + 4 + 32;
/// A batch's fixed trailer: the last hash and the body length again.
const TRAILER_LEN: usize = 32 + 4;

/// A name's number in its file's table.
pub type NameId = u32;

/// A flow record's fields that are neither a constant nor a caption (which
/// [`Record::caption`] derives from the ids), each name as an `N`: a [`NameId`] in the
/// file's table as stored, the text itself in [`FlowFacts`], which the agent makes from a
/// kernel event without building a record.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flow<'a, N = NameId> {
    /// Names this record uses first, numbered on from the file's table (stored form
    /// only).
    #[serde(borrow)]
    pub names: Vec<&'a str>,
    /// `time`, ms since the epoch.
    pub time: i64,
    /// `count`.
    pub count: Option<u64>,
    /// `start_time`.
    pub start_time: Option<i64>,
    /// `end_time`.
    pub end_time: Option<i64>,
    /// The message, when it is not the one [`Record::flow_message`] derives.
    #[serde(borrow)]
    pub message: Option<&'a str>,
    /// `device.hostname`.
    pub hostname: N,
    /// `severity_id`.
    pub severity_id: u32,
    /// `activity_id`.
    pub activity_id: u32,
    /// `action_id`.
    pub action_id: Option<u32>,
    /// `disposition_id`.
    pub disposition_id: Option<u32>,
    /// `src_endpoint`.
    pub src: Option<End<N>>,
    /// `dst_endpoint`.
    pub dst: Option<End<N>>,
    /// `connection_info`.
    pub connection: Option<Connection<N>>,
    /// `actor.process`: its pid and name.
    pub actor: Option<(u32, N)>,
    /// `firewall_rule`: its uid and type.
    pub firewall_rule: Option<(N, N)>,
    /// `unmapped.flow`.
    pub details: Option<Details<N>>,
}

/// A flow's fields with its names as text: what the agent's enricher makes of a kernel
/// event, written by the store without a record in between.
pub type FlowFacts<'a> = Flow<'a, &'a str>;

/// An endpoint: address, port, segment.
#[derive(Debug, Serialize, Deserialize)]
pub struct End<N = NameId> {
    /// The address, as the kernel gave it.
    pub ip: Address,
    /// The port (0: unknown).
    pub port: u16,
    /// The segment.
    pub name: N,
}

/// An address as the kernel gave it; none where the hook did not know it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Address {
    /// Not known.
    None,
    /// IPv4.
    V4([u8; 4]),
    /// IPv6.
    V6([u8; 16]),
}

/// `connection_info` without its captions.
#[derive(Debug, Serialize, Deserialize)]
pub struct Connection<N = NameId> {
    /// `protocol_num`.
    pub protocol_num: u32,
    /// `protocol_name`.
    pub protocol_name: N,
    /// `protocol_ver_id`.
    pub protocol_ver_id: u32,
    /// `direction_id`.
    pub direction_id: u32,
    /// `boundary_id`.
    pub boundary_id: Option<u32>,
}

/// `unmapped.flow`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Details<N = NameId> {
    /// `verdict`.
    pub verdict: N,
    /// `reason`.
    pub reason: N,
    /// `rule`.
    pub rule: Option<N>,
    /// `hook`.
    pub hook: N,
    /// `src_segment`.
    pub src_segment: N,
    /// `dst_segment`.
    pub dst_segment: N,
    /// `generation`.
    pub generation: u32,
    /// `policy_sha256`.
    pub policy_sha256: N,
    /// `cgroup_id`.
    pub cgroup_id: u64,
    /// `cgroup`.
    pub cgroup: N,
    /// `interface`.
    pub interface: Option<N>,
    /// `kernel_ns`.
    pub kernel_ns: u64,
    /// `fold`.
    pub fold: Option<N>,
}

impl<'a, N: Copy> Flow<'a, N> {
    /// The same flow with every name mapped by `name`.
    fn map_names<M>(&self, mut name: impl FnMut(N) -> M) -> Flow<'a, M> {
        let mut end = |end: &End<N>| End {
            ip: end.ip,
            port: end.port,
            name: name(end.name),
        };
        let src = self.src.as_ref().map(&mut end);
        let dst = self.dst.as_ref().map(&mut end);
        let hostname = name(self.hostname);
        let connection = self.connection.as_ref().map(|info| Connection {
            protocol_num: info.protocol_num,
            protocol_name: name(info.protocol_name),
            protocol_ver_id: info.protocol_ver_id,
            direction_id: info.direction_id,
            boundary_id: info.boundary_id,
        });
        let actor = self.actor.map(|(pid, process)| (pid, name(process)));
        let firewall_rule = self
            .firewall_rule
            .map(|(uid, kind)| (name(uid), name(kind)));
        let details = self.details.as_ref().map(|details| Details {
            verdict: name(details.verdict),
            reason: name(details.reason),
            rule: details.rule.map(&mut name),
            hook: name(details.hook),
            src_segment: name(details.src_segment),
            dst_segment: name(details.dst_segment),
            generation: details.generation,
            policy_sha256: name(details.policy_sha256),
            cgroup_id: details.cgroup_id,
            cgroup: name(details.cgroup),
            interface: details.interface.map(&mut name),
            kernel_ns: details.kernel_ns,
            fold: details.fold.map(&mut name),
        });
        Flow {
            names: Vec::new(),
            time: self.time,
            count: self.count,
            start_time: self.start_time,
            end_time: self.end_time,
            message: self.message,
            hostname,
            severity_id: self.severity_id,
            activity_id: self.activity_id,
            action_id: self.action_id,
            disposition_id: self.disposition_id,
            src,
            dst,
            connection,
            actor,
            firewall_rule,
            details,
        }
    }

    /// The record it stands for, each name given by `name`.
    fn record_with(&self, name: impl FnMut(N) -> String) -> Record {
        self.map_names(name).into_record()
    }
}

impl Flow<'_, String> {
    /// The record these named fields stand for.
    fn into_record(self) -> Record {
        let mut record = Record::new(Kind::Flow, self.time, &self.hostname, String::new());
        record.class_uid = CLASS_NETWORK_ACTIVITY;
        record.category_uid = CATEGORY_NETWORK;
        record.activity_id = self.activity_id;
        record.type_uid = u64::from(CLASS_NETWORK_ACTIVITY) * 100 + u64::from(self.activity_id);
        record.severity_id = self.severity_id;
        record.count = self.count;
        record.start_time = self.start_time;
        record.end_time = self.end_time;
        record.action_id = self.action_id;
        record.disposition_id = self.disposition_id;
        let end = |end: End<String>| Endpoint {
            ip: end.ip.addr().map_or_else(String::new, |ip| ip.to_string()),
            port: end.port,
            name: end.name,
        };
        record.src_endpoint = self.src.map(end);
        record.dst_endpoint = self.dst.map(end);
        record.connection_info = self.connection.map(|info| ConnectionInfo {
            protocol_num: info.protocol_num,
            protocol_name: info.protocol_name,
            protocol_ver_id: info.protocol_ver_id,
            protocol_ver: None,
            direction_id: info.direction_id,
            direction: None,
            boundary_id: info.boundary_id,
            boundary: None,
        });
        record.actor = self.actor.map(|(pid, name)| Actor {
            process: Process { pid, name },
        });
        record.firewall_rule = self
            .firewall_rule
            .map(|(uid, kind)| FirewallRule { uid, kind });
        record.unmapped.flow = self.details.map(|details| FlowDetails {
            verdict: details.verdict,
            reason: details.reason,
            rule: details.rule,
            hook: details.hook,
            src_segment: details.src_segment,
            dst_segment: details.dst_segment,
            generation: details.generation,
            policy_sha256: details.policy_sha256,
            cgroup_id: details.cgroup_id,
            cgroup: details.cgroup,
            interface: details.interface,
            kernel_ns: details.kernel_ns,
            fold: details.fold,
        });
        // A message left out is the one the record's fields derive.
        record.message = match self.message {
            Some(message) => message.to_owned(),
            None => record.flow_message().unwrap_or_default(),
        };
        record.caption();
        record
    }
}

impl FlowFacts<'_> {
    /// The flow record these facts stand for, as the store renders it on read.
    pub fn record(&self) -> Record {
        self.record_with(str::to_owned)
    }
}

/// The writer's side of one compact file: its table of names.
#[derive(Debug, Default)]
pub struct Encoder {
    ids: HashMap<String, NameId>,
    names: Vec<String>,
    /// A reused buffer for the message a flow's fields derive.
    message: String,
    /// A reused buffer for the entry being encoded.
    entry: Vec<u8>,
}

/// A batch being written (see [`Encoder::begin`]).
#[derive(Debug)]
pub struct Batch {
    start: usize,
    first_sequence: u64,
    prev: Hash,
    count: u32,
}

/// Where an encoder stood before a batch, to go back to when the batch is not written.
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize);

/// Names a record refers to, collecting the ones the file does not have yet.
struct Interner<'e, 'r> {
    encoder: &'e mut Encoder,
    new: Vec<&'r str>,
}

impl<'r> Interner<'_, 'r> {
    fn id(&mut self, name: &'r str) -> NameId {
        if let Some(&id) = self.encoder.ids.get(name) {
            return id;
        }
        let id = NameId::try_from(self.encoder.names.len()).expect("fewer than 2^32 names");
        self.encoder.ids.insert(name.to_owned(), id);
        self.encoder.names.push(name.to_owned());
        self.new.push(name);
        id
    }
}

impl Encoder {
    /// Where the table stands now.
    pub fn mark(&self) -> Mark {
        Mark(self.names.len())
    }

    /// Forgets the names learnt since `mark` (their batch was not written).
    pub fn rollback(&mut self, mark: Mark) {
        for name in self.names.drain(mark.0..) {
            self.ids.remove(&name);
        }
    }

    /// Starts a batch at the end of `out`, chained after `head`.
    pub fn begin(&self, head: &Head, out: &mut Vec<u8>) -> Batch {
        let batch = Batch {
            start: out.len(),
            first_sequence: head.sequence + 1,
            prev: head.hash,
            count: 0,
        };
        out.extend_from_slice(&[0; HEADER_LEN]);
        batch
    }

    /// Appends `record` to `batch` as the record after `head`, and advances `head`; its
    /// sequence number is set and its captions filled, as the JSON store does.
    pub fn push(
        &mut self,
        batch: &mut Batch,
        record: &mut Record,
        head: &mut Head,
        out: &mut Vec<u8>,
    ) {
        record.metadata.sequence = head.sequence + 1;
        record.caption();
        let mut entry = std::mem::take(&mut self.entry);
        entry.clear();
        self.encode(record, &mut entry);
        append_entry(batch, &entry, head, out);
        self.entry = entry;
    }

    /// Appends a flow given by its facts to `batch` as the record after `head`, and
    /// advances `head`: the record [`FlowFacts::record`] renders, without building it.
    pub fn push_facts(
        &mut self,
        batch: &mut Batch,
        facts: &FlowFacts<'_>,
        head: &mut Head,
        out: &mut Vec<u8>,
    ) {
        let mut entry = std::mem::take(&mut self.entry);
        entry.clear();
        self.encode_facts(facts, &mut entry);
        append_entry(batch, &entry, head, out);
        self.entry = entry;
    }

    /// A flow's entry.
    fn encode_facts(&mut self, facts: &FlowFacts<'_>, out: &mut Vec<u8>) {
        let flow = self.intern(facts);
        out.push(ENTRY_FLOW);
        let bytes = std::mem::take(out);
        *out = postcard::to_extend(&flow, bytes).expect("a flow serialises into memory");
    }

    /// Ends `batch` (`head` is its last record's); a batch without records leaves
    /// nothing in `out`.
    pub fn end(batch: Batch, head: &Head, out: &mut Vec<u8>) {
        if batch.count == 0 {
            out.truncate(batch.start);
            return;
        }
        out.extend_from_slice(&head.hash);
        let body = u32::try_from(out.len() - batch.start - 4).expect("a batch under 4 GiB");
        out.extend_from_slice(&body.to_le_bytes());
        let header = &mut out[batch.start..batch.start + HEADER_LEN];
        header[..4].copy_from_slice(&body.to_le_bytes());
        header[4..12].copy_from_slice(&batch.first_sequence.to_le_bytes());
        header[12..16].copy_from_slice(&batch.count.to_le_bytes());
        header[16..].copy_from_slice(&batch.prev);
    }

    /// One record's entry: the binary form of a flow that it holds exactly, JSON
    /// otherwise.
    fn encode(&mut self, record: &Record, out: &mut Vec<u8>) {
        if let Some(facts) = self.facts(record) {
            self.encode_facts(&facts, out);
            return;
        }
        out.push(ENTRY_JSON);
        let mut json = record.clone();
        json.unmapped.prev = String::new();
        json.unmapped.hash = None;
        serde_json::to_writer(&mut *out, &json).expect("a record always serialises");
    }

    /// The facts of `record`, when it is a flow the binary form holds exactly: every
    /// field is either kept or one the decoder sets to the same value.
    fn facts<'r>(&mut self, record: &'r Record) -> Option<FlowFacts<'r>> {
        let product = &record.metadata.product;
        let constant = record.unmapped.kind == Kind::Flow
            && record.class_uid == CLASS_NETWORK_ACTIVITY
            && record.category_uid == CATEGORY_NETWORK
            && record.type_uid
                == u64::from(CLASS_NETWORK_ACTIVITY) * 100 + u64::from(record.activity_id)
            && record.metadata.version == OCSF_VERSION
            && product.name == PRODUCT
            && product.vendor_name == PRODUCT
            && product.version == env!("CARGO_PKG_VERSION")
            && record.device.type_id == DEVICE_SERVER
            && record.device.type_name == DEVICE_SERVER_NAME
            && record.log_provider.is_none()
            && record.log_name.is_none()
            && record.app.is_none()
            && record.unmapped.gap.is_none()
            && record.unmapped.file.is_none()
            && record.unmapped.removed.is_none()
            && record.unmapped.epoch.is_none()
            && record.unmapped.agent.is_none()
            && record.unmapped.policy.is_none();
        if !constant {
            return None;
        }
        let src = match &record.src_endpoint {
            Some(end) => Some(end_of(end)?),
            None => None,
        };
        let dst = match &record.dst_endpoint {
            Some(end) => Some(end_of(end)?),
            None => None,
        };
        self.message.clear();
        let derived =
            record.write_flow_message(&mut self.message) && self.message == record.message;
        Some(Flow {
            names: Vec::new(),
            time: record.time,
            count: record.count,
            start_time: record.start_time,
            end_time: record.end_time,
            message: (!derived).then_some(record.message.as_str()),
            hostname: &record.device.hostname,
            severity_id: record.severity_id,
            activity_id: record.activity_id,
            action_id: record.action_id,
            disposition_id: record.disposition_id,
            src,
            dst,
            connection: record.connection_info.as_ref().map(|info| Connection {
                protocol_num: info.protocol_num,
                protocol_name: info.protocol_name.as_str(),
                protocol_ver_id: info.protocol_ver_id,
                direction_id: info.direction_id,
                boundary_id: info.boundary_id,
            }),
            actor: record
                .actor
                .as_ref()
                .map(|actor| (actor.process.pid, actor.process.name.as_str())),
            firewall_rule: record
                .firewall_rule
                .as_ref()
                .map(|rule| (rule.uid.as_str(), rule.kind.as_str())),
            details: record.flow().map(|flow| Details {
                verdict: flow.verdict.as_str(),
                reason: flow.reason.as_str(),
                rule: flow.rule.as_deref(),
                hook: flow.hook.as_str(),
                src_segment: flow.src_segment.as_str(),
                dst_segment: flow.dst_segment.as_str(),
                generation: flow.generation,
                policy_sha256: flow.policy_sha256.as_str(),
                cgroup_id: flow.cgroup_id,
                cgroup: flow.cgroup.as_str(),
                interface: flow.interface.as_deref(),
                kernel_ns: flow.kernel_ns,
                fold: flow.fold.as_deref(),
            }),
        })
    }

    /// The stored form of `facts`: its names as numbers, those the file does not have
    /// yet added to its table (and listed in it).
    fn intern<'r>(&mut self, facts: &FlowFacts<'r>) -> Flow<'r> {
        let mut names = Interner {
            encoder: self,
            new: Vec::new(),
        };
        let mut flow = facts.map_names(|name| names.id(name));
        flow.names = names.new;
        flow
    }
}

/// An endpoint's facts, when its address is one the binary form holds exactly.
fn end_of(end: &Endpoint) -> Option<End<&str>> {
    let ip = if end.ip.is_empty() {
        Address::None
    } else {
        match end.ip.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) if v4.to_string() == end.ip => Address::V4(v4.octets()),
            IpAddr::V6(v6) if v6.to_string() == end.ip => Address::V6(v6.octets()),
            _ => return None,
        }
    };
    Some(End {
        ip,
        port: end.port,
        name: &end.name,
    })
}

/// Appends `entry` to `batch` as the record after `head`, and advances `head`.
fn append_entry(batch: &mut Batch, entry: &[u8], head: &mut Head, out: &mut Vec<u8>) {
    head.hash = record_hash(&head.hash, head.sequence + 1, entry);
    head.sequence += 1;
    write_varint(out, entry.len());
    out.extend_from_slice(entry);
    out.extend_from_slice(&head.hash[..TAG_LEN]);
    batch.count += 1;
}

/// A record's hash: SHA-256 of the previous hash, its sequence number and its entry.
fn record_hash(prev: &Hash, sequence: u64, entry: &[u8]) -> Hash {
    let mut hasher = hasher();
    hasher.update(prev);
    hasher.update(&sequence.to_le_bytes());
    hasher.update(entry);
    finish(hasher)
}

fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: usize = 0;
    for (at, &byte) in bytes.iter().enumerate().take(5) {
        value |= usize::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return Some((value, at + 1));
        }
    }
    None
}

/// Why bytes of a compact file are not records.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file does not start as a compact store file does.
    #[error("not a compact audit file (its first bytes are not the format's)")]
    Magic,
    /// A batch's two lengths disagree or run past its end.
    #[error("the batch at byte {offset} is damaged: its length fields do not match")]
    Frame {
        /// Where the batch starts.
        offset: u64,
    },
    /// An entry does not decode.
    #[error("record {number} of the file is damaged: {why}")]
    Entry {
        /// The record's position in its file, from 1.
        number: usize,
        /// Why.
        why: String,
    },
}

/// One record as the decoder meets it: its place in the chain, the hash it claims and
/// the hash its bytes have, and its entry, decoded only as far as a reader asks.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Its position in its file, from 1.
    pub number: usize,
    /// Its sequence number.
    pub sequence: u64,
    /// The hash of the record before it.
    pub prev: Hash,
    /// The hash the file claims for it: the batch's whole hash for its last record; for
    /// any other, the hash its bytes have when its tag matches that, else the tag.
    pub claimed: Hash,
    /// The hash of its bytes after the previous record.
    pub actual: Hash,
    /// Where a reader that has it, and every record before it, goes on: its batch's end
    /// when it is the batch's last record, else its batch's start (the batch is read
    /// again: records can only be read a batch at a time).
    pub resume_at: u64,
    body: Body<'a>,
    names: &'a [String],
}

/// An entry's payload.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one entry at a time, on the stack: boxing the flow would allocate per record"
)]
enum Body<'a> {
    /// A record as JSON.
    Json(&'a [u8]),
    /// A flow in the binary form.
    Flow(Flow<'a>),
}

impl Entry<'_> {
    /// The whole record, as the JSON store holds it (`prev` and `hash` set).
    pub fn record(&self) -> Result<Record, String> {
        let mut record = match &self.body {
            Body::Json(json) => serde_json::from_slice(json).map_err(|err| err.to_string())?,
            Body::Flow(flow) => flow_record(flow, self.names),
        };
        record.metadata.sequence = self.sequence;
        record.unmapped.prev = hex::encode(self.prev);
        record.unmapped.hash = Some(hex::encode(self.actual));
        Ok(record)
    }

    /// A flow's fields, without building the record; `None` for a record held as JSON.
    pub fn flow(&self) -> Option<FlowView<'_>> {
        match &self.body {
            Body::Flow(flow) => Some(FlowView {
                flow,
                names: self.names,
            }),
            Body::Json(_) => None,
        }
    }
}

/// A flow in the binary form, read in place: what queries, `stats` and `verify` look at
/// without building the whole record.
#[derive(Debug, Clone, Copy)]
pub struct FlowView<'a> {
    flow: &'a Flow<'a>,
    names: &'a [String],
}

impl<'a> FlowView<'a> {
    fn name(&self, id: NameId) -> &'a str {
        &self.names[id as usize]
    }

    fn details(&self) -> Option<&'a Details> {
        self.flow.details.as_ref()
    }

    /// `time`.
    pub fn time(&self) -> i64 {
        self.flow.time
    }

    /// The attempts it stands for (`count`, 1 when absent).
    pub fn attempts(&self) -> u64 {
        self.flow.count.unwrap_or(1)
    }

    /// `unmapped.flow.verdict`.
    pub fn verdict(&self) -> Option<&'a str> {
        Some(self.name(self.details()?.verdict))
    }

    /// `unmapped.flow.reason`.
    pub fn reason(&self) -> Option<&'a str> {
        Some(self.name(self.details()?.reason))
    }

    /// `unmapped.flow.rule`.
    pub fn rule(&self) -> Option<&'a str> {
        Some(self.name(self.details()?.rule?))
    }

    /// `unmapped.flow.src_segment` and `dst_segment`.
    pub fn segments(&self) -> Option<(&'a str, &'a str)> {
        let details = self.details()?;
        Some((
            self.name(details.src_segment),
            self.name(details.dst_segment),
        ))
    }

    /// `unmapped.flow.generation`.
    pub fn generation(&self) -> Option<u32> {
        Some(self.details()?.generation)
    }

    /// `unmapped.flow.policy_sha256`.
    pub fn policy_sha256(&self) -> Option<&'a str> {
        Some(self.name(self.details()?.policy_sha256))
    }

    /// `unmapped.flow.cgroup`.
    pub fn cgroup(&self) -> Option<&'a str> {
        Some(self.name(self.details()?.cgroup))
    }

    /// `connection_info`'s protocol name and number.
    pub fn protocol(&self) -> Option<(&'a str, u32)> {
        let info = self.flow.connection.as_ref()?;
        Some((self.name(info.protocol_name), info.protocol_num))
    }

    /// `actor.process.name`.
    pub fn process_name(&self) -> Option<&'a str> {
        Some(self.name(self.flow.actor?.1))
    }

    /// The source's address (`None` when unknown) and port.
    pub fn source(&self) -> Option<(Option<IpAddr>, u16)> {
        self.flow.src.as_ref().map(|end| (end.ip.addr(), end.port))
    }

    /// The destination's address (`None` when unknown) and port.
    pub fn destination(&self) -> Option<(Option<IpAddr>, u16)> {
        self.flow.dst.as_ref().map(|end| (end.ip.addr(), end.port))
    }
}

impl Address {
    fn addr(&self) -> Option<IpAddr> {
        match *self {
            Self::None => None,
            Self::V4(octets) => Some(Ipv4Addr::from(octets).into()),
            Self::V6(octets) => Some(Ipv6Addr::from(octets).into()),
        }
    }
}

/// Whether every name `flow` uses is among the `defined` names of its file.
fn names_defined(flow: &Flow<'_>, defined: usize) -> bool {
    let known = |id: &NameId| (*id as usize) < defined;
    let ends = flow.src.iter().chain(&flow.dst).all(|end| known(&end.name));
    let details = flow.details.as_ref().is_none_or(|details| {
        [
            details.verdict,
            details.reason,
            details.hook,
            details.src_segment,
            details.dst_segment,
            details.policy_sha256,
            details.cgroup,
        ]
        .iter()
        .chain(&details.rule)
        .chain(&details.interface)
        .chain(&details.fold)
        .all(known)
    });
    known(&flow.hostname)
        && ends
        && details
        && flow
            .connection
            .iter()
            .all(|info| known(&info.protocol_name))
        && flow.actor.iter().all(|actor| known(&actor.1))
        && flow
            .firewall_rule
            .iter()
            .all(|(uid, kind)| known(uid) && known(kind))
}

/// The reader's side of one compact file: its table of names, its position in the
/// chain. Fed the file's bytes from its start, in order.
#[derive(Debug, Default)]
pub struct Decoder {
    names: Vec<String>,
    records: usize,
}

impl Decoder {
    /// Reads the complete batches of `bytes`, which start at file offset `base` (0: the
    /// file's start, which must be [`FILE_MAGIC`]). `each` gets every record and may stop
    /// the reading by returning `false`. Returns the offset reading stopped at: past the
    /// last complete batch (an incomplete one is being written, or was torn).
    pub fn read(
        &mut self,
        bytes: &[u8],
        base: u64,
        mut each: impl FnMut(Entry<'_>) -> bool,
    ) -> Result<u64, FormatError> {
        let mut at = 0;
        if base == 0 {
            if bytes.len() < FILE_MAGIC.len() {
                return if FILE_MAGIC.starts_with(bytes) {
                    Ok(0)
                } else {
                    Err(FormatError::Magic)
                };
            }
            if &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
                return Err(FormatError::Magic);
            }
            at = FILE_MAGIC.len();
        }
        while let Some(batch) = complete_batch(&bytes[at..]) {
            let offset = base + at as u64;
            let batch = batch.map_err(|()| FormatError::Frame { offset })?;
            let end = offset + batch.len() as u64;
            if !self.batch(batch, (offset, end), &mut each)? {
                return Ok(end);
            }
            at += batch.len();
        }
        Ok(base + at as u64)
    }

    /// The records of one batch; `false` when `each` asked to stop.
    fn batch(
        &mut self,
        batch: &[u8],
        (start, end): (u64, u64),
        each: &mut impl FnMut(Entry<'_>) -> bool,
    ) -> Result<bool, FormatError> {
        let first_sequence = u64::from_le_bytes(batch[4..12].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(batch[12..16].try_into().expect("4 bytes")) as usize;
        let mut prev: Hash = batch[16..HEADER_LEN].try_into().expect("32 bytes");
        let body_end = batch.len() - TRAILER_LEN;
        let last: Hash = batch[body_end..body_end + 32].try_into().expect("32 bytes");
        let mut at = HEADER_LEN;
        for index in 0..count {
            self.records += 1;
            let number = self.records;
            let damaged = |why: &str| FormatError::Entry {
                number,
                why: why.to_owned(),
            };
            let (len, used) =
                read_varint(&batch[at..body_end]).ok_or_else(|| damaged("no entry length"))?;
            at += used;
            let bytes = batch
                .get(at..at + len)
                .filter(|_| at + len + TAG_LEN <= body_end)
                .ok_or_else(|| damaged("the entry runs past its batch"))?;
            let tag = &batch[at + len..at + len + TAG_LEN];
            at += len + TAG_LEN;
            let sequence = first_sequence + index as u64;
            let actual = record_hash(&prev, sequence, bytes);
            let claimed = if index + 1 == count {
                last
            } else if actual[..TAG_LEN] == *tag {
                actual
            } else {
                let mut claimed = [0; 32];
                claimed[..TAG_LEN].copy_from_slice(tag);
                claimed
            };
            let body = match bytes.split_first() {
                Some((&ENTRY_JSON, json)) => Body::Json(json),
                Some((&ENTRY_FLOW, flow)) => {
                    let flow: Flow<'_> =
                        postcard::from_bytes(flow).map_err(|err| damaged(&err.to_string()))?;
                    self.names
                        .extend(flow.names.iter().map(|&name| name.to_owned()));
                    if !names_defined(&flow, self.names.len()) {
                        return Err(damaged("it uses a name not defined before it"));
                    }
                    Body::Flow(flow)
                }
                Some((kind, _)) => return Err(damaged(&format!("unknown entry kind {kind}"))),
                None => return Err(damaged("an empty entry")),
            };
            let entry = Entry {
                number,
                sequence,
                prev,
                claimed,
                actual,
                resume_at: if index + 1 == count { end } else { start },
                body,
                names: &self.names,
            };
            prev = actual;
            if !each(entry) {
                return Ok(false);
            }
        }
        if at != body_end {
            return Err(FormatError::Entry {
                number: self.records,
                why: "bytes follow the batch's last record".to_owned(),
            });
        }
        Ok(true)
    }
}

/// The flow record of the binary form, its names from `names` (which hold every id it
/// uses: the decoder checked).
fn flow_record(flow: &Flow<'_>, names: &[String]) -> Record {
    flow.record_with(|id| names[id as usize].clone())
}

/// The first batch of `bytes` when it is complete: `Err` when its length fields
/// disagree, `None` when it is not all there yet.
fn complete_batch(bytes: &[u8]) -> Option<Result<&[u8], ()>> {
    let body = u32::from_le_bytes(bytes.get(..4)?.try_into().expect("4 bytes")) as usize;
    let total = body + 8;
    if body < HEADER_LEN - 4 + TRAILER_LEN - 4 {
        return Some(Err(()));
    }
    let batch = bytes.get(..total)?;
    let again = u32::from_le_bytes(batch[total - 4..].try_into().expect("4 bytes")) as usize;
    Some(if again == body { Ok(batch) } else { Err(()) })
}

/// The last complete batch of a compact file's bytes (found from the end), if any.
pub fn last_batch(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let len = bytes.len();
    if len < FILE_MAGIC.len() + HEADER_LEN + TRAILER_LEN {
        return None;
    }
    let body = u32::from_le_bytes(bytes[len - 4..].try_into().expect("4 bytes")) as usize;
    let start = len.checked_sub(body + 8)?;
    (start >= FILE_MAGIC.len()).then_some(())?;
    match complete_batch(&bytes[start..])? {
        Ok(batch) if batch.len() == len - start => Some((start as u64, batch)),
        _ => None,
    }
}

/// The last record of a batch that holds it as JSON (a seal does), with the batch's
/// whole hash of it; the names table is not needed for it.
pub fn last_json_record(batch: &[u8]) -> Option<(Record, Hash)> {
    let count = u32::from_le_bytes(batch[12..16].try_into().ok()?) as usize;
    let first_sequence = u64::from_le_bytes(batch[4..12].try_into().ok()?);
    let body_end = batch.len() - TRAILER_LEN;
    let last: Hash = batch[body_end..body_end + 32].try_into().ok()?;
    let mut at = HEADER_LEN;
    let mut entry = None;
    for _ in 0..count {
        let (len, used) = read_varint(batch.get(at..body_end)?)?;
        at += used;
        entry = Some(batch.get(at..(at + len).min(body_end))?);
        at += len + TAG_LEN;
    }
    let (&kind, json) = entry?.split_first()?;
    if kind != ENTRY_JSON {
        return None;
    }
    let mut record: Record = serde_json::from_slice(json).ok()?;
    record.metadata.sequence = first_sequence + count.checked_sub(1)? as u64;
    record.unmapped.hash = Some(hex::encode(last));
    Some((record, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Gap;

    fn batch_of(records: &mut [Record], encoder: &mut Encoder, head: &mut Head) -> Vec<u8> {
        let mut out = Vec::new();
        let mut batch = encoder.begin(head, &mut out);
        for record in records {
            encoder.push(&mut batch, record, head, &mut out);
        }
        Encoder::end(batch, head, &mut out);
        out
    }

    fn file_of(batches: &[Vec<u8>]) -> Vec<u8> {
        let mut file = FILE_MAGIC.to_vec();
        for batch in batches {
            file.extend_from_slice(batch);
        }
        file
    }

    /// What the tests look at of a record read back.
    struct Read {
        record: Record,
        claimed: Hash,
        actual: Hash,
        number: usize,
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Read>, FormatError> {
        let mut read = Vec::new();
        Decoder::default().read(bytes, 0, |entry| {
            read.push(Read {
                record: entry.record().unwrap(),
                claimed: entry.claimed,
                actual: entry.actual,
                number: entry.number,
            });
            true
        })?;
        Ok(read)
    }

    fn flows() -> Vec<Record> {
        let mut flows = vec![
            Record::example_flow("deny", ("tcp", 6), 5432),
            Record::example_flow("allow", ("udp", 17), 53),
            Record::example_flow("audit", ("tcp", 6), 443),
        ];
        flows[1].dst_endpoint.as_mut().unwrap().ip = "2001:db8::7".to_owned();
        flows[1].message = flows[1].flow_message().unwrap();
        flows[2].count = Some(40);
        flows[2].start_time = Some(flows[2].time - 900);
        flows[2].end_time = Some(flows[2].time);
        flows[2].unmapped.flow.as_mut().unwrap().fold = Some("source".to_owned());
        flows[2].message = flows[2].flow_message().unwrap();
        flows
    }

    #[test]
    fn flows_and_other_records_read_back_as_they_were_written() {
        let mut gap = Record::new(Kind::Gap, 7, "host-a", "3 lost".into());
        gap.unmapped.gap = Some(Gap {
            lost: 3,
            cause: "ring-full".into(),
            error: None,
        });
        // A message the binary form cannot derive, an address it cannot hold.
        let mut told = Record::example_flow("deny", ("tcp", 6), 22);
        told.message = "told otherwise".to_owned();
        let mut odd = Record::example_flow("deny", ("tcp", 6), 23);
        odd.src_endpoint.as_mut().unwrap().ip = "not an address".to_owned();
        let mut written: Vec<Record> = flows();
        written.extend([gap, told, odd]);
        let (mut encoder, mut head) = (Encoder::default(), Head::GENESIS);
        let first = batch_of(&mut written[..2], &mut encoder, &mut head);
        let second = batch_of(&mut written[2..], &mut encoder, &mut head);
        let read = read_all(&file_of(&[first, second])).unwrap();
        assert_eq!(read.len(), written.len());
        let mut prev = Head::GENESIS.hash;
        for (read, mut written) in read.into_iter().zip(written) {
            assert_eq!(read.claimed, read.actual);
            written.unmapped.prev = hex::encode(prev);
            written.unmapped.hash = Some(hex::encode(read.actual));
            assert_eq!(read.record, written);
            prev = read.actual;
        }
        assert_eq!(prev, head.hash);
    }

    #[test]
    fn repeated_flows_cost_well_under_a_hundred_bytes_each() {
        let (mut encoder, mut head) = (Encoder::default(), Head::GENESIS);
        let mut records: Vec<Record> = (0..1000)
            .map(|i| {
                let mut flow = Record::example_flow("deny", ("tcp", 6), 5432);
                flow.src_endpoint.as_mut().unwrap().port = 40_000 + i;
                flow.time += i64::from(i);
                flow.unmapped.flow.as_mut().unwrap().kernel_ns += u64::from(i) * 1_000_000;
                flow
            })
            .collect();
        let batch = batch_of(&mut records, &mut encoder, &mut head);
        let per_record = batch.len() / records.len();
        assert!(per_record < 100, "{per_record} bytes per flow");
    }

    #[test]
    fn a_changed_byte_is_named_by_the_record_it_is_in() {
        let (mut encoder, mut head) = (Encoder::default(), Head::GENESIS);
        let mut records = flows();
        let batch = batch_of(&mut records, &mut encoder, &mut head);
        let mut file = file_of(&[batch]);
        let intact = read_all(&file).unwrap();
        // A byte of the second record's entry: after the header and the first record.
        let second_starts = FILE_MAGIC.len() + HEADER_LEN + 1 + intact.len();
        let at = file.len() / 2;
        assert!(at > second_starts);
        file[at] ^= 1;
        match read_all(&file) {
            Ok(read) => {
                let broken = read
                    .iter()
                    .find(|read| read.claimed != read.actual)
                    .unwrap();
                assert!(broken.number >= 2, "{}", broken.number);
            }
            Err(FormatError::Entry { number, .. }) => assert!(number >= 2),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_batch_being_written_is_not_read_and_a_rollback_forgets_its_names() {
        let (mut encoder, mut head) = (Encoder::default(), Head::GENESIS);
        let mark = encoder.mark();
        let mut records = flows();
        let batch = batch_of(&mut records, &mut encoder, &mut head);
        encoder.rollback(mark);
        assert_eq!(encoder.mark().0, 0);
        let file = file_of(&[batch]);
        let cut = &file[..file.len() - 1];
        let mut decoder = Decoder::default();
        let end = decoder.read(cut, 0, |_| true).unwrap();
        assert_eq!(end, FILE_MAGIC.len() as u64);
        assert!(last_batch(cut).is_none());
        let (start, last) = last_batch(&file).unwrap();
        assert_eq!(start, FILE_MAGIC.len() as u64);
        assert_eq!(last.len(), file.len() - FILE_MAGIC.len());
    }
}
