//! `enforcer-bench-reload POLICY_A POLICY_B ITERATIONS SECONDS`: the time from a policy
//! file write to enforcement, and the agent's resident memory, for the real agent binary.
//!
//! The agent starts on POLICY_A (attached to a fresh test cgroup, no interfaces). Each
//! iteration writes the other policy over the watched file and polls the pinned `ACTIVE`
//! map until the generation changes: that flip is the moment the kernel enforces the new
//! policy. Iterations stop at ITERATIONS, or once SECONDS have passed (after at least
//! two). Prints `reloads N` (the iterations made), `reload_ms P50 P99 MAX` over them,
//! `apply_ms P50 P99 MAX` (the part the agent logs as its apply: fill the inactive
//! generation, flip, clear the old one), `fill_ms` (the apply's part before the flip: its
//! time less the time from the flip until the agent logged the reload) and
//! `before_apply_ms` (the rest of the reload: inotify, the settle window, read, parse,
//! validate, compile), each `P50 P99 MAX`, then `cgroup_ms P50 P99 MAX`:
//! from creating a cgroup under a guarded directory (the cgroup2 root) until the active
//! cgroup table holds it, the time its processes are unclassified; then
//! `rss_idle_kib VMRSS ANON` after start and `rss_load_kib VMRSS ANON`, their peaks while a
//! client in the attached cgroup makes connections (`VmRSS` and `RssAnon` from
//! `/proc/PID/status`).
//!
//! Run by `./x bench agent`, which generates the policies and writes the table.

use std::{
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use enforcer::loader::PinnedMaps;
use enforcer_tests::{
    agent::AgentHost,
    cgroup::TestCgroup,
    probe::{Outcome, Spawn},
};

/// Connections of the load phase.
const LOAD_CONNECTIONS: u32 = 3000;

/// New cgroups whose resolution is timed.
const CGROUP_SAMPLES: usize = 40;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b, iterations, seconds] = args.as_slice() else {
        eprintln!("usage: enforcer-bench-reload POLICY_A POLICY_B ITERATIONS SECONDS");
        return ExitCode::from(2);
    };
    let (Ok(iterations), Ok(seconds)) = (iterations.parse::<usize>(), seconds.parse::<u64>())
    else {
        eprintln!("ITERATIONS and SECONDS are numbers");
        return ExitCode::from(2);
    };
    match bench(a, b, iterations.max(2), Duration::from_secs(seconds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enforcer-bench-reload: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's resident memory in KiB: all of it (`VmRSS`) and its anonymous part
/// (`RssAnon`: heap and stacks, without the mapped binary and audit ring).
#[derive(Clone, Copy, Debug)]
struct Rss {
    total: u64,
    anon: u64,
}

impl Rss {
    fn of(pid: u32) -> Result<Self, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("agent status: {e}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("no {name} in the agent's status"))
        };
        Ok(Self {
            total: field("VmRSS:")?,
            anon: field("RssAnon:")?,
        })
    }

    fn max(self, other: Self) -> Self {
        Self {
            total: self.total.max(other.total),
            anon: self.anon.max(other.anon),
        }
    }
}

/// Whether the active generation's cgroup table knows cgroup `id`.
fn resolved(maps: &mut PinnedMaps, id: u64) -> Result<bool, String> {
    maps.active_cgroup(id)
        .map(|value| value.is_some())
        .map_err(|e| e.to_string())
}

/// How many policies the agent has applied, as its log says.
fn applied(agent: &AgentHost) -> usize {
    agent.log(1).matches("policy applied").count()
}

/// Polls until `done` holds, for at most `limit`.
fn until(mut done: impl FnMut() -> Result<bool, String>, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > limit {
            return Err(format!("not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

/// The time from creating a cgroup under the (guarded) cgroup2 root until the agent has
/// put it into the active cgroup table, `CGROUP_SAMPLES` times, sorted, in ms.
fn cgroup_resolution(maps: &mut PinnedMaps) -> Result<Vec<f64>, String> {
    let mut times = Vec::with_capacity(CGROUP_SAMPLES);
    for _ in 0..CGROUP_SAMPLES {
        let started = Instant::now();
        let fresh = TestCgroup::new();
        let id = fresh.id();
        until(|| resolved(maps, id), Duration::from_secs(10))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(fresh);
        until(|| Ok(!resolved(maps, id)?), Duration::from_secs(10))?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// The `elapsed_ms` of every reload the agent logged as applied, its start's excepted:
/// the time `apply` took (clear the inactive slot, fill it, flip, clear the old slot).
fn apply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains("policy applied"))
        .skip(1)
        .filter_map(|line| {
            let value = line.split("elapsed_ms=").nth(1)?;
            value.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Prints `NAME P50 P99 MAX` of `values`.
fn print_spread(name: &str, values: &[f64]) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{name} {:.1} {:.1} {:.1}",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1]
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What both policies add for the load phase: the client's cgroup may connect to the
/// loopback server's port (a process in no segment, so `host`). Without it the client is
/// unclassified and its first connection is refused.
fn load_rules(client: &TestCgroup, server: SocketAddr) -> String {
    format!(
        "[segments.bench-load]\ncgroups = [\"{cgroup}\"]\n\
         [[allow]]\nid = \"bench-load\"\nfrom = [\"bench-load\"]\nto = [\"host\"]\n\
         ports = [\"{port}/tcp\"]\n",
        cgroup = client.relative_path(),
        port = server.port(),
    )
}

fn bench(a: &str, b: &str, iterations: usize, budget: Duration) -> Result<(), String> {
    let cgroup = TestCgroup::new();
    let client = cgroup.child("client.service");
    let server = Spawn::tcp_server("127.0.0.1:0".parse::<SocketAddr>().expect("addr")).serve();
    let load = load_rules(&client, server.addr);
    let texts = [
        std::fs::read_to_string(a).map_err(|e| format!("{a}: {e}"))? + &load,
        std::fs::read_to_string(b).map_err(|e| format!("{b}: {e}"))? + &load,
    ];
    let mut agent = AgentHost::new(&cgroup, &texts[0], "127.0.0.1:19690", "");
    // Every load connection is a record for the consumer to write.
    agent.audit_options("dedup_window_ms = 0");
    agent.start();
    let mut maps = PinnedMaps::open(&agent.pin_dir().join("maps")).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = Rss::of(agent.pid())?;

    let mut times = Vec::with_capacity(iterations);
    let mut after_flip = Vec::with_capacity(iterations);
    let reloading = Instant::now();
    for i in 0..iterations {
        if i >= 2 && reloading.elapsed() > budget {
            break;
        }
        let before = maps.active_generation().map_err(|e| e.to_string())?;
        let started = Instant::now();
        agent.write_policy(&texts[(i + 1) % 2]);
        until(
            || Ok(maps.active_generation().map_err(|e| e.to_string())? != before),
            Duration::from_secs(60),
        )
        .map_err(|err| format!("iteration {i}: no new generation: {err}"))?;
        let flipped = Instant::now();
        times.push((flipped - started).as_secs_f64() * 1000.0);
        // The next write (or new cgroup) finds the agent idle: the old generation cleared,
        // the reload logged (its start applied the first).
        until(|| Ok(applied(&agent) > i + 1), Duration::from_secs(60))?;
        after_flip.push(flipped.elapsed().as_secs_f64() * 1000.0);
    }
    println!("reloads {}", times.len());
    print_spread("reload_ms", &times);
    let applies = apply_times(&agent.log(1));
    if applies.len() != times.len() {
        return Err(format!(
            "the agent logged {} apply times for {} reloads",
            applies.len(),
            times.len()
        ));
    }
    print_spread("apply_ms", &applies);
    // Per reload: the apply's part before the flip is its time less what followed the
    // flip until the log line; the rest of the reload came before the apply.
    let fill: Vec<f64> = applies
        .iter()
        .zip(&after_flip)
        .map(|(apply, after)| (apply - after).max(0.0))
        .collect();
    let before_apply: Vec<f64> = times.iter().zip(&fill).map(|(t, f)| t - f).collect();
    print_spread("fill_ms", &fill);
    print_spread("before_apply_ms", &before_apply);
    let cgroups = cgroup_resolution(&mut maps)?;
    println!(
        "cgroup_ms {:.2} {:.2} {:.2}",
        percentile(&cgroups, 0.5),
        percentile(&cgroups, 0.99),
        cgroups[cgroups.len() - 1]
    );
    println!("rss_idle_kib {} {}", rss_idle.total, rss_idle.anon);

    let mut load = Spawn::tcp_client_repeated(server.addr, LOAD_CONNECTIONS)
        .cgroup(&client)
        .run_in_background();
    let mut peak = rss_idle;
    let started = Instant::now();
    while !load.finished() && started.elapsed() < Duration::from_secs(120) {
        peak = peak.max(Rss::of(agent.pid())?);
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = load.outcome();
    if outcome != Outcome::Ok {
        return Err(format!(
            "the load client did not make its {LOAD_CONNECTIONS} connections: {outcome:?}"
        ));
    }
    println!("rss_load_kib {} {}", peak.total, peak.anon);
    Ok(())
}
