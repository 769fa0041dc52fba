//! Every map of the kernel object. Policy maps exist twice, one per generation slot
//! (`_A`, `_B`): the agent fills the inactive slot, then flips `ACTIVE`. A program reads
//! `ACTIVE` once per run and uses that slot throughout, so no decision mixes two
//! generations.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::maps::{
    BoundKey, CGROUP_TABLE_CAPACITY, ConnectDecision, EVENT_STAT_SLOTS, EVENTS_RING_BYTES,
    FOLDS_CAPACITY, FailsafeKey4, FailsafeKey6, FoldKey, FoldState, HostSettings,
    LEARNT_LISTENERS_CAPACITY, LOCAL_ADDRESSES_CAPACITY, LOCAL_PREFIXES_CAPACITY, LearntListener,
    ListenKey, MAX_CIDRS_V4, MAX_CIDRS_V6, MAX_FAILSAFES, MAX_LISTEN_PORTS, MAX_RULE_ENTRIES,
    MAX_RULES, MAX_SEGMENTS, PeerKey, PeerState, PolicyConfig, REASON_COUNTER_SLOTS, RuleCounters,
    RuleKey, RuleValue, SCRATCH_SLOTS, SOCKET_PEERS_CAPACITY, SegmentInfo, XDP_VERDICT_BITS,
};
use enforcer_common::{decision::Decision, event::FlowEvent};

/// Per-flow audit records ([`enforcer_common::event::FlowEvent`]) for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Per-CPU decision counts by reason and verdict (host state).
#[map]
pub static REASON_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNTER_SLOTS, 0);

/// Per-CPU counts of events emitted, lost to a full ring, and suppressed as duplicates.
#[map]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_STAT_SLOTS, 0);

/// Folds of recent attempts (see `enforcer_common::maps::FOLDS`).
#[map]
pub static FOLDS: HashMap<FoldKey, FoldState> = HashMap::with_max_entries(FOLDS_CAPACITY, 0);

/// Room for the event being made and a new fold's state.
#[repr(C)]
pub struct Scratch {
    /// The event.
    pub event: FlowEvent,
    /// A new fold's state.
    pub state: FoldState,
    /// The fold's key.
    pub key: FoldKey,
}

/// Per-CPU [`Scratch`], one entry per hook code (see `record::record`).
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// One decision XDP keeps in [`XDP_VERDICTS`] (see `verdicts`): the flow's key, then
/// what was decided.
#[repr(C)]
pub struct CachedVerdict {
    /// Odd while the entry is being written.
    pub seq: u32,
    /// The generation that decided (0, never active, in an entry never written).
    pub generation: u32,
    /// The source address (IPv4 in the first four bytes), as four native-endian words.
    pub src_addr: [u32; 4],
    /// The destination port (an ICMP request's type).
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Address family.
    pub family: u8,
    /// The decision, before fail closed.
    pub decision: Decision,
    /// The source segment.
    pub src_segment: u32,
    /// The destination segment.
    pub dst_segment: u32,
}

const _: () = assert!(size_of::<CachedVerdict>() == enforcer_common::maps::XDP_VERDICT_BYTES);

/// XDP's per-CPU verdict cache, indexed by a hash of the flow (see `verdicts` and
/// `enforcer_common::maps::XDP_VERDICTS`).
#[map]
pub static XDP_VERDICTS: PerCpuArray<CachedVerdict> =
    PerCpuArray::with_max_entries(1 << XDP_VERDICT_BITS, 0);

/// Settings the agent writes: de-duplication window, ephemeral port range.
#[map]
pub static HOST_SETTINGS: Array<HostSettings> = Array::with_max_entries(1, 0);

/// Listeners learnt at `bind()` by bound address, port and protocol, with the binding
/// task's cgroup ancestry; forgotten at the socket's release.
#[map]
pub static LEARNT_LISTENERS: LruHashMap<BoundKey, LearntListener> =
    LruHashMap::with_max_entries(LEARNT_LISTENERS_CAPACITY, 0);

/// Sockets whose `bind()` asked for a port of their own, by cookie, until `post_bind`.
#[map]
pub static EXPLICIT_BINDS: LruHashMap<u64, u8> =
    LruHashMap::with_max_entries(LEARNT_LISTENERS_CAPACITY, 0);

/// The binding each learnt socket made, by socket cookie, for its release.
#[map]
pub static BOUND_SOCKETS: LruHashMap<u64, BoundKey> =
    LruHashMap::with_max_entries(LEARNT_LISTENERS_CAPACITY, 0);

/// Every address of this host and the broadcast addresses of its networks, as
/// `local_address_key`s (see `enforcer_common::maps::LOCAL_ADDRESSES`).
#[map]
pub static LOCAL_ADDRESSES: HashMap<[u8; 16], u8> =
    HashMap::with_max_entries(LOCAL_ADDRESSES_CAPACITY, 0);

/// The prefixes the kernel's `local` routing table delivers to this host, as prefixes of
/// `local_address_key`s (see `enforcer_common::maps::LOCAL_PREFIXES`).
#[map]
pub static LOCAL_PREFIXES: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(LOCAL_PREFIXES_CAPACITY, 0);

/// What each UDP socket and each of its peers have exchanged: replies both ways, and the
/// peers allowed in under a generation.
#[map]
pub static SOCKET_PEERS: LruHashMap<PeerKey, PeerState> =
    LruHashMap::with_max_entries(SOCKET_PEERS_CAPACITY, 0);

/// How each TCP socket's last `connect()` was decided, in the socket's own storage
/// (freed with it): see [`crate::connecting`].
///
/// A BTF map (`.maps` section) rather than a legacy one: the kernel creates socket
/// storage only with BTF for its key and value.
#[btf_map]
pub static CONNECT_DECISIONS: SkStorage<ConnectDecision> = SkStorage::new();

/// The cookie of the subflow each MPTCP socket bound through, in the MPTCP socket's own
/// storage: see [`crate::learn::mptcp_bind`]. A BTF map, as [`CONNECT_DECISIONS`].
#[btf_map]
pub static MPTCP_BINDINGS: SkStorage<u64> = SkStorage::new();

/// The active generation number (0: no policy applied yet).
#[map]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Declares one per-generation map twice, as `$a` and `$b`.
macro_rules! per_slot {
    ($doc:literal, $a:ident, $b:ident, $ty:ty, $init:expr) => {
        #[doc = $doc]
        #[map]
        pub static $a: $ty = $init;
        #[doc = $doc]
        #[map]
        pub static $b: $ty = $init;
    };
}

per_slot!("IPv4 address prefix to segment id.", CIDRS_V4_A, CIDRS_V4_B, LpmTrie<[u8; 4], u32>, LpmTrie::with_max_entries(MAX_CIDRS_V4, 0));
per_slot!("IPv6 address prefix to segment id.", CIDRS_V6_A, CIDRS_V6_B, LpmTrie<[u8; 16], u32>, LpmTrie::with_max_entries(MAX_CIDRS_V6, 0));
per_slot!("cgroup id to segment id, with the guard bit on ancestors of listed cgroups.", CGROUPS_A, CGROUPS_B, HashMap<u64, u32>, HashMap::with_max_entries(CGROUP_TABLE_CAPACITY, 0));
per_slot!("The rule trie.", RULES_A, RULES_B, LpmTrie<RuleKey, RuleValue>, LpmTrie::with_max_entries(MAX_RULE_ENTRIES, 0));
per_slot!(
    "Segment flags by segment id.",
    SEGMENTS_A,
    SEGMENTS_B,
    Array<SegmentInfo>,
    Array::with_max_entries(MAX_SEGMENTS, 0)
);
per_slot!(
    "Policy-wide settings.",
    POLICY_A,
    POLICY_B,
    Array<PolicyConfig>,
    Array::with_max_entries(1, 0)
);
per_slot!("Declared listener ports to segment id.", LISTEN_A, LISTEN_B, HashMap<ListenKey, u32>, HashMap::with_max_entries(MAX_LISTEN_PORTS, 0));
per_slot!(
    "Per-CPU counts per rule id.",
    RULE_COUNTERS_A,
    RULE_COUNTERS_B,
    PerCpuArray<RuleCounters>,
    PerCpuArray::with_max_entries(MAX_RULES, 0)
);
per_slot!("IPv4 failsafe access.", FAILSAFE4_A, FAILSAFE4_B, LpmTrie<FailsafeKey4, u32>, LpmTrie::with_max_entries(MAX_FAILSAFES, 0));
per_slot!("IPv6 failsafe access.", FAILSAFE6_A, FAILSAFE6_B, LpmTrie<FailsafeKey6, u32>, LpmTrie::with_max_entries(MAX_FAILSAFES, 0));

/// The maps of one generation slot: `Slot<false>` is slot 0 (`_A`), `Slot<true>` slot 1
/// (`_B`); [`in_slot!`] picks the slot of a generation.
///
/// Verifier note: the slot is a const generic, so every map access names its map as a
/// constant. Choosing the map at run time (a pointer in a variable or a struct) lets LLVM
/// spill and reuse the pointer's stack slot for other values, which the verifier rejects
/// as "pointer arithmetic on map_ptr".
pub struct Slot<const B: bool>;

impl<const B: bool> Slot<B> {
    /// IPv4 address trie.
    #[inline(always)]
    pub fn cidrs_v4(&self) -> &'static LpmTrie<[u8; 4], u32> {
        if B { &CIDRS_V4_B } else { &CIDRS_V4_A }
    }

    /// IPv6 address trie.
    #[inline(always)]
    pub fn cidrs_v6(&self) -> &'static LpmTrie<[u8; 16], u32> {
        if B { &CIDRS_V6_B } else { &CIDRS_V6_A }
    }

    /// cgroup id to segment.
    #[inline(always)]
    pub fn cgroups(&self) -> &'static HashMap<u64, u32> {
        if B { &CGROUPS_B } else { &CGROUPS_A }
    }

    /// Rule trie.
    #[inline(always)]
    pub fn rules(&self) -> &'static LpmTrie<RuleKey, RuleValue> {
        if B { &RULES_B } else { &RULES_A }
    }

    /// Segment flags.
    #[inline(always)]
    pub fn segments(&self) -> &'static Array<SegmentInfo> {
        if B { &SEGMENTS_B } else { &SEGMENTS_A }
    }

    /// Declared listener ports.
    #[inline(always)]
    pub fn listen(&self) -> &'static HashMap<ListenKey, u32> {
        if B { &LISTEN_B } else { &LISTEN_A }
    }

    /// Policy-wide settings of the generation.
    #[inline(always)]
    pub fn policy(&self) -> &'static Array<PolicyConfig> {
        if B { &POLICY_B } else { &POLICY_A }
    }

    /// Per-rule counters of the generation.
    #[inline(always)]
    pub fn rule_counters(&self) -> &'static PerCpuArray<RuleCounters> {
        if B {
            &RULE_COUNTERS_B
        } else {
            &RULE_COUNTERS_A
        }
    }

    /// IPv4 failsafe access.
    #[inline(always)]
    pub fn failsafes_v4(&self) -> &'static LpmTrie<FailsafeKey4, u32> {
        if B { &FAILSAFE4_B } else { &FAILSAFE4_A }
    }

    /// IPv6 failsafe access.
    #[inline(always)]
    pub fn failsafes_v6(&self) -> &'static LpmTrie<FailsafeKey6, u32> {
        if B { &FAILSAFE6_B } else { &FAILSAFE6_A }
    }
}

/// The host settings the agent wrote (all zero before it wrote any).
#[inline(always)]
pub fn host_settings() -> HostSettings {
    HOST_SETTINGS.get(0).copied().unwrap_or_default()
}

/// The active generation, read once per run: 0 before any policy was applied. Generation
/// `g` lives in slot [`slot_of`]`(g)`; [`in_slot!`] picks it.
///
/// [`slot_of`]: enforcer_common::maps::slot_of
#[inline(always)]
pub fn active_generation() -> u32 {
    ACTIVE.get(0).copied().unwrap_or(0)
}

/// Evaluates `$body` with `$slot` bound to the [`Slot`] generation `$generation` lives in
/// ([`slot_of`], the slot choice the loader uses too): the one place a hook turns a
/// generation number into its maps.
///
/// Verifier note: a macro rather than a function taking a closure, because each branch
/// must name its slot as a constant type (see [`Slot`]) and a closure cannot be generic
/// over it.
///
/// [`slot_of`]: enforcer_common::maps::slot_of
macro_rules! in_slot {
    ($generation:expr, |$slot:ident| $body:expr) => {
        if ::enforcer_common::maps::slot_of($generation) == 0 {
            let $slot = &$crate::maps::Slot::<false>;
            $body
        } else {
            let $slot = &$crate::maps::Slot::<true>;
            $body
        }
    };
}

pub(crate) use in_slot;
