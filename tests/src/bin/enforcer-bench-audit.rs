//! `enforcer-bench-audit`: the audit pipeline's figures.
//!
//! - `enforcer-bench-audit pipeline PIN_DIR STORE_DIR SECONDS [SEAL_MS]`: the kernel programs are
//!   loaded pinned under PIN_DIR (unattached) with a one-rule policy and no duplicate
//!   suppression; the agent's consumer writes to a store in STORE_DIR. The XDP program is
//!   run through `BPF_PROG_TEST_RUN` on a TCP SYN the policy denies (XDP records its
//!   denials; a flow it lets through is recorded by the socket that receives it), in chunks, so each
//!   run is one real kernel decision and one ring event, never more than
//!   [`IN_FLIGHT`] ahead of the store. Prints `events N`, `consumer_cpu_s S` (the CPU time
//!   the consumer's thread used meanwhile), `stored N`, `lost N`,
//!   `seconds S`, `ring_bytes B`, then `latency_us P50 P99 MAX` of single events
//!   from the kernel run to the consumer's write returning, paced 1 ms apart. With
//!   SEAL_MS the store is sealed forward-securely every SEAL_MS milliseconds (a fresh key
//!   in STORE_DIR's parent), as `audit.seal_key` makes the agent do, and `seals N` says
//!   how many seals the run wrote.
//! - `enforcer-bench-audit flood PIN_DIR STORE_DIR SECONDS`: as `pipeline`, folding with the
//!   agent's defaults (1 s window, 16 sources), a denied SYN flood from random sources in
//!   198.18.0.0/15 and random ports for SECONDS; then the consumer stops and the store is
//!   read. Prints `attempts N`, `seconds S`, `records N` (for the denied port), `counted N`
//!   (their counts' sum), `lost N` (ring-full), `store_bytes B`.
//! - `enforcer-bench-audit generate STORE_DIR COUNT`: writes COUNT flow records (varied
//!   addresses, ports, rules, 10 ms apart and ending now) through the store, for the
//!   query benchmark.
//!
//! Run by `./x bench audit`, which writes the table.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use enforcer::{
    agent::{
        consumer::{AuditStats, Consumer},
        enrich::Enricher,
        sweep::FoldSweeps,
    },
    audit::{
        read,
        seal::{self, Sealer, VerifyKey},
        store::{Fsync, Store, StoreSettings},
    },
    config::WriteErrorAction,
    host::hostname,
    loader::{Loader, PinLayout, PinnedMaps},
    policy::{compile_sources, names::GenerationNames, source::SourceSet},
};
use enforcer_common::{
    event::{FlowEvent, Hook, Reason, Verdict, family},
    maps::EVENTS_RING_BYTES,
};
use enforcer_tests::packet::{SYN, tcp4, tcp4_from};

/// The agent's allocator, so the pipeline allocates as it does in the agent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A port the bench policy opens to nobody.
const DENIED_PORT: u16 = 10_002;
/// Most events generated but not yet stored.
const IN_FLIGHT: u64 = 100_000;
/// Events per `BPF_PROG_TEST_RUN`.
const CHUNK: u32 = 10_000;
/// Single events timed for latency.
const LATENCY_SAMPLES: usize = 2_000;

const POLICY: &str = r#"[segments.remote]
cidrs = ["198.18.0.0/16"]

[segments.svc]
ports = ["10001/tcp"]

[[allow]]
id = "remote-to-svc"
from = ["remote"]
to = ["svc"]
ports = ["10001/tcp"]
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["pipeline", pins, store, seconds, seal @ ..] if seal.len() <= 1 => {
            let seal = seal
                .first()
                .map(|ms| ms.parse().map(Duration::from_millis))
                .transpose()
                .map_err(|_| "SEAL_MS is a number".to_owned());
            seconds
                .parse()
                .map_err(|_| "SECONDS is a number".to_owned())
                .and_then(|s| {
                    pipeline(Path::new(pins), Path::new(store), Duration::from_secs(s), seal?)
                })
        }
        ["flood", pins, store, seconds] => seconds
            .parse()
            .map_err(|_| "SECONDS is a number".to_owned())
            .and_then(|s| flood(Path::new(pins), Path::new(store), Duration::from_secs(s))),
        ["generate", store, count] => count
            .parse()
            .map_err(|_| "COUNT is a number".to_owned())
            .and_then(|count| generate(Path::new(store), count)),
        _ => Err("usage: enforcer-bench-audit pipeline PIN_DIR STORE_DIR SECONDS [SEAL_MS] | flood PIN_DIR STORE_DIR SECONDS | generate STORE_DIR COUNT".to_owned()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enforcer-bench-audit: {err}");
            ExitCode::FAILURE
        }
    }
}

fn settings(dir: &Path) -> StoreSettings {
    StoreSettings {
        dir: dir.to_owned(),
        rotate_bytes: 64 << 20,
        rotate_age: Duration::from_secs(3600),
        retain_bytes: u64::MAX,
        retain_age: Duration::from_secs(86_400 * 365),
        fsync: Fsync::Interval(Duration::from_secs(1)),
        format: enforcer::audit::files::Format::Compact,
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

/// A sealer with a fresh key next to `store_dir`, sealing every `interval`.
fn sealer(store_dir: &Path, interval: Duration) -> Result<(Sealer, PathBuf), String> {
    let key_file = store_dir.with_extension("seal.key");
    let (_, key) = VerifyKey::generate().map_err(|e| e.to_string())?;
    seal::write_key(&key_file, &key).map_err(|e| e.to_string())?;
    let sealer = Sealer::load(&key_file, interval).map_err(|e| e.to_string())?;
    Ok((sealer, key_file))
}

/// The kernel programs and the agent's consumer, running.
struct Running {
    layout: PinLayout,
    loader: Loader,
    stats: Arc<AuditStats>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
    /// The consumer thread's id, for its CPU time.
    consumer_tid: i32,
    key_file: Option<PathBuf>,
}

/// The CPU time thread `tid` of this process has used, in seconds (its `schedstat`).
fn thread_cpu_seconds(tid: i32) -> Result<f64, String> {
    let path = format!("/proc/self/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| format!("{path}: no run time in {text:?}"))?;
    Ok(ns as f64 / 1e9)
}

/// Loads the kernel programs pinned under `pins` with the bench policy, folding with
/// `window` (zero: every event on its own), and starts the agent's consumer writing to
/// a store in `store_dir`, sealing every `seal_every`.
fn start(
    pins: &Path,
    store_dir: &Path,
    window: Duration,
    seal_every: Option<Duration>,
) -> Result<Running, String> {
    let mut sources = SourceSet::default();
    sources.add("bench.toml", POLICY);
    let compiled = compile_sources(sources).map_err(|r| format!("{:?}", r.diagnostics))?;
    let layout = PinLayout::new(pins);
    let mut loader = Loader::load_pinned(&layout).map_err(|e| e.to_string())?;
    let root = enforcer::host::cgroup2_mount().map_err(|e| e.to_string())?;
    let applied = loader
        .apply(&compiled.image, &root)
        .map_err(|e| e.to_string())?;
    loader.set_dedup_window(window).map_err(|e| e.to_string())?;
    let events = loader.take_events().map_err(|e| e.to_string())?;
    let names = GenerationNames {
        generation: applied.generation,
        source_sha256: String::new(),
        segments: compiled.image.segment_names.clone(),
        rules: compiled.image.rule_names.clone(),
        failsafes: Vec::new(),
    };
    let host = hostname();
    let (sealer, key_file) = match seal_every {
        Some(interval) => sealer(store_dir, interval).map(|(s, k)| (Some(s), Some(k)))?,
        None => (None, None),
    };
    let store =
        Store::open(settings(store_dir), &host, now_ms(), sealer).map_err(|e| e.to_string())?;
    let stats = Arc::new(AuditStats::default());
    let consumer = Consumer {
        maps: PinnedMaps::open(&layout.maps_dir()).map_err(|e| e.to_string())?,
        store,
        enricher: Enricher::new(host, root, vec![names]),
        ring_lost_accounted: 0,
        on_write_error: WriteErrorAction::KeepEnforcing,
        stats: Arc::clone(&stats),
        folds: FoldSweeps::new(loader.fold_reporter().map_err(|e| e.to_string())?, window),
    };
    let (names_tx, names_rx) = tokio::sync::mpsc::unbounded_channel();
    let (notes_tx, notes_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        // Open channels, as the agent keeps them, for as long as the consumer runs.
        let _senders = (names_tx, notes_tx);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(consumer.run(events, names_rx, notes_rx, stop_rx))
            .map_err(|e| e.to_string())
    });
    let consumer_tid = tid_rx
        .recv()
        .map_err(|_| "the consumer thread did not start".to_owned())?;
    Ok(Running {
        layout,
        loader,
        stats,
        stop,
        thread,
        consumer_tid,
        key_file,
    })
}

fn pipeline(
    pins: &Path,
    store_dir: &Path,
    duration: Duration,
    seal_every: Option<Duration>,
) -> Result<(), String> {
    let Running {
        layout,
        loader,
        stats,
        stop,
        thread,
        consumer_tid,
        key_file,
    } = start(pins, store_dir, Duration::ZERO, seal_every)?;
    let consumer_cpu_before = thread_cpu_seconds(consumer_tid)?;

    // To a port no rule opens: denied by default, one record per run.
    let packet = tcp4(Ipv4Addr::new(198, 18, 0, 1), DENIED_PORT, SYN);
    let flows = || stats.flows.load(Ordering::Relaxed);
    let mut generated = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        if generated - flows() < IN_FLIGHT {
            loader
                .test_run_xdp(&packet, CHUNK)
                .map_err(|e| e.to_string())?;
            generated += u64::from(CHUNK);
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let drain_started = Instant::now();
    let lost = || loader_lost(&layout);
    while flows() + lost()? < generated && drain_started.elapsed() < Duration::from_secs(60) {
        if thread.is_finished() {
            // The consumer gave up: say why rather than wait for records that never come.
            let outcome = thread
                .join()
                .map_err(|_| "the consumer panicked".to_owned())?;
            return Err(format!("the consumer stopped early: {outcome:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let seconds = started.elapsed().as_secs_f64();
    let consumer_cpu = thread_cpu_seconds(consumer_tid)? - consumer_cpu_before;
    println!("events {generated}");
    println!("consumer_cpu_s {consumer_cpu:.3}");
    println!("stored {}", flows());
    println!("lost {}", lost()?);
    println!("seconds {seconds:.3}");
    println!("ring_bytes {EVENTS_RING_BYTES}");

    let mut latencies = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let before = flows();
        let sent = Instant::now();
        loader.test_run_xdp(&packet, 1).map_err(|e| e.to_string())?;
        while flows() == before {
            if sent.elapsed() > Duration::from_secs(5) {
                return Err("an event did not reach the store within 5 s".to_owned());
            }
            std::hint::spin_loop();
        }
        latencies.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_micros();
    println!("latency_us {} {} {}", at(0.5), at(0.99), at(1.0));

    let _ = stop.send(true);
    thread
        .join()
        .map_err(|_| "the consumer panicked".to_owned())??;
    if let Some(key_file) = key_file {
        let key = seal::read_key(&key_file).map_err(|e| e.to_string())?;
        println!("seals {}", key.index());
    }
    layout.remove().map_err(|e| e.to_string())?;
    Ok(())
}

/// Source addresses of the flood: 198.18.0.0/15.
const FLOOD_SOURCES: u32 = 1 << 17;

/// A denied SYN flood from random sources and ports through the XDP program for
/// `duration`, folded with the agent's default window and threshold; then the consumer
/// stops (reporting every fold) and the store is read back.
fn flood(pins: &Path, store_dir: &Path, duration: Duration) -> Result<(), String> {
    let Running {
        layout,
        loader,
        stats: _,
        stop,
        thread,
        consumer_tid: _,
        key_file: _,
    } = start(pins, store_dir, Duration::from_secs(1), None)?;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut attempts = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let [_, b, c, d] = (0xc612_0000 | rng.u32(..FLOOD_SOURCES)).to_be_bytes();
        let frame = tcp4_from(
            Ipv4Addr::new(198, b, c, d),
            rng.u16(1024..),
            DENIED_PORT,
            SYN,
        );
        // One run per call: a `repeat` above 1 makes the kernel swap the XDP dispatcher
        // twice per call (about 20 ms here), and each attempt has a source of its own.
        loader.test_run_xdp(&frame, 1).map_err(|e| e.to_string())?;
        attempts += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    thread
        .join()
        .map_err(|_| "the consumer panicked".to_owned())??;
    let (mut records, mut counted) = (0u64, 0u64);
    let filter = read::Filter {
        port: Some(DENIED_PORT),
        ..read::Filter::default()
    };
    read::scan(
        store_dir,
        &filter,
        |_| {},
        |record| {
            records += 1;
            counted += record.attempts();
            true
        },
    )
    .map_err(|e| e.to_string())?;
    let lost = loader_lost(&layout)?;
    let bytes: u64 = std::fs::read_dir(store_dir)
        .map_err(|e| e.to_string())?
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|meta| meta.len())
        .sum();
    println!("attempts {attempts}");
    println!("seconds {seconds:.3}");
    println!("records {records}");
    println!("counted {counted}");
    println!("lost {lost}");
    println!("store_bytes {bytes}");
    layout.remove().map_err(|e| e.to_string())?;
    Ok(())
}

fn loader_lost(layout: &PinLayout) -> Result<u64, String> {
    PinnedMaps::open(&layout.maps_dir())
        .and_then(|mut maps| maps.event_counts())
        .map(|counts| counts.lost)
        .map_err(|e| e.to_string())
}

/// Writes `count` varied flow records through the store.
fn generate(dir: &Path, count: u64) -> Result<(), String> {
    let names = GenerationNames {
        generation: 1,
        source_sha256: "0".repeat(64),
        segments: ["*", "host", "world"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain((0..50).map(|i| format!("s{i}")))
            .collect(),
        rules: (0..1000).map(|i| format!("r{i}")).collect(),
        failsafes: Vec::new(),
    };
    let host = hostname();
    let mut enricher = Enricher::new(host.clone(), "/nonexistent".into(), vec![names]);
    let mut store = Store::open(settings(dir), &host, now_ms(), None).map_err(|e| e.to_string())?;
    let mut rng = fastrand::Rng::with_seed(7);
    // Ten milliseconds apart, ending now: 10M records span about 28 hours.
    let start_ms = now_ms() - i64::try_from(count * 10).unwrap_or(0);
    let mut written = 0;
    let mut batch = Vec::with_capacity(8192);
    while written < count {
        batch.clear();
        for _ in 0..8192.min(count - written) {
            let mut event = FlowEvent::ZEROED;
            event.generation = 1;
            event.hook = Hook::Connect4 as u8;
            let denied = rng.u8(..10) == 0;
            event.verdict = if denied {
                Verdict::Deny
            } else {
                Verdict::Allow
            } as u8;
            event.reason = if denied {
                Reason::DefaultDeny
            } else {
                Reason::Rule
            } as u8;
            event.rule_id = if denied { 0 } else { rng.u32(1..=1000) };
            event.src_segment = rng.u32(3..53);
            event.dst_segment = rng.u32(3..53);
            event.family = family::INET;
            event.protocol = 6;
            event.src_port = rng.u16(32_768..61_000);
            event.dst_port = rng.u16(1..10_000);
            event.dst_addr[..4].copy_from_slice(&[198, 18, rng.u8(..), rng.u8(..)]);
            event.pid_tgid = u64::from(rng.u32(1..100_000)) << 32;
            event.comm[..4].copy_from_slice(b"curl");
            let mut record = enricher.record(&event);
            record.time = start_ms + i64::try_from(written * 10).unwrap_or(0);
            batch.push(record);
            written += 1;
        }
        store
            .write(&mut batch, now_ms())
            .map_err(|e| e.to_string())?;
    }
    store.close(now_ms()).map_err(|e| e.to_string())
}
