//! `enforcer-bench-xdp POLICY REPEAT RUNS`: the per-packet cost of the XDP program, by
//! `BPF_PROG_TEST_RUN`, next to an empty XDP program measured in the same process, and
//! the cost of each map operation its deny path makes.
//!
//! The policy is compiled and applied to a freshly loaded (unattached) kernel object.
//! Then each probe packet runs `RUNS` times `REPEAT` times; each line printed is
//! `LABEL ACTION MEDIAN_NS`, where ACTION is the XDP return code (1 drop, 2 pass) and
//! MEDIAN_NS the median over the runs of the kernel's mean time per packet (the kernel
//! times its repetition loop only: the XDP dispatcher swap each call makes, about 20 ms
//! here, is outside the figure). Probe packets, all IPv4 TCP from 198.18.0.1 (the first
//! address of segment `s0` in the benchmark's generated policies):
//! - `allow`: a SYN to port 10001, allowed by rule `bench-allow`;
//! - `deny`: a SYN to port 10002, denied by rule `bench-deny`;
//! - `no-match`: a SYN to port 10003, which no rule covers (default deny);
//! - `established`: an ACK to port 10001, parsed and passed without a decision.
//!
//! Then the parts of the deny path, each a program of a few instructions ([`raw`]) that
//! makes only that part's operations, on the real program's own maps (found through the
//! loaded program's map ids) with the keys the deny probe makes, run like the probes:
//! lines `part NAME OPERATIONS MEDIAN_NS`, the empty program's floor included.
//!
//! Run by `./x bench xdp`, which generates the policies and writes the table.

mod raw;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::fd::{AsFd as _, BorrowedFd},
    process::ExitCode,
    time::Duration,
};

use aya::maps::MapData;
use enforcer::{
    loader::Loader,
    policy::{compile_sources, source::SourceSet},
};
use enforcer_common::{
    decision::{lookup_bit, rule_lookups},
    event::{FlowEvent, Hook, Reason, Verdict},
    maps::{
        EVENTS_SUPPRESSED, FAILSAFE_KEY_FIXED_BITS, FailsafeKey, FoldKey, ListenKey, PolicyConfig,
        RULE_KEY_FIXED_BITS, RuleKey, RuleValue, reason_counter_index, slot_of,
    },
};
use enforcer_tests::bpf_raw::{self, RawXdp};
use enforcer_tests::packet::{ACK, SYN, tcp4};
use raw::{Asm, HELPER_KTIME_GET_BOOT_NS};

/// Source of every probe packet: inside `s0`'s 198.18.0.0/28.
const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The deny probe's destination port.
const DENY_PORT: u16 = 10002;
/// IP protocol number of TCP.
const TCP: u8 = 6;
/// Ring buffer writes per run: a fresh 16 MiB ring holds them all, so every write is
/// timed succeeding.
const RING_REPEAT: u32 = 100_000;
const RING_BYTES: u32 = 16 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [policy, repeat, runs] = args.as_slice() else {
        eprintln!("usage: enforcer-bench-xdp POLICY REPEAT RUNS");
        return ExitCode::from(2);
    };
    let (Ok(repeat), Ok(runs)) = (repeat.parse::<u32>(), runs.parse::<usize>()) else {
        eprintln!("REPEAT and RUNS are numbers");
        return ExitCode::from(2);
    };
    match bench(policy, repeat, runs.max(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enforcer-bench-xdp: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The median of `samples`, in ns.
fn median(mut samples: Vec<Duration>) -> u128 {
    samples.sort();
    samples[samples.len() / 2].as_nanos()
}

/// `runs` runs of `run`: the last action and the median time.
fn measure(
    runs: usize,
    mut run: impl FnMut() -> Result<(u32, Duration), String>,
) -> Result<(u32, u128), String> {
    let mut samples = Vec::with_capacity(runs);
    let mut action = 0;
    for _ in 0..runs {
        let (code, mean) = run()?;
        action = code;
        samples.push(mean);
    }
    Ok((action, median(samples)))
}

fn bench(policy: &str, repeat: u32, runs: usize) -> Result<(), String> {
    let text = std::fs::read_to_string(policy).map_err(|e| format!("{policy}: {e}"))?;
    let mut sources = SourceSet::default();
    sources.add(policy, &text);
    let image = compile_sources(sources)
        .map_err(|rejected| format!("{policy} is invalid: {:?}", rejected.diagnostics))?
        .image;
    let mut loader = Loader::load().map_err(|e| e.to_string())?;
    let root = enforcer::host::cgroup2_mount().map_err(|e| e.to_string())?;
    loader.apply(&image, &root).map_err(|e| e.to_string())?;

    let empty = Asm::default().load()?;
    let probe = tcp4(SOURCE, 10001, SYN);
    let (action, ns) = measure(runs, || empty.test_run(&probe, repeat))?;
    println!("empty {action} {ns}");

    for (label, packet) in [
        ("allow", tcp4(SOURCE, 10001, SYN)),
        ("deny", tcp4(SOURCE, DENY_PORT, SYN)),
        ("no-match", tcp4(SOURCE, 10003, SYN)),
        ("established", tcp4(SOURCE, 10001, ACK)),
    ] {
        let (action, ns) = measure(runs, || {
            loader
                .test_run_xdp(&packet, repeat)
                .map_err(|e| e.to_string())
        })?;
        println!("{label} {action} {ns}");
    }

    let generation = loader.active_generation().map_err(|e| e.to_string())?;
    let maps = ProgramMaps::of_xdp(&loader, slot_of(generation))?;
    let probe = tcp4(SOURCE, DENY_PORT, SYN);
    for mut part in deny_parts(&maps)? {
        let program = part
            .asm
            .load()
            .map_err(|e| format!("part {}: {e}", part.name))?;
        let (_, ns) = measure(runs, || program.test_run(&probe, repeat))?;
        println!("part {} {} {ns}", part.name, part.operations);
    }
    let (_, ns) = measure(runs, || ring_run(&probe))?;
    println!("part ring 1 {ns}");
    Ok(())
}

/// One ring buffer write of an event-sized record per run, [`RING_REPEAT`] runs, into a
/// ring of its own (made anew each call, so it never fills).
fn ring_run(probe: &[u8]) -> Result<(u32, Duration), String> {
    let ring = bpf_raw::ring_buffer(RING_BYTES)?;
    let program: RawXdp = Asm::default()
        .ringbuf_output(ring.as_fd(), size_of::<FlowEvent>())
        .load()?;
    program.test_run(probe, RING_REPEAT)
}

/// The maps of the loaded XDP program, by name, with the active generation's slot.
struct ProgramMaps {
    maps: HashMap<String, MapData>,
    /// `_A` or `_B`: the suffix of the active slot's per-generation maps.
    slot: &'static str,
}

impl ProgramMaps {
    /// The maps the kernel lists for `loader`'s XDP program.
    fn of_xdp(loader: &Loader, slot: usize) -> Result<Self, String> {
        let id = loader
            .programs()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|program| program.hook == Hook::XdpIngress)
            .ok_or("no XDP program loaded")?
            .id;
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|info| info.id() == id)
            .ok_or("the kernel does not list the XDP program")?;
        let ids = info
            .map_ids()
            .map_err(|e| e.to_string())?
            .ok_or("the kernel does not list program maps")?;
        let mut maps = HashMap::new();
        for id in ids {
            let map = MapData::from_id(id).map_err(|e| e.to_string())?;
            let info = map.info().map_err(|e| e.to_string())?;
            let name = info.name_as_str().unwrap_or_default().to_owned();
            maps.insert(name, map);
        }
        Ok(Self {
            maps,
            slot: if slot == 0 { "_A" } else { "_B" },
        })
    }

    /// The map `name` (host state, one copy).
    fn host(&self, name: &str) -> Result<BorrowedFd<'_>, String> {
        self.maps
            .get(name)
            .map(|map| map.fd().as_fd())
            .ok_or_else(|| format!("the XDP program has no map {name}"))
    }

    /// The active slot's copy of the per-generation map `name` (without its suffix).
    fn active(&self, name: &str) -> Result<BorrowedFd<'_>, String> {
        self.host(&format!("{name}{}", self.slot))
    }
}

/// The bytes of a shared map key or value.
fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: a `Pod` type has no padding and no invalid bytes; the slice covers exactly
    // the value, which outlives it.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

/// An LPM-trie key: prefix length (host order), then the data.
fn lpm_key(prefix_len: u32, data: &[u8]) -> Vec<u8> {
    let mut key = prefix_len.to_ne_bytes().to_vec();
    key.extend_from_slice(data);
    key
}

/// A `u32` map value read back.
fn u32_value(map: BorrowedFd, key: &[u8]) -> Result<u32, String> {
    let value = bpf_raw::map_value(map, key, 4).ok_or("the deny probe's entry is missing")?;
    Ok(u32::from_ne_bytes([value[0], value[1], value[2], value[3]]))
}

/// One part of the deny path: a program making its operations.
struct Part {
    name: &'static str,
    /// How many operations of the kind the program (and the deny path) makes.
    operations: usize,
    asm: Asm,
}

/// The deny probe's operations, grouped by kind, in the order the program makes them
/// (see `enforcer-ebpf/src/xdp.rs` `decide_new_flow` and `record.rs`), with its keys.
fn deny_parts(maps: &ProgramMaps) -> Result<Vec<Part>, String> {
    let listen_key = bytes_of(&ListenKey::new(DENY_PORT, TCP));
    let dst = u32_value(maps.active("LISTEN")?, &listen_key)?;
    let cidr_key = lpm_key(32, &SOURCE.octets());
    let src = u32_value(maps.active("CIDRS_V4")?, &cidr_key)?;
    let failsafe_key = lpm_key(
        FAILSAFE_KEY_FIXED_BITS + 32,
        &bytes_of(&FailsafeKey::new(TCP, DENY_PORT, SOURCE.octets())),
    );
    let config = bpf_raw::map_value(
        maps.active("POLICY")?,
        &0u32.to_ne_bytes(),
        size_of::<PolicyConfig>(),
    )
    .ok_or("no policy config")?;
    // `PolicyConfig::rule_lookups`: the lookups the generation has rules for.
    let wanted = config[2];
    let rule_keys: Vec<Vec<u8>> = rule_lookups(src, dst)
        .into_iter()
        .filter(|&(s, d)| wanted & lookup_bit(s, d) != 0)
        .map(|(s, d)| {
            lpm_key(
                RULE_KEY_FIXED_BITS + 16,
                &bytes_of(&RuleKey::new(s, d, TCP, DENY_PORT)),
            )
        })
        .collect();
    let rule = bpf_raw::map_value(maps.active("RULES")?, &rule_keys[0], size_of::<RuleValue>())
        .ok_or("the deny rule is not in the trie")?;
    let rule_id = u32::from_ne_bytes([rule[0], rule[1], rule[2], rule[3]]);
    let fold_key = deny_fold_key(maps)?;

    let mut parts = Vec::new();
    let mut part = |name, operations, build: &dyn Fn(&mut Asm) -> Result<(), String>| {
        let mut asm = Asm::default();
        build(&mut asm)?;
        parts.push(Part {
            name,
            operations,
            asm,
        });
        Ok::<(), String>(())
    };
    let zero = 0u32.to_ne_bytes();
    part("listen", 1, &|asm| {
        asm.lookup(maps.active("LISTEN")?, &listen_key);
        Ok(())
    })?;
    part("cidr", 1, &|asm| {
        asm.lookup(maps.active("CIDRS_V4")?, &cidr_key);
        Ok(())
    })?;
    part("failsafe", 1, &|asm| {
        asm.lookup(maps.active("FAILSAFE4")?, &failsafe_key);
        Ok(())
    })?;
    part("rules", rule_keys.len(), &|asm| {
        for key in &rule_keys {
            asm.lookup(maps.active("RULES")?, key);
        }
        Ok(())
    })?;
    // ACTIVE; the policy config (rule lookups), both segments' flags; the policy config
    // (audit level) and the host settings in `record`.
    part("arrays", 6, &|asm| {
        asm.lookup(maps.host("ACTIVE")?, &zero)
            .lookup(maps.active("POLICY")?, &zero)
            .lookup(maps.active("SEGMENTS")?, &src.to_ne_bytes())
            .lookup(maps.active("SEGMENTS")?, &dst.to_ne_bytes())
            .lookup(maps.active("POLICY")?, &zero)
            .lookup(maps.host("HOST_SETTINGS")?, &zero);
        Ok(())
    })?;
    // By reason, the rule's deny count (its second field), the suppressed event.
    part("counters", 3, &|asm| {
        let reason = reason_counter_index(Reason::Rule, Verdict::Deny);
        asm.lookup_add(maps.host("REASON_COUNTS")?, &reason.to_ne_bytes(), 0)
            .lookup_add(maps.active("RULE_COUNTERS")?, &rule_id.to_ne_bytes(), 8)
            .lookup_add(
                maps.host("EVENT_STATS")?,
                &EVENTS_SUPPRESSED.to_ne_bytes(),
                0,
            );
        Ok(())
    })?;
    part("clock", 1, &|asm| {
        asm.call(HELPER_KTIME_GET_BOOT_NS);
        Ok(())
    })?;
    // The event made field by field in this CPU's scratch entry.
    part("event", 1, &|asm| {
        let words = i16::try_from(size_of::<FlowEvent>() / 8).expect("small event");
        let hook = u32::from(Hook::XdpIngress as u8);
        asm.lookup_fill(maps.host("SCRATCH")?, &hook.to_ne_bytes(), words);
        Ok(())
    })?;
    // The source fold's lookup and its pending count's atomic add.
    part("fold", 1, &|asm| {
        asm.lookup_atomic_add(maps.host("FOLDS")?, &fold_key, 0);
        Ok(())
    })?;
    Ok(parts)
}

/// The key of the fold the deny probe's attempts are counted in (made by its runs).
fn deny_fold_key(maps: &ProgramMaps) -> Result<Vec<u8>, String> {
    bpf_raw::map_keys(maps.host("FOLDS")?, size_of::<FoldKey>(), 1024)
        .into_iter()
        .find(|key| {
            // SAFETY: `key` holds `size_of::<FoldKey>()` bytes; any bytes are a FoldKey.
            let fold: FoldKey = unsafe { std::ptr::read_unaligned(key.as_ptr().cast()) };
            fold.dst_port == DENY_PORT && fold.hook == Hook::XdpIngress as u8
        })
        .ok_or_else(|| "the deny probe made no fold".to_owned())
}
