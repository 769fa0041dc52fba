//! Names, capacities, keys and values of the maps the kernel object declares, shared so
//! the compiler, the agent, the tests and the kernel programs agree on every byte.
//!
//! Multi-byte fields that take part in an LPM prefix are stored as big-endian byte arrays:
//! an LPM trie compares key bytes in order, most significant bit first.

/// The ring buffer of [`crate::event::FlowEvent`] records.
pub const EVENTS: &str = "EVENTS";

/// Size of [`EVENTS`] in bytes: a power of two and a multiple of the page size, as the
/// kernel requires. 16 MiB holds about 150k events (record plus 8-byte header).
pub const EVENTS_RING_BYTES: u32 = 16 << 20;

const _: () = assert!(EVENTS_RING_BYTES.is_power_of_two());
const _: () = assert!(EVENTS_RING_BYTES.is_multiple_of(4096));

/// The array (one `u32`) holding the active policy generation: 0 before the first policy
/// is applied, then 1, 2, 3, ... Generation `g` lives in map slot [`slot_of`]`(g)`; the
/// agent fills the other slot, then writes the next number here.
pub const ACTIVE: &str = "ACTIVE";

/// The map slot (0 or 1) of a generation; every per-generation map exists once per slot.
/// The one definition of the slot choice: the kernel programs and the loader both call it.
#[inline(always)]
pub const fn slot_of(generation: u32) -> usize {
    (generation % 2) as usize
}

/// Per-generation maps, by slot: address tries.
pub const CIDRS_V4: [&str; 2] = ["CIDRS_V4_A", "CIDRS_V4_B"];
/// Per-generation maps, by slot: IPv6 address tries.
pub const CIDRS_V6: [&str; 2] = ["CIDRS_V6_A", "CIDRS_V6_B"];
/// Per-generation maps, by slot: cgroup id to segment.
pub const CGROUPS: [&str; 2] = ["CGROUPS_A", "CGROUPS_B"];
/// Per-generation maps, by slot: the rule tries.
pub const RULES: [&str; 2] = ["RULES_A", "RULES_B"];
/// Per-generation maps, by slot: segment flags by id.
pub const SEGMENTS: [&str; 2] = ["SEGMENTS_A", "SEGMENTS_B"];
/// Per-generation maps, by slot: the [`PolicyConfig`].
pub const POLICY: [&str; 2] = ["POLICY_A", "POLICY_B"];
/// Per-generation maps, by slot: declared listener ports.
pub const LISTEN: [&str; 2] = ["LISTEN_A", "LISTEN_B"];
/// Per-generation maps, by slot: IPv4 failsafe tries.
pub const FAILSAFES_V4: [&str; 2] = ["FAILSAFE4_A", "FAILSAFE4_B"];
/// Per-generation maps, by slot: IPv6 failsafe tries.
pub const FAILSAFES_V6: [&str; 2] = ["FAILSAFE6_A", "FAILSAFE6_B"];

/// How many cgroup levels the hooks walk up from the calling task's cgroup looking for a
/// segment (the task's own level and up to this many ancestors' levels below it).
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Segment id `*` in a rule key: the rule applies whatever that side's segment is.
pub const SEGMENT_ANY: u32 = 0;
/// The implicit segment of local processes in no segment.
pub const SEGMENT_HOST: u32 = 1;
/// The implicit segment of addresses in no segment.
pub const SEGMENT_WORLD: u32 = 2;
/// The implicit segment of broadcast destinations: `255.255.255.255` and the broadcast
/// address of every IPv4 network this host is on. Only a rule naming it allows it.
pub const SEGMENT_BROADCAST: u32 = 3;
/// The implicit segment of multicast destinations: `224.0.0.0/4` and `ff00::/8`. Only a
/// rule naming it allows it.
pub const SEGMENT_MULTICAST: u32 = 4;
/// The id of the first named segment; named segments are numbered from here.
pub const FIRST_NAMED_SEGMENT: u32 = 5;

/// Whether a destination segment is one a `*` in a rule does not cover: a datagram to a
/// broadcast or multicast address reaches every host listening, whatever segment each
/// is in, so only a rule that names the class allows it.
pub const fn only_named(segment: u32) -> bool {
    segment == SEGMENT_BROADCAST || segment == SEGMENT_MULTICAST
}
/// Not a segment: what classification returns for a local process (or a listener it
/// bound) in a cgroup that appeared under a guarded directory and that the agent has not
/// resolved yet. Flows from or to it get the policy's `unclassified` verdict.
pub const SEGMENT_UNCLASSIFIED: u32 = MAX_SEGMENTS;

/// Set in a cgroup table value: the cgroup is an ancestor of a cgroup path the policy
/// lists, so a child of it that the table does not know yet (created since the agent last
/// resolved the table, such as a restarted service's new cgroup) is unclassified rather
/// than inheriting this cgroup's segment. The other bits are the segment.
pub const CGROUP_GUARD: u32 = 1 << 31;

/// Classification by the cgroup table: `value` is the table's entry for the deepest
/// known cgroup of a task's ancestry, `unknown_below` whether a deeper level of that
/// ancestry was not in the table. A guard with an unknown child is unclassified.
#[inline(always)]
pub const fn cgroup_segment(value: u32, unknown_below: bool) -> u32 {
    if value & CGROUP_GUARD == 0 {
        value
    } else if unknown_below {
        SEGMENT_UNCLASSIFIED
    } else {
        value & !CGROUP_GUARD
    }
}

/// Capacity of the segment table (ids `0..MAX_SEGMENTS`).
pub const MAX_SEGMENTS: u32 = 4096;
/// Capacity of the IPv4 address-to-segment trie.
pub const MAX_CIDRS_V4: u32 = 65_536;
/// Capacity of the IPv6 address-to-segment trie.
pub const MAX_CIDRS_V6: u32 = 65_536;
/// How many cgroup paths a policy may list.
pub const MAX_CGROUPS: u32 = 16_384;
/// Capacity of the cgroup-id-to-segment table: the listed cgroups, their ancestors and
/// the known children of those ancestors (see [`CGROUP_GUARD`]).
pub const CGROUP_TABLE_CAPACITY: u32 = 4 * MAX_CGROUPS;
/// Capacity of the listener-port-to-segment table.
pub const MAX_LISTEN_PORTS: u32 = 65_536;
/// Capacity of the rule trie (port ranges are stored as prefix blocks, so one rule may
/// take several entries).
pub const MAX_RULE_ENTRIES: u32 = 1 << 20;
/// Capacity of each failsafe trie.
pub const MAX_FAILSAFES: u32 = 1024;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// `IPPROTO_ICMP`: a rule's "port" is the ICMP message type.
pub const PROTO_ICMP: u8 = 1;
/// `IPPROTO_ICMPV6`: a rule's "port" is the ICMPv6 message type.
pub const PROTO_ICMPV6: u8 = 58;

/// Rule action: let the flow through.
pub const ACTION_ALLOW: u8 = 1;
/// Rule action: refuse the flow.
pub const ACTION_DENY: u8 = 2;

/// Bits of a [`RuleKey`] that are always matched exactly: source, destination, protocol.
pub const RULE_KEY_FIXED_BITS: u32 = 72;

/// The data part of a rule-trie key: `(source segment, destination segment, protocol,
/// destination port)`. The prefix length is [`RULE_KEY_FIXED_BITS`] plus the number of
/// leading port bits that must match, so a port range becomes a few prefix blocks and a
/// lookup costs one trie walk whatever the number of rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Source segment id, big-endian ([`SEGMENT_ANY`] for `*`).
    pub src: [u8; 4],
    /// Destination segment id, big-endian ([`SEGMENT_ANY`] for `*`).
    pub dst: [u8; 4],
    /// IP protocol number.
    pub proto: u8,
    /// Destination port, big-endian.
    pub port: [u8; 2],
    /// Explicit padding, never covered by a prefix; always zero.
    pub _pad: u8,
}

const _: () = assert!(size_of::<RuleKey>() == 12);
const _: () = assert!(align_of::<RuleKey>() == 1);

impl RuleKey {
    /// The key for one flow (or the base of a prefix block).
    pub const fn new(src: u32, dst: u32, proto: u8, port: u16) -> Self {
        Self {
            src: src.to_be_bytes(),
            dst: dst.to_be_bytes(),
            proto,
            port: port.to_be_bytes(),
            _pad: 0,
        }
    }

    /// The source segment id.
    pub const fn src(&self) -> u32 {
        u32::from_be_bytes(self.src)
    }

    /// The destination segment id.
    pub const fn dst(&self) -> u32 {
        u32::from_be_bytes(self.dst)
    }

    /// The destination port.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// What a rule-trie entry holds: the best rule for that block of ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// The rule's numeric id (1-based declaration order); its name is in the policy image.
    pub rule_id: u32,
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`].
    pub action: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<RuleValue>() == 8);

impl RuleValue {
    /// A value for rule `rule_id` with `action`.
    pub const fn new(rule_id: u32, action: u8) -> Self {
        Self {
            rule_id,
            action,
            _pad: [0; 3],
        }
    }
}

/// Segment flag: the segment is in audit mode (would-be denials pass and are recorded).
pub const SEGMENT_FLAG_AUDIT: u32 = 1;
/// Segment flag: the segment's processes may open raw sockets.
pub const SEGMENT_FLAG_RAW_SOCKETS: u32 = 2;
/// Segment flag: the segment's processes may turn on `IP_RECVERR`/`IPV6_RECVERR`, which
/// queues ICMP errors on their sockets with the bytes they carry.
pub const SEGMENT_FLAG_ICMP_ERRORS: u32 = 4;

/// Per-segment settings, indexed by segment id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SegmentInfo {
    /// `SEGMENT_FLAG_*` bits.
    pub flags: u32,
}

const _: () = assert!(size_of::<SegmentInfo>() == 4);

/// Key of the listener-port table: which segment serves a local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenKey {
    /// The local port, host byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}

const _: () = assert!(size_of::<ListenKey>() == 4);

impl ListenKey {
    /// The key for `port`/`proto`.
    pub const fn new(port: u16, proto: u8) -> Self {
        Self {
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Bits of a failsafe key that are always matched exactly: protocol, padding, port.
pub const FAILSAFE_KEY_FIXED_BITS: u32 = 32;

/// Data part of a failsafe-trie key: `(protocol, port, source address)`. The prefix length
/// is [`FAILSAFE_KEY_FIXED_BITS`] plus the source prefix length, so one lookup answers
/// "is this source allowed to reach this management port".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FailsafeKey<const N: usize> {
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding, matched as zero.
    pub _pad: u8,
    /// Destination port, big-endian.
    pub port: [u8; 2],
    /// Source address, network byte order.
    pub addr: [u8; N],
}

/// An IPv4 failsafe key.
pub type FailsafeKey4 = FailsafeKey<4>;
/// An IPv6 failsafe key.
pub type FailsafeKey6 = FailsafeKey<16>;

const _: () = assert!(size_of::<FailsafeKey4>() == 8);
const _: () = assert!(size_of::<FailsafeKey6>() == 20);

impl<const N: usize> FailsafeKey<N> {
    /// The key for a packet (or the base of a source prefix).
    pub const fn new(proto: u8, port: u16, addr: [u8; N]) -> Self {
        Self {
            proto,
            _pad: 0,
            port: port.to_be_bytes(),
            addr,
        }
    }
}

/// Audit level: every decided flow produces an event.
pub const AUDIT_ALL: u8 = 1;
/// Audit level: only denied (and audit-mode would-be denied) flows produce events.
pub const AUDIT_DENY: u8 = 2;

/// Policy-wide settings, the single entry of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyConfig {
    /// [`AUDIT_ALL`] or [`AUDIT_DENY`].
    pub audit_level: u8,
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`]: the verdict for flows that cannot be classified.
    pub unclassified_action: u8,
    /// Which of the four rule lookups can find an entry
    /// ([`crate::decision::lookup_bit`] of every rule-trie key, ORed).
    pub rule_lookups: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// How many rules the generation has (ids `1..=rule_count`): the entries of its
    /// [`RULE_COUNTERS`] map that are in use.
    pub rule_count: u32,
}

const _: () = assert!(size_of::<PolicyConfig>() == 8);

/// Per-generation maps, by slot: per-CPU [`RuleCounters`] indexed by rule id. They live
/// with the generation because rule ids are only meaningful within one.
pub const RULE_COUNTERS: [&str; 2] = ["RULE_COUNTERS_A", "RULE_COUNTERS_B"];

/// Capacity of each rule-counter map (rule ids `0..MAX_RULES`; id 0 is unused). The
/// compiler refuses policies with more rules. Memory: 24 bytes per rule, per CPU, per slot.
pub const MAX_RULES: u32 = 131_072;

/// How many flows one rule decided, by verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleCounters {
    /// Flows the rule let through.
    pub allow: u64,
    /// Flows the rule refused (at XDP: packets dropped).
    pub deny: u64,
    /// Flows the rule would have refused, passed because a segment is in audit mode.
    pub audit: u64,
}

const _: () = assert!(size_of::<RuleCounters>() == 24);

impl RuleCounters {
    /// The count for `verdict`.
    pub const fn get(&self, verdict: crate::event::Verdict) -> u64 {
        match verdict {
            crate::event::Verdict::Allow => self.allow,
            crate::event::Verdict::Deny => self.deny,
            crate::event::Verdict::Audit => self.audit,
        }
    }

    /// Adds `other` field by field (summing per-CPU values).
    pub const fn add(&mut self, other: &Self) {
        self.allow += other.allow;
        self.deny += other.deny;
        self.audit += other.audit;
    }
}

/// Per-CPU `u64` decision counts by reason and verdict, host state kept across
/// generations; index with [`reason_counter_index`].
pub const REASON_COUNTS: &str = "REASON_COUNTS";

/// Entries of [`REASON_COUNTS`]: room for reason codes below 16 times verdict codes below 4.
pub const REASON_COUNTER_SLOTS: u32 = 64;

/// The [`REASON_COUNTS`] index of decisions with `reason` and `verdict`.
pub const fn reason_counter_index(
    reason: crate::event::Reason,
    verdict: crate::event::Verdict,
) -> u32 {
    (reason as u32) * 4 + verdict as u32
}

const _: () = assert!(
    reason_counter_index(
        crate::event::Reason::ALL[crate::event::Reason::ALL.len() - 1],
        crate::event::Verdict::Audit
    ) < REASON_COUNTER_SLOTS
);

/// Per-CPU `u64` counts about the event stream, host state; indexed by the `EVENTS_*`
/// constants below.
pub const EVENT_STATS: &str = "EVENT_STATS";
/// [`EVENT_STATS`] index: events written to the ring buffer.
pub const EVENTS_EMITTED: u32 = 0;
/// [`EVENT_STATS`] index: events lost because the ring buffer was full.
pub const EVENTS_LOST: u32 = 1;
/// [`EVENT_STATS`] index: attempts folded (see [`FOLDS`]): counted in their fold's
/// pending count, to be carried by its next event, instead of written as events.
pub const EVENTS_SUPPRESSED: u32 = 2;
/// [`EVENT_STATS`] index, written by the agent (the total in CPU 0's slot): events it
/// took off the ring but could not store yet. Kept in the pinned map so that the count
/// survives an agent that dies before the store works again.
pub const EVENTS_UNSTORED: u32 = 3;
/// Entries of [`EVENT_STATS`].
pub const EVENT_STAT_SLOTS: u32 = 4;

/// Folds of recent attempts ([`FoldKey`] to [`FoldState`]): attempts that share a key
/// within the window are counted in one event. A plain hash, not an LRU: an evicted fold
/// would take its uncounted attempts with it. When it is full, an attempt with a new key
/// is written as an event of its own (`FOLD_NONE`). The agent reports idle folds' pending
/// attempts through [`FOLD_REPORT_PROGRAM`] and deletes folds idle for three windows.
pub const FOLDS: &str = "FOLDS";
/// Capacity of [`FOLDS`].
pub const FOLDS_CAPACITY: u32 = 65_536;

/// Per-CPU room in which a hook makes its event and a new fold's state (too large for the
/// kernel program's stack), one entry per hook code.
pub const SCRATCH: &str = "SCRATCH";
/// Entries of [`SCRATCH`]: more than the highest hook code.
pub const SCRATCH_SLOTS: u32 = 32;

const _: () = assert!((crate::event::Hook::ALL.len() as u32) < SCRATCH_SLOTS);

/// XDP's per-CPU verdict cache: decisions on new inbound flows to declared listener
/// ports, by source, family, protocol, port and generation (`docs/datapath.md`, "The
/// verdict cache"). Host state: its entries name their generation, and generation
/// numbers are never reused, so a kept entry never answers under another.
pub const XDP_VERDICTS: &str = "XDP_VERDICTS";
/// The size of one [`XDP_VERDICTS`] entry, which the loader zeroes when generation
/// numbering starts over.
pub const XDP_VERDICT_BYTES: usize = 44;
/// log2 of [`XDP_VERDICTS`]' entries per CPU.
pub const XDP_VERDICT_BITS: u32 = 10;

/// The program the agent runs through `BPF_PROG_TEST_RUN` with a [`FoldKey`] as the
/// packet: it writes that fold's pending attempts as one event. Never attached.
pub const FOLD_REPORT_PROGRAM: &str = "fold_report";

/// What makes attempts one fold. For `FOLD_FLOW` (allowed and audited flows) every field
/// of the flow: a SYN retransmit or the next datagram of a UDP stream has the same key, a
/// new connection from another source port, process or generation does not. For
/// `FOLD_SOURCE` (denials) the source port is zero. For `FOLD_DESTINATION` (denials beyond
/// the threshold of sources) the source address, cgroup and process are zero too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FoldKey {
    /// cgroup id of the calling task or receiving socket (0 at XDP).
    pub cgroup_id: u64,
    /// Source address (IPv4 in the first four bytes; zero where the hook has none).
    pub src_addr: [u8; 16],
    /// Destination address.
    pub dst_addr: [u8; 16],
    /// tgid of the calling task (0 at XDP).
    pub tgid: u32,
    /// The deciding generation.
    pub generation: u32,
    /// The deciding rule's id (reason `rule`) or failsafe number, else 0.
    pub rule_id: u32,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// [`crate::event::Hook`] code.
    pub hook: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// [`crate::event::Verdict`] code.
    pub verdict: u8,
    /// [`crate::event::Reason`] code.
    pub reason: u8,
    /// `FLOW_FLAG_*` bits of the record ([`crate::event::FLOW_FLAG_MPTCP`] tells an MPTCP
    /// flow from a TCP one to the same place).
    pub flags: u8,
    /// `FOLD_*` code of this fold.
    pub fold: u8,
    /// Address family.
    pub family: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}

const _: () = assert!(size_of::<FoldKey>() == 64);

/// A fold's counts and what its events repeat. Counts are changed with atomic adds only
/// (the kernel's BPF v1 instruction set has no atomic exchange): an event takes the
/// pending count it read by adding its negation, so attempts counted meanwhile stay.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldState {
    /// Attempts not yet in an event.
    pub pending: u64,
    /// Boot-time ns of the fold's last event (0: none written yet).
    pub emitted_ns: u64,
    /// Boot-time ns of the earliest pending attempt (0: none pending).
    pub first_ns: u64,
    /// Boot-time ns of the latest attempt.
    pub last_ns: u64,
    /// `FOLD_DESTINATION` only: start of the current threshold window.
    pub window_ns: u64,
    /// `FOLD_DESTINATION` only: new sources seen in the current threshold window.
    pub sources: u64,
    /// `pid_tgid` of the latest attempt (cgroup hooks).
    pub pid_tgid: u64,
    /// Source segment id of the latest attempt.
    pub src_segment: u32,
    /// Destination segment id.
    pub dst_segment: u32,
    /// Receiving interface of the latest attempt (XDP).
    pub ifindex: u32,
    /// Source port of the latest attempt.
    pub src_port: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
    /// Source address of the latest attempt (the sample a destination fold names).
    pub src_addr: [u8; 16],
    /// Command name of the latest attempt's task (cgroup hooks).
    pub comm: [u8; crate::event::COMM_LEN],
}

const _: () = assert!(size_of::<FoldState>() == 104);

/// Host-wide settings the agent writes, the single entry of [`HOST_SETTINGS`]; host
/// state, kept across generations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostSettings {
    /// The fold window: attempts of one fold within this many nanoseconds of its last
    /// event are counted into its next event instead of written (see [`FOLDS`]); 0 writes
    /// every attempt as an event of its own.
    pub dedup_window_ns: u64,
    /// The cookie of the agent's network namespace (0: unknown). Only bindings made there
    /// are learnt as listeners: a process that binds a port in a namespace of its own does
    /// not receive this host's flows to that port.
    pub netns_cookie: u64,
    /// Lowest port of the host's ephemeral range (`net.ipv4.ip_local_port_range`).
    pub ephemeral_low: u16,
    /// Highest port of the host's ephemeral range. A UDP port in this range is not learnt
    /// as a listener: the kernel hands such ports to clients, and replies to a client must
    /// not be decided as new inbound flows.
    pub ephemeral_high: u16,
    /// Non-zero while the agent cannot write audit records and its config says to fail
    /// closed: every new flow but failsafe access is denied (reason `audit-unavailable`).
    pub fail_closed: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// Distinct sources denied to one destination under one rule within the window
    /// beyond which further sources fold into one `FOLD_DESTINATION` fold; 0 never.
    pub fold_sources: u16,
}

const _: () = assert!(size_of::<HostSettings>() == 24);

/// The array holding the [`HostSettings`].
pub const HOST_SETTINGS: &str = "HOST_SETTINGS";

/// The fold window the loader sets unless told otherwise: one second.
pub const DEFAULT_DEDUP_WINDOW_NS: u64 = 1_000_000_000;

/// The fold threshold of sources the loader sets unless told otherwise
/// ([`HostSettings::fold_sources`]).
pub const DEFAULT_FOLD_SOURCES: u16 = 16;

/// Listeners learnt at `bind()` (post_bind4/6): [`BoundKey`] (the bound address, port
/// and protocol) to the binding task's cgroup ancestry and the socket's cookie; the entry
/// goes when that socket is released. Host state: the same binding is classified under
/// every generation by looking its ancestry up in that generation's cgroup table.
pub const LEARNT_LISTENERS: &str = "LEARNT_LISTENERS";
/// The [`BoundKey`] each learnt socket made, by socket cookie: a `sock_release` program
/// cannot read a socket's address or port, so this is how a released socket's binding is
/// found. Same capacity as [`LEARNT_LISTENERS`].
pub const BOUND_SOCKETS: &str = "BOUND_SOCKETS";

/// Sockets whose `bind()` asked for a port of their own (not 0), by socket cookie, from
/// the `bind4/6` hooks until `post_bind4/6` reads it: a UDP port in the ephemeral range is
/// learnt as a listener only when it was asked for (a client's `bind(0)` lands there too,
/// and its replies must not be decided as new inbound flows). Same capacity as
/// [`LEARNT_LISTENERS`].
pub const EXPLICIT_BINDS: &str = "EXPLICIT_BINDS";

/// Capacity of [`LEARNT_LISTENERS`] (an LRU: the oldest bindings go first).
pub const LEARNT_LISTENERS_CAPACITY: u32 = 65_536;

/// Levels of cgroup ancestry recorded per learnt listener: the root's level 0 through
/// [`MAX_CGROUP_DEPTH`].
pub const CGROUP_LEVELS: usize = MAX_CGROUP_DEPTH as usize + 1;

/// The cgroup ancestry of the task that bound a learnt listener, and which socket it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearntListener {
    /// cgroup id at each level, root first; 0 below the task's own level.
    pub ancestors: [u64; CGROUP_LEVELS],
    /// The bound socket's cookie: only its own release forgets the entry (a later
    /// binding of the same address and port replaced it otherwise).
    pub cookie: u64,
}

const _: () = assert!(size_of::<LearntListener>() == 8 * CGROUP_LEVELS + 8);

/// Key of [`LEARNT_LISTENERS`]: where a socket is bound. The address is a
/// [`local_address_key`]: IPv6 as it is and IPv4 in its IPv4-mapped form, so the
/// unspecified addresses of the two families stay apart (`::ffff:0.0.0.0` for an IPv4
/// socket on `0.0.0.0`, `::` for an IPv6 socket on `::`) as the kernel keeps them apart:
/// an IPv6-only socket on `::` beside an IPv4 one on `0.0.0.0` is a different binding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoundKey {
    /// The bound address, as [`local_address_key`] gives it.
    pub addr: [u8; 16],
    /// The bound port, host byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}

const _: () = assert!(size_of::<BoundKey>() == 20);

impl BoundKey {
    /// The key of a socket bound to `addr` (already a [`local_address_key`]), `port`,
    /// `proto`.
    pub const fn new(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Every address of this host in the agent's network namespace (kept current by the
/// agent): the addresses of its interfaces and every single address the kernel's `local`
/// routing table delivers here (IPv6 anycast included), as [`local_address_key`]s. A
/// destination there is this host, decided against the listener's segment like loopback,
/// never by the address tries. The value is [`ADDRESS_LOCAL`], or [`ADDRESS_BROADCAST`]
/// for the broadcast address of a network an interface is on (a destination in
/// [`SEGMENT_BROADCAST`]). Wider `local` routes are in [`LOCAL_PREFIXES`]. Host state.
pub const LOCAL_ADDRESSES: &str = "LOCAL_ADDRESSES";
/// A [`LOCAL_ADDRESSES`] value: an address of this host.
pub const ADDRESS_LOCAL: u8 = 1;
/// A [`LOCAL_ADDRESSES`] value: the broadcast address of a network this host is on.
pub const ADDRESS_BROADCAST: u8 = 2;

/// Capacity of [`LOCAL_ADDRESSES`].
pub const LOCAL_ADDRESSES_CAPACITY: u32 = 4096;

/// The prefixes the kernel's `local` routing table delivers to this host beyond single
/// addresses (AnyIP: `ip route add local 198.19.253.0/24 dev lo`), as prefixes of
/// [`local_address_key`]s (an IPv4 prefix of length `n` is stored with length `96 + n`).
/// Loopback is not among them: [`LOCAL_ADDRESSES`]' users judge `127.0.0.0/8` themselves.
/// The value is [`ADDRESS_LOCAL`]. Host state, kept current by the agent.
pub const LOCAL_PREFIXES: &str = "LOCAL_PREFIXES";
/// Capacity of [`LOCAL_PREFIXES`].
pub const LOCAL_PREFIXES_CAPACITY: u32 = 1024;

/// The [`LOCAL_ADDRESSES`] key of an address: IPv6 as it is, IPv4 (`v4`, in the first
/// four bytes) as its IPv4-mapped IPv6 form, so an IPv4-mapped destination finds it too.
#[inline(always)]
pub const fn local_address_key(addr: &[u8; 16], v4: bool) -> [u8; 16] {
    if v4 {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
        ]
    } else {
        *addr
    }
}

/// The UDP peers of each socket: [`PeerKey`] (a socket and one peer) to [`PeerState`].
/// The cgroup skb ingress hook and the `sendmsg` hooks keep it, so a datagram that
/// answers one the socket exchanged with that exact peer passes as a reply, and a peer
/// already allowed in under the active generation costs one lookup. Host state.
pub const SOCKET_PEERS: &str = "SOCKET_PEERS";
/// Capacity of [`SOCKET_PEERS`] (an LRU: the least recently used peers go first, and
/// their next datagram is decided again).
pub const SOCKET_PEERS_CAPACITY: u32 = 65_536;
/// How long after the last datagram of an exchange the other side may answer.
pub const REPLY_WINDOW_NS: u64 = 120_000_000_000;

/// Key of [`SOCKET_PEERS`]: a local socket (its cookie) and one UDP peer (address as a
/// [`local_address_key`], port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    /// The local socket's cookie.
    pub cookie: u64,
    /// The peer's address.
    pub peer_addr: [u8; 16],
    /// The peer's port, host byte order.
    pub peer_port: u16,
    /// Explicit padding; always zero.
    pub _pad: [u8; 6],
}

const _: () = assert!(size_of::<PeerKey>() == 32);

impl PeerKey {
    /// The key of socket `cookie`'s peer at `peer_addr` (already a
    /// [`local_address_key`]):`peer_port`.
    pub const fn new(cookie: u64, peer_addr: [u8; 16], peer_port: u16) -> Self {
        Self {
            cookie,
            peer_addr,
            peer_port,
            _pad: [0; 6],
        }
    }
}

/// What a socket and one UDP peer have exchanged ([`SOCKET_PEERS`]); times are on the
/// boot clock, in ns. Each window holds only under the generation that opened it: a new
/// policy decides the next datagram anew.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    /// Until when the socket may answer the peer: its last datagram to the socket was let
    /// in [`REPLY_WINDOW_NS`] before.
    pub heard_until: u64,
    /// Until when the peer's datagrams are answers: the socket's last datagram to it was
    /// allowed [`REPLY_WINDOW_NS`] before.
    pub sent_until: u64,
    /// The generation under which the peer's datagrams to the socket were last allowed
    /// (or audited) by a rule or failsafe; 0 when never.
    pub allowed_generation: u32,
    /// The generation under which `heard_until` was set.
    pub heard_generation: u32,
    /// The generation under which `sent_until` was set.
    pub sent_generation: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

const _: () = assert!(size_of::<PeerState>() == 32);

/// How a TCP socket's last `connect()` was decided, in the socket's own storage
/// (`BPF_MAP_TYPE_SK_STORAGE`, freed with the socket): the cgroup and segment of the task
/// that called it, under which generation, and whether it was refused. `skb_egress` holds
/// every SYN to it: a SYN whose `connect()` a task of the socket's own cgroup made, or of
/// the socket's own segment under the active generation, passes (or is dropped) as
/// decided there; any other (the connect ran in a kernel worker, an MPTCP path manager's
/// subflow, or in a task of another segment, a socket passed over `SCM_RIGHTS`; or before
/// the hooks were attached) is decided at egress against the socket's own segment,
/// recorded, and its decision noted here for the retransmissions. Host state.
pub const CONNECT_DECISIONS: &str = "CONNECT_DECISIONS";

/// The value of [`CONNECT_DECISIONS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectDecision {
    /// cgroup v2 id of the task whose `connect()` decided (for a SYN decided at
    /// `skb_egress`, the socket's own cgroup).
    pub cgroup_id: u64,
    /// The segment that decided: the task's (the socket's, at `skb_egress`).
    pub segment: u32,
    /// The generation that decided.
    pub generation: u32,
    /// 1 when the decision refused the connection, else 0.
    pub denied: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 7],
}

const _: () = assert!(size_of::<ConnectDecision>() == 24);

/// The cookie of the subflow through which an MPTCP socket bound, in the MPTCP socket's
/// own storage (`BPF_MAP_TYPE_SK_STORAGE`, a `u64`). An MPTCP socket binds through its
/// first subflow, a socket of the kernel's: the binding is learnt from the subflow, but
/// the release hook runs for the MPTCP socket alone, which finds the binding to forget
/// here. Host state.
pub const MPTCP_BINDINGS: &str = "MPTCP_BINDINGS";

/// The maps of host state, one of each, kept across generations.
const HOST_MAPS: [&str; 16] = [
    SCRATCH,
    XDP_VERDICTS,
    ACTIVE,
    EVENTS,
    REASON_COUNTS,
    EVENT_STATS,
    FOLDS,
    HOST_SETTINGS,
    LEARNT_LISTENERS,
    BOUND_SOCKETS,
    EXPLICIT_BINDS,
    LOCAL_ADDRESSES,
    LOCAL_PREFIXES,
    SOCKET_PEERS,
    CONNECT_DECISIONS,
    MPTCP_BINDINGS,
];

/// The per-generation maps, each as its names by slot.
const SLOT_MAPS: [[&str; 2]; 10] = [
    CIDRS_V4,
    CIDRS_V6,
    CGROUPS,
    RULES,
    SEGMENTS,
    POLICY,
    LISTEN,
    FAILSAFES_V4,
    FAILSAFES_V6,
    RULE_COUNTERS,
];

/// The name of every map the kernel object declares: the host maps, then both slots of
/// every per-generation map. The loader pins exactly these; a test holds them equal to
/// the maps of the built object.
pub const MAP_NAMES: [&str; HOST_MAPS.len() + 2 * SLOT_MAPS.len()] = {
    let mut names = [""; HOST_MAPS.len() + 2 * SLOT_MAPS.len()];
    let mut i = 0;
    while i < HOST_MAPS.len() {
        names[i] = HOST_MAPS[i];
        i += 1;
    }
    let mut map = 0;
    while map < SLOT_MAPS.len() {
        names[i] = SLOT_MAPS[map][0];
        names[i + 1] = SLOT_MAPS[map][1];
        i += 2;
        map += 1;
    }
    names
};

// SAFETY (all impls below): each type is `repr(C)`, `Copy`, made of integers and byte
// arrays only, with its padding explicit (sizes asserted above), so every bit pattern is
// a valid value.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: see above.
    unsafe impl aya::Pod for RuleKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for RuleValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for SegmentInfo {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ListenKey {}
    // SAFETY: see above.
    unsafe impl<const N: usize> aya::Pod for FailsafeKey<N> {}
    // SAFETY: see above.
    unsafe impl aya::Pod for PolicyConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for RuleCounters {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FoldKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FoldState {}
    // SAFETY: see above.
    unsafe impl aya::Pod for HostSettings {}
    // SAFETY: see above.
    unsafe impl aya::Pod for LearntListener {}
    // SAFETY: see above.
    unsafe impl aya::Pod for BoundKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for PeerKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for PeerState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_and_verdict_has_its_own_counter() {
        use crate::event::{Reason, Verdict};
        let reasons = [
            Reason::Rule,
            Reason::DefaultDeny,
            Reason::Failsafe,
            Reason::AuditUnavailable,
        ];
        let verdicts = [Verdict::Allow, Verdict::Deny, Verdict::Audit];
        let mut seen = [false; REASON_COUNTER_SLOTS as usize];
        for reason in reasons {
            for verdict in verdicts {
                let index = reason_counter_index(reason, verdict) as usize;
                assert!(!seen[index], "{reason:?} {verdict:?} shares slot {index}");
                seen[index] = true;
            }
        }
    }

    #[test]
    fn counters_add_field_by_field() {
        let mut total = RuleCounters {
            allow: 1,
            deny: 2,
            audit: 3,
        };
        total.add(&RuleCounters {
            allow: 10,
            deny: 20,
            audit: 30,
        });
        assert_eq!((total.allow, total.deny, total.audit), (11, 22, 33));
    }

    #[test]
    fn consecutive_generations_alternate_between_the_two_slots() {
        for generation in 1..8 {
            assert!(slot_of(generation) < CIDRS_V4.len());
            assert_ne!(slot_of(generation), slot_of(generation + 1));
        }
    }

    #[test]
    fn a_guard_classifies_its_own_processes_and_holds_back_unknown_children() {
        let guard = 7 | CGROUP_GUARD;
        assert_eq!(cgroup_segment(guard, false), 7, "the guard's own processes");
        assert_eq!(
            cgroup_segment(guard, true),
            SEGMENT_UNCLASSIFIED,
            "a child the table does not know yet"
        );
        assert_eq!(
            cgroup_segment(7, true),
            7,
            "children of a non-guard inherit"
        );
        assert_eq!(
            cgroup_segment(SEGMENT_HOST | CGROUP_GUARD, false),
            SEGMENT_HOST
        );
    }
}
